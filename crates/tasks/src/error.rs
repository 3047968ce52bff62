//! Errors of the tasks crate.

use thiserror::Error;

/// Everything that can go wrong while building a batch or computing losses.
#[derive(Debug, Error)]
pub enum TaskError {
    /// A task name that is not one of `MLM, MRFR, MOC, IFRS, TITP, TITS, ITM, ITM-HS`.
    #[error(
        "unknown task `{name}` (expected one of MLM, MRFR, MOC, IFRS, TITP, TITS, ITM, ITM-HS)"
    )]
    UnknownTask {
        /// The name as given.
        name: String,
    },
    /// A task set that cannot be trained (e.g. ITM and ITM-HS together).
    #[error("invalid task set: {0}")]
    InvalidTaskSet(String),
    /// A configuration value out of range (name and reason).
    #[error("invalid configuration `{field}`: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// A tensor or slice with an unexpected shape (name, got, expected).
    #[error("`{name}`: shape {got:?}, expected {expected}")]
    Shape {
        /// Which input.
        name: &'static str,
        /// Its dims.
        got: Vec<usize>,
        /// What was expected, in words.
        expected: String,
    },
    /// An example that cannot be used (index in the batch and reason).
    #[error("example {index}: {reason}")]
    Example {
        /// Position of the example in the batch.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The model output lacks a head a task needs.
    #[error("task {task}: the model has no {head} head")]
    MissingHead {
        /// The task.
        task: String,
        /// The head.
        head: &'static str,
    },
    /// candle error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Feature store error.
    #[error(transparent)]
    Features(#[from] msp_features::FeatureError),
    /// Text / tokenizer error.
    #[error(transparent)]
    Text(#[from] msp_text::TextError),
    /// Model error.
    #[error(transparent)]
    Model(#[from] msp_model::ModelError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TaskError>;
