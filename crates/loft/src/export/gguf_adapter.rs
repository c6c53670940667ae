//! Writing a LoRA adapter as llama.cpp's GGUF adapter (what `llama-cli --lora` and llama-server load), as
//! llama.cpp's convert_lora_to_gguf.py writes one and src/llama-adapter.cpp reads it:
//!
//! - metadata `general.type = "adapter"`, `general.architecture` (the base's: "llama", "qwen2", "qwen3"),
//!   `adapter.type = "lora"`, `adapter.lora.alpha` (f32);
//! - per adapted module `blk.N.attn_q.weight.lora_a` (PEFT's lora_A [r, in], so GGUF ne = [in, r]) and
//!   `….lora_b` (lora_B [out, r], ne = [r, out]); for Llama, Q's and K's B rows permuted into llama.cpp's RoPE
//!   order, as the base's Q/K rows are (A acts on the input side, which the permutation leaves alone).
//!
//! llama.cpp scales B·A by alpha / r, r read from B's shape, and by 1 (no scaling) when alpha is 0 or absent. PEFT
//! scales by alpha / r, or alpha / √r with rsLoRA, so the file's alpha is PEFT's scale × r: the adapter's own
//! alpha, or alpha·√r for rsLoRA.
//! A module trained in full (PEFT's modules_to_save: embed_tokens, lm_head) has no place in this format.

use std::path::Path;

use gguf::names as n;
use gguf::{GgmlType, GgufWriter, Value};

use crate::error::{Error, Result, ResultExt};
use crate::lora::{Adapter, TargetModule};
use crate::model::weights::permute_rope_rows;
use crate::model::Llama;

/// The element type of lora_a / lora_b (convert_lora_to_gguf.py writes f32 unless told otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterDtype {
    F32,
    F16,
}

impl AdapterDtype {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Some(AdapterDtype::F32),
            "f16" | "float16" => Some(AdapterDtype::F16),
            _ => None,
        }
    }

    fn ggml(self) -> GgmlType {
        match self {
            AdapterDtype::F32 => GgmlType::F32,
            AdapterDtype::F16 => GgmlType::F16,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufAdapterSummary {
    /// Adapted modules (pairs of tensors).
    pub pairs: usize,
    pub r: usize,
    /// `adapter.lora.alpha` as written: alpha, or alpha·√r for rsLoRA.
    pub alpha: f32,
    /// The scale llama.cpp applies at `--lora` strength 1 (alpha / r), equal to PEFT's.
    pub scale: f32,
}

/// Writes `adapter` (trained on `model`) as a llama.cpp LoRA GGUF at `out` (complete or absent).
pub fn write_gguf_adapter(
    out: &Path,
    adapter: &Adapter,
    model: &Llama,
    dtype: AdapterDtype,
    name: &str,
) -> Result<GgufAdapterSummary> {
    let c = &adapter.config;
    let cfg = &model.config;
    let full = [("embed_tokens", adapter.embed_tokens.is_some()), ("lm_head", adapter.lm_head.is_some())];
    if let Some((module, _)) = full.iter().find(|(_, trained)| *trained) {
        return Err(Error::hinted(
            format!(
                "the adapter trains {module} in full (modules_to_save); a llama.cpp LoRA GGUF holds only lora_a/lora_b \
                 pairs"
            ),
            "write the merged model instead: loft export gguf --model M --adapter A --out FILE",
        ));
    }
    if c.lora_alpha == 0.0 || !c.lora_alpha.is_finite() {
        return Err(Error::hinted(
            format!("the adapter's lora_alpha is {}; llama.cpp reads alpha 0 as 'no scaling' (scale 1)", c.lora_alpha),
            "an adapter with lora_alpha 0 changes nothing; export the base model alone",
        ));
    }
    if adapter.layers.len() != cfg.num_hidden_layers {
        return Err(Error::Invalid(format!(
            "the adapter has {} layers, the model {}",
            adapter.layers.len(),
            cfg.num_hidden_layers
        )));
    }
    // llama.cpp: scale = alpha / r. PEFT: alpha / r, or alpha / √r (rsLoRA).
    let alpha = if c.use_rslora { c.lora_alpha * (c.r as f32).sqrt() } else { c.lora_alpha };

    let arch = cfg.arch.gguf_name();
    let mut g = GgufWriter::new();
    g.add(n::GENERAL_ARCHITECTURE, Value::String(arch.into()));
    g.add(n::GENERAL_TYPE, Value::String(n::TYPE_ADAPTER.into()));
    g.add(n::GENERAL_NAME, Value::String(name.into()));
    g.add(n::GENERAL_FILE_TYPE, Value::U32(if dtype == AdapterDtype::F16 { 1 } else { 0 }));
    g.add(n::ADAPTER_TYPE, Value::String(n::ADAPTER_TYPE_LORA.into()));
    g.add(n::ADAPTER_LORA_ALPHA, Value::F32(alpha));

    let encode = |t: &str, data: &[f32], row_len: usize| -> Result<Vec<u8>> {
        gguf::quantize(dtype.ggml(), data, row_len).at(format_args!("tensor '{t}'"))
    };
    let mut pairs = 0;
    for (l, mods) in adapter.layers.iter().enumerate() {
        for (i, lora) in mods.iter().enumerate() {
            let Some(lora) = lora else { continue };
            let module = TargetModule::ALL[i];
            let hf = format!("model.layers.{l}.{}.weight", module.path());
            let base = n::hf_to_gguf(&hf).ok_or_else(|| Error::Invalid(format!("'{hf}' has no llama.cpp name")))?;
            let (r, i_len, o_len) = (lora.r, lora.in_features, lora.out_features);
            // B's rows are the module's output rows: Q and K outputs are in llama.cpp's RoPE order in the base.
            let b = match module {
                _ if !cfg.arch.gguf_permutes_qk() => lora.b.clone(),
                TargetModule::QProj => permute_rope_rows(&lora.b, cfg.num_attention_heads, r),
                TargetModule::KProj => permute_rope_rows(&lora.b, cfg.num_key_value_heads, r),
                _ => lora.b.clone(),
            };
            let a_name = format!("{base}{}", n::LORA_A_SUFFIX);
            let b_name = format!("{base}{}", n::LORA_B_SUFFIX);
            let a_bytes = encode(&a_name, &lora.a, i_len)?;
            let b_bytes = encode(&b_name, &b, r)?;
            g.add_tensor(a_name, vec![i_len as u64, r as u64], dtype.ggml(), a_bytes)?;
            g.add_tensor(b_name, vec![r as u64, o_len as u64], dtype.ggml(), b_bytes)?;
            pairs += 1;
        }
    }
    if pairs == 0 {
        return Err(Error::Invalid("the adapter has no LoRA pairs to write".into()));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    g.write(out)?;
    Ok(GgufAdapterSummary { pairs, r: c.r, alpha, scale: alpha / c.r as f32 })
}
