//! The Llama forward and backward for training a LoRA adapter: only the gradients that are needed (the adapter's
//! A and B, and the embedding/head when trained in full) — the frozen base weights get none. Activations live in
//! an arena allocated once per shape; with gradient checkpointing only each block's input is kept and the block is
//! recomputed during the backward.
//!
//! Legend: B = batch, T = time, N = B·T rows, C = hidden_size, F = intermediate_size, V = vocab_size,
//! NH/NKV = query/key-value heads, D = head_dim, Q = NH·D, KV = NKV·D, R = LoRA rank, L = layers.

use crate::data::Batch;
use crate::engine::attention::{attention_backward, attention_forward};
use crate::engine::cross_entropy::{cross_entropy_forward, cross_entropy_forward_backward, CrossEntropyScratch};
use crate::engine::embedding::{embedding_backward, embedding_forward, VocabMatrix};
use crate::engine::lora::{lora_backward, lora_forward};
use crate::engine::rmsnorm::{rmsnorm_backward, rmsnorm_forward_train};
use crate::engine::rope::{rope_backward, rope_forward};
use crate::engine::swiglu::{swiglu_backward, swiglu_forward};
use crate::engine::{LoraDropout, LoraWeights};
use crate::error::{Error, Result};
use crate::lora::Adapter;
use crate::model::weights::LlamaLayer;
use crate::model::{Llama, TargetModule};
use crate::rng::SplitMix64;

/// What one layer keeps from its forward for the backward. Each buffer's shape is stated where it is allocated.
struct LayerActs {
    rstd1: Vec<f32>,   // [N]
    h1: Vec<f32>,      // [N, C]   rmsnorm(x_in)
    q: Vec<f32>,       // [N, Q]   after RoPE
    k: Vec<f32>,       // [N, KV]  after RoPE
    v: Vec<f32>,       // [N, KV]
    att: Vec<f32>,     // [N, Q]   attention output
    lse: Vec<f32>,     // [B, NH, T]
    x_mid: Vec<f32>,   // [N, C]   x_in + o_proj(att)
    rstd2: Vec<f32>,   // [N]
    h2: Vec<f32>,      // [N, C]   rmsnorm(x_mid)
    gate: Vec<f32>,    // [N, F]
    up: Vec<f32>,      // [N, F]
    act: Vec<f32>,     // [N, F]   silu(gate)·up
    xa: [Vec<f32>; 7], // [N, R] per adapted module (empty when not adapted)
}

impl LayerActs {
    fn new(n: usize, b: usize, t: usize, dims: &Dims, adapted: &[bool; 7]) -> Self {
        let z = |len: usize| vec![0.0f32; len];
        LayerActs {
            rstd1: z(n),
            h1: z(n * dims.c),
            q: z(n * dims.q),
            k: z(n * dims.kv),
            v: z(n * dims.kv),
            att: z(n * dims.q),
            lse: z(b * dims.nh * t),
            x_mid: z(n * dims.c),
            rstd2: z(n),
            h2: z(n * dims.c),
            gate: z(n * dims.f),
            up: z(n * dims.f),
            act: z(n * dims.f),
            xa: std::array::from_fn(|m| if adapted[m] { z(n * dims.r) } else { Vec::new() }),
        }
    }

    fn floats(&self) -> usize {
        let fixed = [
            &self.rstd1,
            &self.h1,
            &self.q,
            &self.k,
            &self.v,
            &self.att,
            &self.lse,
            &self.x_mid,
            &self.rstd2,
            &self.h2,
            &self.gate,
            &self.up,
            &self.act,
        ];
        fixed.iter().map(|v| v.len()).sum::<usize>() + self.xa.iter().map(|v| v.len()).sum::<usize>()
    }
}

#[derive(Clone, Copy, Debug)]
struct Dims {
    c: usize,
    f: usize,
    q: usize,
    kv: usize,
    nh: usize,
    nkv: usize,
    d: usize,
    r: usize,
}

