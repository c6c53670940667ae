//! loft: fine-tune Llama-family models with LoRA and QLoRA.
//!
//! The modules follow the data flow, each using only those above it (no cycles):
//!
//! ```text
//! rng            one seeded generator (SplitMix64): data order, LoRA init, dropout, sampling
//! engine         kernels, forward and backward side by side: matmul, frozen (quantized) linear, LoRA,
//!                RMSNorm, RoPE, SwiGLU, attention, embedding, cross-entropy
//! tokenizer      text ↔ ids (GGUF and Hugging Face vocabularies)
//! chat_template  messages → prompt text (Jinja)
//! model          config, weights (GGUF, safetensors, bitsandbytes), the layer names LoRA targets, the
//!                inference forward with its KV cache
//! data           files → records → formatted text → ids and labels → batches
//! lora           adapters as PEFT defines them: init, read/write, merge, stacking at load
//! train          the recipe: config, the training forward/backward, optimizer, schedule, checkpoints, logs
//! export         merged Hugging Face folders, GGUF models and GGUF adapters
//! infer          generation and sampling
//! serve          `loft serve` without HTTP: OpenAI's JSON shapes, the names served, the worker pool
//! memory         process memory figures (peak RSS, free memory)
//! error          the crate's error type
//! ```

pub mod chat_template;
pub mod data;
pub mod engine;
pub mod error;
pub mod export;
pub mod infer;
pub mod lora;
pub mod memory;
pub mod model;
pub mod rng;
pub mod serve;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result, ResultExt};
