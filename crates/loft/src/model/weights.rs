//! The frozen base weights of a Llama model, named as the Hugging Face checkpoint names them, loaded from any
//! source that can produce a named tensor in Hugging Face layout (a GGUF file, a safetensors folder).

use crate::engine::FrozenMatrix;
use crate::error::{Error, Result};
use crate::model::config::LlamaConfig;

/// A checkpoint that yields tensors by their Hugging Face name, as f32 in Hugging Face layout.
pub trait TensorSource {
    /// Shape (outermost first, as torch prints it) and values, or None when the checkpoint has no such tensor.
    fn tensor(&self, hf_name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>>;
    /// Names the checkpoint in errors.
    fn describe(&self) -> String;
    /// A [rows, cols] weight matrix. The default converts [`TensorSource::tensor`] to f32 storage; sources that
    /// hold quantized blocks may keep them.
    fn matrix(&self, hf_name: &str, rows: usize, cols: usize) -> Result<Option<FrozenMatrix>> {
        Ok(match self.tensor(hf_name)? {
            None => None,
            Some((shape, data)) => {
                check_shape(self, hf_name, &shape, &[rows, cols])?;
                Some(FrozenMatrix::from_f32(rows, cols, data))
            }
        })
    }
    /// The tensor's name as the checkpoint spells it (GGUF names differ), for errors.
    fn stored_name(&self, hf_name: &str) -> String {
        hf_name.to_string()
    }
    /// The checkpoint stores a (1 + w) norm's factor itself, 1 + w (llama.cpp's GGUF), rather than w (Hugging Face).
    fn stores_norm_factor(&self) -> bool {
        false
    }
}

/// The seven linear layers of a Llama block that LoRA can adapt, by their checkpoint names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetModule {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl TargetModule {
    pub const ALL: [TargetModule; 7] = [
        TargetModule::QProj,
        TargetModule::KProj,
        TargetModule::VProj,
        TargetModule::OProj,
        TargetModule::GateProj,
        TargetModule::UpProj,
        TargetModule::DownProj,
    ];

    /// The module's name as PEFT's `target_modules` spells it.
    pub fn name(self) -> &'static str {
        match self {
            TargetModule::QProj => "q_proj",
            TargetModule::KProj => "k_proj",
            TargetModule::VProj => "v_proj",
            TargetModule::OProj => "o_proj",
            TargetModule::GateProj => "gate_proj",
            TargetModule::UpProj => "up_proj",
            TargetModule::DownProj => "down_proj",
        }
    }

    /// The path inside a layer: `self_attn.q_proj`, `mlp.gate_proj`, ….
    pub fn path(self) -> &'static str {
        match self {
            TargetModule::QProj => "self_attn.q_proj",
            TargetModule::KProj => "self_attn.k_proj",
            TargetModule::VProj => "self_attn.v_proj",
            TargetModule::OProj => "self_attn.o_proj",
            TargetModule::GateProj => "mlp.gate_proj",
            TargetModule::UpProj => "mlp.up_proj",
            TargetModule::DownProj => "mlp.down_proj",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(name: &str) -> Option<Self> {
        TargetModule::ALL.into_iter().find(|t| t.name() == name)
    }

    /// (out_features, in_features) of this module in a model of `cfg`'s shape.
    pub fn shape(self, cfg: &LlamaConfig) -> (usize, usize) {
        let (c, f, q, kv) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim());
        match self {
            TargetModule::QProj => (q, c),
            TargetModule::KProj | TargetModule::VProj => (kv, c),
            TargetModule::OProj => (c, q),
            TargetModule::GateProj | TargetModule::UpProj => (f, c),
            TargetModule::DownProj => (c, f),
        }
    }
}

