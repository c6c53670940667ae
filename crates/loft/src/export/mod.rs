//! Writing models for other tools: Hugging Face folders (safetensors).

pub mod hf_folder;

pub use hf_folder::{write_hf_folder, WeightDtype, DEFAULT_MAX_SHARD_BYTES};
