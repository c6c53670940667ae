//! The Llama forward and backward for training a LoRA adapter, written once against [`Backend`]: only the
//! gradients that are needed (the adapter's A and B, and the embedding/head when trained in full) — the frozen
//! base weights get none. Activations live in an arena on the backend, allocated once per shape; with gradient
//! checkpointing only each block's input is kept and the block is recomputed during the backward. Per micro-batch
//! the host sends the token ids, targets and RoPE tables, and gets back the loss.
//!
//! Legend: B = batch, T = time, N = B·T rows, C = hidden_size, F = intermediate_size, V = vocab_size,
//! NH/NKV = query/key-value heads, D = head_dim, Q = NH·D, KV = NKV·D, R = LoRA rank, L = layers.

use crate::data::Batch;
use crate::engine::cross_entropy::CrossEntropyScratch;
use crate::engine::{Backend, Cpu, GroupLinear, GroupLinearGrad, LoraDropout, Vocab};
use crate::error::{Error, Result};
use crate::lora::device::LoraGrads;
use crate::lora::{Adapter, DeviceAdapter, Gradients, LoraConfig};
use crate::model::{Llama, LlamaConfig, Runner, TargetModule};
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
    /// Q, KV, NH and NKV where the model norms q and k per head (Qwen3), else nothing.
    NormedQ,
    NormedKv,
    NormedNh,
    NormedNkv,
    /// D/2: a RoPE cos or sin table.
    HalfD,
    /// D/2 where the model has local layers with their own RoPE (Gemma 3), else nothing.
    LocalHalfD,
    /// C and 1 where the sublayers' outputs are normed before the residual add (Gemma), else nothing.
    SandwichC,
    SandwichOne,
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
    v: usize,
    adapted: [bool; 7],
    dropout: bool,
    qk_norm: bool,
    sandwich: bool,
    local_rope: bool,
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
            Width::NormedQ => self.q * self.qk_norm as usize,
            Width::NormedKv => self.kv * self.qk_norm as usize,
            Width::NormedNh => self.nh * self.qk_norm as usize,
            Width::NormedNkv => self.nkv * self.qk_norm as usize,
            Width::HalfD => self.d / 2,
            Width::LocalHalfD => self.d / 2 * self.local_rope as usize,
            Width::SandwichC => self.c * self.sandwich as usize,
            Width::SandwichOne => self.sandwich as usize,
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