pub struct LlamaLayer {
    pub input_layernorm: Vec<f32>,
    pub q_proj: FrozenMatrix,
    pub k_proj: FrozenMatrix,
    pub v_proj: FrozenMatrix,
    pub o_proj: FrozenMatrix,
    /// `self_attn.{q,k,v}_proj.bias` [Q], [KV], [KV] (Qwen2), frozen.
    pub attention_bias: Option<AttentionBias>,
    /// `self_attn.{q,k}_norm.weight` [D] each (Qwen3, Gemma 3).
    pub qk_norm: Option<QkNorm>,
    /// Llama: the MLP's input norm. Gemma (with `sandwich`): the norm of the attention's output.
    pub post_attention_layernorm: Vec<f32>,
    /// Gemma's MLP input and output norms [C] each.
    pub sandwich: Option<SandwichNorms>,
    pub gate_proj: FrozenMatrix,
    pub up_proj: FrozenMatrix,
    pub down_proj: FrozenMatrix,
}

/// Qwen2's frozen q/k/v biases, added to the projections' outputs (before RoPE).
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionBias {
    pub q_proj: Vec<f32>,
    pub k_proj: Vec<f32>,
    pub v_proj: Vec<f32>,
}

/// Qwen3's per-head RMSNorm weights of q and k, applied to each head's D values before RoPE.
#[derive(Clone, Debug, PartialEq)]
pub struct QkNorm {
    pub q_norm: Vec<f32>,
    pub k_norm: Vec<f32>,
}

/// Gemma's norms of the MLP: `pre_feedforward_layernorm` (its input, Llama's `post_attention_layernorm`) and
/// `post_feedforward_layernorm` (its output, before the residual add).
#[derive(Clone, Debug, PartialEq)]
pub struct SandwichNorms {
    pub pre_feedforward_layernorm: Vec<f32>,
    pub post_feedforward_layernorm: Vec<f32>,
}

/// One tensor of a checkpoint, by its Hugging Face name.
pub struct NamedTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: std::borrow::Cow<'a, [f32]>,
    /// A norm that multiplies by (1 + w), held as that factor ([`crate::model::Arch::norm_plus_one`]): a Hugging
    /// Face checkpoint stores `data − 1`, a GGUF `data`.
    pub norm_factor: bool,
}

impl LlamaLayer {
    /// The MLP's input norm: Gemma's `pre_feedforward_layernorm`, Llama's `post_attention_layernorm`.
    pub fn mlp_norm(&self) -> &[f32] {
        match &self.sandwich {
            Some(s) => &s.pre_feedforward_layernorm,
            None => &self.post_attention_layernorm,
        }
    }

    /// The frozen weight of one of the seven linear modules.
    pub fn module(&self, m: TargetModule) -> &FrozenMatrix {
        use TargetModule as T;
        match m {
            T::QProj => &self.q_proj,
            T::KProj => &self.k_proj,
            T::VProj => &self.v_proj,
            T::OProj => &self.o_proj,
            T::GateProj => &self.gate_proj,
            T::UpProj => &self.up_proj,
            T::DownProj => &self.down_proj,
        }
    }

    pub fn module_mut(&mut self, m: TargetModule) -> &mut FrozenMatrix {
        use TargetModule as T;
        match m {
            T::QProj => &mut self.q_proj,
            T::KProj => &mut self.k_proj,
            T::VProj => &mut self.v_proj,
            T::OProj => &mut self.o_proj,
            T::GateProj => &mut self.gate_proj,
            T::UpProj => &mut self.up_proj,
            T::DownProj => &mut self.down_proj,
        }
    }
}

pub struct LlamaWeights {
    pub embed_tokens: FrozenMatrix,
    pub layers: Vec<LlamaLayer>,
    pub norm: Vec<f32>,
    /// None when tied to `embed_tokens`.
    pub lm_head: Option<FrozenMatrix>,
    /// The norms multiply by (1 + w) and are held as that factor (Gemma).
    pub norm_plus_one: bool,
}

