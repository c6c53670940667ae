//! Tiny random models built inside the tests — Llama, and the families loft adds to it (Qwen2's q/k/v biases,
//! Qwen3's per-head q/k norm, Mistral's sliding window, Gemma 3's scaled embedding, (1 + w) sandwich norms, GeGLU,
//! query scale and local layers; [`GEMMA3_LOCAL_THETA`], [`GEMMA3_WINDOW`], every 6th layer global) — written as GGUF (Q/K rows permuted as llama.cpp's converter does for Llama) or as
//! a Hugging Face folder (safetensors + the config.json transformers writes), plus a plain f64 reference forward
//! written from the transformers definitions (modeling_llama.py, modeling_qwen2.py, modeling_qwen3.py,
//! modeling_mistral.py), loop by loop. The tests of plumbing (training, checkpoints, the CLI) use one with a real byte-level BPE cut from the
//! default model's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use gguf::names as n;
use gguf::{GgmlType, GgufWriter, Value, ValueType};
use loft::model::weights::permute_rope_rows;
use loft::model::Arch;
use loft::rng::SplitMix64;
use loft::tokenizer::{token_type, GgufVocab};

#[derive(Clone, Debug)]
pub struct TinyConfig {
    pub arch: Arch,
    pub vocab: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub tied: bool,
    pub rope_theta: f32,
    pub eps: f32,
    /// Qwen3 sets head_dim apart from hidden / heads; None: hidden / heads.
    pub head_dim: Option<usize>,
    /// Mistral's sliding window (a Llama-arch model; written as `MistralForCausalLM` in config.json).
    pub sliding_window: Option<usize>,
    /// Gemma 3: the softmax scale's query_pre_attn_scalar (config.json only: llama.cpp takes head_dim); None:
    /// head_dim.
    pub query_pre_attn_scalar: Option<f32>,
}

/// Gemma 3's local layers' RoPE base and window in the tiny models (the window narrower than the test sequences,
/// so that the local layers' bound is exercised).
pub const GEMMA3_LOCAL_THETA: f32 = 10_000.0;
pub const GEMMA3_WINDOW: usize = 5;

impl Default for TinyConfig {
    fn default() -> Self {
        TinyConfig {
            arch: Arch::Llama,
            vocab: 48,
            hidden: 32,
            ffn: 40,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            tied: true,
            rope_theta: 10000.0,
            eps: 1e-5,
            head_dim: None,
            sliding_window: None,
            query_pre_attn_scalar: None,
        }
    }
}

impl TinyConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden / self.heads)
    }

    /// Layer `l` is one of Gemma 3's local layers (every 6th layer is global).
    pub fn is_local(&self, l: usize) -> bool {
        self.arch == Arch::Gemma3 && !(l + 1).is_multiple_of(6)
    }

    /// Layer `l`'s sliding window: Gemma 3's local layers', Mistral's in every layer.
    pub fn window(&self, l: usize) -> Option<usize> {
        match self.arch {
            Arch::Gemma3 => self.is_local(l).then_some(GEMMA3_WINDOW),
            _ => self.sliding_window,
        }
    }
}

/// Hugging Face name → (shape, values), Hugging Face layout.
pub type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