/// Declares a group of arena buffers, one line each (`name: Width, // what it holds`, or `name: Width => act,` for a
/// saved activation the backend may keep at half precision); allocation, `fit`, byte counts and the memory
/// estimate are all derived from that line.
macro_rules! buffers {
    ($(#[$doc:meta])* struct $group:ident { $($name:ident: $width:expr $(=> $act:ident)?,)* }) => {
        $(#[$doc])*
        struct $group<Bk: Backend> {
            $($name: Bk::Buf,)*
        }

        impl<Bk: Backend> $group<Bk> {
            /// (width, saved activation) of each buffer.
            const LAYOUT: &'static [(Width, bool)] = &[$(($width, buffers!(@act $($act)?))),*];

            fn new(be: &Bk, rows: usize, d: &Dims) -> Result<Self> {
                Ok($group { $($name: buffers!(@alloc be, rows * d.width($width) $(, $act)?),)* })
            }

            /// Resizes every buffer for `rows` rows (within the memory it was allocated with, when it fits).
            fn fit(&mut self, be: &Bk, rows: usize, d: &Dims) -> Result<()> {
                $(be.resize(&mut self.$name, rows * d.width($width))?;)*
                Ok(())
            }

            /// Bytes the buffers hold at their current lengths, saved activations at `act_bytes` a value.
            fn bytes(&self, be: &Bk, act_bytes: usize) -> usize {
                let lens = [$(be.len(&self.$name)),*];
                lens.iter().zip(Self::LAYOUT).map(|(&n, &(_, act))| n * if act { act_bytes } else { 4 }).sum()
            }

            fn bytes_for(rows: usize, d: &Dims, act_bytes: usize) -> usize {
                Self::LAYOUT.iter().map(|&(w, act)| rows * d.width(w) * if act { act_bytes } else { 4 }).sum()
            }
        }
    };
    (@act act) => { true };
    (@act) => { false };
    (@alloc $be:ident, $len:expr, act) => { $be.activation($len)? };
    (@alloc $be:ident, $len:expr) => { $be.zeros($len)? };
}

buffers! {
    /// What one layer keeps from its forward for the backward.
    struct LayerActs {
        rstd1: Width::One,                           // 1 / rms(x_in)
        h1: Width::C => act,                         // rmsnorm(x_in)
        q_raw: Width::NormedQ,                       // q_proj(h1) (+ bias) before the per-head norm (Qwen3)
        k_raw: Width::NormedKv,
        rstd_q: Width::NormedNh,                     // 1 / rms of each head of q_raw, k_raw
        rstd_k: Width::NormedNkv,
        q: Width::Q => act,                          // after RoPE
        k: Width::Kv => act,                         // after RoPE
        v: Width::Kv => act,
        att: Width::Q => act,                        // attention output
        lse: Width::Nh,                              // [B, NH, T] logsumexp of the attention rows
        o_out: Width::SandwichC,                     // o_proj(att) before its norm (Gemma)
        rstd_pa: Width::SandwichOne,                 // 1 / rms(o_out)
        x_mid: Width::C,                             // x_in + o_proj(att) (Gemma: + rmsnorm(o_out))
        rstd2: Width::One,                           // 1 / rms(x_mid)
        h2: Width::C => act,                         // rmsnorm(x_mid)
        gate: Width::F => act,
        up: Width::F => act,
        act: Width::F => act,                        // silu(gate)·up (Gemma: gelu(gate)·up)
        down_out: Width::SandwichC,                  // down_proj(act) before its norm (Gemma)
        rstd_pf: Width::SandwichOne,                 // 1 / rms(down_out)
        xa_q: Width::Rank(TargetModule::QProj),      // x·Aᵀ of each adapted module
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
        dq_raw: Width::NormedQ, // gradients before the per-head norm (Qwen3)
        dk_raw: Width::NormedKv,
        dk_heads: Width::Q, // [B, NH, T, D] per query head, before the GQA sum
        dv_heads: Width::Q,
        d_act: Width::F,
        dgate: Width::F,
        dup: Width::F,
        d_sub: Width::SandwichC, // gradient of a sublayer's output before its norm (Gemma)
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
        cos_local: Width::LocalHalfD, // the local layers' (Gemma 3)
        sin_local: Width::LocalHalfD,
        xd: Width::Dropout, // dropped-out LoRA input
    }
}

buffers! {
    /// The residual stream at one block's input (L+1 of them: each block's input, and the last block's output).
    struct Stream {
        x: Width::C,
    }
}

/// The activation arena of one (B, T) shape on backend `B`, allocated once and reused by every micro-batch.
pub struct TrainArena<Bk: Backend = Cpu> {
    b: usize,
    t: usize,
    /// Rows the buffers were allocated for; `fit` reshapes to any B·T up to it.
    capacity: usize,
    dims: Dims,
    checkpointing: bool,
    xs: Vec<Stream<Bk>>,
    /// Per layer (or one, recomputed per layer, with checkpointing).
    acts: Vec<LayerActs<Bk>>,
    shared: Shared<Bk>,
    grads: GradScratch<Bk>,
    /// Rows of the head's scratch.
    head_chunk: usize,
    ce: Bk::CrossEntropyScratch,
}

impl<Bk: Backend> TrainArena<Bk> {
    /// Bytes the arena takes on `be` for this shape, without allocating it: the same sum `bytes()` makes of the
    /// buffers (plus the head's scratch of [`Backend::head_chunk`] rows), with saved activations at
    /// [`Backend::activation_bytes`] a value.
    pub fn estimate_bytes(
        be: &Bk,
        cfg: &LlamaConfig,
        lora: &LoraConfig,
        b: usize,
        t: usize,
        checkpointing: bool,
    ) -> usize {
        let act_bytes = be.activation_bytes();
        let d = dims_of(cfg, lora);
        let (n, layers) = (b * t, cfg.num_hidden_layers);
        let kept = if checkpointing { 1 } else { layers };
        kept * LayerActs::<Bk>::bytes_for(n, &d, act_bytes)
            + (layers + 1) * Stream::<Bk>::bytes_for(n, &d, 4)
            + Shared::<Bk>::bytes_for(n, &d, 4)
            + GradScratch::<Bk>::bytes_for(n, &d, 4)
            + 4 * CrossEntropyScratch::floats(be.head_chunk(cfg.vocab_size).min(n), d.c, cfg.vocab_size)
    }

    pub fn new(be: &Bk, cfg: &LlamaConfig, lora: &LoraConfig, b: usize, t: usize, checkpointing: bool) -> Result<Self> {
        let dims = dims_of(cfg, lora);
        let (n, layers) = (b * t, cfg.num_hidden_layers);
        let kept = if checkpointing { 1 } else { layers };
        let head_chunk = be.head_chunk(cfg.vocab_size).min(n);
        Ok(TrainArena {
            b,
            t,
            capacity: n,
            dims,
            checkpointing,
            xs: (0..=layers).map(|_| Stream::new(be, n, &dims)).collect::<Result<_>>()?,
            acts: (0..kept).map(|_| LayerActs::new(be, n, &dims)).collect::<Result<_>>()?,
            shared: Shared::new(be, n, &dims)?,
            grads: GradScratch::new(be, n, &dims)?,
            head_chunk,
            ce: be.cross_entropy_scratch(head_chunk, dims.c, cfg.vocab_size)?,
        })
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.b, self.t)
    }

    /// Reshapes the arena for a B×T micro-batch with B·T no larger than the shape it was allocated for, without
    /// allocating. Padded batches vary in length; one arena sized for the longest serves them all.
    pub fn fit(&mut self, be: &Bk, b: usize, t: usize) -> Result<()> {
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
            x.fit(be, n, &d)?;
        }
        for a in &mut self.acts {
            a.fit(be, n, &d)?;
        }
        self.shared.fit(be, n, &d)?;
        self.grads.fit(be, n, &d)?;
        (self.b, self.t) = (b, t);
        Ok(())
    }

    /// Bytes the buffers hold at the current shape, plus the head's scratch at its allocated size.
    pub fn bytes(&self, be: &Bk) -> usize {
        let ab = be.activation_bytes();
        let acts: usize = self.acts.iter().map(|a| a.bytes(be, ab)).sum();
        let xs: usize = self.xs.iter().map(|x| x.bytes(be, 4)).sum();
        let ce = CrossEntropyScratch::floats(self.head_chunk, self.dims.c, self.dims.v);
        acts + xs + self.shared.bytes(be, 4) + self.grads.bytes(be, 4) + 4 * ce
    }
}

