//! loft: fine-tune Llama-family models with LoRA and QLoRA.
//!
//! Data flows through the modules in this order: `model` (load weights, config, tokenizer), `tokenizer` and
//! `chat_template` (text to ids), `engine` (kernels: forward and backward), `infer` (generation, evaluation).

pub mod chat_template;
pub mod data;
pub mod engine;
pub mod error;
pub mod export;
pub mod infer;
pub mod lora;
pub mod memory;
pub mod model;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result, ResultExt};