pub fn random_weights(cfg: &TinyConfig, seed: u64) -> Weights {
    let mut rng = SplitMix64::new(seed);
    let mut w = Weights::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| offset + scale * (rng.next_f64() as f32 * 2.0 - 1.0)).collect();
        w.insert(name, (shape, v));
    };
    let (c, f, d) = (cfg.hidden, cfg.ffn, cfg.head_dim());
    // Gemma's norms multiply by (1 + w): its checkpoint's w lies around 0.
    let one = if cfg.arch.norm_plus_one() { 0.0 } else { 1.0 };
    add("model.embed_tokens.weight".into(), vec![cfg.vocab, c], 1.0, 0.0);
    for i in 0..cfg.layers {
        let p = format!("model.layers.{i}");
        add(format!("{p}.input_layernorm.weight"), vec![c], 0.2, one);
        add(format!("{p}.self_attn.q_proj.weight"), vec![cfg.heads * d, c], 0.3, 0.0);
        add(format!("{p}.self_attn.k_proj.weight"), vec![cfg.kv_heads * d, c], 0.3, 0.0);
        add(format!("{p}.self_attn.v_proj.weight"), vec![cfg.kv_heads * d, c], 0.3, 0.0);
        add(format!("{p}.self_attn.o_proj.weight"), vec![c, cfg.heads * d], 0.3, 0.0);
        if cfg.arch.attention_bias() {
            add(format!("{p}.self_attn.q_proj.bias"), vec![cfg.heads * d], 0.5, 0.0);
            add(format!("{p}.self_attn.k_proj.bias"), vec![cfg.kv_heads * d], 0.5, 0.0);
            add(format!("{p}.self_attn.v_proj.bias"), vec![cfg.kv_heads * d], 0.5, 0.0);
        }
        if cfg.arch.qk_norm() {
            add(format!("{p}.self_attn.q_norm.weight"), vec![d], 0.3, one);
            add(format!("{p}.self_attn.k_norm.weight"), vec![d], 0.3, one);
        }
        add(format!("{p}.post_attention_layernorm.weight"), vec![c], 0.2, one);
        if cfg.arch.sandwich_norms() {
            add(format!("{p}.pre_feedforward_layernorm.weight"), vec![c], 0.2, one);
            add(format!("{p}.post_feedforward_layernorm.weight"), vec![c], 0.2, one);
        }
        add(format!("{p}.mlp.gate_proj.weight"), vec![f, c], 0.3, 0.0);
        add(format!("{p}.mlp.up_proj.weight"), vec![f, c], 0.3, 0.0);
        add(format!("{p}.mlp.down_proj.weight"), vec![c, f], 0.3, 0.0);
    }
    add("model.norm.weight".into(), vec![c], 0.2, one);
    if !cfg.tied {
        add("lm_head.weight".into(), vec![cfg.vocab, c], 0.3, 0.0);
    }
    w
}

/// Writes the model as an F32 GGUF with llama.cpp's names, metadata and Q/K permutation, and a vocabulary of
/// `vocab` single-character tokens without merges (enough to load the weights; not a tokenizer loft accepts).
pub fn write_gguf(path: &Path, cfg: &TinyConfig, weights: &Weights) {
    let chars = GgufVocab {
        model: "gpt2".into(),
        pre: Some("gpt-2".into()),
        tokens: (0..cfg.vocab).map(|i| char::from(b'!' + i as u8).to_string()).collect(),
        token_types: vec![token_type::NORMAL; cfg.vocab],
        ..GgufVocab::default()
    };
    write_gguf_with_vocab(path, cfg, weights, &chars);
}

/// Writes the model as an F32 GGUF with llama.cpp's architecture name, tensor names, metadata and (Llama) Q/K
/// permutation, and `vocab` as its tokenizer (`tokenizer.*`, as llama.cpp's converter writes it).
pub fn write_gguf_with_vocab(path: &Path, cfg: &TinyConfig, weights: &Weights, vocab: &GgufVocab) {
    assert_eq!(vocab.tokens.len(), cfg.vocab, "the vocabulary and the embedding disagree");
    let mut g = GgufWriter::new();
    let arch = cfg.arch.gguf_name();
    g.add("general.architecture", Value::String(arch.into()));
    let key = |k: &str| format!("{arch}.{k}");
    g.add(key("block_count"), Value::U32(cfg.layers as u32));
    g.add(key("context_length"), Value::U32(256));
    g.add(key("embedding_length"), Value::U32(cfg.hidden as u32));
    g.add(key("feed_forward_length"), Value::U32(cfg.ffn as u32));
    g.add(key("attention.head_count"), Value::U32(cfg.heads as u32));
    g.add(key("attention.head_count_kv"), Value::U32(cfg.kv_heads as u32));
    g.add(key("attention.layer_norm_rms_epsilon"), Value::F32(cfg.eps));
    g.add(key("rope.freq_base"), Value::F32(cfg.rope_theta));
    g.add(key("rope.dimension_count"), Value::U32(cfg.head_dim() as u32));
    if cfg.head_dim.is_some() {
        g.add(key("attention.key_length"), Value::U32(cfg.head_dim() as u32));
        g.add(key("attention.value_length"), Value::U32(cfg.head_dim() as u32));
    }
    if let Some(w) = cfg.sliding_window {
        g.add(key("attention.sliding_window"), Value::U32(w as u32));
    }
    if cfg.arch == Arch::Gemma3 {
        g.add(key("attention.sliding_window"), Value::U32(GEMMA3_WINDOW as u32));
    }
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
    g.add(n::TOKENIZER_MERGES, strings(&vocab.merges));
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
    if let Some(t) = &vocab.chat_template {
        g.add(n::TOKENIZER_CHAT_TEMPLATE, Value::String(t.clone()));
    }
    for (name, (shape, values)) in weights {
        let gname = gguf::names::hf_to_gguf_for(arch, name).expect("llama.cpp tensor name");
        let cols = *shape.last().unwrap();
        // llama.cpp's converter stores Gemma's (1 + w) norms as 1 + w.
        let values = if cfg.arch.norm_plus_one() && name.ends_with("norm.weight") {
            values.iter().map(|v| v + 1.0).collect()
        } else if !cfg.arch.gguf_permutes_qk() {
            values.clone()
        } else if name.ends_with("q_proj.weight") {
            permute_rope_rows(values, cfg.heads, cols)
        } else if name.ends_with("k_proj.weight") {
            permute_rope_rows(values, cfg.kv_heads, cols)
        } else {
            values.clone()
        };
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        g.add_tensor(gname, ne, GgmlType::F32, bytes).unwrap();
    }
    g.write(path).unwrap();
}

