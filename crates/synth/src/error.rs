//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong reading a preset or generating a world.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A preset file is unreadable, malformed, or has an out-of-range knob.
    #[error("preset {path}: {message}")]
    Preset {
        /// The preset file.
        path: PathBuf,
        /// What is wrong (names the key).
        message: String,
    },
    /// An operating-system error on a file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing or converting region features failed.
    #[error(transparent)]
    Features(#[from] msp_features::FeatureError),
    /// Writing or reading a text file failed.
    #[error(transparent)]
    Text(#[from] msp_text::TextError),
    /// `world.json` is unreadable or malformed.
    #[error("{path}: {source}")]
    Json {
        /// The manifest.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The output directory holds a different world (other seed, preset, knobs or version).
    #[error("{path} holds a different world ({reason}); choose another directory or remove it")]
    Mismatch {
        /// The output directory.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A world directory is incomplete or a file does not match its recorded hash.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}
