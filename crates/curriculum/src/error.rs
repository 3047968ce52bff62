//! Errors of the curriculum crate, with the file, field or stage they concern.

use std::path::PathBuf;

/// Everything that can go wrong while configuring or running a curriculum.
#[derive(Debug, thiserror::Error)]
pub enum CurriculumError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be parsed.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A TOML file (preset, run config) could not be parsed.
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// What went wrong (with the table and key).
        message: String,
    },
    /// A configuration value is invalid.
    #[error("invalid {field}: {reason}")]
    Config {
        /// The field (e.g. `pretrain.token.epochs`).
        field: String,
        /// Why.
        reason: String,
    },
    /// A schedule string could not be parsed.
    #[error("invalid schedule {schedule:?}: {reason}")]
    Schedule {
        /// The schedule as given.
        schedule: String,
        /// Why.
        reason: String,
    },
    /// The data directory lacks something or holds bad data.
    #[error("data {path}: {reason}")]
    Data {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The run directory belongs to another configuration.
    #[error("run directory {path} was created with a different configuration ({reason}); use another --out or delete it")]
    ConfigMismatch {
        /// The run directory.
        path: PathBuf,
        /// The first difference.
        reason: String,
    },
    /// Saved optimiser or trainer state does not fit the model.
    #[error("state {path}: {reason}")]
    State {
        /// The state file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A non-finite loss (training diverged).
    #[error("stage {stage}, step {step}: non-finite loss {value}")]
    NonFinite {
        /// Stage name.
        stage: String,
        /// Step within the stage.
        step: u64,
        /// The loss value.
        value: f32,
    },
    /// Plotting failed.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The model failed (build, load, save).
    #[error(transparent)]
    Model(#[from] msp_model::ModelError),
    /// Batch building or a loss failed.
    #[error(transparent)]
    Tasks(#[from] msp_tasks::TaskError),
    /// Reading text data failed.
    #[error(transparent)]
    Text(#[from] msp_text::TextError),
    /// Reading features failed.
    #[error(transparent)]
    Features(#[from] msp_features::FeatureError),
    /// Generating or opening the synthetic world failed.
    #[error(transparent)]
    Synth(#[from] msp_synth::SynthError),
}

/// Result with [`CurriculumError`].
pub type Result<T> = std::result::Result<T, CurriculumError>;

/// Maps an IO error to [`CurriculumError::Io`] with the path.
pub(crate) fn io_err(
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> CurriculumError + '_ {
    move |source| CurriculumError::Io {
        path: path.to_path_buf(),
        source,
    }
}
