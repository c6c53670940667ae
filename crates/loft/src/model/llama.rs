//! The Llama forward pass for inference, with a KV cache. Legend: T = new tokens, C = hidden_size,
//! F = intermediate_size, V = vocab_size, NH/NKV = query/key-value heads, D = head_dim.

use crate::engine::attention::{attention_forward, attention_forward_cached};
use crate::engine::rmsnorm::rmsnorm_forward;
use crate::engine::rope::{rope_forward, Rope};
use crate::engine::swiglu::swiglu_forward;
use crate::error::{Error, Result};
use crate::model::config::LlamaConfig;
use crate::model::weights::LlamaWeights;

pub struct Llama {
    pub config: LlamaConfig,
    pub weights: LlamaWeights,
    pub rope: Rope,
}

/// Keys and values of every layer for the positions seen so far: k[layer]: [capacity, NKV·D].
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    pub len: usize,
    pub capacity: usize,
}

impl KvCache {
    pub fn new(cfg: &LlamaConfig, capacity: usize) -> Self {
        let per_layer = capacity * cfg.kv_dim();
        KvCache {
            k: (0..cfg.num_hidden_layers).map(|_| vec![0.0; per_layer]).collect(),
            v: (0..cfg.num_hidden_layers).map(|_| vec![0.0; per_layer]).collect(),
            len: 0,
            capacity,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl Llama {
    pub fn new(config: LlamaConfig, weights: LlamaWeights) -> Self {
        let rope = Rope::new(config.head_dim, config.rope_theta, config.rope_scaling.as_ref());
        Llama { config, weights, rope }
    }

    /// Runs `tokens` at positions cache.len.. and appends their keys and values to the cache. Returns the final
    /// normalised hidden states [T, C]; [`Llama::logits`] turns rows of it into logits.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let (t, c, f) = (tokens.len(), cfg.hidden_size, cfg.intermediate_size);
        let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let p0 = cache.len;
        if p0 + t > cache.capacity {
            return Err(Error::hinted(
                format!("{} tokens do not fit the context: {} already used of {}", t, p0, cache.capacity),
                "shorten the prompt or lower --max-new-tokens",
            ));
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab_size)));
        }
        let w = &self.weights;
        // x: [T, C], the residual stream.
        let mut x = vec![0.0f32; t * c];
        for (row, &id) in x.chunks_exact_mut(c).zip(tokens) {
            w.embed_tokens.row_into(id as usize, row);
        }
        let (cos, sin) = self.rope.tables(p0..p0 + t);
        let mut h = vec![0.0f32; t * c]; // normalised input of a sublayer: [T, C]
        let mut q = vec![0.0f32; t * qd]; // [T, NH·D]
        let mut att = vec![0.0f32; t * qd]; // [T, NH·D]
        let mut gate = vec![0.0f32; t * f]; // [T, F]
        let mut up = vec![0.0f32; t * f]; // [T, F]
        let mut act = vec![0.0f32; t * f]; // [T, F]
        let mut lse = vec![0.0f32; if p0 == 0 { nh * t } else { 0 }]; // [NH, T], unused here
        for (layer, (kc, vc)) in w.layers.iter().zip(cache.k.iter_mut().zip(cache.v.iter_mut())) {
            // x = x + o_proj(attention(rope(q_proj(h)), rope(k_proj(h)), v_proj(h))), h = rmsnorm(x)
            rmsnorm_forward(&mut h, &x, &layer.input_layernorm, c, cfg.rms_norm_eps);
            layer.q_proj.forward(&mut q, &h, t, false);
            let (knew, vnew) = (&mut kc[p0 * kvd..(p0 + t) * kvd], &mut vc[p0 * kvd..(p0 + t) * kvd]);
            layer.k_proj.forward(knew, &h, t, false);
            layer.v_proj.forward(vnew, &h, t, false);
            rope_forward(&mut q, t, nh, d, &cos, &sin);
            rope_forward(knew, t, nkv, d, &cos, &sin);
            if p0 == 0 {
                // A fresh sequence: the tiled kernel (gemm on blocks of queries and keys) is several times faster.
                attention_forward(&mut att, &mut lse, &q, &kc[..t * kvd], &vc[..t * kvd], None, 1, t, nh, nkv, d);
            } else {
                attention_forward_cached(&mut att, &q, &kc[..(p0 + t) * kvd], &vc[..(p0 + t) * kvd], t, p0, nh, nkv, d);
            }
            layer.o_proj.forward(&mut x, &att, t, true);

            // x = x + down_proj(silu(gate_proj(h)) · up_proj(h)), h = rmsnorm(x)
            rmsnorm_forward(&mut h, &x, &layer.post_attention_layernorm, c, cfg.rms_norm_eps);
            layer.gate_proj.forward(&mut gate, &h, t, false);
            layer.up_proj.forward(&mut up, &h, t, false);
            swiglu_forward(&mut act, &gate, &up);
            layer.down_proj.forward(&mut x, &act, t, true);
        }
        cache.len = p0 + t;
        rmsnorm_forward(&mut h, &x, &w.norm, c, cfg.rms_norm_eps);
        Ok(h)
    }

    /// logits[N, V] for hidden rows [N, C].
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        let c = self.config.hidden_size;
        let n = hidden.len() / c;
        let head = self.weights.head();
        let mut logits = vec![0.0f32; n * head.rows];
        head.forward(&mut logits, hidden, n, false);
        logits
    }

    /// Negative log-likelihood of each next token: nll[i] = -log p(tokens[i+1] | tokens[..=i]), for i < T-1.
    /// Logits are computed a chunk of rows at a time, so memory stays at chunk × V.
    pub fn next_token_nll(&self, tokens: &[u32]) -> Result<Vec<f64>> {
        let mut cache = KvCache::new(&self.config, tokens.len());
        let hidden = self.forward(tokens, &mut cache)?;
        let c = self.config.hidden_size;
        let n = tokens.len().saturating_sub(1);
        let mut nll = Vec::with_capacity(n);
        const CHUNK: usize = 64;
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let logits = self.logits(&hidden[start * c..end * c]);
            let v = logits.len() / (end - start);
            for (i, row) in logits.chunks_exact(v).enumerate() {
                let target = tokens[start + i + 1] as usize;
                nll.push(log_sum_exp(row) - row[target] as f64);
            }
        }
        Ok(nll)
    }
}

/// log Σ exp(row), in f64 for a stable mean over thousands of positions.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max as f64 + sum.ln()
}