/// Gradient-side scratch, reused by every layer.
struct GradScratch {
    dx: Vec<f32>,       // [N, C] gradient of the residual stream
    dh: Vec<f32>,       // [N, C] gradient of a norm's output
    d_att: Vec<f32>,    // [N, Q]
    dq: Vec<f32>,       // [N, Q]
    dk: Vec<f32>,       // [N, KV]
    dv: Vec<f32>,       // [N, KV]
    dk_heads: Vec<f32>, // [B, NH, T, D]
    dv_heads: Vec<f32>, // [B, NH, T, D]
    d_act: Vec<f32>,    // [N, F]
    dgate: Vec<f32>,    // [N, F]
    dup: Vec<f32>,      // [N, F]
    dxa: Vec<f32>,      // [N, R]
}

/// The activation arena of one (B, T) shape, allocated once and reused by every micro-batch of that shape.
pub struct TrainArena {
    b: usize,
    t: usize,
    /// Rows the buffers were allocated for; `fit` reshapes to any B·T up to it without allocating.
    capacity: usize,
    dims: Dims,
    checkpointing: bool,
    /// Residual stream at each block's input, and after the last block: L+1 × [N, C].
    xs: Vec<Vec<f32>>,
    /// Per layer (or one, recomputed per layer, with checkpointing).
    acts: Vec<LayerActs>,
    rstd_f: Vec<f32>, // [N]
    h_f: Vec<f32>,    // [N, C] final norm output
    cos: Vec<f32>,    // [N, D/2]
    sin: Vec<f32>,    // [N, D/2]
    xd: Vec<f32>,     // [N, max(C, F, Q)] dropout scratch
    grads: GradScratch,
    ce: CrossEntropyScratch,
}

/// Rows of logits the fused head holds at once.
const HEAD_CHUNK: usize = 256;

impl TrainArena {
    /// Bytes the arena would take for this shape, without allocating it.
    pub fn estimate_bytes(model: &Llama, adapter: &Adapter, b: usize, t: usize, checkpointing: bool) -> usize {
        let (dims, adapted) = dims_of(model, adapter);
        let n = b * t;
        let per_layer = {
            let fixed = n * (2 + 4 * dims.c + 2 * dims.q + 2 * dims.kv + 3 * dims.f) + b * dims.nh * t;
            fixed + adapted.iter().filter(|&&a| a).count() * n * dims.r
        };
        let layers = if checkpointing { 1 } else { model.config.num_hidden_layers };
        let xs = (model.config.num_hidden_layers + 1) * n * dims.c;
        let misc = n * (1 + dims.c + dims.d + dims.c.max(dims.f).max(dims.q));
        let grads = n * (2 * dims.c + 2 * dims.q + 2 * dims.kv + 2 * dims.q + 3 * dims.f + dims.r);
        let ce = HEAD_CHUNK.min(n) * (2 * dims.c + model.config.vocab_size);
        4 * (per_layer * layers + xs + misc + grads + ce)
    }

