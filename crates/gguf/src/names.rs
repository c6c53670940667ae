//! Every GGUF key and tensor name loft reads or writes, spelled exactly as llama.cpp's
//! `gguf-py/gguf/constants.py` (`Keys`, `TENSOR_NAMES`) and `tensor_mapping.py` spell them — including the
//! misspelled `tokenizer.ggml.seperator_token_id`. A test checks this table against the installed gguf-py.
//!
//! Keys under an architecture are templates with `{arch}` (as in constants.py); each has a function that fills
//! it in: `block_count("llama") == "llama.block_count"`.
//! llama.cpp has no metadata keys for Llama 3's RoPE scaling: the converter bakes it into the `rope_freqs`
//! tensor (`{arch}.rope.scaling.type` stays absent or "none").

// ---- general.* ----
pub const GENERAL_ARCHITECTURE: &str = "general.architecture";
pub const GENERAL_NAME: &str = "general.name";
pub const GENERAL_ALIGNMENT: &str = "general.alignment";
/// "model" or "adapter".
pub const GENERAL_TYPE: &str = "general.type";
/// A `llama_ftype` number (LLAMA_FTYPE_MOSTLY_Q4_1 = 3, …).
pub const GENERAL_FILE_TYPE: &str = "general.file_type";
pub const GENERAL_QUANTIZATION_VERSION: &str = "general.quantization_version";

/// `general.architecture` of Llama-family models (Llama 2/3, SmolLM, TinyLlama, Mistral 7B).
pub const ARCH_LLAMA: &str = "llama";
/// `general.architecture` of Qwen2 and Qwen2.5 (biases on q/k/v; Q/K rows not permuted by the converter).
pub const ARCH_QWEN2: &str = "qwen2";
/// `general.architecture` of Qwen3 dense models (per-head RMSNorm on q and k; Q/K rows not permuted).
pub const ARCH_QWEN3: &str = "qwen3";
/// `general.architecture` of Gemma 3 text models (sandwich norms stored as 1 + w, GeGLU, local and global layers;
/// Q/K rows not permuted).
pub const ARCH_GEMMA3: &str = "gemma3";
/// `general.type` of a model file.
pub const TYPE_MODEL: &str = "model";
/// `general.type` of an adapter file.
pub const TYPE_ADAPTER: &str = "adapter";