fn dims_of(cfg: &LlamaConfig, lora: &LoraConfig) -> Dims {
    let mut adapted = [false; 7];
    for t in &lora.target_modules {
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
        r: lora.r,
        v: cfg.vocab_size,
        adapted,
        dropout: lora.lora_dropout > 0.0,
        qk_norm: cfg.arch.qk_norm(),
        sandwich: cfg.arch.sandwich_norms(),
        local_rope: cfg.local_layers.is_some(),
    }
}

/// The [V, C] matrix the embedding reads: the trained copy where the adapter has one.
fn embedding_matrix<'a, 'w, Bk: Backend>(
    run: &'a Runner<'w, Bk>,
    adapter: &'a DeviceAdapter<Bk>,
) -> Vocab<'a, Bk::Matrix<'w>, Bk::Buf> {
    match &adapter.embed_tokens {
        Some(e) => Vocab::Trained(e),
        None => Vocab::Frozen(run.embed_tokens()),
    }
}

/// The [V, C] matrix the head reads: the trained lm_head, or the trained tied embedding, or the frozen head.
fn head_matrix<'a, 'w, Bk: Backend>(
    run: &'a Runner<'w, Bk>,
    adapter: &'a DeviceAdapter<Bk>,
) -> Vocab<'a, Bk::Matrix<'w>, Bk::Buf> {
    let cfg = &adapter.config;
    match (&adapter.lm_head, &adapter.embed_tokens, run.config().tie_word_embeddings) {
        (Some(h), _, _) => Vocab::Trained(h),
        (None, Some(e), true) if cfg.train_lm_head || cfg.train_embed_tokens => Vocab::Trained(e),
        _ => Vocab::Frozen(run.head()),
    }
}

/// Dropout for module `m` of layer `l` in the micro-batch seeded `seed` (None: evaluation, no dropout): the same
/// in the forward, the recompute and the backward.
fn dropout_for(lora: &LoraConfig, seed: Option<u64>, l: usize, m: usize) -> Option<LoraDropout> {
    let (p, seed) = (lora.lora_dropout, seed?);
    (p > 0.0).then(|| LoraDropout { p, seed: SplitMix64::new(seed ^ ((l * 7 + m) as u64) << 20).next_u64() })
}

/// One layer's frozen weights and adapter, with the batch shape and the dropout seed: what every linear needs.
struct LayerCtx<'a, 'w, Bk: Backend> {
    be: &'a Bk,
    run: &'a Runner<'w, Bk>,
    adapter: &'a DeviceAdapter<Bk>,
    l: usize,
    n: usize,
    seed: Option<u64>,
}

impl<Bk: Backend> LayerCtx<'_, '_, Bk> {
    /// y = x·Wᵀ (+ the LoRA branch when module `m` is adapted, saving xa), overwritten or accumulated.
    fn forward(
        &self,
        m: TargetModule,
        y: &mut Bk::Buf,
        xa: &mut Bk::Buf,
        xd: &mut Bk::Buf,
        x: &Bk::Buf,
        accumulate: bool,
    ) -> Result<()> {
        let w = self.run.module(self.l, m);
        match &self.adapter.layers[self.l][m.index()] {
            Some(lora) => {
                let dropout = dropout_for(&self.adapter.config, self.seed, self.l, m.index());
                self.be.lora_forward(y, xa, xd, x, w, lora, dropout, self.n, accumulate)
            }
            None => self.be.linear_forward(y, x, w, self.n, accumulate),
        }
    }

