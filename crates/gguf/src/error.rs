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
    /// What to do about it, for a command line to print on its own line; `None` where the message says it all.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::Malformed { .. } => {
                Some("the file is damaged, cut short, or not a GGUF file; download or convert it again")
            }
            Error::MissingKey { .. } | Error::WrongType { .. } => {
                Some("reconvert the model with a current llama.cpp (convert_hf_to_gguf.py)")
            }
            Error::MissingTensor { .. } => {
                Some("is it a complete conversion of the expected architecture? reconvert it with llama.cpp")
            }
            Error::Io { .. } | Error::Tensor { .. } | Error::Codec(_) | Error::Writer(_) => None,
        }
    }

    pub(crate) fn malformed(path: &std::path::Path, what: impl Into<String>) -> Self {
        Error::Malformed { path: path.to_path_buf(), what: what.into() }
    }
}
