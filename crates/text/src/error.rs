//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `msp-text`. Every variant names the file it concerns and,
/// where it applies, the line or record and the field.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// An I/O error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file that is not valid JSON of the expected shape.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error (it carries line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A file that is not UTF-8.
    #[error("{path}: line {line}: not valid UTF-8")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A record whose field holds a bad value.
    #[error("{path}: record {record}: field `{field}`: {message}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// 0-based record index (line number - 1 for line-oriented files).
        record: usize,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A file with no entries where at least one is required.
    #[error("{path}: empty {what}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was expected (e.g. "label vocabulary").
        what: String,
    },
    /// A tokenizer could not be built or failed.
    #[error("tokenizer ({context}): {message}")]
    Tokenizer {
        /// Which file or operation.
        context: String,
        /// The `tokenizers` crate's message.
        message: String,
    },
    /// A required special token is missing from the vocabulary.
    #[error("{context}: vocabulary has no special token {token}")]
    MissingSpecial {
        /// Which vocabulary.
        context: String,
        /// The token, e.g. `[CLS]`.
        token: String,
    },
    /// A file was not found in the local Hugging Face cache.
    #[error("model `{model}`: `{file}` is not in the local Hugging Face cache (looked under {looked}); this crate never downloads: fetch it first or pass a vocab.txt")]
    NotInCache {
        /// The model id.
        model: String,
        /// The file looked for.
        file: String,
        /// The cache directory looked at.
        looked: PathBuf,
    },
    /// A bad argument (e.g. max_len below 2).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A lexicon file whose line does not parse.
    #[error("{path}: line {line}: {message}")]
    BadLexicon {
        /// The file (or `<embedded>`).
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Shorthand result type.
pub type Result<T> = std::result::Result<T, TextError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TextError + '_ {
    move |source| TextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole file as UTF-8, naming the first bad line on failure.
pub(crate) fn read_utf8(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..valid]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            Err(TextError::NotUtf8 {
                path: path.to_path_buf(),
                line,
            })
        }
    }
}

/// Writes `bytes` to `path` through a temporary name in the same directory, renamed when
/// complete.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}