    /// Backward of [`LayerCtx::forward`]: dx (overwritten or accumulated), and the adapter's dA, dB (accumulated).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        m: TargetModule,
        grads: &mut Gradients<Bk>,
        dx: &mut Bk::Buf,
        dxa: &mut Bk::Buf,
        xd: &mut Bk::Buf,
        dy: &Bk::Buf,
        x: &Bk::Buf,
        xa: &Bk::Buf,
        accumulate: bool,
    ) -> Result<()> {
        let w = self.run.module(self.l, m);
        match (&self.adapter.layers[self.l][m.index()], &mut grads.layers[self.l][m.index()]) {
            (Some(lora), Some((da, db))) => {
                let dropout = dropout_for(&self.adapter.config, self.seed, self.l, m.index());
                self.be.lora_backward(dx, da, db, dxa, xd, dy, x, xa, w, lora, dropout, self.n, accumulate)
            }
            _ => self.be.linear_backward_input(dx, dy, w, self.n, accumulate),
        }
    }

    /// [`LayerCtx::forward`] of the layers that read one input x (q/k/v_proj, or gate/up_proj), each given as
    /// (module, y, xa), overwriting each y; the backend batches their adapters.
    fn group_forward(
        &self,
        outs: &mut [(TargetModule, &mut Bk::Buf, &mut Bk::Buf)],
        xd: &mut Bk::Buf,
        x: &Bk::Buf,
    ) -> Result<()> {
        let mut mods: Vec<GroupLinear<'_, '_, Bk>> = outs
            .iter_mut()
            .map(|(m, y, xa)| GroupLinear {
                w: self.run.module(self.l, *m),
                lora: self.adapter.layers[self.l][m.index()].as_ref(),
                dropout: dropout_for(&self.adapter.config, self.seed, self.l, m.index()),
                y: &mut **y,
                xa: &mut **xa,
            })
            .collect();
        self.be.lora_group_forward(&mut mods, xd, x, self.n)
    }

    /// Backward of [`LayerCtx::group_forward`], each layer given as (module, dy, xa): dx overwritten with the sum of
    /// their input gradients, the adapters' dA, dB accumulated.
    #[allow(clippy::too_many_arguments)]
    fn group_backward(
        &self,
        ins: &[(TargetModule, &Bk::Buf, &Bk::Buf)],
        grads: &mut Gradients<Bk>,
        dx: &mut Bk::Buf,
        dxa: &mut Bk::Buf,
        xd: &mut Bk::Buf,
        x: &Bk::Buf,
    ) -> Result<()> {
        let mut slots: Vec<Option<&mut LoraGrads<Bk>>> = grads.layers[self.l].iter_mut().map(Option::as_mut).collect();
        let mut mods = Vec::with_capacity(ins.len());
        for &(m, dy, xa) in ins {
            let lora = match (&self.adapter.layers[self.l][m.index()], slots[m.index()].take()) {
                (Some(lora), Some((da, db))) => Some((lora, da, db)),
                _ => None,
            };
            let dropout = dropout_for(&self.adapter.config, self.seed, self.l, m.index());
            mods.push(GroupLinearGrad { w: self.run.module(self.l, m), lora, dropout, dy, xa });
        }
        self.be.lora_group_backward(dx, dxa, xd, &mut mods, x, self.n)
    }
}

/// The tables and batch every block of a micro-batch reads.
struct BatchCtx<'a, Bk: Backend> {
    cos: &'a Bk::Buf,
    sin: &'a Bk::Buf,
    /// Gemma 3's local layers' tables.
    local: Option<(&'a Bk::Buf, &'a Bk::Buf)>,
    batch: &'a Batch,
}

