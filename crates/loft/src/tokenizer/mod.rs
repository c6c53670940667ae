//! Text ↔ token ids, as llama.cpp tokenizes a GGUF's vocabulary (`tokenizer.ggml.*`): byte-level BPE
//! (`gpt2`) with the pre-tokenizer named by `tokenizer.ggml.pre`, and SentencePiece (`llama`). A tokenizer can
//! also come from a Hugging Face `tokenizer.json` (run by the `tokenizers` library), and can write one.
//!
//! Special tokens (control, user-defined) written in the text are cut out first, longest first, as llama.cpp
//! does; control tokens only when `parse_special` is set, user-defined ones always.

mod bpe;
mod hf;
mod pretokenizer;
mod spm;
mod vocab;

use gguf::names::TOKENIZER_PRE;
use std::collections::HashMap;
use std::path::Path;

pub use vocab::{token_type, GgufVocab, TokenizerError};

use bpe::Bpe;
use pretokenizer::PreTokenizerSpec;

/// Texts llama.cpp takes for end-of-turn tokens when `tokenizer.ggml.eot_token_id` is absent, in the order
/// loft prefers them.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Texts llama.cpp treats as control tokens whatever the file says (end-of-generation and fill-in-the-middle
/// markers); it overrides their type the same way.
const CONTROL_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<reponame>",
    "<|file_sep|>",
];

enum Engine {
    Bpe(Box<Bpe>),
    Spm {
        byte_token: Box<[Option<u32>; 256]>,
    },
    /// Built from a `tokenizer.json`: the `tokenizers` library encodes. Two copies: one that parses special
    /// tokens in the text, one that reads them as plain text.
    Hf {
        parse_special: Box<tokenizers::Tokenizer>,
        literal: Box<tokenizers::Tokenizer>,
        json: serde_json::Value,
    },
}

/// A tokenizer: encode, decode, and the special tokens a chat loop needs.
pub struct Tokenizer {
    vocab: GgufVocab,
    token_to_id: HashMap<String, u32>,
    /// Effective token types (the file's, with llama.cpp's overrides by text).
    types: Vec<i32>,
    /// The bytes each token decodes to; control tokens as their text.
    pieces: Vec<Vec<u8>>,
    /// Tokens cut out of the text before tokenizing, longest text first.
    special: Vec<u32>,
    engine: Engine,
    eot: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

/// The hint for an unknown pre-tokenizer name.
const KNOWN_PRE_TOKENIZERS: &str = "known: default, llama-bpe, qwen2, qwen35, gpt-2, smollm, starcoder, falcon, \
                                    deepseek-coder, gpt-4o, tekken and their llama.cpp aliases";

enum Fragment {
    Text(usize, usize),
    Token(u32),
}

impl Tokenizer {
    /// Reads `tokenizer.*` from a GGUF file.
    pub fn from_gguf(file: &gguf::GgufFile) -> Result<Self, TokenizerError> {
        Self::from_gguf_with_pre(file, None)
    }

    /// Reads `tokenizer.*` from a GGUF file, splitting text with the pre-tokenizer `pre` instead of the file's
    /// `tokenizer.ggml.pre` when one is given.
    pub fn from_gguf_with_pre(file: &gguf::GgufFile, pre: Option<&str>) -> Result<Self, TokenizerError> {
        let mut vocab = GgufVocab::from_gguf(file)?;
        if let Some(pre) = pre {
            if PreTokenizerSpec::for_name(Some(pre)).is_none() {
                let what =
                    format!("the pre-tokenizer \"{pre}\" given in place of {TOKENIZER_PRE} is not one loft knows");
                return Err(TokenizerError::invalid(&file.path, what, KNOWN_PRE_TOKENIZERS));
            }
            vocab.pre = Some(pre.to_string());
        }
        Self::build(vocab, &file.path, None)
    }

    /// Builds a tokenizer from the GGUF metadata view (checked as a file's would be).
    pub fn from_vocab(v: GgufVocab) -> Result<Self, TokenizerError> {
        let path = Path::new("<vocab>");
        v.validate(path)?;
        Self::build(v, path, None)
    }

    /// Loads a Hugging Face `tokenizer.json` (encoded by the `tokenizers` library) and, when given,
    /// `tokenizer_config.json` (BOS/EOS/pad tokens, `add_bos_token`, `chat_template`).
    pub fn from_hf_files(tokenizer_json: &Path, tokenizer_config_json: Option<&Path>) -> Result<Self, TokenizerError> {
        let (vocab, engine) = hf::load(tokenizer_json, tokenizer_config_json)?;
        Self::build(vocab, tokenizer_json, Some(engine))
    }

