//! Writing a model as a llama.cpp GGUF: llama.cpp's architecture name, tensor names and metadata keys (from
//! `gguf::names`; `qwen2.*` for Qwen2, with its q/k/v biases as `blk.N.attn_q.bias`, `qwen3.*` with
//! `blk.N.attn_q_norm`, `gemma3.*` with its sandwich norms and sliding window), Q/K rows permuted into llama.cpp's RoPE order (Llama only), the tokenizer (tokens, types, merges or scores, pre-tokenizer name,
//! special ids, add_bos) and the chat template inside, weights in the block types `quant_plan` chooses (one type,
//! or llama.cpp's Q4_K_M mix). A tensor whose rows a block type cannot hold falls back as llama.cpp's quantizer
//! falls back, and each fallback is reported.

use std::path::Path;

use gguf::names as n;
use gguf::{GgmlType, GgufWriter, Value, ValueType};

pub use super::quant_plan::GgufQuant;

use crate::error::{Error, Result, ResultExt};
use crate::model::config::RopeScaling;
use crate::model::weights::permute_rope_rows;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

/// Writes `model` + `tokenizer` to `out` (complete or absent). Returns one line per tensor that fell back to
/// another type than the one `quant` asks for.
pub fn write_gguf_model(
    out: &Path,
    model: &Llama,
    tokenizer: &Tokenizer,
    quant: GgufQuant,
    name: &str,
) -> Result<Vec<String>> {
    let cfg = &model.config;
    let vocab = tokenizer
        .to_vocab()
        .ok_or_else(|| Error::Invalid("this tokenizer has no GGUF form (tokens, types, merges)".to_string()))?;
    let arch = cfg.arch.gguf_name();
    let mut g = GgufWriter::new();
    let u32v = |v: usize| Value::U32(v as u32);
    g.add(n::GENERAL_ARCHITECTURE, Value::String(arch.into()));
    g.add(n::GENERAL_NAME, Value::String(name.into()));
    g.add(n::GENERAL_FILE_TYPE, Value::U32(quant.file_type()));
    if !matches!(quant, GgufQuant::F32 | GgufQuant::F16) {
        g.add(n::GENERAL_QUANTIZATION_VERSION, Value::U32(2));
    }
    g.add(n::context_length(arch), u32v(cfg.max_position_embeddings));
    g.add(n::embedding_length(arch), u32v(cfg.hidden_size));
    g.add(n::block_count(arch), u32v(cfg.num_hidden_layers));
    g.add(n::feed_forward_length(arch), u32v(cfg.intermediate_size));
    g.add(n::rope_dimension_count(arch), u32v(cfg.head_dim));
    g.add(n::attention_head_count(arch), u32v(cfg.num_attention_heads));
    g.add(n::attention_head_count_kv(arch), u32v(cfg.num_key_value_heads));
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size {
        g.add(n::attention_key_length(arch), u32v(cfg.head_dim));
        g.add(n::attention_value_length(arch), u32v(cfg.head_dim));
    }
    g.add(n::attention_layer_norm_rms_epsilon(arch), Value::F32(cfg.rms_norm_eps));
    if let Some(window) = cfg.sliding_window {
        g.add(n::attention_sliding_window(arch), u32v(window));
    }
    g.add(n::rope_freq_base(arch), Value::F32(cfg.rope_theta));
    g.add(n::vocab_size(arch), u32v(cfg.vocab_size));
    if let Some(local) = &cfg.local_layers {
        g.add(n::attention_sliding_window(arch), u32v(local.sliding_window));
        // llama.cpp takes Gemma 3's pattern (every 6th layer global) and local RoPE base (10000) from the
        // architecture; a model with others cannot be written for it.
        let standard = crate::model::config::LocalLayers::pattern(cfg.num_hidden_layers, 6, 1, 1.0).is_local;
        if local.is_local != standard || local.rope_theta != 10_000.0 {
            return Err(Error::hinted(
                format!(
                    "this model's local layers (layer_types, rope_local_base_freq = {}) are not Gemma 3's standard \
                     ones, which llama.cpp assumes",
                    local.rope_theta
                ),
                "write it as a Hugging Face folder instead (loft merge)",
            ));
        }
    }
    if let Some(RopeScaling::Linear { factor }) = &cfg.rope_scaling {
        g.add(n::rope_scaling_type(arch), Value::String("linear".into()));
        g.add(n::rope_scaling_factor(arch), Value::F32(*factor));
    }

    // Tokenizer, as llama.cpp reads it.
    let strings = |v: &[String]| Value::Array(ValueType::String, v.iter().map(|s| Value::String(s.clone())).collect());
    g.add(n::TOKENIZER_MODEL, Value::String(vocab.model.clone()));
    if let Some(pre) = &vocab.pre {
        g.add(n::TOKENIZER_PRE, Value::String(pre.clone()));
    }
    g.add(n::TOKENIZER_TOKENS, strings(&vocab.tokens));
    g.add(
        n::TOKENIZER_TOKEN_TYPE,
        Value::Array(ValueType::I32, vocab.token_types.iter().map(|&t| Value::I32(t)).collect()),
    );
    if !vocab.scores.is_empty() {
        g.add(n::TOKENIZER_SCORES, Value::Array(ValueType::F32, vocab.scores.iter().map(|&s| Value::F32(s)).collect()));
    }
    if !vocab.merges.is_empty() {
        g.add(n::TOKENIZER_MERGES, strings(&vocab.merges));
    }
    for (key, id) in [
        (n::TOKENIZER_BOS_ID, vocab.bos),
        (n::TOKENIZER_EOS_ID, vocab.eos),
        (n::TOKENIZER_UNK_ID, vocab.unk),
        (n::TOKENIZER_PAD_ID, vocab.pad),
        (n::TOKENIZER_EOT_ID, vocab.eot),
    ] {
        if let Some(id) = id {
            g.add(key, Value::U32(id));
        }
    }
    for (key, flag) in [
        (n::TOKENIZER_ADD_BOS, vocab.add_bos),
        (n::TOKENIZER_ADD_EOS, vocab.add_eos),
        (n::TOKENIZER_ADD_PREFIX, vocab.add_space_prefix),
    ] {
        if let Some(f) = flag {
            g.add(key, Value::Bool(f));
        }
    }
    if let Some(t) = tokenizer.chat_template() {
        g.add(n::TOKENIZER_CHAT_TEMPLATE, Value::String(t.to_string()));
    }

    // Tensors, in the order llama.cpp's converter writes them.
    let mut fallbacks = Vec::new();
    let tied = model.weights.lm_head.is_none();
    let mut add_matrix = |g: &mut GgufWriter, gname: String, rows: usize, cols: usize, data: &[f32]| -> Result<()> {
        let (dtype, fallback) = quant.matrix_type(&gname, cols, cfg.num_hidden_layers, tied);
        fallbacks.extend(fallback);
        let bytes = gguf::quantize(dtype, data, cols).at(format_args!("tensor '{gname}'"))?;
        g.add_tensor(gname, vec![cols as u64, rows as u64], dtype, bytes)?;
        Ok(())
    };
    let add_vector = |g: &mut GgufWriter, gname: String, data: &[f32]| -> Result<()> {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        g.add_tensor(gname, vec![data.len() as u64], GgmlType::F32, bytes)?;
        Ok(())
    };
    if let Some(factors) = rope_factors(model) {
        add_vector(&mut g, format!("{}.weight", n::ROPE_FREQS), &factors)?;
    }
    for t in model.weights.named_tensors() {
        // Gemma's (1 + w) norms are written as the factor, as llama.cpp's converter writes them (`t.norm_factor`).
        let gname = gguf::names::hf_to_gguf_for(arch, &t.name)
            .ok_or_else(|| Error::Invalid(format!("tensor '{}' has no llama.cpp name", t.name)))?;
        if t.shape.len() == 1 {
            add_vector(&mut g, gname, &t.data)?;
            continue;
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let data = if !cfg.arch.gguf_permutes_qk() {
            t.data
        } else if t.name.ends_with("self_attn.q_proj.weight") {
            permute_rope_rows(&t.data, cfg.num_attention_heads, cols).into()
        } else if t.name.ends_with("self_attn.k_proj.weight") {
            permute_rope_rows(&t.data, cfg.num_key_value_heads, cols).into()
        } else {
            t.data
        };
        add_matrix(&mut g, gname, rows, cols, &data)?;
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    g.write(out)?;
    Ok(fallbacks)
}

/// llama.cpp keeps Llama 3's RoPE scaling as per-frequency divisors (`rope_freqs.weight`): base inv_freq ÷ scaled.
fn rope_factors(model: &Llama) -> Option<Vec<f32>> {
    match &model.config.rope_scaling {
        Some(RopeScaling::FreqFactors(f)) => Some(f.clone()),
        Some(RopeScaling::Llama3 { .. }) => {
            let c = &model.config;
            let base = crate::engine::rope::Rope::new(c.head_dim, c.rope_theta, None);
            Some(base.inv_freq().iter().zip(model.rope.inv_freq()).map(|(b, s)| b / s).collect())
        }
        _ => None,
    }
}