impl<'a, Bk: Backend> BatchCtx<'a, Bk> {
    /// The context over the arena's tables `[cos, sin, cos_local, sin_local]`.
    fn new(tables: [&'a Bk::Buf; 4], cfg: &LlamaConfig, batch: &'a Batch) -> Self {
        let [cos, sin, cos_local, sin_local] = tables;
        let local = cfg.local_layers.is_some().then_some((cos_local, sin_local));
        BatchCtx { cos, sin, local, batch }
    }

    /// Layer `l`'s RoPE tables (cos, sin).
    fn rope(&self, cfg: &LlamaConfig, l: usize) -> (&'a Bk::Buf, &'a Bk::Buf) {
        match self.local {
            Some(local) if cfg.is_local(l) => local,
            _ => (self.cos, self.sin),
        }
    }
}

/// One block's forward: x_out = x_mid + mlp(rmsnorm(x_mid)), x_mid = x_in + attn(rmsnorm(x_in)) (Gemma: each
/// sublayer's output normed before its add).
fn block_forward<Bk: Backend>(
    lc: &LayerCtx<'_, '_, Bk>,
    a: &mut LayerActs<Bk>,
    xd: &mut Bk::Buf,
    x_in: &Bk::Buf,
    x_out: &mut Bk::Buf,
    bc: &BatchCtx<'_, Bk>,
) -> Result<()> {
    let (be, cfg) = (lc.be, lc.run.config());
    let (norm1, norm2) = lc.run.layer_norms(lc.l);
    let (n, b, t) = (lc.n, bc.batch.b, bc.batch.t);
    let (nh, nkv, d, c, eps) =
        (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size, cfg.rms_norm_eps);
    let (q, k, v, o) = (TargetModule::QProj, TargetModule::KProj, TargetModule::VProj, TargetModule::OProj);

    // x_mid = x_in + o_proj(attention(rope(q_proj(h1)), rope(k_proj(h1)), v_proj(h1))), h1 = rmsnorm(x_in)
    // (+ bias after each of q/k/v_proj for Qwen2; q, k = per-head rmsnorm(q_raw, k_raw) before RoPE for Qwen3)
    let output_norms = lc.run.output_norms(lc.l);
    match output_norms {
        // x_mid starts as the skip path x_in, copied while the norm reads it; o_proj accumulates onto it below.
        None => be.rmsnorm_forward_train_copy(&mut a.h1, &mut a.rstd1, &mut a.x_mid, x_in, norm1, n, c, eps)?,
        Some(_) => be.rmsnorm_forward_train(&mut a.h1, &mut a.rstd1, x_in, norm1, n, c, eps)?,
    }
    let qk_norm = lc.run.qk_norm(lc.l);
    let (q_out, k_out) = if qk_norm.is_some() { (&mut a.q_raw, &mut a.k_raw) } else { (&mut a.q, &mut a.k) };
    lc.group_forward(&mut [(q, q_out, &mut a.xa_q), (k, k_out, &mut a.xa_k), (v, &mut a.v, &mut a.xa_v)], xd, &a.h1)?;
    if let Some(bias) = lc.run.attention_bias(lc.l) {
        be.bias_forward(q_out, &bias.q_proj, n)?;
        be.bias_forward(k_out, &bias.k_proj, n)?;
        be.bias_forward(&mut a.v, &bias.v_proj, n)?;
    }
    if let Some(norm) = qk_norm {
        be.rmsnorm_forward_train(&mut a.q, &mut a.rstd_q, &a.q_raw, &norm.q_norm, n * nh, d, eps)?;
        be.rmsnorm_forward_train(&mut a.k, &mut a.rstd_k, &a.k_raw, &norm.k_norm, n * nkv, d, eps)?;
    }
    let (cos, sin) = bc.rope(cfg, lc.l);
    be.rope_forward(&mut a.q, n, nh, d, cos, sin)?;
    be.rope_forward(&mut a.k, n, nkv, d, cos, sin)?;
    if let Some(s) = cfg.query_scale() {
        be.scale(&mut a.q, s)?; // Gemma: the softmax scale becomes query_pre_attn_scalar^-½
    }
    let (docs, window) = (bc.batch.doc_start.as_deref(), cfg.layer_window(lc.l));
    be.attention_forward(&mut a.att, &mut a.lse, &a.q, &a.k, &a.v, docs, window, b, t, nh, nkv, d)?;
    match output_norms {
        None => lc.forward(o, &mut a.x_mid, &mut a.xa_o, xd, &a.att, true)?, // x_mid (= x_in) += o_proj(att)
        // Gemma: x_mid = x_in + rmsnorm(o_out), o_out = o_proj(att)
        Some((post_attention, _)) => {
            lc.forward(o, &mut a.o_out, &mut a.xa_o, xd, &a.att, false)?;
            be.rmsnorm_forward_train(&mut a.x_mid, &mut a.rstd_pa, &a.o_out, post_attention, n, c, eps)?;
            be.add(&mut a.x_mid, x_in)?;
        }
    }

    // x_out = x_mid + down_proj(silu(gate_proj(h2)) · up_proj(h2)), h2 = rmsnorm(x_mid) (Gemma: gelu for silu)
    let (g, u, dn) = (TargetModule::GateProj, TargetModule::UpProj, TargetModule::DownProj);
    match output_norms {
        // x_out starts as the skip path x_mid, copied while the norm reads it; down_proj accumulates onto it below.
        None => be.rmsnorm_forward_train_copy(&mut a.h2, &mut a.rstd2, x_out, &a.x_mid, norm2, n, c, eps)?,
        Some(_) => be.rmsnorm_forward_train(&mut a.h2, &mut a.rstd2, &a.x_mid, norm2, n, c, eps)?,
    }
    lc.group_forward(&mut [(g, &mut a.gate, &mut a.xa_gate), (u, &mut a.up, &mut a.xa_up)], xd, &a.h2)?;
    match cfg.arch.gelu_mlp() {
        true => be.geglu_forward(&mut a.act, &a.gate, &a.up)?,
        false => be.swiglu_forward(&mut a.act, &a.gate, &a.up)?,
    }
    match output_norms {
        None => lc.forward(dn, x_out, &mut a.xa_down, xd, &a.act, true), // x_out (= x_mid) += down_proj(act)
        // Gemma: x_out = x_mid + rmsnorm(down_out), down_out = down_proj(act)
        Some((_, post_feedforward)) => {
            lc.forward(dn, &mut a.down_out, &mut a.xa_down, xd, &a.act, false)?;
            be.rmsnorm_forward_train(x_out, &mut a.rstd_pf, &a.down_out, post_feedforward, n, c, eps)?;
            be.add(x_out, &a.x_mid)
        }
    }
}

/// Backward of [`block_forward`]. On entry g.dx holds ∂loss/∂x_out; on return, ∂loss/∂x_in.
fn block_backward<Bk: Backend>(
    lc: &LayerCtx<'_, '_, Bk>,
    grads: &mut Gradients<Bk>,
    a: &LayerActs<Bk>,
    g: &mut GradScratch<Bk>,
    xd: &mut Bk::Buf,
    x_in: &Bk::Buf,
    bc: &BatchCtx<'_, Bk>,
) -> Result<()> {
    let (be, cfg) = (lc.be, lc.run.config());
    let (norm1, norm2) = lc.run.layer_norms(lc.l);
    let (n, b, t) = (lc.n, bc.batch.b, bc.batch.t);
    let (nh, nkv, d, c) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size);