    pub fn new(model: &Llama, adapter: &Adapter, b: usize, t: usize, checkpointing: bool) -> Self {
        let (dims, adapted) = dims_of(model, adapter);
        let n = b * t;
        let layers = if checkpointing { 1 } else { model.config.num_hidden_layers };
        let z = |len: usize| vec![0.0f32; len];
        TrainArena {
            b,
            t,
            capacity: n,
            dims,
            checkpointing,
            xs: (0..=model.config.num_hidden_layers).map(|_| z(n * dims.c)).collect(),
            acts: (0..layers).map(|_| LayerActs::new(n, b, t, &dims, &adapted)).collect(),
            rstd_f: z(n),
            h_f: z(n * dims.c),
            cos: z(n * dims.d / 2),
            sin: z(n * dims.d / 2),
            xd: if adapter.config.lora_dropout > 0.0 { z(n * dims.c.max(dims.f).max(dims.q)) } else { Vec::new() },
            grads: GradScratch {
                dx: z(n * dims.c),
                dh: z(n * dims.c),
                d_att: z(n * dims.q),
                dq: z(n * dims.q),
                dk: z(n * dims.kv),
                dv: z(n * dims.kv),
                dk_heads: z(n * dims.q),
                dv_heads: z(n * dims.q),
                d_act: z(n * dims.f),
                dgate: z(n * dims.f),
                dup: z(n * dims.f),
                dxa: z(n * dims.r),
            },
            ce: CrossEntropyScratch::new(HEAD_CHUNK.min(n), dims.c, model.config.vocab_size),
        }
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.b, self.t)
    }

    /// Reshapes the arena for a B×T micro-batch with B·T no larger than the shape it was allocated for, without
    /// allocating (the buffers shrink and grow within their capacity). Padded batches vary in length; one arena
    /// sized for the longest serves them all.
    pub fn fit(&mut self, b: usize, t: usize) -> Result<()> {
        let n = b * t;
        if n == 0 || n > self.capacity {
            return Err(Error::Invalid(format!(
                "a {b}×{t} batch does not fit the arena allocated for {} rows",
                self.capacity
            )));
        }
        if (b, t) == (self.b, self.t) {
            return Ok(());
        }
        let d = self.dims;
        let set = |v: &mut Vec<f32>, len: usize| {
            if !v.is_empty() || len == 0 {
                v.resize(len, 0.0);
            }
        };
        for x in &mut self.xs {
            set(x, n * d.c);
        }
        for a in &mut self.acts {
            set(&mut a.rstd1, n);
            set(&mut a.h1, n * d.c);
            set(&mut a.q, n * d.q);
            set(&mut a.k, n * d.kv);
            set(&mut a.v, n * d.kv);
            set(&mut a.att, n * d.q);
            set(&mut a.lse, n * d.nh);
            set(&mut a.x_mid, n * d.c);
            set(&mut a.rstd2, n);
            set(&mut a.h2, n * d.c);
            set(&mut a.gate, n * d.f);
            set(&mut a.up, n * d.f);
            set(&mut a.act, n * d.f);
            for xa in &mut a.xa {
                set(xa, n * d.r);
            }
        }
        set(&mut self.rstd_f, n);
        set(&mut self.h_f, n * d.c);
        set(&mut self.cos, n * d.d / 2);
        set(&mut self.sin, n * d.d / 2);
        set(&mut self.xd, n * d.c.max(d.f).max(d.q));
        let g = &mut self.grads;
        for (v, w) in [
            (&mut g.dx, d.c),
            (&mut g.dh, d.c),
            (&mut g.d_att, d.q),
            (&mut g.dq, d.q),
            (&mut g.dk, d.kv),
            (&mut g.dv, d.kv),
            (&mut g.dk_heads, d.q),
            (&mut g.dv_heads, d.q),
            (&mut g.d_act, d.f),
            (&mut g.dgate, d.f),
            (&mut g.dup, d.f),
            (&mut g.dxa, d.r),
        ] {
            set(v, n * w);
        }
        (self.b, self.t) = (b, t);
        Ok(())
    }

    /// Bytes actually held (for the memory report).
    pub fn bytes(&self) -> usize {
        let acts: usize = self.acts.iter().map(|a| a.floats()).sum();
        let xs: usize = self.xs.iter().map(|x| x.len()).sum();
        let g = &self.grads;
        let grads =
            [&g.dx, &g.dh, &g.d_att, &g.dq, &g.dk, &g.dv, &g.dk_heads, &g.dv_heads, &g.d_act, &g.dgate, &g.dup, &g.dxa]
                .iter()
                .map(|v| v.len())
                .sum::<usize>();
        4 * (acts + xs + grads + self.rstd_f.len() + self.h_f.len() + self.cos.len() * 2 + self.xd.len())
    }
}

fn dims_of(model: &Llama, adapter: &Adapter) -> (Dims, [bool; 7]) {
    let cfg = &model.config;
    let dims = Dims {
        c: cfg.hidden_size,
        f: cfg.intermediate_size,
        q: cfg.q_dim(),
        kv: cfg.kv_dim(),
        nh: cfg.num_attention_heads,
        nkv: cfg.num_key_value_heads,
        d: cfg.head_dim,
        r: adapter.config.r,
    };
    let mut adapted = [false; 7];
    for t in &adapter.config.target_modules {
        adapted[t.index()] = true;
    }
    (dims, adapted)
}

