//! Errors of the downstream crate, naming the file, record and field they concern.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while fine-tuning, evaluating or scoring.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or has the wrong shape.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A predictions or data file holds a bad record.
    #[error("{path}: record {record}, field `{field}`: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Record index (0-based; the line for CSV files, 1-based).
        record: usize,
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The data directory lacks something or is inconsistent.
    #[error("data {path}: {reason}")]
    Data {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A configuration value is invalid.
    #[error("invalid {field}: {reason}")]
    Config {
        /// The field (e.g. `finetune.vqa.epochs`).
        field: String,
        /// Why.
        reason: String,
    },
    /// Training diverged.
    #[error("{task}, epoch {epoch}, step {step}: non-finite loss {value}")]
    NonFinite {
        /// The task.
        task: String,
        /// The epoch.
        epoch: usize,
        /// The update within the task.
        step: u64,
        /// The loss.
        value: f32,
    },
    /// A metric was asked of inconsistent inputs.
    #[error("metric: {0}")]
    Metric(String),
    /// From msp-text.
    #[error(transparent)]
    Text(#[from] msp_text::TextError),
    /// From msp-features.
    #[error(transparent)]
    Features(#[from] msp_features::FeatureError),
    /// From msp-model.
    #[error(transparent)]
    Model(#[from] msp_model::ModelError),
    /// From msp-curriculum (optimiser, schedules, run files).
    #[error(transparent)]
    Curriculum(#[from] msp_curriculum::CurriculumError),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;

/// Maps an I/O error to [`EvalError::Io`] for `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a JSON file.
pub(crate) fn read_json<T: for<'de> serde::Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| EvalError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a JSON file atomically (temporary name, then rename); `pretty` for files people
/// read (results, records), compact for prediction files.
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, v: &T, pretty: bool) -> Result<()> {
    let bytes = if pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    }
    .map_err(|source| EvalError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    msp_curriculum::write_atomic(path, &bytes)?;
    Ok(())
}
