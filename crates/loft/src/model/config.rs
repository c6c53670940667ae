//! The hyper-parameters of the Llama-shaped families loft runs, read from GGUF metadata or a Hugging Face
//! `config.json`. A family is data here ([`Arch`]): what it adds to Llama's block is a switch the one forward
//! (inference in `model::llama`, training in `train::forward_backward`) reads, not a second model.

use std::path::Path;

use serde::Deserialize;

pub use crate::engine::rope::RopeScaling;
use crate::error::{Error, Result};

/// The model families loft runs: Llama's block, plus what each family adds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM, TinyLlama, and Mistral (its sliding window is [`LlamaConfig::sliding_window`]).
    #[default]
    Llama,
    /// Qwen2 and Qwen2.5: frozen biases on q_proj, k_proj and v_proj.
    Qwen2,
    /// Qwen3 (dense): RMSNorm over each head of q and k (`q_norm`, `k_norm`, weight [D]) before RoPE, no biases.
    Qwen3,
    /// Gemma 3 (text): embeddings × √C, RMSNorms that multiply by (1 + w), a norm after the attention and after the
    /// MLP as well as before each, Qwen3's per-head q/k norm, GeGLU (tanh GELU), the softmax scaled by
    /// query_pre_attn_scalar^-½, and local layers (their own RoPE base) between the global ones.
    Gemma3,
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Gemma3];

    /// `general.architecture` in a GGUF file, as llama.cpp's converter writes it.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => gguf::names::ARCH_LLAMA,
            Arch::Qwen2 => gguf::names::ARCH_QWEN2,
            Arch::Qwen3 => gguf::names::ARCH_QWEN3,
            Arch::Gemma3 => gguf::names::ARCH_GEMMA3,
        }
    }

    /// `model_type` in a Hugging Face config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3_text",
        }
    }

    /// `architectures[0]` in a Hugging Face config.json.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// q_proj, k_proj and v_proj carry a bias (frozen: never trained, kept through merge and export).
    pub fn attention_bias(self) -> bool {
        self == Arch::Qwen2
    }

    /// q and k pass through a per-head RMSNorm (weights `self_attn.q_norm`, `self_attn.k_norm`) before RoPE.
    pub fn qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3 | Arch::Gemma3)
    }

    /// Every RMSNorm multiplies by (1 + w), and a Hugging Face checkpoint stores w (Gemma). loft holds the factor
    /// itself, 1 + w, as llama.cpp's GGUF stores it, so the norm kernels are Llama's: +1 when reading a Hugging Face
    /// checkpoint, −1 when writing one.
    pub fn norm_plus_one(self) -> bool {
        self == Arch::Gemma3
    }

    /// Gemma's sandwich: `post_attention_layernorm` normalises the attention's output before the residual add,
    /// `pre_feedforward_layernorm` is the MLP's input norm (Llama's `post_attention_layernorm`), and
    /// `post_feedforward_layernorm` normalises the MLP's output.
    pub fn sandwich_norms(self) -> bool {
        self == Arch::Gemma3
    }

    /// The MLP gates with GELU (tanh approximation) instead of SiLU: GeGLU.
    pub fn gelu_mlp(self) -> bool {
        self == Arch::Gemma3
    }

    /// The embedding's rows are scaled by √hidden_size (the tied head reads the unscaled table).
    pub fn scaled_embedding(self) -> bool {
        self == Arch::Gemma3
    }

    /// llama.cpp's converter reorders each head's Q/K rows for its RoPE (Llama only; Qwen's rows stay as
    /// transformers has them, and llama.cpp rotates them the NeoX way).
    pub fn gguf_permutes_qk(self) -> bool {
        self == Arch::Llama
    }

    fn from_gguf_name(name: &str) -> Option<Self> {
        Arch::ALL.into_iter().find(|a| a.gguf_name() == name)
    }

    /// The families loft knows, as `names` spells them: "'llama', 'qwen2', 'qwen3'".
    fn known(names: fn(Arch) -> &'static str, extra: &[&str]) -> String {
        let mut all: Vec<String> = Arch::ALL.iter().map(|&a| format!("'{}'", names(a))).collect();
        all.extend(extra.iter().map(|e| format!("'{e}'")));
        all.join(", ")
    }
}

const FAMILIES_HINT: &str = "loft runs Llama (Llama 2/3, SmolLM, TinyLlama, Mistral), Qwen2/2.5 and Qwen3 dense \
                             models, and Gemma 3 text models";

