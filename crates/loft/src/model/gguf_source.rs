//! Tensors of a GGUF model file, served under their Hugging Face names in Hugging Face layout: dequantized to f32,
//! dims reversed (GGUF stores the innermost dim first), and Q/K rows un-permuted from llama.cpp's RoPE order.

use crate::error::{Error, Result};
use crate::model::config::LlamaConfig;
use crate::model::weights::{unpermute_rope_rows, TensorSource};

pub struct GgufSource<'a> {
    pub file: &'a gguf::GgufFile,
    pub n_heads: usize,
    pub n_kv_heads: usize,
}

impl<'a> GgufSource<'a> {
    pub fn new(file: &'a gguf::GgufFile, cfg: &LlamaConfig) -> Self {
        GgufSource { file, n_heads: cfg.num_attention_heads, n_kv_heads: cfg.num_key_value_heads }
    }
}

impl TensorSource for GgufSource<'_> {
    fn tensor(&self, hf_name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some(name) = gguf::names::hf_to_gguf(hf_name) else {
            return Err(Error::Invalid(format!("{}: no GGUF name for tensor '{hf_name}'", self.describe())));
        };
        let Some(info) = self.file.tensor_info(&name) else { return Ok(None) };
        let shape: Vec<usize> = info.shape.iter().rev().map(|&d| d as usize).collect();
        let data = self.file.dequantize(&name)?;
        let cols = *shape.last().unwrap_or(&1);
        let data = if hf_name.ends_with("self_attn.q_proj.weight") {
            unpermute_rope_rows(&data, self.n_heads, cols)
        } else if hf_name.ends_with("self_attn.k_proj.weight") {
            unpermute_rope_rows(&data, self.n_kv_heads, cols)
        } else {
            data
        };
        Ok(Some((shape, data)))
    }

    fn stored_name(&self, hf_name: &str) -> String {
        gguf::names::hf_to_gguf(hf_name).unwrap_or_else(|| hf_name.to_string())
    }

    fn describe(&self) -> String {
        self.file.path.display().to_string()
    }
}