/// The [V, C] matrices the embedding and the head read: trained copies where the adapter has them.
fn embedding_matrix<'a>(model: &'a Llama, adapter: &'a Adapter) -> VocabMatrix<'a> {
    match &adapter.embed_tokens {
        Some(e) => VocabMatrix::Trained(e),
        None => VocabMatrix::Frozen(&model.weights.embed_tokens),
    }
}

fn head_matrix<'a>(model: &'a Llama, adapter: &'a Adapter) -> VocabMatrix<'a> {
    match (&adapter.lm_head, &adapter.embed_tokens, model.config.tie_word_embeddings) {
        (Some(h), _, _) => VocabMatrix::Trained(h),
        (None, Some(e), true) if adapter.config.train_lm_head || adapter.config.train_embed_tokens => {
            VocabMatrix::Trained(e)
        }
        _ => VocabMatrix::Frozen(model.weights.head()),
    }
}

/// Dropout for module `m` of layer `l` in the micro-batch seeded `seed` (None: evaluation, no dropout): the same
/// in the forward, the recompute and the backward.
fn dropout_for(adapter: &Adapter, seed: Option<u64>, l: usize, m: usize) -> Option<LoraDropout> {
    let (p, seed) = (adapter.config.lora_dropout, seed?);
    (p > 0.0).then(|| LoraDropout { p, seed: SplitMix64::new(seed ^ ((l * 7 + m) as u64) << 20).next_u64() })
}

/// y = x·Wᵀ (+ the LoRA branch when module `m` is adapted), saving xa.
#[allow(clippy::too_many_arguments)]
fn linear_forward(
    y: &mut [f32],
    xa: &mut [f32],
    xd: &mut [f32],
    x: &[f32],
    layer: &LlamaLayer,
    lora: &[Option<LoraWeights>; 7],
    m: TargetModule,
    dropout: Option<LoraDropout>,
    n: usize,
    accumulate: bool,
) {
    let w = layer.module(m);
    match &lora[m.index()] {
        Some(l) => lora_forward(y, xa, xd, x, w, l, dropout, n, accumulate),
        None => w.forward(y, x, n, accumulate),
    }
}

/// Backward of [`linear_forward`]: dx (overwritten or accumulated), and the adapter's dA, dB (accumulated).
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    dx: &mut [f32],
    grads: &mut [Option<LoraWeights>; 7],
    dxa: &mut [f32],
    xd: &mut [f32],
    dy: &[f32],
    x: &[f32],
    xa: &[f32],
    layer: &LlamaLayer,
    lora: &[Option<LoraWeights>; 7],
    m: TargetModule,
    dropout: Option<LoraDropout>,
    n: usize,
    accumulate: bool,
) {
    let w = layer.module(m);
    match (&lora[m.index()], &mut grads[m.index()]) {
        (Some(l), Some(g)) => lora_backward(dx, &mut g.a, &mut g.b, dxa, xd, dy, x, xa, w, l, dropout, n, accumulate),
        _ => w.backward_input(dx, dy, n, accumulate),
    }
}

