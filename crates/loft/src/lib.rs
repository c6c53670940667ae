//! loft: fine-tune Llama-family models with LoRA and QLoRA.
//!
//! Data flows through the modules in this order: `model` (load weights and config), `tokenizer` and
//! `chat_template` (text to ids), `engine` (forward, backward), `infer` (generation).

pub mod chat_template;
pub mod tokenizer;
