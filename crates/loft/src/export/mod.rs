//! Writing models for other tools: Hugging Face folders (safetensors), llama.cpp GGUF models and llama.cpp GGUF
//! LoRA adapters.

pub mod gguf_adapter;
pub mod gguf_model;
pub mod hf_folder;
pub mod quant_plan;

pub use gguf_adapter::{write_gguf_adapter, AdapterDtype, GgufAdapterSummary};
pub use gguf_model::write_gguf_model;
pub use hf_folder::{write_hf_folder, WeightDtype, DEFAULT_MAX_SHARD_BYTES};
pub use quant_plan::GgufQuant;