    // MLP: x_out = x_mid + down(act), act = silu(gate)·up, gate/up = lin(h2), h2 = rmsnorm(x_mid)
    // (Gemma: x_out = x_mid + rmsnorm(down_out), act = gelu(gate)·up)
    let (dn, gt, up) = (TargetModule::DownProj, TargetModule::GateProj, TargetModule::UpProj);
    let output_norms = lc.run.output_norms(lc.l);
    let d_down = match output_norms {
        None => &g.dx,
        Some((_, post_feedforward)) => {
            be.fill_zero(&mut g.d_sub)?;
            be.rmsnorm_backward(&mut g.d_sub, None, &g.dx, &a.down_out, post_feedforward, &a.rstd_pf, n, c)?;
            &g.d_sub
        }
    };
    lc.backward(dn, grads, &mut g.d_act, &mut g.dxa, xd, d_down, &a.act, &a.xa_down, false)?;
    match cfg.arch.gelu_mlp() {
        true => be.geglu_backward(&mut g.dgate, &mut g.dup, &g.d_act, &a.gate, &a.up)?,
        false => be.swiglu_backward(&mut g.dgate, &mut g.dup, &g.d_act, &a.gate, &a.up)?,
    }
    let gate_up = [(gt, &g.dgate, &a.xa_gate), (up, &g.dup, &a.xa_up)];
    lc.group_backward(&gate_up, grads, &mut g.dh, &mut g.dxa, xd, &a.h2)?;
    be.rmsnorm_backward(&mut g.dx, None, &g.dh, &a.x_mid, norm2, &a.rstd2, n, c)?;

    // Attention: x_mid = x_in + o(att), att = attention(q, k, v), q/k/v = rope/lin(h1), h1 = rmsnorm(x_in)
    // (Gemma: x_mid = x_in + rmsnorm(o_out), q scaled after RoPE)
    let (o, q, k, v) = (TargetModule::OProj, TargetModule::QProj, TargetModule::KProj, TargetModule::VProj);
    let d_o = match output_norms {
        None => &g.dx,
        Some((post_attention, _)) => {
            be.fill_zero(&mut g.d_sub)?;
            be.rmsnorm_backward(&mut g.d_sub, None, &g.dx, &a.o_out, post_attention, &a.rstd_pa, n, c)?;
            &g.d_sub
        }
    };
    lc.backward(o, grads, &mut g.d_att, &mut g.dxa, xd, d_o, &a.att, &a.xa_o, false)?;
    let docs = bc.batch.doc_start.as_deref();
    be.attention_backward(
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
        docs,
        cfg.layer_window(lc.l),
        b,
        t,
        nh,
        nkv,
        d,
    )?;
    if let Some(s) = cfg.query_scale() {
        be.scale(&mut g.dq, s)?;
    }
    let (cos, sin) = bc.rope(cfg, lc.l);
    be.rope_backward(&mut g.dq, n, nh, d, cos, sin)?;
    be.rope_backward(&mut g.dk, n, nkv, d, cos, sin)?;
    // Qwen3: back through the per-head norms to the projections' outputs (the biases pass dq, dk unchanged).
    let (dq, dk) = match lc.run.qk_norm(lc.l) {
        Some(norm) => {
            be.fill_zero(&mut g.dq_raw)?;
            be.fill_zero(&mut g.dk_raw)?;
            be.rmsnorm_backward(&mut g.dq_raw, None, &g.dq, &a.q_raw, &norm.q_norm, &a.rstd_q, n * nh, d)?;
            be.rmsnorm_backward(&mut g.dk_raw, None, &g.dk, &a.k_raw, &norm.k_norm, &a.rstd_k, n * nkv, d)?;
            (&g.dq_raw, &g.dk_raw)
        }
        None => (&g.dq, &g.dk),
    };
    let qkv = [(q, dq, &a.xa_q), (k, dk, &a.xa_k), (v, &g.dv, &a.xa_v)];
    lc.group_backward(&qkv, grads, &mut g.dh, &mut g.dxa, xd, &a.h1)?;
    be.rmsnorm_backward(&mut g.dx, None, &g.dh, x_in, norm1, &a.rstd1, n, c)
}

/// Checks a micro-batch against the model and arena before any work.
fn check_batch<Bk: Backend>(cfg: &LlamaConfig, arena: &TrainArena<Bk>, batch: &Batch) -> Result<()> {
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
    let v = cfg.vocab_size;
    if let Some(bad) = batch.input_ids.iter().find(|&&id| id as usize >= v) {
        return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary of {v}")));
    }
    if let Some(bad) = batch.targets.iter().find(|&&id| id >= v as i32) {
        return Err(Error::Invalid(format!("target id {bad} is outside the vocabulary of {v}")));
    }
    Ok(())
}

