//! Writing models for other tools: Hugging Face folders (safetensors) and llama.cpp GGUF files.

pub mod gguf_model;
pub mod hf_folder;

pub use gguf_model::{write_gguf_model, GgufQuant};
pub use hf_folder::{write_hf_folder, WeightDtype, DEFAULT_MAX_SHARD_BYTES};