/// One block's forward: x_out = x_mid + mlp(rmsnorm(x_mid)), x_mid = x_in + attn(rmsnorm(x_in)).
#[allow(clippy::too_many_arguments)]
fn block_forward(
    model: &Llama,
    adapter: &Adapter,
    l: usize,
    acts: &mut LayerActs,
    xd: &mut [f32],
    x_in: &[f32],
    x_out: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    batch: &Batch,
    seed: Option<u64>,
) {
    let cfg = &model.config;
    let layer = &model.weights.layers[l];
    let lora = &adapter.layers[l];
    let dm = &dims_of(model, adapter).0;
    let (n, b, t) = (batch.b * batch.t, batch.b, batch.t);
    let drop = |m: TargetModule| dropout_for(adapter, seed, l, m.index());
    let a = acts;
    let [xa_q, xa_k, xa_v, xa_o, xa_gate, xa_up, xa_down] = &mut a.xa;

    // x_mid = x_in + o_proj(attention(rope(q_proj(h1)), rope(k_proj(h1)), v_proj(h1))), h1 = rmsnorm(x_in)
    rmsnorm_forward_train(&mut a.h1, &mut a.rstd1, x_in, &layer.input_layernorm, n, dm.c, cfg.rms_norm_eps);
    linear_forward(&mut a.q, xa_q, xd, &a.h1, layer, lora, TargetModule::QProj, drop(TargetModule::QProj), n, false);
    linear_forward(&mut a.k, xa_k, xd, &a.h1, layer, lora, TargetModule::KProj, drop(TargetModule::KProj), n, false);
    linear_forward(&mut a.v, xa_v, xd, &a.h1, layer, lora, TargetModule::VProj, drop(TargetModule::VProj), n, false);
    rope_forward(&mut a.q, n, dm.nh, dm.d, cos, sin);
    rope_forward(&mut a.k, n, dm.nkv, dm.d, cos, sin);
    attention_forward(&mut a.att, &mut a.lse, &a.q, &a.k, &a.v, batch.doc_start.as_deref(), b, t, dm.nh, dm.nkv, dm.d);
    a.x_mid.copy_from_slice(x_in);
    linear_forward(
        &mut a.x_mid,
        xa_o,
        xd,
        &a.att,
        layer,
        lora,
        TargetModule::OProj,
        drop(TargetModule::OProj),
        n,
        true,
    );

    // x_out = x_mid + down_proj(silu(gate_proj(h2)) · up_proj(h2)), h2 = rmsnorm(x_mid)
    rmsnorm_forward_train(
        &mut a.h2,
        &mut a.rstd2,
        &a.x_mid,
        &layer.post_attention_layernorm,
        n,
        dm.c,
        cfg.rms_norm_eps,
    );
    let (g, u) = (TargetModule::GateProj, TargetModule::UpProj);
    linear_forward(&mut a.gate, xa_gate, xd, &a.h2, layer, lora, g, drop(g), n, false);
    linear_forward(&mut a.up, xa_up, xd, &a.h2, layer, lora, u, drop(u), n, false);
    swiglu_forward(&mut a.act, &a.gate, &a.up);
    x_out.copy_from_slice(&a.x_mid);
    let dn = TargetModule::DownProj;
    linear_forward(x_out, xa_down, xd, &a.act, layer, lora, dn, drop(dn), n, true);
}

