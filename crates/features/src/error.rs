//! The crate's error type: every variant names the file and, where there is one, the line
//! and field, so a bad line in a 20 GB TSV can be found with `sed -n`.

use std::path::PathBuf;

/// Everything that can go wrong reading, writing or converting region features.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// An operating-system error on a file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a TSV file is malformed (wrong column count, bad integer, bad base64,
    /// wrong buffer length, non-finite value, box outside the image, truncation, …).
    #[error("{path}:{line}: field `{field}`: {message}")]
    Field {
        /// The TSV file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The column name (as in LXMERT's FIELDNAMES), or `line` for whole-line problems.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The same img_id appears twice in the inputs of one conversion.
    #[error("{path}:{line}: field `img_id`: duplicate img_id `{img_id}` (first at {first_path}:{first_line})")]
    DuplicateId {
        /// The file with the second occurrence.
        path: PathBuf,
        /// Its 1-based line number.
        line: u64,
        /// The repeated id.
        img_id: String,
        /// The file with the first occurrence.
        first_path: PathBuf,
        /// Its 1-based line number.
        first_line: u64,
    },
    /// A TSV file holds no record at all.
    #[error("{path}: empty file (no records)")]
    Empty {
        /// The TSV file.
        path: PathBuf,
    },
    /// A record handed to the writer is inconsistent (lengths, id characters).
    #[error("{path}: record {record} (`{img_id}`): field `{field}`: {message}")]
    BadRecord {
        /// The file being written.
        path: PathBuf,
        /// 1-based record number.
        record: u64,
        /// The record's img_id.
        img_id: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A feature store directory is malformed.
    #[error("{path}: bad feature store: {message}")]
    Store {
        /// The offending file of the store.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The conversion's destination already exists (it is never overwritten).
    #[error("{path}: already exists; remove it or choose another output")]
    OutputExists {
        /// The destination.
        path: PathBuf,
    },
    /// A row index past the end of the store.
    #[error("row {row} out of range (store has {len} images)")]
    RowOutOfRange {
        /// The requested row.
        row: usize,
        /// The number of images.
        len: usize,
    },
    /// A JSON file could not be read or written.
    #[error("{path}: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A hard-negative file (JSON or ViLBERT pickle) has the wrong structure.
    #[error("{path}: {message}")]
    HardNegatives {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A bad argument (e.g. `top = 0`, an empty batch).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A candle error while building batch tensors.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl FeatureError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// The field named by a [`FeatureError::Field`] error (`img_id` for duplicates).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Field { field, .. } | Self::BadRecord { field, .. } => Some(field),
            Self::DuplicateId { .. } => Some("img_id"),
            _ => None,
        }
    }

    /// The 1-based line number of a TSV error.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::Field { line, .. } | Self::DuplicateId { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Short for `Result<T, FeatureError>`.
pub type Result<T, E = FeatureError> = std::result::Result<T, E>;