/// A real byte-level BPE cut down from `source` (a `gpt2` vocabulary such as the default model's): its special
/// tokens, its single-byte tokens and the tokens its first `merges` merges produce, in `source`'s order and
/// renumbered from 0 (special ids follow), with its merges among those tokens, pre-tokenizer, flags and chat
/// template. Text tokenizes as `source` would tokenize it if training had stopped after those merges.
pub fn bpe_cut(source: &GgufVocab, merges: usize) -> GgufVocab {
    assert_eq!(source.model, "gpt2", "bpe_cut takes a byte-level BPE vocabulary");
    let id_of: HashMap<&str, usize> = source.tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let special = |i: usize| source.token_types.get(i).is_some_and(|&t| t != token_type::NORMAL);
    let mut keep: HashSet<usize> =
        (0..source.tokens.len()).filter(|&i| special(i) || source.tokens[i].chars().count() == 1).collect();
    let special_ids = [source.bos, source.eos, source.eot, source.pad, source.unk];
    keep.extend(special_ids.into_iter().flatten().map(|id| id as usize));
    let mut kept_merges = Vec::new();
    for merge in source.merges.iter().take(merges) {
        let (left, right) = merge.split_once(' ').expect("a merge is two tokens");
        let (Some(&l), Some(&r), Some(&product)) =
            (id_of.get(left), id_of.get(right), id_of.get(format!("{left}{right}").as_str()))
        else {
            continue;
        };
        if keep.contains(&l) && keep.contains(&r) {
            keep.insert(product);
            kept_merges.push(merge.clone());
        }
    }
    let mut old_ids: Vec<usize> = keep.into_iter().collect();
    old_ids.sort_unstable();
    let new_id: HashMap<usize, u32> = old_ids.iter().enumerate().map(|(new, &old)| (old, new as u32)).collect();
    let remap = |id: Option<u32>| id.map(|id| new_id[&(id as usize)]);
    GgufVocab {
        tokens: old_ids.iter().map(|&i| source.tokens[i].clone()).collect(),
        token_types: old_ids
            .iter()
            .map(|&i| source.token_types.get(i).copied().unwrap_or(token_type::NORMAL))
            .collect(),
        scores: Vec::new(),
        merges: kept_merges,
        bos: remap(source.bos),
        eos: remap(source.eos),
        eot: remap(source.eot),
        pad: remap(source.pad),
        unk: remap(source.unk),
        ..source.clone()
    }
}

/// The shape of the tiny BPE models: 2 layers, hidden 64, 4 query and 2 key/value heads, tied embeddings.
pub fn bpe_config(vocab: usize) -> TinyConfig {
    TinyConfig { vocab, hidden: 64, ffn: 128, layers: 2, heads: 4, kv_heads: 2, ..TinyConfig::default() }
}

/// Writes a tiny Llama with random weights (seeded) and [`bpe_cut`] of `source`'s tokenizer to `path`.
pub fn write_bpe_model(path: &Path, source: &GgufVocab, merges: usize, seed: u64) -> TinyConfig {
    let vocab = bpe_cut(source, merges);
    let cfg = bpe_config(vocab.tokens.len());
    write_gguf_with_vocab(path, &cfg, &random_weights(&cfg, seed), &vocab);
    cfg
}

