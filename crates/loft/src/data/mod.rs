//! Training data, one stage per module: `source` (files → records), `template` (record → text with trained
//! spans), `tokenize` (text → ids and labels, truncated), `batch` (split, shuffle, pad or pack into `Batch`).

pub mod batch;
pub mod source;
pub mod template;
pub mod tokenize;

pub use batch::{shuffled_order, split_train_validation, Batcher, Packing};
pub use source::{read_records, Record, SourceFormat, SourceOptions};
pub use template::{Example, Format, Formatter, SpecialTokens};
pub use tokenize::{tokenize, tokenize_all, TokenizeOptions, TokenizeStats, Tokenized, IGNORE};
