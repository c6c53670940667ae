//! The tokenizer as GGUF stores it (`tokenizer.ggml.*`), read from a file and checked once, here at the edge.

use std::path::{Path, PathBuf};

use gguf::names;

/// Token types, numbered as in GGUF (`tokenizer.ggml.token_type`, llama.cpp's `llama_token_type`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The GGUF metadata view of a tokenizer: what `tokenizer.ggml.*` holds, field for key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer's name (`smollm`, `llama-bpe`, `qwen2`, …); BPE only.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// One per token (see [`token_type`]); empty means all normal.
    pub token_types: Vec<i32>,
    /// One per token (SentencePiece merge priorities); empty means all zero.
    pub scores: Vec<f32>,
    /// `"left right"` pairs, by rank; BPE only.
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// What went wrong building a tokenizer: a message of one line naming the file and key, and a hint (`hint()`).
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: {key} is missing", path.display())]
    Missing { path: PathBuf, key: &'static str, hint: &'static str },
    #[error("{}: {key} is {found}, expected {expected}", path.display())]
    WrongType { path: PathBuf, key: &'static str, found: String, expected: &'static str },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String, hint: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: the tokenizers library rejected it", path.display())]
    Hf {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl TokenizerError {
    pub(crate) fn invalid(path: &Path, message: impl Into<String>, hint: impl Into<String>) -> Self {
        TokenizerError::Invalid { path: path.to_path_buf(), message: message.into(), hint: hint.into() }
    }

    /// What to do about it, printed by the CLI on its own `hint:` line.
    pub fn hint(&self) -> Option<&str> {
        match self {
            TokenizerError::Missing { hint, .. } => Some(hint),
            TokenizerError::Invalid { hint, .. } => Some(hint.as_str()).filter(|h| !h.is_empty()),
            TokenizerError::WrongType { .. } => {
                Some("reconvert the model with llama.cpp's convert_hf_to_gguf.py, which writes these keys")
            }
            TokenizerError::Json { .. } | TokenizerError::Hf { .. } => {
                Some("loft reads the tokenizer.json that transformers' save_pretrained writes")
            }
            TokenizerError::Io { .. } => None,
        }
    }
}

impl GgufVocab {
    /// Reads `tokenizer.*` from a GGUF file. Types are checked here; consistency in [`GgufVocab::validate`].
    pub fn from_gguf(file: &gguf::GgufFile) -> Result<Self, TokenizerError> {
        let path = file.path.as_path();
        let wrong = |key: &'static str, v: &gguf::Value, expected: &'static str| TokenizerError::WrongType {
            path: path.to_path_buf(),
            key,
            found: v.summary(),
            expected,
        };
        let string = |key: &'static str| -> Result<Option<String>, TokenizerError> {
            file.get(key).map(|v| v.as_str().map(str::to_owned).ok_or_else(|| wrong(key, v, "a string"))).transpose()
        };
        let id = |key: &'static str| -> Result<Option<u32>, TokenizerError> {
            file.get(key).map(|v| v.as_u32().ok_or_else(|| wrong(key, v, "a token id"))).transpose()
        };
        let flag = |key: &'static str| -> Result<Option<bool>, TokenizerError> {
            file.get(key).map(|v| v.as_bool().ok_or_else(|| wrong(key, v, "a bool"))).transpose()
        };
        let strings = |key: &'static str| -> Result<Option<Vec<String>>, TokenizerError> {
            file.get(key)
                .map(|v| {
                    v.as_str_array()
                        .map(|a| a.into_iter().map(str::to_owned).collect())
                        .ok_or_else(|| wrong(key, v, "an array of strings"))
                })
                .transpose()
        };

        let model = string(names::TOKENIZER_MODEL)?.ok_or(TokenizerError::Missing {
            path: path.to_path_buf(),
            key: names::TOKENIZER_MODEL,
            hint: "this GGUF carries no tokenizer; load the model from a Hugging Face folder instead",
        })?;
        let tokens = strings(names::TOKENIZER_TOKENS)?.ok_or(TokenizerError::Missing {
            path: path.to_path_buf(),
            key: names::TOKENIZER_TOKENS,
            hint: "reconvert the model with llama.cpp's convert_hf_to_gguf.py",
        })?;
        let token_types = match file.get(names::TOKENIZER_TOKEN_TYPE) {
            Some(v) => v.as_i32_array().ok_or_else(|| wrong(names::TOKENIZER_TOKEN_TYPE, v, "an array of i32"))?,
            None => Vec::new(),
        };
        let scores = match file.get(names::TOKENIZER_SCORES) {
            Some(v) => v.as_f32_array().ok_or_else(|| wrong(names::TOKENIZER_SCORES, v, "an array of f32"))?,
            None => Vec::new(),
        };
        let vocab = GgufVocab {
            model,
            pre: string(names::TOKENIZER_PRE)?,
            tokens,
            token_types,
            scores,
            merges: strings(names::TOKENIZER_MERGES)?.unwrap_or_default(),
            bos: id(names::TOKENIZER_BOS_ID)?,
            eos: id(names::TOKENIZER_EOS_ID)?,
            eot: id(names::TOKENIZER_EOT_ID)?,
            pad: id(names::TOKENIZER_PAD_ID)?,
            unk: id(names::TOKENIZER_UNK_ID)?,
            add_bos: flag(names::TOKENIZER_ADD_BOS)?,
            add_eos: flag(names::TOKENIZER_ADD_EOS)?,
            add_space_prefix: flag(names::TOKENIZER_ADD_PREFIX)?,
            chat_template: string(names::TOKENIZER_CHAT_TEMPLATE)?,
        };
        vocab.validate(path)?;
        Ok(vocab)
    }

    /// The checks every source of a vocabulary must pass; `path` labels the errors.
    pub(crate) fn validate(&self, path: &Path) -> Result<(), TokenizerError> {
        let n = self.tokens.len();
        if n == 0 {
            return Err(TokenizerError::invalid(
                path,
                format!("{} is empty", names::TOKENIZER_TOKENS),
                "reconvert the model",
            ));
        }
        if n > u32::MAX as usize {
            return Err(TokenizerError::invalid(path, format!("{n} tokens"), "a vocabulary must fit u32 ids"));
        }
        for (key, len) in
            [(names::TOKENIZER_TOKEN_TYPE, self.token_types.len()), (names::TOKENIZER_SCORES, self.scores.len())]
        {
            if len != 0 && len != n {
                return Err(TokenizerError::invalid(
                    path,
                    format!("{key} has {len} entries but {} has {n}", names::TOKENIZER_TOKENS),
                    "reconvert the model",
                ));
            }
        }
        for (key, id) in [
            (names::TOKENIZER_BOS_ID, self.bos),
            (names::TOKENIZER_EOS_ID, self.eos),
            (names::TOKENIZER_EOT_ID, self.eot),
            (names::TOKENIZER_PAD_ID, self.pad),
            (names::TOKENIZER_UNK_ID, self.unk),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(TokenizerError::invalid(
                    path,
                    format!("{key} = {id} is outside the vocabulary of {n} tokens"),
                    "fix the id with gguf-py's gguf-set-metadata",
                ));
            }
        }
        match self.model.as_str() {
            "gpt2" => {
                if self.merges.is_empty() {
                    return Err(TokenizerError::invalid(
                        path,
                        format!(
                            "{} is gpt2 but {} is missing or empty",
                            names::TOKENIZER_MODEL,
                            names::TOKENIZER_MERGES
                        ),
                        "reconvert the model with llama.cpp's convert_hf_to_gguf.py",
                    ));
                }
            }
            "llama" => {}
            other => {
                return Err(TokenizerError::invalid(
                    path,
                    format!("{} = {other:?} is not supported", names::TOKENIZER_MODEL),
                    "loft reads \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece) tokenizers",
                ))
            }
        }
        Ok(())
    }

    /// The type of token `id` (normal when the file has no types).
    pub fn token_type(&self, id: u32) -> i32 {
        self.token_types.get(id as usize).copied().unwrap_or(token_type::NORMAL)
    }
}