    fn build(vocab: GgufVocab, path: &Path, engine: Option<Engine>) -> Result<Self, TokenizerError> {
        let n = vocab.tokens.len();
        let mut token_to_id = HashMap::with_capacity(n);
        for (id, text) in vocab.tokens.iter().enumerate() {
            // llama.cpp refuses duplicates; Hugging Face vocabularies may repeat an added token, first id wins.
            token_to_id.entry(text.clone()).or_insert(id as u32);
        }
        let mut types: Vec<i32> = (0..n as u32).map(|id| vocab.token_type(id)).collect();
        let eot = vocab.eot.or_else(|| EOT_TEXTS.iter().find_map(|t| token_to_id.get(*t).copied()));
        for text in CONTROL_TEXTS.iter().chain(EOT_TEXTS) {
            if let Some(&id) = token_to_id.get(*text) {
                if types[id as usize] != token_type::CONTROL {
                    types[id as usize] = token_type::CONTROL;
                }
            }
        }
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = token_to_id.get(text) {
                types[id as usize] = token_type::USER_DEFINED;
            }
        }
        let mut special: Vec<u32> = (0..n as u32)
            .filter(|&id| {
                matches!(types[id as usize], token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN)
                    && !vocab.tokens[id as usize].is_empty()
            })
            .collect();
        special.sort_by_key(|&id| std::cmp::Reverse(vocab.tokens[id as usize].len()));

        let is_spm = vocab.model == "llama";
        let byte_char = bpe::byte_to_char();
        let byte_decode: HashMap<char, u8> = (0..=255u8).map(|b| (byte_char[b as usize], b)).collect();
        let pieces = (0..n)
            .map(|id| {
                let text = &vocab.tokens[id];
                match types[id] {
                    token_type::NORMAL if is_spm => text.replace(spm::SPACE, " ").into_bytes(),
                    token_type::NORMAL => {
                        let mut bytes = Vec::with_capacity(text.len());
                        for c in text.chars() {
                            match byte_decode.get(&c) {
                                Some(&b) => bytes.push(b),
                                None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                            }
                        }
                        bytes
                    }
                    token_type::BYTE => parse_byte_token(text).map_or_else(|| text.as_bytes().to_vec(), |b| vec![b]),
                    token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN => text.as_bytes().to_vec(),
                    _ => Vec::new(),
                }
            })
            .collect();

        let pre_spec = if is_spm {
            None
        } else {
            Some(PreTokenizerSpec::for_name(vocab.pre.as_deref()).ok_or_else(|| {
                let name = vocab.pre.as_deref().unwrap_or_default();
                let what = format!("{TOKENIZER_PRE} = \"{name}\" is not a pre-tokenizer loft knows");
                TokenizerError::invalid(path, what, KNOWN_PRE_TOKENIZERS)
            })?)
        };
        let engine = match (engine, &pre_spec) {
            (Some(engine), _) => engine,
            (None, Some(spec)) => {
                let pre = spec.compile().map_err(|e| {
                    TokenizerError::invalid(
                        path,
                        format!("pre-tokenizer regex does not compile: {e}"),
                        "a bug in loft; another pre-tokenizer (--tokenizer-pre, model.tokenizer_pre) may avoid it",
                    )
                })?;
                Engine::Bpe(Box::new(Bpe::new(&token_to_id, &vocab.merges, pre, spec.ignore_merges)))
            }
            (None, None) => {
                let byte_token = Box::new(std::array::from_fn(|b| {
                    token_to_id.get(&format!("<0x{b:02X}>")).copied().or_else(|| {
                        (b < 128).then(|| token_to_id.get((b as u8 as char).to_string().as_str()).copied()).flatten()
                    })
                }));
                Engine::Spm { byte_token }
            }
        };
        let add_bos =
            vocab.add_bos.unwrap_or(is_spm || pre_spec.as_ref().is_some_and(|s| s.add_bos)) && vocab.bos.is_some();
        let add_eos = vocab.add_eos.unwrap_or(false) && vocab.eos.is_some();
        let add_space_prefix = is_spm && vocab.add_space_prefix.unwrap_or(true);
        Ok(Tokenizer { vocab, token_to_id, types, pieces, special, engine, eot, add_bos, add_eos, add_space_prefix })
    }

