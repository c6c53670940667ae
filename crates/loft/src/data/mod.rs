//! Training data, one stage per module: `source` (files → records), `template` (record → text with trained
//! spans), `tokenize` (text → ids and labels, truncated), `batch` (split, shuffle, pad or pack into `Batch`).

pub mod batch;
pub mod source;
pub mod template;
pub mod tokenize;

pub use batch::{shuffled_order, split_train_validation, Batch, Batcher, Packing};
pub use source::{read_records, Record, SourceFormat, SourceOptions};
pub use template::{Example, Format, Formatter, SpecialTokens};
pub use tokenize::{tokenize, tokenize_all, TokenizeOptions, TokenizeStats, Tokenized, IGNORE};

use std::path::PathBuf;

use crate::tokenizer::Tokenizer;
use crate::Result;

/// Files → tokenized examples in one call: read the records, check the format against the first one, format
/// and tokenize each. Split and batch the result with `split_train_validation` and `Batcher`.
pub fn prepare(
    paths: &[PathBuf],
    source: &SourceOptions,
    format: Format,
    add_eos: bool,
    tokenizer: &Tokenizer,
    options: &TokenizeOptions,
) -> Result<(Vec<Tokenized>, TokenizeStats)> {
    let records = read_records(paths, source)?;
    let formatter = Formatter::new(format, &SpecialTokens::from_tokenizer(tokenizer), add_eos)?;
    if let Some(first) = records.first() {
        formatter.check(first)?;
    }
    let examples = records.iter().map(|r| formatter.format(r)).collect::<Result<Vec<_>>>()?;
    tokenize_all(tokenizer, &examples, options)
}

/// The id padded positions hold: the tokenizer's pad id, else EOS, else 0 (padding carries no target, so the
/// choice only has to be a valid id).
pub fn pad_id(tokenizer: &Tokenizer) -> u32 {
    tokenizer.pad_id().or(tokenizer.eos_id()).unwrap_or(0)
}