impl LlamaWeights {
    pub fn load(src: &dyn TensorSource, cfg: &LlamaConfig) -> Result<Self> {
        let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<FrozenMatrix> {
            src.matrix(name, rows, cols)?.ok_or_else(|| missing(src, name, &[rows, cols]))
        };
        // A (1 + w) norm is held as its factor: +1 on what a Hugging Face checkpoint stores.
        let plus_one = cfg.arch.norm_plus_one() && !src.stores_norm_factor();
        let norm = |name: &str, len: usize| -> Result<Vec<f32>> {
            let mut w = required(src, name, &[len])?;
            if plus_one {
                w.iter_mut().for_each(|w| *w += 1.0);
            }
            Ok(w)
        };
        let vector = |name: &str| norm(name, c);
        let d = cfg.head_dim;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let attention_bias = match cfg.arch.attention_bias() {
                false => None,
                true => Some(AttentionBias {
                    q_proj: required(src, &format!("{p}.self_attn.q_proj.bias"), &[q])?,
                    k_proj: required(src, &format!("{p}.self_attn.k_proj.bias"), &[kv])?,
                    v_proj: required(src, &format!("{p}.self_attn.v_proj.bias"), &[kv])?,
                }),
            };
            let qk_norm = match cfg.arch.qk_norm() {
                false => None,
                true => Some(QkNorm {
                    q_norm: norm(&format!("{p}.self_attn.q_norm.weight"), d)?,
                    k_norm: norm(&format!("{p}.self_attn.k_norm.weight"), d)?,
                }),
            };
            let sandwich = match cfg.arch.sandwich_norms() {
                false => None,
                true => Some(SandwichNorms {
                    pre_feedforward_layernorm: vector(&format!("{p}.pre_feedforward_layernorm.weight"))?,
                    post_feedforward_layernorm: vector(&format!("{p}.post_feedforward_layernorm.weight"))?,
                }),
            };
            layers.push(LlamaLayer {
                input_layernorm: vector(&format!("{p}.input_layernorm.weight"))?,
                q_proj: matrix(&format!("{p}.self_attn.q_proj.weight"), q, c)?,
                k_proj: matrix(&format!("{p}.self_attn.k_proj.weight"), kv, c)?,
                v_proj: matrix(&format!("{p}.self_attn.v_proj.weight"), kv, c)?,
                o_proj: matrix(&format!("{p}.self_attn.o_proj.weight"), c, q)?,
                attention_bias,
                qk_norm,
                post_attention_layernorm: vector(&format!("{p}.post_attention_layernorm.weight"))?,
                sandwich,
                gate_proj: matrix(&format!("{p}.mlp.gate_proj.weight"), f, c)?,
                up_proj: matrix(&format!("{p}.mlp.up_proj.weight"), f, c)?,
                down_proj: matrix(&format!("{p}.mlp.down_proj.weight"), c, f)?,
            });
        }
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(matrix("lm_head.weight", v, c)?) };
        Ok(LlamaWeights {
            embed_tokens: matrix("model.embed_tokens.weight", v, c)?,
            layers,
            norm: vector("model.norm.weight")?,
            lm_head,
            norm_plus_one: cfg.arch.norm_plus_one(),
        })
    }

    /// Random weights of `cfg`'s shape (benchmarks and tests that need no file): matrices uniform with the
    /// standard deviation transformers initialises with (0.02), norms at 1, biases at 0. With `quantize`, every matrix is
    /// stored in that block type (as a 4-bit base would be).
    pub fn random(cfg: &LlamaConfig, seed: u64, quantize: Option<gguf::GgmlType>) -> Result<Self> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let bound = 0.02f64 * 3f64.sqrt();
        let mut matrix = |rows: usize, cols: usize| -> Result<FrozenMatrix> {
            let data: Vec<f32> = (0..rows * cols).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
            match quantize {
                None => Ok(FrozenMatrix::from_f32(rows, cols, data)),
                Some(t) => {
                    let bytes = gguf::quantize(t, &data, cols)?;
                    FrozenMatrix::from_quantized(rows, cols, t, bytes)
                        .ok_or_else(|| Error::Invalid(format!("cannot store a [{rows}, {cols}] matrix as {t}")))
                }
            }
        };
        let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            layers.push(LlamaLayer {
                input_layernorm: vec![1.0; c],
                q_proj: matrix(q, c)?,
                k_proj: matrix(kv, c)?,
                v_proj: matrix(kv, c)?,
                o_proj: matrix(c, q)?,
                attention_bias: cfg.arch.attention_bias().then(|| AttentionBias {
                    q_proj: vec![0.0; q],
                    k_proj: vec![0.0; kv],
                    v_proj: vec![0.0; kv],
                }),
                qk_norm: cfg
                    .arch
                    .qk_norm()
                    .then(|| QkNorm { q_norm: vec![1.0; cfg.head_dim], k_norm: vec![1.0; cfg.head_dim] }),
                post_attention_layernorm: vec![1.0; c],
                sandwich: cfg.arch.sandwich_norms().then(|| SandwichNorms {
                    pre_feedforward_layernorm: vec![1.0; c],
                    post_feedforward_layernorm: vec![1.0; c],
                }),
                gate_proj: matrix(f, c)?,
                up_proj: matrix(f, c)?,
                down_proj: matrix(c, f)?,
            });
        }
        let embed_tokens = matrix(v, c)?;
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(matrix(v, c)?) };
        Ok(LlamaWeights { embed_tokens, layers, norm: vec![1.0; c], lm_head, norm_plus_one: cfg.arch.norm_plus_one() })
    }

    /// Bytes held by the frozen weights.
    pub fn storage_bytes(&self) -> usize {
        let m = |x: &FrozenMatrix| x.storage_bytes();
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                m(&l.q_proj)
                    + m(&l.k_proj)
                    + m(&l.v_proj)
                    + m(&l.o_proj)
                    + m(&l.gate_proj)
                    + m(&l.up_proj)
                    + m(&l.down_proj)
                    + 4 * (l.input_layernorm.len() + l.post_attention_layernorm.len())
                    + 4 * l.attention_bias.as_ref().map_or(0, |b| b.q_proj.len() + b.k_proj.len() + b.v_proj.len())
                    + 4 * l.qk_norm.as_ref().map_or(0, |n| n.q_norm.len() + n.k_norm.len())
                    + 4 * l
                        .sandwich
                        .as_ref()
                        .map_or(0, |s| s.pre_feedforward_layernorm.len() + s.post_feedforward_layernorm.len())
            })
            .sum();
        per_layer + m(&self.embed_tokens) + self.lm_head.as_ref().map_or(0, m) + 4 * self.norm.len()
    }

    /// Every tensor under its Hugging Face name, in checkpoint order, as f32 in Hugging Face layout; the norms of
    /// a family whose norms multiply by (1 + w) as that factor (`norm_factor`: see [`NamedTensor`]).
    pub fn named_tensors(&self) -> Vec<NamedTensor<'_>> {
        let norm_factor = self.norm_plus_one;
        fn matrix<'a>(name: String, m: &'a FrozenMatrix) -> NamedTensor<'a> {
            NamedTensor { name, shape: vec![m.rows, m.cols], data: m.to_f32(), norm_factor: false }
        }
        fn norm(name: String, v: &[f32], norm_factor: bool) -> NamedTensor<'_> {
            NamedTensor { name, shape: vec![v.len()], data: v.into(), norm_factor }
        }
        let vector = |name: String, v| norm(name, v, norm_factor);
        let mut out = vec![matrix("model.embed_tokens.weight".into(), &self.embed_tokens)];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push(vector(format!("{p}.input_layernorm.weight"), &l.input_layernorm));
            out.push(matrix(format!("{p}.self_attn.q_proj.weight"), &l.q_proj));
            out.push(matrix(format!("{p}.self_attn.k_proj.weight"), &l.k_proj));
            out.push(matrix(format!("{p}.self_attn.v_proj.weight"), &l.v_proj));
            out.push(matrix(format!("{p}.self_attn.o_proj.weight"), &l.o_proj));
            if let Some(b) = &l.attention_bias {
                let bias = |name: String, v| norm(name, v, false);
                out.push(bias(format!("{p}.self_attn.q_proj.bias"), &b.q_proj));
                out.push(bias(format!("{p}.self_attn.k_proj.bias"), &b.k_proj));
                out.push(bias(format!("{p}.self_attn.v_proj.bias"), &b.v_proj));
            }
            if let Some(n) = &l.qk_norm {
                out.push(vector(format!("{p}.self_attn.q_norm.weight"), &n.q_norm));
                out.push(vector(format!("{p}.self_attn.k_norm.weight"), &n.k_norm));
            }
            out.push(vector(format!("{p}.post_attention_layernorm.weight"), &l.post_attention_layernorm));
            if let Some(s) = &l.sandwich {
                out.push(vector(format!("{p}.pre_feedforward_layernorm.weight"), &s.pre_feedforward_layernorm));
                out.push(vector(format!("{p}.post_feedforward_layernorm.weight"), &s.post_feedforward_layernorm));
            }
            out.push(matrix(format!("{p}.mlp.gate_proj.weight"), &l.gate_proj));
            out.push(matrix(format!("{p}.mlp.up_proj.weight"), &l.up_proj));
            out.push(matrix(format!("{p}.mlp.down_proj.weight"), &l.down_proj));
        }
        out.push(vector("model.norm.weight".into(), &self.norm));
        if let Some(h) = &self.lm_head {
            out.push(matrix("lm_head.weight".into(), h));
        }
        out
    }

    /// The output projection: lm_head, or the embedding when tied.
    pub fn head(&self) -> &FrozenMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}

