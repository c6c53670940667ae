//! Tiny random Llama models built inside the tests, written as GGUF (Q/K rows permuted as llama.cpp's converter
//! does), plus a plain f64 reference forward written from the transformers definition, loop by loop.

use std::collections::BTreeMap;
use std::path::Path;

use gguf::{GgmlType, GgufWriter, Value};
use loft::model::weights::permute_rope_rows;
use loft::rng::SplitMix64;

#[derive(Clone, Debug)]
pub struct TinyConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub tied: bool,
    pub rope_theta: f32,
    pub eps: f32,
}

impl Default for TinyConfig {
    fn default() -> Self {
        TinyConfig {
            vocab: 48,
            hidden: 32,
            ffn: 40,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            tied: true,
            rope_theta: 10000.0,
            eps: 1e-5,
        }
    }
}

impl TinyConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
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
    add("model.embed_tokens.weight".into(), vec![cfg.vocab, c], 1.0, 0.0);
    for i in 0..cfg.layers {
        let p = format!("model.layers.{i}");
        add(format!("{p}.input_layernorm.weight"), vec![c], 0.2, 1.0);
        add(format!("{p}.self_attn.q_proj.weight"), vec![cfg.heads * d, c], 0.3, 0.0);
        add(format!("{p}.self_attn.k_proj.weight"), vec![cfg.kv_heads * d, c], 0.3, 0.0);
        add(format!("{p}.self_attn.v_proj.weight"), vec![cfg.kv_heads * d, c], 0.3, 0.0);
        add(format!("{p}.self_attn.o_proj.weight"), vec![c, cfg.heads * d], 0.3, 0.0);
        add(format!("{p}.post_attention_layernorm.weight"), vec![c], 0.2, 1.0);
        add(format!("{p}.mlp.gate_proj.weight"), vec![f, c], 0.3, 0.0);
        add(format!("{p}.mlp.up_proj.weight"), vec![f, c], 0.3, 0.0);
        add(format!("{p}.mlp.down_proj.weight"), vec![c, f], 0.3, 0.0);
    }
    add("model.norm.weight".into(), vec![c], 0.2, 1.0);
    if !cfg.tied {
        add("lm_head.weight".into(), vec![cfg.vocab, c], 0.3, 0.0);
    }
    w
}

