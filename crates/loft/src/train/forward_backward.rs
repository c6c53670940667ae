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

/// A buffer's width in floats per token row (N = B·T rows): the one place a buffer's shape is stated.
#[derive(Clone, Copy, Debug)]
enum Width {
    One,
    C,
    F,
    Q,
    Kv,
    /// One value per query head (the attention's logsumexp).
    Nh,
    /// D/2: a RoPE cos or sin table.
    HalfD,
    /// The LoRA rank.
    R,
    /// The LoRA rank where module `m` is adapted, else nothing.
    Rank(TargetModule),
    /// The widest LoRA input, max(C, F, Q), when dropout is on (dropped-out input), else nothing.
    Dropout,
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
    adapted: [bool; 7],
    dropout: bool,
}

impl Dims {
    fn width(&self, w: Width) -> usize {
        match w {
            Width::One => 1,
            Width::C => self.c,
            Width::F => self.f,
            Width::Q => self.q,
            Width::Kv => self.kv,
            Width::Nh => self.nh,
            Width::HalfD => self.d / 2,
            Width::R => self.r,
            Width::Rank(m) => {
                if self.adapted[m.index()] {
                    self.r
                } else {
                    0
                }
            }
            Width::Dropout => {
                if self.dropout {
                    self.c.max(self.f).max(self.q)
                } else {
                    0
                }
            }
        }
    }
}

