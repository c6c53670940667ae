use std::path::PathBuf;

use crate::ValueType;

/// Every message is one line naming the file, the key or tensor, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file's bytes do not form a valid GGUF file; `what` names the key or tensor and what was expected.
    #[error("{}: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
    #[error("{}: missing metadata key '{key}' (expected {expected})", path.display())]
    MissingKey { path: PathBuf, key: String, expected: &'static str },
    #[error("{}: metadata key '{key}' is {found} {value}, expected {expected}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: ValueType,
        /// The value, shortened for display.
        value: String,
    },
    #[error("{}: no tensor named '{name}'", path.display())]
    MissingTensor { path: PathBuf, name: String },
    /// A codec failure for a tensor of a file.
    #[error("{}: tensor '{tensor}': {what}", path.display())]
    Tensor { path: PathBuf, tensor: String, what: String },
    /// A codec failure outside any file (the free `dequantize` / `quantize` functions).
    #[error("{0}")]
    Codec(String),
    /// Something given to `GgufWriter` that no GGUF reader would accept.
    #[error("GGUF writer: {0}")]
    Writer(String),
}

impl Error {
    pub(crate) fn malformed(path: &std::path::Path, what: impl Into<String>) -> Self {
        Error::Malformed { path: path.to_path_buf(), what: what.into() }
    }
}