/// Backward of [`block_forward`]. On entry g.dx holds ∂loss/∂x_out; on return, ∂loss/∂x_in.
#[allow(clippy::too_many_arguments)]
fn block_backward(
    model: &Llama,
    adapter: &Adapter,
    grads: &mut Adapter,
    l: usize,
    a: &LayerActs,
    g: &mut GradScratch,
    xd: &mut [f32],
    x_in: &[f32],
    cos: &[f32],
    sin: &[f32],
    batch: &Batch,
    seed: u64,
) {
    let layer = &model.weights.layers[l];
    let lora = &adapter.layers[l];
    let lgrads = &mut grads.layers[l];
    let dm = &dims_of(model, adapter).0;
    let (n, b, t) = (batch.b * batch.t, batch.b, batch.t);
    let drop = |m: TargetModule| dropout_for(adapter, Some(seed), l, m.index());
    let [xa_q, xa_k, xa_v, xa_o, xa_gate, xa_up, xa_down] = &a.xa;

    // MLP: x_out = x_mid + down(act), act = silu(gate)·up, gate/up = lin(h2), h2 = rmsnorm(x_mid)
    let (dn, gt, up) = (TargetModule::DownProj, TargetModule::GateProj, TargetModule::UpProj);
    linear_backward(&mut g.d_act, lgrads, &mut g.dxa, xd, &g.dx, &a.act, xa_down, layer, lora, dn, drop(dn), n, false);
    swiglu_backward(&mut g.dgate, &mut g.dup, &g.d_act, &a.gate, &a.up);
    linear_backward(&mut g.dh, lgrads, &mut g.dxa, xd, &g.dgate, &a.h2, xa_gate, layer, lora, gt, drop(gt), n, false);
    linear_backward(&mut g.dh, lgrads, &mut g.dxa, xd, &g.dup, &a.h2, xa_up, layer, lora, up, drop(up), n, true);
    rmsnorm_backward(&mut g.dx, None, &g.dh, &a.x_mid, &layer.post_attention_layernorm, &a.rstd2, n, dm.c);

    // Attention: x_mid = x_in + o(att), att = attention(q, k, v), q/k/v = rope/lin(h1), h1 = rmsnorm(x_in)
    let (o, q, k, v) = (TargetModule::OProj, TargetModule::QProj, TargetModule::KProj, TargetModule::VProj);
    linear_backward(&mut g.d_att, lgrads, &mut g.dxa, xd, &g.dx, &a.att, xa_o, layer, lora, o, drop(o), n, false);
    attention_backward(
        &mut g.dq,
        &mut g.dk,
        &mut g.dv,
        &mut g.dk_heads,
        &mut g.dv_heads,
        &g.d_att,
        &a.q,
        &a.k,
        &a.v,
        &a.att,
        &a.lse,
        batch.doc_start.as_deref(),
        b,
        t,
        dm.nh,
        dm.nkv,
        dm.d,
    );
    rope_backward(&mut g.dq, n, dm.nh, dm.d, cos, sin);
    rope_backward(&mut g.dk, n, dm.nkv, dm.d, cos, sin);
    linear_backward(&mut g.dh, lgrads, &mut g.dxa, xd, &g.dq, &a.h1, xa_q, layer, lora, q, drop(q), n, false);
    linear_backward(&mut g.dh, lgrads, &mut g.dxa, xd, &g.dk, &a.h1, xa_k, layer, lora, k, drop(k), n, true);
    linear_backward(&mut g.dh, lgrads, &mut g.dxa, xd, &g.dv, &a.h1, xa_v, layer, lora, v, drop(v), n, true);
    rmsnorm_backward(&mut g.dx, None, &g.dh, x_in, &layer.input_layernorm, &a.rstd1, n, dm.c);
}

/// Checks a micro-batch against the model and arena before any work.
fn check_batch(model: &Llama, arena: &TrainArena, batch: &Batch) -> Result<()> {
    let n = batch.b * batch.t;
    if (batch.b, batch.t) != arena.shape() {
        return Err(Error::Invalid(format!(
            "batch is {}×{}, the arena was sized for {}×{}",
            batch.b, batch.t, arena.b, arena.t
        )));
    }
    if batch.input_ids.len() != n || batch.targets.len() != n || batch.positions.len() != n {
        return Err(Error::Invalid("batch: ids, targets and positions must each hold B·T entries".into()));
    }
    let v = model.config.vocab_size;
    if let Some(bad) = batch.input_ids.iter().find(|&&id| id as usize >= v) {
        return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary of {v}")));
    }
    if let Some(bad) = batch.targets.iter().find(|&&id| id >= v as i32) {
        return Err(Error::Invalid(format!("target id {bad} is outside the vocabulary of {v}")));
    }
    Ok(())
}

/// Runs the blocks forward, filling the arena (all layers, or only the block inputs with checkpointing).
fn forward_blocks(model: &Llama, adapter: &Adapter, arena: &mut TrainArena, batch: &Batch, seed: Option<u64>) {
    let c = model.config.hidden_size;
    let (cos, sin) = model.rope.tables(batch.positions.iter().map(|&p| p as usize));
    arena.cos.copy_from_slice(&cos);
    arena.sin.copy_from_slice(&sin);
    embedding_forward(&mut arena.xs[0], &batch.input_ids, embedding_matrix(model, adapter), c);
    for l in 0..model.config.num_hidden_layers {
        let (before, after) = arena.xs.split_at_mut(l + 1);
        let acts = &mut arena.acts[if arena.checkpointing { 0 } else { l }];
        block_forward(
            model,
            adapter,
            l,
            acts,
            &mut arena.xd,
            &before[l],
            &mut after[0],
            &arena.cos,
            &arena.sin,
            batch,
            seed,
        );
    }
    let last = &arena.xs[model.config.num_hidden_layers];
    rmsnorm_forward_train(
        &mut arena.h_f,
        &mut arena.rstd_f,
        last,
        &model.weights.norm,
        batch.b * batch.t,
        c,
        model.config.rms_norm_eps,
    );
}