/// Declares a group of arena buffers, one line each (`name: Width, // what it holds`); allocation, `fit`, byte
/// counts and the memory estimate are all derived from that line.
macro_rules! buffers {
    ($(#[$doc:meta])* struct $group:ident { $($name:ident: $width:expr,)* }) => {
        $(#[$doc])*
        struct $group {
            $($name: Vec<f32>,)*
        }

        impl $group {
            const WIDTHS: &'static [Width] = &[$($width),*];

            fn new(rows: usize, d: &Dims) -> Self {
                $group { $($name: vec![0.0; rows * d.width($width)],)* }
            }

            /// Resizes every buffer for `rows` rows, within the capacity it was allocated with.
            fn fit(&mut self, rows: usize, d: &Dims) {
                $(self.$name.resize(rows * d.width($width), 0.0);)*
            }

            fn floats(&self) -> usize {
                0 $(+ self.$name.len())*
            }

            fn floats_for(rows: usize, d: &Dims) -> usize {
                rows * Self::WIDTHS.iter().map(|&w| d.width(w)).sum::<usize>()
            }
        }
    };
}

buffers! {
    /// What one layer keeps from its forward for the backward.
    struct LayerActs {
        rstd1: Width::One,                         // 1 / rms(x_in)
        h1: Width::C,                              // rmsnorm(x_in)
        q: Width::Q,                               // after RoPE
        k: Width::Kv,                              // after RoPE
        v: Width::Kv,
        att: Width::Q,                             // attention output
        lse: Width::Nh,                            // [B, NH, T] logsumexp of the attention rows
        x_mid: Width::C,                           // x_in + o_proj(att)
        rstd2: Width::One,                         // 1 / rms(x_mid)
        h2: Width::C,                              // rmsnorm(x_mid)
        gate: Width::F,
        up: Width::F,
        act: Width::F,                             // silu(gate)·up
        xa_q: Width::Rank(TargetModule::QProj),    // x·Aᵀ of each adapted module
        xa_k: Width::Rank(TargetModule::KProj),
        xa_v: Width::Rank(TargetModule::VProj),
        xa_o: Width::Rank(TargetModule::OProj),
        xa_gate: Width::Rank(TargetModule::GateProj),
        xa_up: Width::Rank(TargetModule::UpProj),
        xa_down: Width::Rank(TargetModule::DownProj),
    }
}

buffers! {
    /// Gradient-side scratch, reused by every layer.
    struct GradScratch {
        dx: Width::C,       // gradient of the residual stream
        dh: Width::C,       // gradient of a norm's output
        d_att: Width::Q,
        dq: Width::Q,
        dk: Width::Kv,
        dv: Width::Kv,
        dk_heads: Width::Q, // [B, NH, T, D] per query head, before the GQA sum
        dv_heads: Width::Q,
        d_act: Width::F,
        dgate: Width::F,
        dup: Width::F,
        dxa: Width::R,
    }
}

buffers! {
    /// Buffers used once per micro-batch, outside the blocks.
    struct Shared {
        rstd_f: Width::One, // 1 / rms of the last block's output
        h_f: Width::C,      // final norm output
        cos: Width::HalfD,  // RoPE tables at each row's position
        sin: Width::HalfD,
        xd: Width::Dropout, // dropped-out LoRA input
    }
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
    shared: Shared,
    grads: GradScratch,
    ce: CrossEntropyScratch,
}

/// Rows of logits the fused head holds at once.
const HEAD_CHUNK: usize = 256;

impl TrainArena {
    /// Bytes the arena takes for this shape, without allocating it: the same sum `bytes()` makes of the buffers.
    pub fn estimate_bytes(model: &Llama, adapter: &Adapter, b: usize, t: usize, checkpointing: bool) -> usize {
        let d = dims_of(model, adapter);
        let (n, layers) = (b * t, model.config.num_hidden_layers);
        let kept = if checkpointing { 1 } else { layers };
        let floats = kept * LayerActs::floats_for(n, &d)
            + (layers + 1) * n * d.c
            + Shared::floats_for(n, &d)
            + GradScratch::floats_for(n, &d)
            + CrossEntropyScratch::floats(HEAD_CHUNK.min(n), d.c, model.config.vocab_size);
        4 * floats
    }

    pub fn new(model: &Llama, adapter: &Adapter, b: usize, t: usize, checkpointing: bool) -> Self {
        let dims = dims_of(model, adapter);
        let (n, layers) = (b * t, model.config.num_hidden_layers);
        let kept = if checkpointing { 1 } else { layers };
        TrainArena {
            b,
            t,
            capacity: n,
            dims,
            checkpointing,
            xs: (0..=layers).map(|_| vec![0.0; n * dims.c]).collect(),
            acts: (0..kept).map(|_| LayerActs::new(n, &dims)).collect(),
            shared: Shared::new(n, &dims),
            grads: GradScratch::new(n, &dims),
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
        for x in &mut self.xs {
            x.resize(n * d.c, 0.0);
        }
        for a in &mut self.acts {
            a.fit(n, &d);
        }
        self.shared.fit(n, &d);
        self.grads.fit(n, &d);
        (self.b, self.t) = (b, t);
        Ok(())
    }

    /// Bytes actually held (for the memory report).
    pub fn bytes(&self) -> usize {
        let acts: usize = self.acts.iter().map(LayerActs::floats).sum();
        let xs: usize = self.xs.iter().map(Vec::len).sum();
        4 * (acts + xs + self.shared.floats() + self.grads.floats() + self.ce.floats_held())
    }
}

fn dims_of(model: &Llama, adapter: &Adapter) -> Dims {
    let cfg = &model.config;
    let mut adapted = [false; 7];
    for t in &adapter.config.target_modules {
        adapted[t.index()] = true;
    }
    Dims {
        c: cfg.hidden_size,
        f: cfg.intermediate_size,
        q: cfg.q_dim(),
        kv: cfg.kv_dim(),
        nh: cfg.num_attention_heads,
        nkv: cfg.num_key_value_heads,
        d: cfg.head_dim,
        r: adapter.config.r,
        adapted,
        dropout: adapter.config.lora_dropout > 0.0,
    }
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
    let dm = &dims_of(model, adapter);
    let (n, b, t) = (batch.b * batch.t, batch.b, batch.t);
    let drop = |m: TargetModule| dropout_for(adapter, seed, l, m.index());
    let a = acts;

    // x_mid = x_in + o_proj(attention(rope(q_proj(h1)), rope(k_proj(h1)), v_proj(h1))), h1 = rmsnorm(x_in)
    rmsnorm_forward_train(&mut a.h1, &mut a.rstd1, x_in, &layer.input_layernorm, n, dm.c, cfg.rms_norm_eps);
    linear_forward(
        &mut a.q,
        &mut a.xa_q,
        xd,
        &a.h1,
        layer,
        lora,
        TargetModule::QProj,
        drop(TargetModule::QProj),
        n,
        false,
    );
    linear_forward(
        &mut a.k,
        &mut a.xa_k,
        xd,
        &a.h1,
        layer,
        lora,
        TargetModule::KProj,
        drop(TargetModule::KProj),
        n,
        false,
    );
    linear_forward(
        &mut a.v,
        &mut a.xa_v,
        xd,
        &a.h1,
        layer,
        lora,
        TargetModule::VProj,
        drop(TargetModule::VProj),
        n,
        false,
    );
    rope_forward(&mut a.q, n, dm.nh, dm.d, cos, sin);
    rope_forward(&mut a.k, n, dm.nkv, dm.d, cos, sin);
    attention_forward(&mut a.att, &mut a.lse, &a.q, &a.k, &a.v, batch.doc_start.as_deref(), b, t, dm.nh, dm.nkv, dm.d);
    a.x_mid.copy_from_slice(x_in);
    linear_forward(
        &mut a.x_mid,
        &mut a.xa_o,
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
    linear_forward(&mut a.gate, &mut a.xa_gate, xd, &a.h2, layer, lora, g, drop(g), n, false);
    linear_forward(&mut a.up, &mut a.xa_up, xd, &a.h2, layer, lora, u, drop(u), n, false);
    swiglu_forward(&mut a.act, &a.gate, &a.up);
    x_out.copy_from_slice(&a.x_mid);
    let dn = TargetModule::DownProj;
    linear_forward(x_out, &mut a.xa_down, xd, &a.act, layer, lora, dn, drop(dn), n, true);
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
    let dm = &dims_of(model, adapter);
    let (n, b, t) = (batch.b * batch.t, batch.b, batch.t);
    let drop = |m: TargetModule| dropout_for(adapter, Some(seed), l, m.index());

    // MLP: x_out = x_mid + down(act), act = silu(gate)·up, gate/up = lin(h2), h2 = rmsnorm(x_mid)
    let (dn, gt, up) = (TargetModule::DownProj, TargetModule::GateProj, TargetModule::UpProj);
    linear_backward(
        &mut g.d_act,
        lgrads,
        &mut g.dxa,
        xd,
        &g.dx,
        &a.act,
        &a.xa_down,
        layer,
        lora,
        dn,
        drop(dn),
        n,
        false,
    );
    swiglu_backward(&mut g.dgate, &mut g.dup, &g.d_act, &a.gate, &a.up);
    linear_backward(
        &mut g.dh,
        lgrads,
        &mut g.dxa,
        xd,
        &g.dgate,
        &a.h2,
        &a.xa_gate,
        layer,
        lora,
        gt,
        drop(gt),
        n,
        false,
    );
    linear_backward(&mut g.dh, lgrads, &mut g.dxa, xd, &g.dup, &a.h2, &a.xa_up, layer, lora, up, drop(up), n, true);
    rmsnorm_backward(&mut g.dx, None, &g.dh, &a.x_mid, &layer.post_attention_layernorm, &a.rstd2, n, dm.c);

    // Attention: x_mid = x_in + o(att), att = attention(q, k, v), q/k/v = rope/lin(h1), h1 = rmsnorm(x_in)
    let (o, q, k, v) = (TargetModule::OProj, TargetModule::QProj, TargetModule::KProj, TargetModule::VProj);
    linear_backward(&mut g.d_att, lgrads, &mut g.dxa, xd, &g.dx, &a.att, &a.xa_o, layer, lora, o, drop(o), n, false);
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
    linear_backward(&mut g.dh, lgrads, &mut g.dxa, xd, &g.dq, &a.h1, &a.xa_q, layer, lora, q, drop(q), n, false);
    linear_backward(&mut g.dh, lgrads, &mut g.dxa, xd, &g.dk, &a.h1, &a.xa_k, layer, lora, k, drop(k), n, true);
    linear_backward(&mut g.dh, lgrads, &mut g.dxa, xd, &g.dv, &a.h1, &a.xa_v, layer, lora, v, drop(v), n, true);
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
    arena.shared.cos.copy_from_slice(&cos);
    arena.shared.sin.copy_from_slice(&sin);
    embedding_forward(&mut arena.xs[0], &batch.input_ids, embedding_matrix(model, adapter), c);
    for l in 0..model.config.num_hidden_layers {
        let (before, after) = arena.xs.split_at_mut(l + 1);
        let acts = &mut arena.acts[if arena.checkpointing { 0 } else { l }];
        block_forward(
            model,
            adapter,
            l,
            acts,
            &mut arena.shared.xd,
            &before[l],
            &mut after[0],
            &arena.shared.cos,
            &arena.shared.sin,
            batch,
            seed,
        );
    }
    let last = &arena.xs[model.config.num_hidden_layers];
    rmsnorm_forward_train(
        &mut arena.shared.h_f,
        &mut arena.shared.rstd_f,
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
    Ok(cross_entropy_forward(&mut arena.ce, &arena.shared.h_f, head_matrix(model, adapter), &batch.targets, c))
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
        &arena.shared.h_f,
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
    rmsnorm_backward(&mut g.dx, None, &g.dh, &arena.xs[layers], &model.weights.norm, &arena.shared.rstd_f, n, c);

    for l in (0..layers).rev() {
        let a = if arena.checkpointing {
            // Recompute this block from its saved input; its output (already in xs[l+1]) is not needed again.
            let mut scratch_out = std::mem::take(&mut arena.shared.h_f);
            let acts = &mut arena.acts[0];
            block_forward(
                model,
                adapter,
                l,
                acts,
                &mut arena.shared.xd,
                &arena.xs[l],
                &mut scratch_out,
                &arena.shared.cos,
                &arena.shared.sin,
                batch,
                Some(seed),
            );
            arena.shared.h_f = scratch_out;
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
            &mut arena.shared.xd,
            &arena.xs[l],
            &arena.shared.cos,
            &arena.shared.sin,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::LoraConfig;
    use crate::model::config::LlamaConfig;
    use crate::model::weights::LlamaWeights;

    fn tiny() -> Llama {
        let cfg = LlamaConfig {
            vocab_size: 50,
            hidden_size: 24,
            intermediate_size: 40,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 6,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
        };
        let weights = LlamaWeights::random(&cfg, 1, None).expect("random weights");
        Llama::new(cfg, weights)
    }

    #[test]
    fn the_estimate_is_the_arena_it_allocates() {
        let model = tiny();
        for (targets, dropout, checkpointing) in [
            (TargetModule::ALL.to_vec(), 0.0, false),
            (TargetModule::ALL.to_vec(), 0.1, true),
            (vec![TargetModule::QProj, TargetModule::DownProj], 0.05, false),
        ] {
            let config = LoraConfig { r: 3, lora_dropout: dropout, target_modules: targets, ..LoraConfig::default() };
            let adapter = Adapter::new(config, &model, 1).expect("adapter");
            let (b, t) = (3, 7);
            let mut arena = TrainArena::new(&model, &adapter, b, t, checkpointing);
            assert_eq!(arena.bytes(), TrainArena::estimate_bytes(&model, &adapter, b, t, checkpointing));
            // A smaller batch fits within the allocation and holds what an arena of its size would.
            arena.fit(2, 5).expect("fit");
            let small = TrainArena::estimate_bytes(&model, &adapter, 2, 5, checkpointing);
            let ce_diff = 4 * (CrossEntropyScratch::floats(b * t, 24, 50) - CrossEntropyScratch::floats(10, 24, 50));
            assert_eq!(arena.bytes(), small + ce_diff);
            assert!(arena.fit(4, 6).is_err());
        }
    }
}