// ---- {arch}.* ----
macro_rules! arch_keys {
    ($($(#[$meta:meta])* $fun:ident, $constant:ident = $suffix:literal;)*) => {$(
        $(#[$meta])*
        pub const $constant: &str = concat!("{arch}.", $suffix);
        #[doc = concat!("`{arch}.", $suffix, "` for the given architecture.")]
        pub fn $fun(arch: &str) -> String {
            format!("{arch}.{}", $suffix)
        }
    )*};
}

arch_keys! {
    vocab_size, VOCAB_SIZE = "vocab_size";
    context_length, CONTEXT_LENGTH = "context_length";
    embedding_length, EMBEDDING_LENGTH = "embedding_length";
    block_count, BLOCK_COUNT = "block_count";
    feed_forward_length, FEED_FORWARD_LENGTH = "feed_forward_length";
    attention_head_count, ATTENTION_HEAD_COUNT = "attention.head_count";
    attention_head_count_kv, ATTENTION_HEAD_COUNT_KV = "attention.head_count_kv";
    attention_key_length, ATTENTION_KEY_LENGTH = "attention.key_length";
    attention_value_length, ATTENTION_VALUE_LENGTH = "attention.value_length";
    attention_layer_norm_rms_epsilon, ATTENTION_LAYERNORM_RMS_EPS = "attention.layer_norm_rms_epsilon";
    /// Keys a query sees: itself and the W − 1 before it (llama.cpp's `n_swa`; 0 or absent: every earlier key).
    /// Gemma 3: the local layers' window (llama.cpp takes their RoPE base, 10000, and the pattern, every 6th layer
    /// global, from the architecture, unless `sliding_window_pattern` is written).
    attention_sliding_window, ATTENTION_SLIDING_WINDOW = "attention.sliding_window";
    /// Which layers the window applies to (an array of bools, or a period); absent: the architecture's default.
    attention_sliding_window_pattern, ATTENTION_SLIDING_WINDOW_PATTERN = "attention.sliding_window_pattern";
    rope_dimension_count, ROPE_DIMENSION_COUNT = "rope.dimension_count";
    rope_freq_base, ROPE_FREQ_BASE = "rope.freq_base";
    /// "none", "linear", "yarn", "longrope".
    rope_scaling_type, ROPE_SCALING_TYPE = "rope.scaling.type";
    rope_scaling_factor, ROPE_SCALING_FACTOR = "rope.scaling.factor";
    rope_scaling_original_context_length, ROPE_SCALING_ORIG_CTX_LEN = "rope.scaling.original_context_length";
}

/// Fills `{arch}` in a template such as [`BLOCK_COUNT`].
pub fn arch_key(template: &str, arch: &str) -> String {
    template.replace("{arch}", arch)
}

// ---- tokenizer.* ----
/// "gpt2" (byte-level BPE) or "llama" (SentencePiece).
pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
pub const TOKENIZER_TOKENS: &str = "tokenizer.ggml.tokens";
pub const TOKENIZER_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub const TOKENIZER_SCORES: &str = "tokenizer.ggml.scores";
pub const TOKENIZER_MERGES: &str = "tokenizer.ggml.merges";
pub const TOKENIZER_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
pub const TOKENIZER_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
pub const TOKENIZER_UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
/// Misspelled as llama.cpp spells it.
pub const TOKENIZER_SEP_ID: &str = "tokenizer.ggml.seperator_token_id";
pub const TOKENIZER_PAD_ID: &str = "tokenizer.ggml.padding_token_id";
pub const TOKENIZER_EOT_ID: &str = "tokenizer.ggml.eot_token_id";
pub const TOKENIZER_EOM_ID: &str = "tokenizer.ggml.eom_token_id";
pub const TOKENIZER_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const TOKENIZER_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
pub const TOKENIZER_ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
pub const TOKENIZER_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

// ---- adapter.* ----
/// "lora".
pub const ADAPTER_TYPE: &str = "adapter.type";
pub const ADAPTER_TYPE_LORA: &str = "lora";
/// f32; llama.cpp scales B·A by alpha / r, and by 1 (no scaling) when the key is missing or 0.
pub const ADAPTER_LORA_ALPHA: &str = "adapter.lora.alpha";
/// Suffixes of a LoRA adapter's tensors after the base weight's name: `blk.0.attn_q.weight.lora_a`.
pub const LORA_A_SUFFIX: &str = ".lora_a";
pub const LORA_B_SUFFIX: &str = ".lora_b";

// ---- tensors ----
pub const TOKEN_EMBD: &str = "token_embd";
pub const OUTPUT_NORM: &str = "output_norm";
pub const OUTPUT: &str = "output";
pub const ROPE_FREQS: &str = "rope_freqs";
pub const ATTN_NORM: &str = "blk.{bid}.attn_norm";
pub const ATTN_Q: &str = "blk.{bid}.attn_q";
pub const ATTN_K: &str = "blk.{bid}.attn_k";
pub const ATTN_V: &str = "blk.{bid}.attn_v";
pub const ATTN_OUT: &str = "blk.{bid}.attn_output";
pub const ATTN_Q_NORM: &str = "blk.{bid}.attn_q_norm";
pub const ATTN_K_NORM: &str = "blk.{bid}.attn_k_norm";
pub const FFN_NORM: &str = "blk.{bid}.ffn_norm";
pub const FFN_GATE: &str = "blk.{bid}.ffn_gate";
pub const FFN_UP: &str = "blk.{bid}.ffn_up";
pub const FFN_DOWN: &str = "blk.{bid}.ffn_down";
/// Gemma's norms of the attention's and the MLP's outputs (before each residual add).
pub const ATTN_POST_NORM: &str = "blk.{bid}.post_attention_norm";
pub const FFN_POST_NORM: &str = "blk.{bid}.post_ffw_norm";

/// Fills `{bid}` in a block tensor template: `blk(ATTN_Q, 3) == "blk.3.attn_q"`.
pub fn blk(template: &str, bid: usize) -> String {
    template.replace("{bid}", &bid.to_string())
}

/// `blk(template, bid) + ".weight"`.
pub fn blk_weight(template: &str, bid: usize) -> String {
    format!("{}.weight", blk(template, bid))
}

/// GGUF tensor name ⇄ Hugging Face name, without the `.weight` / `.bias` suffix, as in tensor_mapping.py (the
/// Llama names, and Qwen3's q/k norms). `rope_freqs` has no Hugging Face tensor (transformers computes it from
/// `rope_scaling`).
pub const TENSOR_NAMES_HF: [(&str, &str); 14] = [
    (TOKEN_EMBD, "model.embed_tokens"),
    (OUTPUT_NORM, "model.norm"),
    (OUTPUT, "lm_head"),
    (ATTN_NORM, "model.layers.{bid}.input_layernorm"),
    (ATTN_Q, "model.layers.{bid}.self_attn.q_proj"),
    (ATTN_K, "model.layers.{bid}.self_attn.k_proj"),
    (ATTN_V, "model.layers.{bid}.self_attn.v_proj"),
    (ATTN_OUT, "model.layers.{bid}.self_attn.o_proj"),
    (ATTN_Q_NORM, "model.layers.{bid}.self_attn.q_norm"),
    (ATTN_K_NORM, "model.layers.{bid}.self_attn.k_norm"),
    (FFN_NORM, "model.layers.{bid}.post_attention_layernorm"),
    (FFN_GATE, "model.layers.{bid}.mlp.gate_proj"),
    (FFN_UP, "model.layers.{bid}.mlp.up_proj"),
    (FFN_DOWN, "model.layers.{bid}.mlp.down_proj"),
];

/// Gemma 3's names where they differ from [`TENSOR_NAMES_HF`]: its `post_attention_layernorm` follows the attention
/// (Llama's is the MLP's input norm, which Gemma calls `pre_feedforward_layernorm`), plus the MLP's output norm.
pub const TENSOR_NAMES_HF_GEMMA3: [(&str, &str); 3] = [
    (ATTN_POST_NORM, "model.layers.{bid}.post_attention_layernorm"),
    (FFN_NORM, "model.layers.{bid}.pre_feedforward_layernorm"),
    (FFN_POST_NORM, "model.layers.{bid}.post_feedforward_layernorm"),
];

/// `"model.layers.3.self_attn.q_proj.weight"` → `"blk.3.attn_q.weight"` (and `.bias` → `.bias`); `None` for any
/// other name. Llama's names; [`hf_to_gguf_for`] knows each architecture's.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    hf_to_gguf_for(ARCH_LLAMA, name)
}

/// `"blk.3.attn_q.weight"` → `"model.layers.3.self_attn.q_proj.weight"` (and `.bias` → `.bias`); `None` for any
/// other name. Llama's names; [`gguf_to_hf_for`] knows each architecture's.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    gguf_to_hf_for(ARCH_LLAMA, name)
}

