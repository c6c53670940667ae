//! What the CLI's integration tests share: the library tests' fixtures and tiny models (crates/loft/tests/common),
//! so a missing fixture fails here as it does there, with the model path as the CLI takes it.
#![allow(dead_code, unused_imports)]

#[path = "../../../loft/tests/common/mod.rs"]
mod library;

pub mod browser;

pub use library::{openai_py, reference_dir, tensorboard_py, tiny_bpe_model, workspace};

/// The default model (`scripts/fetch.sh model`, or LOFT_MODEL); a missing one fails the test, naming it.
pub fn default_model() -> String {
    library::default_model().display().to_string()
}
