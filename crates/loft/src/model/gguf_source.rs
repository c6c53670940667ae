//! Tensors of a GGUF model file, served under their Hugging Face names in Hugging Face layout: dequantized to f32,
//! dims reversed (GGUF stores the innermost dim first), and (Llama) Q/K rows un-permuted from llama.cpp's RoPE order.

use crate::error::{Error, Result};
use crate::model::config::LlamaConfig;
use gguf::GgmlType;

use crate::engine::FrozenMatrix;
use crate::model::weights::{check_shape, unpermute_rope_rows, unpermute_rope_rows_bytes, TensorSource};

pub struct GgufSource<'a> {
    pub file: &'a gguf::GgufFile,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// The converter permuted Q/K rows (Llama; not Qwen).
    pub permuted_qk: bool,
    /// Keep weight matrices in the file's own block types (inference, QLoRA) instead of converting to f32.
    pub keep_quantized: bool,
    /// `general.architecture`: the tensor names are that architecture's (Gemma 3's norms differ from Llama's).
    pub arch: &'static str,
}

impl<'a> GgufSource<'a> {
    pub fn new(file: &'a gguf::GgufFile, cfg: &LlamaConfig, keep_quantized: bool) -> Self {
        GgufSource {
            file,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            permuted_qk: cfg.arch.gguf_permutes_qk(),
            keep_quantized,
            arch: cfg.arch.gguf_name(),
        }
    }

    /// Heads whose rows llama.cpp permuted in this tensor, if any.
    fn rope_heads(&self, hf_name: &str) -> Option<usize> {
        if !self.permuted_qk {
            None
        } else if hf_name.ends_with("self_attn.q_proj.weight") {
            Some(self.n_heads)
        } else if hf_name.ends_with("self_attn.k_proj.weight") {
            Some(self.n_kv_heads)
        } else {
            None
        }
    }
}

impl TensorSource for GgufSource<'_> {
    fn tensor(&self, hf_name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some(name) = gguf::names::hf_to_gguf_for(self.arch, hf_name) else {
            return Err(Error::Invalid(format!("{}: no GGUF name for tensor '{hf_name}'", self.describe())));
        };
        let Some(info) = self.file.tensor_info(&name) else { return Ok(None) };
        let shape: Vec<usize> = info.shape.iter().rev().map(|&d| d as usize).collect();
        let data = self.file.dequantize(&name)?;
        let cols = *shape.last().unwrap_or(&1);
        let data = match self.rope_heads(hf_name) {
            Some(heads) => unpermute_rope_rows(&data, heads, cols),
            None => data,
        };
        Ok(Some((shape, data)))
    }

    fn matrix(&self, hf_name: &str, rows: usize, cols: usize) -> Result<Option<FrozenMatrix>> {
        let name = self.stored_name(hf_name);
        let Some(info) = self.file.tensor_info(&name) else { return Ok(None) };
        let shape: Vec<usize> = info.shape.iter().rev().map(|&d| d as usize).collect();
        check_shape(self, hf_name, &shape, &[rows, cols])?;
        if !self.keep_quantized || info.dtype == GgmlType::F32 {
            let data = self.tensor(hf_name)?.map(|(_, d)| d).unwrap_or_default();
            return Ok(Some(FrozenMatrix::from_f32(rows, cols, data)));
        }
        let bytes = self.file.tensor_bytes(info);
        let row_bytes = bytes.len() / rows.max(1);
        // Whole rows move, so llama.cpp's row permutation is undone on the packed blocks directly.
        let data = match self.rope_heads(hf_name) {
            Some(heads) => unpermute_rope_rows_bytes(bytes, heads, row_bytes),
            None => bytes.to_vec(),
        };
        FrozenMatrix::from_quantized(rows, cols, info.dtype, data).map(Some).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: tensor '{name}' of type {} cannot be used as a [{rows}, {cols}] matrix",
                self.describe(),
                info.dtype
            ))
        })
    }

    fn stored_name(&self, hf_name: &str) -> String {
        gguf::names::hf_to_gguf_for(self.arch, hf_name).unwrap_or_else(|| hf_name.to_string())
    }

    /// llama.cpp's converter writes Gemma's (1 + w) norms as 1 + w.
    fn stores_norm_factor(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.file.path.display().to_string()
    }
}