/// Gemma 3's local layers: sliding-window attention with their own RoPE base, between the global layers.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalLayers {
    /// A local layer's query at position i sees keys i − sliding_window < j ≤ i.
    pub sliding_window: usize,
    /// The local layers' RoPE base (`rope_local_base_freq`; rope_scaling applies to the global layers only).
    pub rope_theta: f32,
    /// For each layer, whether it is local (`layer_types[l] == "sliding_attention"`).
    pub is_local: Vec<bool>,
}

impl LocalLayers {
    /// Every `pattern`-th layer global, the others local (Gemma 3's `sliding_window_pattern`, 6; llama.cpp's
    /// `set_swa_pattern`).
    pub fn pattern(layers: usize, pattern: usize, sliding_window: usize, rope_theta: f32) -> Self {
        let is_local = (0..layers).map(|l| pattern == 0 || !(l + 1).is_multiple_of(pattern)).collect();
        LocalLayers { sliding_window, rope_theta, is_local }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// The family: what its block adds to Llama's.
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Mistral's sliding window W, in every layer: a query at position i sees the keys j ≤ i with i − j < W (itself
    /// and the W − 1 before it). None: every earlier key. Read per layer through [`LlamaConfig::layer_window`].
    pub sliding_window: Option<usize>,
    /// The attention's softmax scale is query_pre_attn_scalar^-½ (Gemma 3); None: head_dim^-½.
    pub query_pre_attn_scalar: Option<f32>,
    /// Gemma 3's local layers; None: every layer is global.
    pub local_layers: Option<LocalLayers>,
}

impl LlamaConfig {
    /// SmolLM2-135M's shape: the default model, and `loft bench train`'s default.
    pub fn smollm2_135m() -> Self {
        LlamaConfig {
            arch: Arch::Llama,
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            sliding_window: None,
            query_pre_attn_scalar: None,
            local_layers: None,
        }
    }

    /// Llama-3.2-1B's shape (its llama3 RoPE scaling left out: it changes no cost), for benchmarks with random
    /// weights at a 1B-class size.
    pub fn llama32_1b() -> Self {
        LlamaConfig {
            arch: Arch::Llama,
            vocab_size: 128_256,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 16,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: None,
            max_position_embeddings: 131_072,
            tie_word_embeddings: true,
            sliding_window: None,
            query_pre_attn_scalar: None,
            local_layers: None,
        }
    }