    /// Text to ids. `add_special` adds BOS (and EOS) as the model asks (`add_bos`/`add_eos`);
    /// `parse_special` turns control tokens written in the text (`<|im_start|>`) into their ids.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.vocab.bos);
        }
        match &self.engine {
            Engine::Hf { parse_special: with, literal, .. } => {
                let tok = if parse_special { with } else { literal };
                // The library only fails on a misconfigured pipeline, which loading has ruled out.
                if let Ok(enc) = tok.encode(text, false) {
                    out.extend_from_slice(enc.get_ids());
                }
            }
            Engine::Bpe(bpe) => {
                for fragment in self.partition(text, parse_special) {
                    match fragment {
                        Fragment::Text(a, b) => bpe.encode(&text[a..b], &self.token_to_id, &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Engine::Spm { byte_token } => {
                // A space is prefixed to the text at the start and after every special token.
                let mut prev_special = true;
                for fragment in self.partition(text, parse_special) {
                    match fragment {
                        Fragment::Text(a, b) => {
                            let prefix = if self.add_space_prefix && prev_special { " " } else { "" };
                            let escaped = format!("{prefix}{}", &text[a..b]).replace(' ', spm::SPACE);
                            spm::encode(
                                &escaped,
                                &self.token_to_id,
                                &self.vocab.scores,
                                byte_token,
                                self.vocab.unk,
                                &mut out,
                            );
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.vocab.eos);
        }
        out
    }

    /// Cuts special tokens out of `text`, each token over all fragments, longest token first (llama.cpp's
    /// `tokenizer_st_partition`).
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0, text.len()));
        for &id in &self.special {
            let ty = self.types[id as usize];
            if !parse_special && ty != token_type::USER_DEFINED {
                continue;
            }
            let needle = self.vocab.tokens[id as usize].as_str();
            let found = fragments.iter().any(|f| matches!(*f, Fragment::Text(a, b) if text[a..b].contains(needle)));
            if !found {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(a, b) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut start = a;
                for (pos, _) in text[a..b].match_indices(needle) {
                    let pos = a + pos;
                    if pos > start {
                        next.push(Fragment::Text(start, pos));
                    }
                    next.push(Fragment::Token(id));
                    start = pos + needle.len();
                }
                if start < b {
                    next.push(Fragment::Text(start, b));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// Ids to text. `skip_special` leaves out control (and unknown) tokens. Bytes that are not valid UTF-8
    /// become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        let mut first = true;
        for &id in ids {
            let Some(piece) = self.pieces.get(id as usize) else { continue };
            let ty = self.types[id as usize];
            if skip_special && matches!(ty, token_type::CONTROL | token_type::UNKNOWN) {
                continue;
            }
            // SentencePiece: the space added in front of the text is not part of it.
            if first && self.add_space_prefix && ty == token_type::NORMAL && piece.first() == Some(&b' ') {
                bytes.extend_from_slice(&piece[1..]);
            } else {
                bytes.extend_from_slice(piece);
            }
            first = false;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The raw bytes of one token (a piece of a UTF-8 character, possibly); special tokens as their text.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.pieces.get(id as usize).cloned().unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.tokens.len()
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.token_to_id.get(s).copied()
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize).map(String::as_str)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.vocab.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.vocab.eos
    }

    /// End of turn (`<|im_end|>`, `<|eot_id|>`): `tokenizer.ggml.eot_token_id`, else found by text as
    /// llama.cpp finds it.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.vocab.pad
    }

    /// Whether `encode(…, add_special = true, …)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// A control token (BOS, EOS, `<|im_start|>`…), which a chat loop does not print.
    pub fn is_control(&self, id: u32) -> bool {
        self.types.get(id as usize) == Some(&token_type::CONTROL)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.vocab.chat_template.as_deref()
    }

    /// Gives the tokenizer a chat template (one its file lacks); exports write it.
    pub fn set_chat_template(&mut self, source: String) {
        self.vocab.chat_template = Some(source);
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.vocab.bos.and_then(|id| self.id_to_token(id))
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.vocab.eos.and_then(|id| self.id_to_token(id))
    }

    /// The GGUF metadata view (`tokenizer.ggml.*`), for writing a GGUF; for tokenizers read from a
    /// `tokenizer.json` it is derived from that file.
    pub fn to_vocab(&self) -> Option<&GgufVocab> {
        Some(&self.vocab)
    }

    /// This tokenizer as a Hugging Face `tokenizer.json`: the file it was read from, or one written from
    /// the GGUF vocabulary.
    pub fn hf_tokenizer_json(&self) -> serde_json::Value {
        match &self.engine {
            Engine::Hf { json, .. } => json.clone(),
            _ => hf::tokenizer_json(&self.vocab, self.add_bos, self.add_eos, self.add_space_prefix),
        }
    }
}

/// `<0xAB>` → 0xAB.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Turns ids, fed one at a time, into text as soon as it is complete UTF-8 (a token may end inside a
/// character; its bytes wait for the next token).
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        StreamDecoder { tokenizer, pending: Vec::new() }
    }

    /// The text completed by `id` (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(self.tokenizer.pieces.get(id as usize).map_or(&[][..], |p| p.as_slice()));
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    text.push_str(s);
                    self.pending.clear();
                    return text;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An unfinished character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return text;
                        }
                        Some(bad) => {
                            text.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is still held back (an unfinished character), as U+FFFD.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}