/// [`hf_to_gguf`] for the architecture `arch` (`general.architecture`).
pub fn hf_to_gguf_for(arch: &str, name: &str) -> Option<String> {
    translate(arch, name, |(gguf, hf)| (hf, gguf))
}

/// [`gguf_to_hf`] for the architecture `arch` (`general.architecture`).
pub fn gguf_to_hf_for(arch: &str, name: &str) -> Option<String> {
    translate(arch, name, |(gguf, hf)| (gguf, hf))
}

fn translate(
    arch: &str,
    name: &str,
    direction: impl Fn((&'static str, &'static str)) -> (&'static str, &'static str),
) -> Option<String> {
    let (stem, suffix) = match name.strip_suffix(".weight") {
        Some(stem) => (stem, ".weight"),
        None => (name.strip_suffix(".bias")?, ".bias"),
    };
    let own: &[(&str, &str)] = if arch == ARCH_GEMMA3 { &TENSOR_NAMES_HF_GEMMA3 } else { &[] };
    own.iter().chain(TENSOR_NAMES_HF.iter()).find_map(|&pair| {
        let (from, to) = direction(pair);
        let bid = match_template(from, stem)?;
        Some(format!("{}{suffix}", to.replace("{bid}", bid)))
    })
}

/// If `name` is `template` with `{bid}` replaced by a decimal block number (or equals a template without
/// `{bid}`), returns the number's text ("" for none).
fn match_template<'a>(template: &str, name: &'a str) -> Option<&'a str> {
    match template.split_once("{bid}") {
        None => (template == name).then_some(""),
        Some((prefix, suffix)) => {
            let bid = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            let canonical =
                !bid.is_empty() && bid.bytes().all(|b| b.is_ascii_digit()) && (bid == "0" || !bid.starts_with('0'));
            canonical.then_some(bid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_round_trip() {
        for bid in [0, 7, 29] {
            for (gguf, hf) in TENSOR_NAMES_HF {
                let g = format!("{}.weight", blk(gguf, bid));
                let h = format!("{}.weight", hf.replace("{bid}", &bid.to_string()));
                assert_eq!(gguf_to_hf(&g).as_deref(), Some(h.as_str()));
                assert_eq!(hf_to_gguf(&h).as_deref(), Some(g.as_str()));
            }
        }
        assert_eq!(hf_to_gguf("model.layers.3.self_attn.q_proj.weight").as_deref(), Some("blk.3.attn_q.weight"));
        assert_eq!(gguf_to_hf("output.weight").as_deref(), Some("lm_head.weight"));
        for bad in [
            "blk.x.attn_q.weight",
            "blk.01.attn_q.weight",
            "blk..attn_q.weight",
            "blk.3.attn_q",
            "rope_freqs.weight",
            "blk.3.attn_q.scale",
        ] {
            assert_eq!(gguf_to_hf(bad), None, "{bad}");
        }
        assert_eq!(hf_to_gguf("model.layers.3.self_attn.q_proj.bias").as_deref(), Some("blk.3.attn_q.bias"));
        assert_eq!(gguf_to_hf("blk.3.attn_k_norm.weight").as_deref(), Some("model.layers.3.self_attn.k_norm.weight"));
        assert_eq!(block_count(ARCH_LLAMA), "llama.block_count");
        let g = |hf: &str| hf_to_gguf_for(ARCH_GEMMA3, hf);
        assert_eq!(
            g("model.layers.2.post_attention_layernorm.weight").as_deref(),
            Some("blk.2.post_attention_norm.weight")
        );
        assert_eq!(g("model.layers.2.pre_feedforward_layernorm.weight").as_deref(), Some("blk.2.ffn_norm.weight"));
        assert_eq!(
            gguf_to_hf_for(ARCH_GEMMA3, "blk.2.ffn_norm.weight").as_deref(),
            Some("model.layers.2.pre_feedforward_layernorm.weight")
        );
        assert_eq!(g("model.layers.2.self_attn.q_proj.weight").as_deref(), Some("blk.2.attn_q.weight"));
        assert_eq!(arch_key(ATTENTION_HEAD_COUNT_KV, "llama"), "llama.attention.head_count_kv");
    }
}