/// Writes the model as an F32 GGUF with llama.cpp's names, metadata and Q/K permutation, and a byte-level
/// vocabulary of `vocab` single-character tokens.
pub fn write_gguf(path: &Path, cfg: &TinyConfig, weights: &Weights) {
    let mut g = GgufWriter::new();
    g.add("general.architecture", Value::String("llama".into()));
    g.add("llama.block_count", Value::U32(cfg.layers as u32));
    g.add("llama.context_length", Value::U32(256));
    g.add("llama.embedding_length", Value::U32(cfg.hidden as u32));
    g.add("llama.feed_forward_length", Value::U32(cfg.ffn as u32));
    g.add("llama.attention.head_count", Value::U32(cfg.heads as u32));
    g.add("llama.attention.head_count_kv", Value::U32(cfg.kv_heads as u32));
    g.add("llama.attention.layer_norm_rms_epsilon", Value::F32(cfg.eps));
    g.add("llama.rope.freq_base", Value::F32(cfg.rope_theta));
    g.add("llama.rope.dimension_count", Value::U32(cfg.head_dim() as u32));
    let tokens: Vec<Value> = (0..cfg.vocab).map(|i| Value::String(char::from(b'!' + i as u8).to_string())).collect();
    g.add("tokenizer.ggml.model", Value::String("gpt2".into()));
    g.add("tokenizer.ggml.pre", Value::String("gpt-2".into()));
    g.add("tokenizer.ggml.tokens", Value::Array(gguf::ValueType::String, tokens));
    g.add("tokenizer.ggml.token_type", Value::Array(gguf::ValueType::I32, vec![Value::I32(1); cfg.vocab]));
    g.add("tokenizer.ggml.merges", Value::Array(gguf::ValueType::String, vec![]));
    for (name, (shape, values)) in weights {
        let gname = gguf::names::hf_to_gguf(name).expect("llama tensor name");
        let cols = *shape.last().unwrap();
        let values = if name.ends_with("q_proj.weight") {
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

/// Logits [T, V] of the whole sequence, in f64, straight from the transformers definition.
pub fn reference_logits(cfg: &TinyConfig, w: &Weights, tokens: &[u32]) -> Vec<Vec<f64>> {
    let get = |n: &str| -> Vec<f64> { w[n].1.iter().map(|&v| v as f64).collect() };
    let (c, d, t) = (cfg.hidden, cfg.head_dim(), tokens.len());
    let linear = |x: &[f64], wt: &[f64], out: usize| -> Vec<f64> {
        (0..out).map(|o| (0..x.len()).map(|i| x[i] * wt[o * x.len() + i]).sum()).collect()
    };
    let norm = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + cfg.eps as f64).sqrt();
        x.iter().zip(g).map(|(v, g)| v * r * g).collect()
    };
    let rope = |v: &mut [f64], pos: usize| {
        for i in 0..d / 2 {
            let inv = 1.0 / (cfg.rope_theta as f64).powf(2.0 * i as f64 / d as f64);
            let (s, co) = (pos as f64 * inv).sin_cos();
            let (a, b) = (v[i], v[i + d / 2]);
            v[i] = a * co - b * s;
            v[i + d / 2] = b * co + a * s;
        }
    };
    let emb = get("model.embed_tokens.weight");
    let mut x: Vec<Vec<f64>> = tokens.iter().map(|&id| emb[id as usize * c..(id as usize + 1) * c].to_vec()).collect();
    for l in 0..cfg.layers {
        let p = |n: &str| get(&format!("model.layers.{l}.{n}.weight"));
        let (wq, wk, wv, wo) =
            (p("self_attn.q_proj"), p("self_attn.k_proj"), p("self_attn.v_proj"), p("self_attn.o_proj"));
        let h: Vec<Vec<f64>> = x.iter().map(|r| norm(r, &p("input_layernorm"))).collect();
        let mut q: Vec<Vec<f64>> = h.iter().map(|r| linear(r, &wq, cfg.heads * d)).collect();
        let mut k: Vec<Vec<f64>> = h.iter().map(|r| linear(r, &wk, cfg.kv_heads * d)).collect();
        let v: Vec<Vec<f64>> = h.iter().map(|r| linear(r, &wv, cfg.kv_heads * d)).collect();
        for pos in 0..t {
            for hh in 0..cfg.heads {
                rope(&mut q[pos][hh * d..(hh + 1) * d], pos);
            }
            for hh in 0..cfg.kv_heads {
                rope(&mut k[pos][hh * d..(hh + 1) * d], pos);
            }
        }
        let group = cfg.heads / cfg.kv_heads;
        for i in 0..t {
            let mut att = vec![0.0; cfg.heads * d];
            for hh in 0..cfg.heads {
                let g = hh / group;
                let s: Vec<f64> = (0..=i)
                    .map(|j| (0..d).map(|e| q[i][hh * d + e] * k[j][g * d + e]).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for j in 0..=i {
                    let pj = (s[j] - m).exp() / z;
                    for e in 0..d {
                        att[hh * d + e] += pj * v[j][g * d + e];
                    }
                }
            }
            let o = linear(&att, &wo, c);
            x[i].iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
        let (wg, wu, wd) = (p("mlp.gate_proj"), p("mlp.up_proj"), p("mlp.down_proj"));
        for row in x.iter_mut() {
            let h = norm(row, &p("post_attention_layernorm"));
            let g = linear(&h, &wg, cfg.ffn);
            let u = linear(&h, &wu, cfg.ffn);
            let a: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let o = linear(&a, &wd, c);
            row.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
    }
    let head = if cfg.tied { get("model.embed_tokens.weight") } else { get("lm_head.weight") };
    x.iter().map(|r| linear(&norm(r, &get("model.norm.weight")), &head, cfg.vocab)).collect()
}