/// Runs the blocks forward, filling the arena (all layers, or only the block inputs with checkpointing), then
/// the final norm into shared.h_f.
fn forward_blocks<Bk: Backend>(
    run: &Runner<'_, Bk>,
    adapter: &DeviceAdapter<Bk>,
    arena: &mut TrainArena<Bk>,
    batch: &Batch,
    seed: Option<u64>,
) -> Result<()> {
    let (be, cfg) = (run.backend(), run.config());
    let (c, n, layers) = (cfg.hidden_size, batch.b * batch.t, cfg.num_hidden_layers);
    let positions = || batch.positions.iter().map(|&p| p as usize);
    let (cos, sin) = run.model().rope.tables(positions());
    let TrainArena { xs, acts, shared, checkpointing, .. } = arena;
    be.write(&mut shared.cos, &cos)?;
    be.write(&mut shared.sin, &sin)?;
    if let Some(rope) = &run.model().rope_local {
        let (cos, sin) = rope.tables(positions());
        be.write(&mut shared.cos_local, &cos)?;
        be.write(&mut shared.sin_local, &sin)?;
    }
    be.embedding_forward(&mut xs[0].x, &batch.input_ids, embedding_matrix(run, adapter), c)?;
    if let Some(s) = cfg.embedding_scale() {
        be.scale(&mut xs[0].x, s)?;
    }
    let bc = BatchCtx::new([&shared.cos, &shared.sin, &shared.cos_local, &shared.sin_local], cfg, batch);
    for l in 0..layers {
        let (before, after) = xs.split_at_mut(l + 1);
        let a = &mut acts[if *checkpointing { 0 } else { l }];
        let lc = LayerCtx { be, run, adapter, l, n, seed };
        block_forward(&lc, a, &mut shared.xd, &before[l].x, &mut after[0].x, &bc)?;
    }
    be.rmsnorm_forward_train(&mut shared.h_f, &mut shared.rstd_f, &xs[layers].x, run.norm(), n, c, cfg.rms_norm_eps)
}

/// Loss only (evaluation): (Σ of the target tokens' negative log-likelihood, number of target tokens).
pub fn loss<Bk: Backend>(
    run: &Runner<'_, Bk>,
    adapter: &DeviceAdapter<Bk>,
    arena: &mut TrainArena<Bk>,
    batch: &Batch,
) -> Result<(f64, usize)> {
    check_batch(run.config(), arena, batch)?;
    forward_blocks(run, adapter, arena, batch, None)?;
    let c = run.config().hidden_size;
    run.backend().cross_entropy_forward(&mut arena.ce, &arena.shared.h_f, head_matrix(run, adapter), &batch.targets, c)
}

/// Forward and backward of one micro-batch. Gradients are ACCUMULATED into `grads` (same shapes as the adapter),
/// scaled by `grad_scale` (1 / target tokens of the whole step, so micro-batches add up to the mean loss's
/// gradient). `seed` draws the LoRA dropout masks. Returns (loss sum, target tokens), unscaled.
pub fn forward_backward<Bk: Backend>(
    run: &Runner<'_, Bk>,
    adapter: &DeviceAdapter<Bk>,
    grads: &mut Gradients<Bk>,
    arena: &mut TrainArena<Bk>,
    batch: &Batch,
    grad_scale: f32,
    seed: u64,
) -> Result<(f64, usize)> {
    let (be, cfg) = (run.backend(), run.config());
    check_batch(cfg, arena, batch)?;
    let (c, n, layers) = (cfg.hidden_size, batch.b * batch.t, cfg.num_hidden_layers);
    forward_blocks(run, adapter, arena, batch, Some(seed))?;

    // Head and loss: the head's gradient goes to the trained head (lm_head, or the tied embedding) if any.
    let head = head_matrix(run, adapter);
    let tied_trained = adapter.lm_head.is_none() && matches!(head, Vocab::Trained(_));
    let dhead = if grads.lm_head.is_some() {
        grads.lm_head.as_mut()
    } else if tied_trained {
        grads.embed_tokens.as_mut()
    } else {
        None
    };
    let TrainArena { xs, acts, shared, grads: g, ce, checkpointing, .. } = arena;
    let (loss_sum, count) =
        be.cross_entropy_forward_backward(&mut g.dh, dhead, ce, &shared.h_f, head, &batch.targets, c, grad_scale)?;
    if !loss_sum.is_finite() {
        return Err(Error::hinted(
            format!("the loss is {loss_sum} (not finite)"),
            "lower the learning rate, or check the data for empty or corrupt samples",
        ));
    }
    be.fill_zero(&mut g.dx)?;
    be.rmsnorm_backward(&mut g.dx, None, &g.dh, &xs[layers].x, run.norm(), &shared.rstd_f, n, c)?;

    let bc = BatchCtx::new([&shared.cos, &shared.sin, &shared.cos_local, &shared.sin_local], cfg, batch);
    for l in (0..layers).rev() {
        let lc = LayerCtx { be, run, adapter, l, n, seed: Some(seed) };
        let a = if *checkpointing {
            // Recompute this block from its saved input; its output (already in xs[l+1]) is not needed again, so
            // the final norm's output (used only by the head, which is done) takes it.
            block_forward(&lc, &mut acts[0], &mut shared.xd, &xs[l].x, &mut shared.h_f, &bc)?;
            &acts[0]
        } else {
            &acts[l]
        };
        block_backward(&lc, grads, a, g, &mut shared.xd, &xs[l].x, &bc)?;
    }
    if let Some(de) = grads.embed_tokens.as_mut() {
        if adapter.config.train_embed_tokens {
            if let Some(s) = cfg.embedding_scale() {
                be.scale(&mut g.dx, s)?; // back through the embedding's scale (dx is not needed again)
            }
            be.embedding_backward(de, &g.dx, &batch.input_ids, c)?;
        }
    }
    Ok((loss_sum, count))
}

