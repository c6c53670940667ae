//! loft's error type: every message is one line that names the file, key or tensor, what was expected,
//! and (where one helps) a hint the CLI prints on its own line.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error(transparent)]
    ChatTemplate(#[from] crate::chat_template::ChatTemplateError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model, adapter or data file whose content is not what loft expects.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// Bad input that is not tied to one file (a flag, a prompt).
    #[error("{0}")]
    Invalid(String),
    #[error("{message}")]
    Hinted { message: String, hint: String },
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), message: message.into() }
    }

    pub fn hinted(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Hinted { message: message.into(), hint: hint.into() }
    }

    /// The same error, said of `path` (a config file's checks name the file).
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            Error::Invalid(message) => Error::format(path, message),
            Error::Hinted { message, hint } => {
                Error::Hinted { message: format!("{}: {message}", path.display()), hint }
            }
            e => e,
        }
    }

    /// The hint to print after the message, if this error carries one.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Hinted { hint, .. } => Some(hint),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