/// Writes the model as a Hugging Face folder: `model.safetensors` (f32) and the config.json transformers writes
/// for the family (`LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`; `MistralForCausalLM` with its
/// `sliding_window` for a Llama with a window), with `extra` keys merged in.
/// No tokenizer files: the weights alone (`loft::model::load_base`).
pub fn write_hf_weights(dir: &Path, cfg: &TinyConfig, weights: &Weights, extra: serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let (class, model_type) = match (cfg.arch, cfg.sliding_window) {
        (Arch::Llama, Some(_)) => ("MistralForCausalLM", "mistral"),
        (Arch::Llama, None) => ("LlamaForCausalLM", "llama"),
        (Arch::Qwen2, _) => ("Qwen2ForCausalLM", "qwen2"),
        (Arch::Qwen3, _) => ("Qwen3ForCausalLM", "qwen3"),
        (Arch::Gemma3, _) => ("Gemma3ForCausalLM", "gemma3_text"),
    };
    let mut config = serde_json::json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": 256,
        "tie_word_embeddings": cfg.tied,
        "torch_dtype": "float32",
    });
    if let Some(d) = cfg.head_dim {
        config["head_dim"] = d.into();
    }
    if let (Arch::Llama, Some(w)) = (cfg.arch, cfg.sliding_window) {
        config["sliding_window"] = w.into();
    }
    if cfg.arch == Arch::Gemma3 {
        let obj = config.as_object_mut().unwrap();
        obj.remove("hidden_act");
        obj.remove("rope_theta");
        config["hidden_activation"] = "gelu_pytorch_tanh".into();
        config["head_dim"] = cfg.head_dim().into();
        config["query_pre_attn_scalar"] = cfg.query_pre_attn_scalar.unwrap_or(cfg.head_dim() as f32).into();
        config["sliding_window"] = GEMMA3_WINDOW.into();
        let types: Vec<&str> =
            (0..cfg.layers).map(|l| if cfg.is_local(l) { "sliding_attention" } else { "full_attention" }).collect();
        config["layer_types"] = types.into();
        config["rope_parameters"] = serde_json::json!({
            "full_attention": { "rope_type": "default", "rope_theta": cfg.rope_theta },
            "sliding_attention": { "rope_type": "default", "rope_theta": GEMMA3_LOCAL_THETA },
        });
    } else if cfg.arch != Arch::Llama {
        config["use_sliding_window"] = false.into();
        config["sliding_window"] = 4096.into();
        config["max_window_layers"] = cfg.layers.into();
    }
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            config[k] = v;
        }
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(name, (shape, v))| (name.clone(), shape.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, shape, b)| {
            (name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap())
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Logits [T, V] of the whole sequence, in f64, straight from the transformers definition. With a sliding window
/// W, query i attends to the keys j ≤ i with i − j < W (modeling_mistral.py's mask).
pub fn reference_logits(cfg: &TinyConfig, w: &Weights, tokens: &[u32]) -> Vec<Vec<f64>> {
    let get = |n: &str| -> Vec<f64> { w[n].1.iter().map(|&v| v as f64).collect() };
    let (c, d, t) = (cfg.hidden, cfg.head_dim(), tokens.len());
    let linear = |x: &[f64], wt: &[f64], out: usize| -> Vec<f64> {
        (0..out).map(|o| (0..x.len()).map(|i| x[i] * wt[o * x.len() + i]).sum()).collect()
    };
    // Gemma3RMSNorm multiplies by (1 + w).
    let plus = if cfg.arch.norm_plus_one() { 1.0 } else { 0.0 };
    let norm = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + cfg.eps as f64).sqrt();
        x.iter().zip(g).map(|(v, g)| v * r * (plus + g)).collect()
    };
    let rope = |v: &mut [f64], pos: usize, theta: f32| {
        for i in 0..d / 2 {
            let inv = 1.0 / (theta as f64).powf(2.0 * i as f64 / d as f64);
            let (s, co) = (pos as f64 * inv).sin_cos();
            let (a, b) = (v[i], v[i + d / 2]);
            v[i] = a * co - b * s;
            v[i + d / 2] = b * co + a * s;
        }
    };
    let emb = get("model.embed_tokens.weight");
    let mut x: Vec<Vec<f64>> = tokens.iter().map(|&id| emb[id as usize * c..(id as usize + 1) * c].to_vec()).collect();
    let gemma = cfg.arch == Arch::Gemma3;
    // Gemma3TextScaledWordEmbedding: × √C, as an f32 tensor.
    if gemma {
        let scale = (c as f32).sqrt() as f64;
        x.iter_mut().flatten().for_each(|v| *v *= scale);
    }
    // Gemma 3: scores scaled by query_pre_attn_scalar^-½.
    let score_scale = 1.0 / (cfg.query_pre_attn_scalar.map_or(d as f64, |s| s as f64)).sqrt();
    for l in 0..cfg.layers {
        let theta = if cfg.is_local(l) { GEMMA3_LOCAL_THETA } else { cfg.rope_theta };
        let window = cfg.window(l);
        let p = |n: &str| get(&format!("model.layers.{l}.{n}.weight"));
        let (wq, wk, wv, wo) =
            (p("self_attn.q_proj"), p("self_attn.k_proj"), p("self_attn.v_proj"), p("self_attn.o_proj"));
        let h: Vec<Vec<f64>> = x.iter().map(|r| norm(r, &p("input_layernorm"))).collect();
        let mut q: Vec<Vec<f64>> = h.iter().map(|r| linear(r, &wq, cfg.heads * d)).collect();
        let mut k: Vec<Vec<f64>> = h.iter().map(|r| linear(r, &wk, cfg.kv_heads * d)).collect();
        let mut v: Vec<Vec<f64>> = h.iter().map(|r| linear(r, &wv, cfg.kv_heads * d)).collect();
        // Qwen2: nn.Linear(bias=True) for q, k, v.
        if cfg.arch.attention_bias() {
            let b = |n: &str| get(&format!("model.layers.{l}.self_attn.{n}.bias"));
            for (rows, bias) in [(&mut q, b("q_proj")), (&mut k, b("k_proj")), (&mut v, b("v_proj"))] {
                rows.iter_mut().for_each(|r| r.iter_mut().zip(&bias).for_each(|(a, b)| *a += b));
            }
        }
        // Qwen3, Gemma 3: q_norm / k_norm, an RMSNorm over each head's D values, before RoPE.
        if cfg.arch.qk_norm() {
            for (rows, w) in [(&mut q, p("self_attn.q_norm")), (&mut k, p("self_attn.k_norm"))] {
                for r in rows.iter_mut() {
                    for head in r.chunks_mut(d) {
                        let normed = norm(head, &w);
                        head.copy_from_slice(&normed);
                    }
                }
            }
        }
        for pos in 0..t {
            for hh in 0..cfg.heads {
                rope(&mut q[pos][hh * d..(hh + 1) * d], pos, theta);
            }
            for hh in 0..cfg.kv_heads {
                rope(&mut k[pos][hh * d..(hh + 1) * d], pos, theta);
            }
        }
        let group = cfg.heads / cfg.kv_heads;
        for i in 0..t {
            let mut att = vec![0.0; cfg.heads * d];
            for hh in 0..cfg.heads {
                let g = hh / group;
                let seen: Vec<usize> = (0..=i).filter(|&j| window.is_none_or(|w| i - j < w)).collect();
                let s: Vec<f64> = seen
                    .iter()
                    .map(|&j| (0..d).map(|e| q[i][hh * d + e] * k[j][g * d + e]).sum::<f64>() * score_scale)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for (&j, sj) in seen.iter().zip(&s) {
                    let pj = (sj - m).exp() / z;
                    for e in 0..d {
                        att[hh * d + e] += pj * v[j][g * d + e];
                    }
                }
            }
            let mut o = linear(&att, &wo, c);
            // Gemma: post_attention_layernorm on the attention's output, before the residual add.
            if gemma {
                o = norm(&o, &p("post_attention_layernorm"));
            }
            x[i].iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
        let (wg, wu, wd) = (p("mlp.gate_proj"), p("mlp.up_proj"), p("mlp.down_proj"));
        let gelu = |g: f64| 0.5 * g * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh());
        for row in x.iter_mut() {
            let h = norm(row, &p(if gemma { "pre_feedforward_layernorm" } else { "post_attention_layernorm" }));
            let g = linear(&h, &wg, cfg.ffn);
            let u = linear(&h, &wu, cfg.ffn);
            let a: Vec<f64> = match gemma {
                true => g.iter().zip(&u).map(|(g, u)| gelu(*g) * u).collect(),
                false => g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect(),
            };
            let mut o = linear(&a, &wd, c);
            if gemma {
                o = norm(&o, &p("post_feedforward_layernorm"));
            }
            row.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
    }
    let head = if cfg.tied { get("model.embed_tokens.weight") } else { get("lm_head.weight") };
    x.iter().map(|r| linear(&norm(r, &get("model.norm.weight")), &head, cfg.vocab)).collect()
}
