//! Error type of the crate.

use std::path::PathBuf;

use crate::checkpoint::LoadReport;

/// Everything that can go wrong when configuring, building, loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid model config: field `{field}`: {reason}")]
    Config {
        /// The offending field (HF `config.json` name).
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// A config file could not be read, parsed or validated.
    #[error("model config {path}: {reason}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The I/O or JSON error, with line/column when JSON.
        reason: String,
    },
    /// An input tensor has the wrong rank, shape or dtype.
    #[error("bad input `{name}`: {reason}")]
    Input {
        /// HF input name (`input_ids`, `visual_feats`, ...).
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint does not fit the model (strict loading).
    #[error("checkpoint {path} does not fit the model: {}", report.summary())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What was missing, unexpected or mismatched.
        report: Box<LoadReport>,
    },
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`reading`, `writing`, `renaming`).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A safetensors file that cannot be read (truncated, corrupt header, unknown dtype).
    #[error("{path}: not a readable safetensors file: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// The safetensors or candle error.
        reason: String,
    },
    /// The BERT checkpoint was not found locally (this crate never downloads).
    #[error("BERT weights not found: {0}")]
    BertNotFound(String),
    /// An error from candle (tensor op, safetensors I/O).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, ModelError>;