fn missing(src: &dyn TensorSource, hf_name: &str, shape: &[usize]) -> Error {
    Error::hinted(
        format!("{}: tensor '{}' is missing (expected shape {shape:?})", src.describe(), src.stored_name(hf_name)),
        "is this a complete checkpoint of the family its config names? `loft inspect` lists its tensors",
    )
}

/// An error naming the tensor and both shapes unless `got == want`.
pub fn check_shape<S: TensorSource + ?Sized>(src: &S, hf_name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{}: tensor '{}' has shape {got:?}, expected {want:?}",
        src.describe(),
        src.stored_name(hf_name)
    )))
}

fn required(src: &dyn TensorSource, hf_name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    match src.tensor(hf_name)? {
        None => Err(missing(src, hf_name, shape)),
        Some((got, data)) => {
            check_shape(src, hf_name, &got, shape)?;
            Ok(data)
        }
    }
}

/// llama.cpp's converter reorders each head's Q and K rows so that RoPE rotates adjacent pairs: the GGUF row
/// `h·D + 2i + j` holds the Hugging Face row `h·D + j·D/2 + i` (i < D/2, j ∈ {0, 1}). Rows of `row_len` elements
/// move whole, so this works on f32 rows and on packed quantized rows (bytes) alike.
fn reorder_rope_rows<T: Copy + Default>(w: &[T], n_heads: usize, row_len: usize, to_hf: bool) -> Vec<T> {
    let d = w.len() / row_len / n_heads;
    let half = d / 2;
    let mut out = vec![T::default(); w.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let gguf_row = (h * d + 2 * i + j) * row_len;
                let hf_row = (h * d + j * half + i) * row_len;
                let (src, dst) = if to_hf { (gguf_row, hf_row) } else { (hf_row, gguf_row) };
                out[dst..dst + row_len].copy_from_slice(&w[src..src + row_len]);
            }
        }
    }
    out
}

