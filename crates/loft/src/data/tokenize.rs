//! Formatted example → token ids and transformers-style labels (same length as the ids, -100 where not
//! trained). Segments are encoded one by one with control tokens parsed (so `<|im_end|>` in a rendered chat
//! is one id), BOS is put first when the tokenizer asks for it and the text does not already start with it,
//! and examples are truncated to `max_seq_length`.

use super::template::Example;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The label of a token that is not trained (PyTorch's `ignore_index`).
pub const IGNORE: i32 = -100;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub labels: Vec<i32>,
}

impl Tokenized {
    /// Tokens that are predicted, i.e. trained labels after the first position (the first token has no
    /// token before it to predict it from).
    pub fn n_targets(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l >= 0).count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizeOptions {
    pub max_seq_length: usize,
    /// `false`: every token is trained, prompts and templates included (the segments' marks are ignored).
    pub train_on_responses_only: bool,
    /// Cut an example longer than `max_seq_length` into consecutive pieces of that length instead of dropping its
    /// tail (raw-text CPT with packing: a long document is trained on whole, as TRL's packing does).
    pub split_long: bool,
}

/// What `tokenize_all` did to the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenizeStats {
    pub examples: usize,
    /// Examples cut to `max_seq_length` (with `split_long`: examples split into several pieces).
    pub truncated: usize,
    /// Examples dropped because no trained token was left after truncation.
    pub dropped: usize,
    /// Trained tokens in the examples kept.
    pub target_tokens: usize,
}

/// One example's ids and labels, truncated to `max_seq_length`.
pub fn tokenize(tokenizer: &Tokenizer, example: &Example, options: &TokenizeOptions) -> Tokenized {
    let mut out = Tokenized::default();
    let starts_with_bos = match (tokenizer.bos_token(), example.segments.first()) {
        (Some(bos), Some((text, _))) => text.starts_with(bos),
        _ => false,
    };
    if tokenizer.add_bos() && !starts_with_bos {
        if let Some(bos) = tokenizer.bos_id() {
            out.ids.push(bos);
            out.labels.push(if options.train_on_responses_only { IGNORE } else { bos as i32 });
        }
    }
    for (text, trained) in &example.segments {
        let ids = tokenizer.encode(text, false, true);
        let train = *trained || !options.train_on_responses_only;
        out.labels.extend(ids.iter().map(|&id| if train { id as i32 } else { IGNORE }));
        out.ids.extend(ids);
    }
    out.ids.truncate(options.max_seq_length);
    out.labels.truncate(options.max_seq_length);
    out
}

/// Every example, with counts; examples left with no trained token are dropped. Errors when nothing is left.
pub fn tokenize_all(
    tokenizer: &Tokenizer,
    examples: &[Example],
    options: &TokenizeOptions,
) -> Result<(Vec<Tokenized>, TokenizeStats)> {
    if options.max_seq_length < 2 {
        return Err(Error::Invalid(format!("max_seq_length = {}: it must be at least 2", options.max_seq_length)));
    }
    let mut stats = TokenizeStats { examples: examples.len(), ..Default::default() };
    let mut kept = Vec::with_capacity(examples.len());
    for ex in examples {
        let mut t = tokenize(tokenizer, ex, &TokenizeOptions { max_seq_length: usize::MAX, ..*options });
        let mut pieces = Vec::new();
        if t.ids.len() > options.max_seq_length {
            stats.truncated += 1;
            if options.split_long {
                let m = options.max_seq_length;
                pieces.extend(
                    t.ids
                        .chunks(m)
                        .zip(t.labels.chunks(m))
                        .map(|(ids, labels)| Tokenized { ids: ids.to_vec(), labels: labels.to_vec() }),
                );
            } else {
                t.ids.truncate(options.max_seq_length);
                t.labels.truncate(options.max_seq_length);
                pieces.push(t);
            }
        } else {
            pieces.push(t);
        }
        let before = kept.len();
        for p in pieces {
            if p.n_targets() > 0 {
                stats.target_tokens += p.n_targets();
                kept.push(p);
            }
        }
        if kept.len() == before {
            stats.dropped += 1;
        }
    }
    if examples.is_empty() {
        return Err(Error::hinted("the dataset is empty: no examples to tokenize", "check the data paths"));
    }
    if kept.is_empty() {
        return Err(Error::hinted(
            format!(
                "no example has a trained token within max_seq_length = {} ({} examples, {} truncated, all dropped)",
                options.max_seq_length, stats.examples, stats.truncated
            ),
            "raise max_seq_length, or shorten the prompts",
        ));
    }
    Ok((kept, stats))
}