/// [`forward_backward`] on the CPU over host tensors (tests, tools): gradients ACCUMULATED into `grads`.
pub fn forward_backward_host(
    model: &Llama,
    adapter: &Adapter,
    grads: &mut Adapter,
    arena: &mut TrainArena<Cpu>,
    batch: &Batch,
    grad_scale: f32,
    seed: u64,
) -> Result<(f64, usize)> {
    let run = Runner::new(&Cpu, model)?;
    let device = DeviceAdapter::upload(&Cpu, adapter)?;
    let mut g = Gradients::zeros(&Cpu, grads)?;
    let out = forward_backward(&run, &device, &mut g, arena, batch, grad_scale, seed)?;
    let fresh = g.download(&Cpu, grads)?;
    let mut sums = Vec::new();
    fresh.for_each_tensor(|_, t| sums.push(t.to_vec()));
    let mut it = sums.into_iter();
    grads.for_each_tensor_mut(|_, t| {
        let add = it.next().expect("the same tensors");
        t.iter_mut().zip(add).for_each(|(t, a)| *t += a);
    });
    Ok(out)
}

/// [`loss`] on the CPU over a host adapter (tests, tools).
pub fn loss_host(model: &Llama, adapter: &Adapter, arena: &mut TrainArena<Cpu>, batch: &Batch) -> Result<(f64, usize)> {
    let run = Runner::new(&Cpu, model)?;
    let device = DeviceAdapter::upload(&Cpu, adapter)?;
    loss(&run, &device, arena, batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::LoraConfig;
    use crate::model::weights::LlamaWeights;

    fn tiny(arch: crate::model::Arch) -> Llama {
        let cfg = LlamaConfig {
            arch,
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
            sliding_window: None,
            query_pre_attn_scalar: None,
            local_layers: None,
        };
        let weights = LlamaWeights::random(&cfg, 1, None).expect("random weights");
        Llama::new(cfg, weights)
    }

    #[test]
    fn the_estimate_is_the_arena_it_allocates() {
        for arch in crate::model::Arch::ALL {
            estimate_is_the_arena(&tiny(arch));
        }
        // Qwen3 keeps q and k before their per-head norm, with 1/rms per head, in each of the 3 layers, and has two
        // gradient buffers more.
        let (llama, qwen3) = (tiny(crate::model::Arch::Llama), tiny(crate::model::Arch::Qwen3));
        let lora = LoraConfig::default();
        let (b, t) = (2, 5);
        let extra = TrainArena::<Cpu>::estimate_bytes(&Cpu, &qwen3.config, &lora, b, t, false)
            - TrainArena::<Cpu>::estimate_bytes(&Cpu, &llama.config, &lora, b, t, false);
        let (q, kv, nh, nkv) = (4 * 6, 2 * 6, 4, 2);
        assert_eq!(extra, 4 * b * t * (3 * (q + kv + nh + nkv) + q + kv));
    }

    fn estimate_is_the_arena(model: &Llama) {
        for (targets, dropout, checkpointing) in [
            (TargetModule::ALL.to_vec(), 0.0, false),
            (TargetModule::ALL.to_vec(), 0.1, true),
            (vec![TargetModule::QProj, TargetModule::DownProj], 0.05, false),
        ] {
            let config = LoraConfig { r: 3, lora_dropout: dropout, target_modules: targets, ..LoraConfig::default() };
            let adapter = Adapter::new(config, model, 1).expect("adapter");
            let (b, t) = (3, 7);
            let (cfg, lora) = (&model.config, &adapter.config);
            let mut arena = TrainArena::new(&Cpu, cfg, lora, b, t, checkpointing).expect("arena");
            assert_eq!(arena.bytes(&Cpu), TrainArena::<Cpu>::estimate_bytes(&Cpu, cfg, lora, b, t, checkpointing));
            // A smaller batch fits within the allocation and holds what an arena of its size would.
            arena.fit(&Cpu, 2, 5).expect("fit");
            let small = TrainArena::<Cpu>::estimate_bytes(&Cpu, cfg, lora, 2, 5, checkpointing);
            let ce_diff = 4 * (CrossEntropyScratch::floats(b * t, 24, 50) - CrossEntropyScratch::floats(10, 24, 50));
            assert_eq!(arena.bytes(&Cpu), small + ce_diff);
            assert!(arena.fit(&Cpu, 4, 6).is_err());
        }
    }
}