/// GGUF (llama.cpp) row order → Hugging Face row order, f32 rows of `cols`.
pub fn unpermute_rope_rows(w: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    reorder_rope_rows(w, n_heads, cols, true)
}

/// [`unpermute_rope_rows`] on packed rows of `row_bytes` bytes (quantized blocks move with their row).
pub fn unpermute_rope_rows_bytes(w: &[u8], n_heads: usize, row_bytes: usize) -> Vec<u8> {
    reorder_rope_rows(w, n_heads, row_bytes, true)
}

/// The inverse of [`unpermute_rope_rows`]: Hugging Face rows into llama.cpp's order (for GGUF export).
pub fn permute_rope_rows(w: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    reorder_rope_rows(w, n_heads, cols, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permutation_round_trips_and_moves_rows() {
        let (heads, d, cols) = (3, 8, 2);
        let w: Vec<f32> = (0..heads * d * cols).map(|i| i as f32).collect();
        let p = permute_rope_rows(&w, heads, cols);
        assert_eq!(unpermute_rope_rows(&p, heads, cols), w);
        // HF row 1 (first half, i = 1) lands on llama.cpp row 2 (pair 1, element 0).
        assert_eq!(&p[2 * cols..3 * cols], &w[cols..2 * cols]);
        // HF row D/2 (second half, i = 0) lands on llama.cpp row 1.
        assert_eq!(&p[cols..2 * cols], &w[(d / 2) * cols..(d / 2 + 1) * cols]);
    }
}