    /// Checks the relations the forward pass relies on; `source` names the file in the error.
    pub fn validate(&self, source: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::format(source, m));
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in sizes {
            if v == 0 || v > 1 << 24 {
                return bad(format!("{name} = {v} is out of range (expected 1..=16777216)"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim = {} must be even for RoPE", self.head_dim));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 || self.rope_theta.is_nan() || self.rope_theta <= 0.0
        {
            return bad(format!(
                "rms_norm_eps ({}) and rope_theta ({}) must be positive",
                self.rms_norm_eps, self.rope_theta
            ));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window = 0 leaves a query no key to attend to (expected at least 1, or none)".into());
        }
        if let Some(s) = self.query_pre_attn_scalar {
            if s.is_nan() || s <= 0.0 {
                return bad(format!("query_pre_attn_scalar ({s}) must be positive"));
            }
        }
        if let Some(local) = &self.local_layers {
            if local.is_local.len() != self.num_hidden_layers {
                return bad(format!(
                    "layer_types has {} entries, expected num_hidden_layers = {}",
                    local.is_local.len(),
                    self.num_hidden_layers
                ));
            }
            if local.sliding_window == 0 || local.rope_theta.is_nan() || local.rope_theta <= 0.0 {
                return bad(format!(
                    "sliding_window ({}) and rope_local_base_freq ({}) must be positive",
                    local.sliding_window, local.rope_theta
                ));
            }
        }
        if let Some(RopeScaling::FreqFactors(f)) = &self.rope_scaling {
            if f.len() != self.head_dim / 2 {
                return bad(format!("rope_freqs has {} values, expected head_dim/2 = {}", f.len(), self.head_dim / 2));
            }
        }
        Ok(())
    }

    /// The window of layer `l`'s attention: Gemma 3's local layers', Mistral's in every layer, else none.
    pub fn layer_window(&self, l: usize) -> Option<usize> {
        match &self.local_layers {
            Some(local) => self.is_local(l).then_some(local.sliding_window),
            None => self.sliding_window,
        }
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Layer `l` is a local (sliding-window) layer, with the local RoPE base.
    pub fn is_local(&self, l: usize) -> bool {
        self.local_layers.as_ref().is_some_and(|s| s.is_local.get(l).copied().unwrap_or(false))
    }

    /// What the queries are multiplied by so that the attention kernels' softmax scale, head_dim^-½, becomes
    /// query_pre_attn_scalar^-½: √(head_dim / query_pre_attn_scalar); None when it is 1.
    pub fn query_scale(&self) -> Option<f32> {
        let s = self.query_pre_attn_scalar?;
        let scale = ((self.head_dim as f64) / s as f64).sqrt() as f32;
        (scale != 1.0).then_some(scale)
    }

    /// What the embedding's rows are multiplied by: √hidden_size for Gemma, else None.
    pub fn embedding_scale(&self) -> Option<f32> {
        // transformers keeps √C as a tensor of the weights' dtype: in f32, the f32 nearest to it.
        self.arch.scaled_embedding().then(|| (self.hidden_size as f64).sqrt() as f32)
    }

    /// Parameters of the frozen base, counting a tied head once.
    pub fn num_parameters(&self) -> usize {
        let (c, f, l) = (self.hidden_size, self.intermediate_size, self.num_hidden_layers);
        let bias = if self.arch.attention_bias() { self.q_dim() + 2 * self.kv_dim() } else { 0 };
        let qk_norm = if self.arch.qk_norm() { 2 * self.head_dim } else { 0 };
        let sandwich = if self.arch.sandwich_norms() { 2 * c } else { 0 };
        let per_layer = c * self.q_dim() * 2 + c * self.kv_dim() * 2 + 3 * c * f + 2 * c + bias + qk_norm + sandwich;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * c };
        self.vocab_size * c + l * per_layer + c + head
    }

    /// Reads the `{arch}.*` keys (llama.cpp's names) of a GGUF file. `rope_freqs` is the optional per-frequency
    /// factor tensor, already dequantized.
    pub fn from_gguf(file: &gguf::GgufFile, rope_freqs: Option<Vec<f32>>, vocab_len: usize) -> Result<Self> {
        let path = file.path.clone();
        let arch = file.get_str(gguf::names::GENERAL_ARCHITECTURE)?;
        let Some(family) = Arch::from_gguf_name(arch) else {
            return Err(Error::hinted(
                format!(
                    "{}: general.architecture is '{arch}'; loft supports {}",
                    path.display(),
                    Arch::known(Arch::gguf_name, &[])
                ),
                FAMILIES_HINT,
            ));
        };
        let key = |k: &str| format!("{arch}.{k}");
        let get = |k: &str| -> Result<usize> { Ok(file.get_u64(&key(k))? as usize) };
        let opt = |k: &str| file.get(&key(k)).and_then(|v| v.as_u64()).map(|v| v as usize);
        let hidden_size = get("embedding_length")?;
        let num_attention_heads = get("attention.head_count")?;
        if family != Arch::Gemma3 && file.get(&key("attention.sliding_window_pattern")).is_some() {
            return Err(Error::hinted(
                format!("{}: {arch}.attention.sliding_window_pattern is not supported", path.display()),
                "loft applies a sliding window to every layer or to none (Gemma 3: to its local layers)",
            ));
        }
        let context = opt("context_length").unwrap_or(2048);
        let head_dim = opt("attention.key_length")
            .or(opt("rope.dimension_count"))
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        let cfg = LlamaConfig {
            arch: family,
            vocab_size: opt("vocab_size").unwrap_or(vocab_len),
            hidden_size,
            intermediate_size: get("feed_forward_length")?,
            num_hidden_layers: get("block_count")?,
            num_attention_heads,
            num_key_value_heads: opt("attention.head_count_kv").unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: file.get(&key("attention.layer_norm_rms_epsilon")).and_then(|v| v.as_f32()).unwrap_or(1e-5),
            rope_theta: file.get(&key("rope.freq_base")).and_then(|v| v.as_f32()).unwrap_or(10_000.0),
            rope_scaling: match rope_freqs {
                Some(f) => Some(RopeScaling::FreqFactors(f)),
                None => match file.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
                    Some("linear") => Some(RopeScaling::Linear {
                        factor: file.get(&key("rope.scaling.factor")).and_then(|v| v.as_f32()).unwrap_or(1.0),
                    }),
                    _ => None,
                },
            },
            max_position_embeddings: context,
            tie_word_embeddings: file.tensor_info("output.weight").is_none(),
            // 0 means none, as llama.cpp reads it; a window as wide as the context changes nothing. Gemma 3's
            // window is its local layers' (below).
            sliding_window: match family {
                Arch::Gemma3 => None,
                _ => opt("attention.sliding_window").filter(|&w| w > 0 && w < context),
            },
            query_pre_attn_scalar: None,
            local_layers: None,
        };
        let cfg = match family {
            Arch::Gemma3 => LlamaConfig {
                // llama.cpp: 1/√head_dim, except Gemma 3 27B (62 layers), whose query_pre_attn_scalar is C / NH.
                query_pre_attn_scalar: Some(match cfg.num_hidden_layers {
                    62 => (cfg.hidden_size / cfg.num_attention_heads) as f32,
                    _ => cfg.head_dim as f32,
                }),
                // llama.cpp takes the local layers' base (10000) and pattern (6) from the architecture.
                local_layers: Some(LocalLayers::pattern(
                    cfg.num_hidden_layers,
                    opt("attention.sliding_window_pattern").unwrap_or(6),
                    get("attention.sliding_window")?,
                    10_000.0,
                )),
                ..cfg
            },
            _ => cfg,
        };
        cfg.validate(&path)?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json` (transformers 4.x and 5.x spellings).
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: HfConfig =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        let model_type = raw.model_type.as_deref().unwrap_or("llama");
        let arch = match model_type {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3_text" => Arch::Gemma3,
            "gemma3" => {
                return Err(Error::hinted(
                    format!("{}: model_type 'gemma3' is Gemma 3's image-text model", path.display()),
                    "loft runs Gemma 3's text models (model_type 'gemma3_text': Gemma 3 270M and 1B, or a text \
                     model extracted from a larger one)",
                ))
            }
            other => {
                return Err(Error::hinted(
                    format!(
                        "{}: model_type is '{other}'; loft supports {}",
                        path.display(),
                        Arch::known(Arch::model_type, &["mistral"])
                    ),
                    FAMILIES_HINT,
                ))
            }
        };
        // Biases other than Qwen2's q/k/v ones (Llama's and Qwen3's `attention_bias` also puts one on o_proj).
        if raw.attention_bias == Some(true) || raw.mlp_bias == Some(true) {
            return Err(Error::hinted(
                format!("{}: {model_type} with attention_bias or mlp_bias set is not supported", path.display()),
                "loft runs these models without biases (Qwen2's q/k/v biases are part of its architecture)",
            ));
        }
        // transformers' Mistral applies `sliding_window` in every layer (null: none); Llama's ignores the key. A
        // window as wide as the context changes nothing.
        let context = raw.max_position_embeddings.unwrap_or(2048);
        let sliding_window = match model_type {
            "mistral" => raw.sliding_window.filter(|&w| w < context),
            _ => None,
        };
        // Qwen2/3 window only the layers from max_window_layers on, which loft does not do.
        if let (Arch::Qwen2 | Arch::Qwen3, true, Some(window)) =
            (arch, raw.use_sliding_window.unwrap_or(false), raw.sliding_window)
        {
            if window < context {
                return Err(Error::hinted(
                    format!(
                        "{}: use_sliding_window with sliding_window = {window} (below max_position_embeddings = \
                         {context}) is not supported for {model_type}",
                        path.display()
                    ),
                    "loft applies a sliding window to every layer (Mistral) or to none; Qwen releases ship with \
                     use_sliding_window: false",
                ));
            }
        }
        let missing = |k: &str| {
            Error::format(path, format!("missing key '{k}'")).with_hint(
                "a model's config.json as transformers' save_pretrained writes it names hidden_size, \
                 intermediate_size, num_hidden_layers, num_attention_heads and vocab_size; is this file complete?",
            )
        };
        let hidden_size = raw.hidden_size.ok_or_else(|| missing("hidden_size"))?;
        let num_attention_heads = raw.num_attention_heads.ok_or_else(|| missing("num_attention_heads"))?;
        // transformers 5 folds rope_theta and rope_scaling into `rope_parameters`; Gemma 3 keeps one per layer type
        // there ("full_attention", "sliding_attention").
        let rope_by_type = |kind: &str| -> Result<Option<HfRope>> {
            let Some(p) = raw.rope_parameters.as_ref() else { return Ok(None) };
            let p = if arch == Arch::Gemma3 {
                match p.get(kind) {
                    Some(p) => p,
                    None => return Ok(None),
                }
            } else {
                p
            };
            serde_json::from_value(p.clone())
                .map(Some)
                .map_err(|e| Error::format(path, format!("rope_parameters: {e}")))
        };
        let rope_parameters = rope_by_type("full_attention")?;
        let rope = raw.rope_scaling.clone().or(rope_parameters.clone());
        let default_theta = if arch == Arch::Gemma3 { 1_000_000.0 } else { 10_000.0 };
        let rope_theta =
            raw.rope_theta.or(rope_parameters.as_ref().and_then(|p| p.rope_theta)).unwrap_or(default_theta);
        let rope_scaling = match rope {
            Some(p) => match p.rope_type.as_deref().or(p.kind.as_deref()) {
                Some("llama3") => Some(RopeScaling::Llama3 {
                    factor: p.factor.unwrap_or(8.0),
                    low_freq_factor: p.low_freq_factor.unwrap_or(1.0),
                    high_freq_factor: p.high_freq_factor.unwrap_or(4.0),
                    original_max_position_embeddings: p.original_max_position_embeddings.unwrap_or(8192),
                }),
                Some("linear") => Some(RopeScaling::Linear { factor: p.factor.unwrap_or(1.0) }),
                Some("default") | None => None,
                Some(other) => {
                    return Err(Error::format(
                        path,
                        format!("rope type '{other}' is not supported (llama3, linear, default)"),
                    ))
                }
            },
            None => None,
        };
        let cfg = LlamaConfig {
            arch,
            vocab_size: raw.vocab_size.ok_or_else(|| missing("vocab_size"))?,
            hidden_size,
            intermediate_size: raw.intermediate_size.ok_or_else(|| missing("intermediate_size"))?,
            num_hidden_layers: raw.num_hidden_layers.ok_or_else(|| missing("num_hidden_layers"))?,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: raw.head_dim.unwrap_or(hidden_size / num_attention_heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: context,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(arch == Arch::Gemma3),
            sliding_window,
            query_pre_attn_scalar: None,
            local_layers: None,
        };
        let cfg = match arch {
            Arch::Gemma3 => gemma3_from_hf(&raw, cfg, rope_by_type("sliding_attention")?, path)?,
            _ => cfg,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The `config.json` transformers writes for this model (used by `loft merge` and test fixtures).
    #[allow(clippy::too_many_lines)]
    pub fn to_hf_json(&self, bos: Option<u32>, eos: Option<u32>, torch_dtype: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
            "bos_token_id": bos,
            "eos_token_id": eos,
        });
        match self.arch {
            // Mistral's class is the one of transformers' that honours a sliding window (Llama's ignores it).
            Arch::Llama if self.sliding_window.is_some() => {
                v["architectures"] = serde_json::json!(["MistralForCausalLM"]);
                v["model_type"] = "mistral".into();
                v["sliding_window"] = self.sliding_window.into();
            }
            Arch::Llama => {
                v["attention_bias"] = false.into();
                v["mlp_bias"] = false.into();
            }
            // Qwen2's q/k/v biases are not a config switch; it has a sliding window that is off.
            Arch::Qwen2 => {
                v["use_sliding_window"] = false.into();
                v["sliding_window"] = serde_json::Value::Null;
                v["max_window_layers"] = self.num_hidden_layers.into();
            }
            Arch::Qwen3 => {
                v["attention_bias"] = false.into();
                v["use_sliding_window"] = false.into();
                v["sliding_window"] = serde_json::Value::Null;
                v["max_window_layers"] = self.num_hidden_layers.into();
            }
            Arch::Gemma3 => {
                let obj = v.as_object_mut().expect("an object");
                obj.remove("hidden_act");
                obj.remove("rope_theta");
                v["hidden_activation"] = "gelu_pytorch_tanh".into();
                v["attention_bias"] = false.into();
                // transformers 5 types it int and refuses 256.0 (strict config); every Gemma 3's is whole.
                let scalar = self.query_pre_attn_scalar.unwrap_or(self.head_dim as f32);
                v["query_pre_attn_scalar"] = if scalar.fract() == 0.0 { (scalar as u64).into() } else { scalar.into() };
                v["final_logit_softcapping"] = serde_json::Value::Null;
                v["attn_logit_softcapping"] = serde_json::Value::Null;
                v["use_bidirectional_attention"] = false.into();
                let local = self.local_layers.as_ref();
                let types: Vec<&str> = (0..self.num_hidden_layers)
                    .map(|l| if self.is_local(l) { "sliding_attention" } else { "full_attention" })
                    .collect();
                v["layer_types"] = types.into();
                v["sliding_window"] = local.map(|s| s.sliding_window).into();
                let mut full = serde_json::json!({ "rope_type": "default", "rope_theta": self.rope_theta });
                if let Some(RopeScaling::Linear { factor }) = &self.rope_scaling {
                    full =
                        serde_json::json!({ "rope_type": "linear", "factor": factor, "rope_theta": self.rope_theta });
                }
                let local_theta = local.map_or(10_000.0, |s| s.rope_theta);
                v["rope_parameters"] = serde_json::json!({
                    "full_attention": full,
                    "sliding_attention": { "rope_type": "default", "rope_theta": local_theta },
                });
                return v;
            }
        }
        match &self.rope_scaling {
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                v["rope_scaling"] = serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings,
                })
            }
            Some(RopeScaling::Linear { factor }) => {
                v["rope_scaling"] = serde_json::json!({ "rope_type": "linear", "factor": factor })
            }
            // Per-frequency factors have no config.json spelling; loft keeps them as a separate tensor.
            Some(RopeScaling::FreqFactors(_)) | None => {}
        }
        v
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRope>,
    /// One set, or (Gemma 3) one per layer type.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    // Gemma 3
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f32>,
    layer_types: Option<Vec<String>>,
    sliding_window_pattern: Option<usize>,
    rope_local_base_freq: Option<f32>,
    final_logit_softcapping: Option<f32>,
    attn_logit_softcapping: Option<f32>,
    use_bidirectional_attention: Option<bool>,
}

/// What Gemma 3's config.json adds to `cfg` (read as the other families read theirs): the softmax scale, the local
/// layers with their window and RoPE base, and the checks of what loft does not run (logit soft-capping, other
/// activations, bidirectional attention).
fn gemma3_from_hf(raw: &HfConfig, cfg: LlamaConfig, local_rope: Option<HfRope>, path: &Path) -> Result<LlamaConfig> {
    let unsupported = |what: String, hint: &str| Err(Error::hinted(format!("{}: {what}", path.display()), hint));
    match raw.hidden_activation.as_deref() {
        None | Some("gelu_pytorch_tanh") => {}
        Some(other) => {
            return unsupported(
                format!("hidden_activation '{other}' is not supported"),
                "Gemma 3 gates its MLP with gelu_pytorch_tanh (GELU, tanh approximation)",
            )
        }
    }
    if raw.final_logit_softcapping.is_some() || raw.attn_logit_softcapping.is_some() {
        return unsupported(
            "logit soft-capping (final_logit_softcapping / attn_logit_softcapping) is not supported".into(),
            "Gemma 3 has none (both null); Gemma 2 has them",
        );
    }
    if raw.use_bidirectional_attention == Some(true) {
        return unsupported(
            "use_bidirectional_attention = true is not supported".into(),
            "loft runs causal language models (EmbeddingGemma is bidirectional)",
        );
    }
    let layers = cfg.num_hidden_layers;
    let is_local: Vec<bool> = match &raw.layer_types {
        Some(types) => types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(Error::format(
                    path,
                    format!("layer_types: '{other}' is not 'sliding_attention' or 'full_attention'"),
                )),
            })
            .collect::<Result<_>>()?,
        None => LocalLayers::pattern(layers, raw.sliding_window_pattern.unwrap_or(6), 1, 1.0).is_local,
    };
    let rope_theta = local_rope.and_then(|p| p.rope_theta).or(raw.rope_local_base_freq).unwrap_or(10_000.0);
    let local_layers = match (is_local.contains(&true), raw.sliding_window) {
        (false, _) => None,
        (true, Some(sliding_window)) => Some(LocalLayers { sliding_window, rope_theta, is_local }),
        (true, None) => {
            return Err(Error::format(path, "layer_types names sliding_attention layers but sliding_window is null"))
        }
    };
    Ok(LlamaConfig { query_pre_attn_scalar: Some(raw.query_pre_attn_scalar.unwrap_or(256.0)), local_layers, ..cfg })
}

#[derive(Clone, Deserialize)]
struct HfRope {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_theta: Option<f32>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
}
