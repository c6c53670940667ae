//! loft's error type. An error's message is one line that names the file, key or tensor and what was expected.
//! What it wraps is kept, not flattened into text: the underlying error stays the `source()` (the CLI prints each
//! cause on a `Caused by:` line), a place (`step 12`, `lora.target_modules`) wraps the error that happened there,
//! and a hint wraps the error it is about (the CLI prints it last, on a `hint:` line).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::chat_template::ChatTemplateError;
use crate::tokenizer::TokenizerError;

/// An error from another library, kept whole as a cause.
pub type BoxedCause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug)]
pub enum Error {
    Gguf(gguf::Error),
    Tokenizer(TokenizerError),
    ChatTemplate(ChatTemplateError),
    /// `{path}: {source}`.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A model, adapter or data file whose content is not what loft expects.
    Format {
        path: PathBuf,
        message: String,
    },
    /// Bad input that is not tied to one file (a flag, a prompt).
    Invalid(String),
    /// `message`, because of `source` (an error of another library, printed on its own `Caused by:` line).
    Caused {
        message: String,
        source: BoxedCause,
    },
    /// `error`, where it happened: displays as `{place}: {error}`.
    At {
        place: String,
        error: Box<Error>,
    },
    /// `error` with advice for the user: displays as `error` does.
    Hinted {
        error: Box<Error>,
        hint: String,
    },
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), message: message.into() }
    }

    /// A plain message with a hint.
    pub fn hinted(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Invalid(message.into()).with_hint(hint)
    }

    /// `message`, caused by `source`, an error of another library.
    pub fn caused(message: impl Into<String>, source: impl Into<BoxedCause>) -> Self {
        Error::Caused { message: message.into(), source: source.into() }
    }

    /// This error with `hint` attached (it replaces a hint the error already carries).
    pub fn with_hint(self, hint: impl Into<String>) -> Self {
        Error::Hinted { error: Box::new(self), hint: hint.into() }
    }

    /// This error, said to have happened at `place` (a file, a config field, a training step).
    pub fn at(self, place: impl fmt::Display) -> Self {
        Error::At { place: place.to_string(), error: Box::new(self) }
    }

    /// The hint to print after the message and its causes, if this error (or the error it wraps) carries one.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Hinted { hint, .. } => Some(hint),
            Error::At { error, .. } => error.hint(),
            Error::Caused { source, .. } => source.downcast_ref::<Error>().and_then(Error::hint),
            Error::Gguf(e) => e.hint(),
            Error::Tokenizer(e) => e.hint(),
            Error::ChatTemplate(e) => e.hint(),
            Error::Io { .. } | Error::Format { .. } | Error::Invalid(_) => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Gguf(e) => e.fmt(f),
            Error::Tokenizer(e) => e.fmt(f),
            Error::ChatTemplate(e) => e.fmt(f),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Format { path, message } => write!(f, "{}: {message}", path.display()),
            Error::Invalid(message) | Error::Caused { message, .. } => f.write_str(message),
            Error::At { place, error } => write!(f, "{place}: {error}"),
            Error::Hinted { error, .. } => error.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // These display their inner error's message, so its causes come next.
            Error::Gguf(e) => e.source(),
            Error::Tokenizer(e) => e.source(),
            Error::ChatTemplate(e) => e.source(),
            Error::At { error, .. } | Error::Hinted { error, .. } => error.source(),
            Error::Io { source, .. } => Some(source),
            Error::Caused { source, .. } => Some(source.as_ref()),
            Error::Format { .. } | Error::Invalid(_) => None,
        }
    }
}

impl From<gguf::Error> for Error {
    fn from(e: gguf::Error) -> Self {
        Error::Gguf(e)
    }
}

impl From<TokenizerError> for Error {
    fn from(e: TokenizerError) -> Self {
        Error::Tokenizer(e)
    }
}

impl From<ChatTemplateError> for Error {
    fn from(e: ChatTemplateError) -> Self {
        Error::ChatTemplate(e)
    }
}

/// `with_hint` and `at` on a `Result` whose error converts into [`Error`].
pub trait ResultExt<T> {
    fn with_hint(self, hint: impl Into<String>) -> Result<T>;
    fn at(self, place: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn with_hint(self, hint: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().with_hint(hint))
    }

    fn at(self, place: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().at(place))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn not_found() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "gone")
    }

    #[test]
    fn a_hint_keeps_the_message_and_the_causes_of_what_it_wraps() {
        let e = Error::io("data.jsonl", not_found()).with_hint("check the path");
        assert_eq!(e.to_string(), "data.jsonl: gone");
        assert_eq!(e.hint(), Some("check the path"));
        let cause = e.source().expect("the io error is kept");
        assert!(cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound));
    }

    #[test]
    fn a_place_prefixes_the_message_and_keeps_hint_and_causes() {
        let e = Error::hinted("the loss is NaN", "lower the learning rate").at("step 3");
        assert_eq!(e.to_string(), "step 3: the loss is NaN");
        assert_eq!(e.hint(), Some("lower the learning rate"));
        let e = Error::io("a.bin", not_found()).at("checkpoint-2");
        assert_eq!(e.to_string(), "checkpoint-2: a.bin: gone");
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("gone"));
    }

    #[test]
    fn a_foreign_cause_is_its_own_line_and_a_loft_cause_lends_its_hint() {
        let e = Error::caused("cannot download config.json", not_found());
        assert_eq!(e.to_string(), "cannot download config.json");
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("gone"));
        assert_eq!(e.hint(), None);
        let e = Error::caused("cannot load the adapter", Error::hinted("r = 0", "use r = 8"));
        assert_eq!(e.hint(), Some("use r = 8"));
    }

    #[test]
    fn results_take_hints_and_places() {
        let r: std::result::Result<(), gguf::Error> = Err(gguf::Error::Codec("bad block".into()));
        let e = r.at("tensor 'x'").with_hint("quantize to q8_0").unwrap_err();
        assert_eq!((e.to_string().as_str(), e.hint()), ("tensor 'x': bad block", Some("quantize to q8_0")));
    }
}