/// Loss only (evaluation): (Σ of the target tokens' negative log-likelihood, number of target tokens).
pub fn loss(model: &Llama, adapter: &Adapter, arena: &mut TrainArena, batch: &Batch) -> Result<(f64, usize)> {
    check_batch(model, arena, batch)?;
    forward_blocks(model, adapter, arena, batch, None);
    let c = model.config.hidden_size;
    Ok(cross_entropy_forward(&mut arena.ce, &arena.h_f, head_matrix(model, adapter), &batch.targets, c))
}

/// Forward and backward of one micro-batch. Gradients are ACCUMULATED into `grads` (same shapes as the adapter),
/// scaled by `grad_scale` (1 / target tokens of the whole step, so micro-batches add up to the mean loss's
/// gradient). `seed` draws the LoRA dropout masks. Returns (loss sum, target tokens), unscaled.
pub fn forward_backward(
    model: &Llama,
    adapter: &Adapter,
    grads: &mut Adapter,
    arena: &mut TrainArena,
    batch: &Batch,
    grad_scale: f32,
    seed: u64,
) -> Result<(f64, usize)> {
    check_batch(model, arena, batch)?;
    let (c, n, layers) = (model.config.hidden_size, batch.b * batch.t, model.config.num_hidden_layers);
    forward_blocks(model, adapter, arena, batch, Some(seed));

    // Head and loss: the head's gradient goes to the trained head (lm_head, or the tied embedding) if any.
    let tied_trained = adapter.lm_head.is_none() && matches!(head_matrix(model, adapter), VocabMatrix::Trained(_));
    let dhead: Option<&mut [f32]> = if grads.lm_head.is_some() {
        grads.lm_head.as_deref_mut()
    } else if tied_trained {
        grads.embed_tokens.as_deref_mut()
    } else {
        None
    };
    let g = &mut arena.grads;
    let (loss_sum, count) = cross_entropy_forward_backward(
        &mut g.dh,
        dhead,
        &mut arena.ce,
        &arena.h_f,
        head_matrix(model, adapter),
        &batch.targets,
        c,
        grad_scale,
    );
    if !loss_sum.is_finite() {
        return Err(Error::hinted(
            format!("the loss is {loss_sum} (not finite)"),
            "lower the learning rate, or check the data for empty or corrupt samples",
        ));
    }
    g.dx.fill(0.0);
    rmsnorm_backward(&mut g.dx, None, &g.dh, &arena.xs[layers], &model.weights.norm, &arena.rstd_f, n, c);

    for l in (0..layers).rev() {
        let a = if arena.checkpointing {
            // Recompute this block from its saved input; its output (already in xs[l+1]) is not needed again.
            let mut scratch_out = std::mem::take(&mut arena.h_f);
            let acts = &mut arena.acts[0];
            block_forward(
                model,
                adapter,
                l,
                acts,
                &mut arena.xd,
                &arena.xs[l],
                &mut scratch_out,
                &arena.cos,
                &arena.sin,
                batch,
                Some(seed),
            );
            arena.h_f = scratch_out;
            &arena.acts[0]
        } else {
            &arena.acts[l]
        };
        block_backward(
            model,
            adapter,
            grads,
            l,
            a,
            &mut arena.grads,
            &mut arena.xd,
            &arena.xs[l],
            &arena.cos,
            &arena.sin,
            batch,
            seed,
        );
    }
    if let Some(de) = grads.embed_tokens.as_deref_mut() {
        if adapter.config.train_embed_tokens {
            embedding_backward(de, &arena.grads.dx, &batch.input_ids, c);
        }
    }
    Ok((loss_sum, count))
}
