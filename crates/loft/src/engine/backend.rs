//! The seam between the model code and a device: the kernels a model is written against, with the device's
//! buffers as associated types. [`Cpu`] implements it over this crate's kernels and is the reference; the wgpu
//! backend (crate loft-gpu) implements the same calls in WGSL. Model code (the inference forward in
//! `model::llama`) is written once, generic over `B: Backend`. The training kernels come in pairs (a forward that
//! keeps what its backward needs, and the backward), with the CPU functions' names, argument order and shapes.
//!
//! Legend: N = rows (tokens), C = hidden_size, T = new tokens, P = cached positions, NH/NKV = query/key-value
//! heads, D = head_dim.

#![forbid(unsafe_code)]

use std::borrow::BorrowMut;

use crate::engine::attention::{attention_backward, attention_forward, attention_forward_cached, attention_prefill};
use crate::engine::bias::bias_forward;
use crate::engine::cross_entropy::{
    cross_entropy_forward, cross_entropy_forward_backward, CrossEntropyScratch, HEAD_CHUNK,
};
use crate::engine::elementwise::{add_forward, scale_forward};
use crate::engine::embedding::{embedding_backward, embedding_forward, VocabMatrix};
use crate::engine::geglu::{geglu_backward, geglu_forward};
use crate::engine::hot_pool::HotPool;
use crate::engine::lora::{
    lora_backward, lora_decode_forward, lora_forward, lora_group_backward, lora_group_forward, LoraDropout, LoraGrad,
    LoraOut, LoraWeights,
};
use crate::engine::optim::{clip_coefficient, global_norm, scale, Moments, OptimConfig, OptimKind};
use crate::engine::rmsnorm::{rmsnorm_backward, rmsnorm_forward, rmsnorm_forward_train, rmsnorm_forward_train_copy};
use crate::engine::rope::{rope_backward, rope_forward};
use crate::engine::swiglu::{swiglu_backward, swiglu_forward};
use crate::engine::FrozenMatrix;
use crate::error::{Error, Result};

pub trait Backend {
    /// f32 values on the device.
    type Buf;
    /// A frozen weight matrix [out, in] on the device, in its own storage (never widened to f32); it may borrow
    /// the host's copy for `'w`.
    type Matrix<'w>
    where
        Self: 'w;
    /// A frozen vector (a norm's weight) on the device.
    type Vector<'w>
    where
        Self: 'w;
    /// The chunked output head's buffers, built for one chunk size and model shape.
    type CrossEntropyScratch;
    /// One adapted layer's trained LoRA matrices A [R, I] and B [O, R] on the device (with rank, shape and scale).
    type Lora;
    /// The optimizer's moments of one trained tensor on the device (32-bit, or 8-bit blocks).
    type Moments;

    /// Names the device in messages ("cpu", or the adapter's name and API).
    fn describe(&self) -> String;
    /// Bytes of device memory this backend holds now (None on the CPU, whose memory is the process's).
    fn allocated_bytes(&self) -> Option<u64>;
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A zeroed buffer for a saved activation of the training forward, which the backend may keep at reduced
    /// precision ([`Backend::activation_bytes`] a value; the kernels read and write it in f32 all the same).
    fn activation(&self, len: usize) -> Result<Self::Buf> {
        self.zeros(len)
    }
    /// Bytes a value of [`Backend::activation`] takes: 4, or 2 where activations are kept in f16.
    fn activation_bytes(&self) -> usize {
        4
    }
    /// Values the buffer holds.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Gives the buffer `len` values, reusing its memory where it is large enough; the values are unspecified
    /// afterwards (an arena refills them).
    fn resize(&self, buf: &mut Self::Buf, len: usize) -> Result<()>;
    /// buf[..data.len()] = data, from the host.
    fn write(&self, buf: &mut Self::Buf, data: &[f32]) -> Result<()>;
    /// Sets every value of the buffer to 0.
    fn fill_zero(&self, buf: &mut Self::Buf) -> Result<()>;
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// `len` values of `buf` from `at`, back on the host.
    fn read(&self, buf: &Self::Buf, at: usize, len: usize) -> Result<Vec<f32>>;
    /// The whole buffer, consumed, back on the host (the CPU hands over its vector without a copy).
    fn download(&self, buf: Self::Buf) -> Result<Vec<f32>>;
    /// dst[dst_at..dst_at+len] = src[src_at..src_at+len].
    fn copy(&self, src: &Self::Buf, src_at: usize, dst: &mut Self::Buf, dst_at: usize, len: usize) -> Result<()>;
    /// The frozen matrix `name` (its checkpoint name, for errors) on the device.
    fn matrix<'w>(&'w self, name: &str, m: &'w FrozenMatrix) -> Result<Self::Matrix<'w>>;
    fn vector<'w>(&'w self, v: &'w [f32]) -> Result<Self::Vector<'w>>;
    /// An adapter's trained matrices on the device.
    fn lora(&self, w: &LoraWeights) -> Result<Self::Lora>;
    /// An adapter's trained matrices back on the host.
    fn lora_weights(&self, l: &Self::Lora) -> Result<LoraWeights>;
    /// The adapter's A [R, I] and B [O, R] as buffers (the optimizer updates them in place).
    fn lora_parts_mut(lora: &mut Self::Lora) -> (&mut Self::Buf, &mut Self::Buf);
    /// How many target rows the head takes at once for a vocabulary of V: [`HEAD_CHUNK`], or fewer where one
    /// [chunk, V] f32 buffer of logits would pass what the device can bind.
    fn head_chunk(&self, _v: usize) -> usize {
        HEAD_CHUNK
    }
    /// For a loop of steps: the CPU's pool kept awake between parallel regions while the guard lives
    /// ([`HotPool`]); None where the steps' work is not on the CPU's pool (a GPU's, whose host thread mostly waits).
    fn hot_pool(&self) -> Option<HotPool> {
        None
    }
    /// Scratch for the head over `chunk` target rows at a time, rows of width C, a vocabulary of V.
    fn cross_entropy_scratch(&self, chunk: usize, c: usize, v: usize) -> Result<Self::CrossEntropyScratch>;

    /// y[N, out] = x[N, in] · Wᵀ (+= with `accumulate`).
    fn linear_forward(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Matrix<'_>,
        n: usize,
        accumulate: bool,
    ) -> Result<()>;
    /// out[N, C] = rows `ids` of `table` [V, C] (the frozen embedding, or a trained copy).
    fn embedding_forward(
        &self,
        out: &mut Self::Buf,
        ids: &[u32],
        table: Vocab<'_, Self::Matrix<'_>, Self::Buf>,
        c: usize,
    ) -> Result<()>;
    /// y[N, O] += b[O] on every row: a frozen bias (Qwen2's q/k/v). Training needs no backward for it: the bias
    /// is not trained and dy passes through the addition unchanged.
    fn bias_forward(&self, y: &mut Self::Buf, b: &Self::Vector<'_>, n: usize) -> Result<()>;
    /// y[N, C] = x / rms(x) · w, row by row.
    fn rmsnorm_forward(&self, y: &mut Self::Buf, x: &Self::Buf, w: &Self::Vector<'_>, c: usize, eps: f32)
        -> Result<()>;
    /// Rotates x[T, H·D] in place with the tables cos, sin [T, D/2].
    fn rope_forward(
        &self,
        x: &mut Self::Buf,
        t: usize,
        h: usize,
        d: usize,
        cos: &Self::Buf,
        sin: &Self::Buf,
    ) -> Result<()>;
    /// att[T, NH·D] for queries q[T, NH·D] at positions p0.. against the cache k, v [≥ p0+T, NKV·D] (causal; with
    /// a `window` W, the query at position i sees only the keys i − W < j ≤ i).
    #[allow(clippy::too_many_arguments)]
    fn attention_forward_cached(
        &self,
        att: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        t: usize,
        p0: usize,
        window: Option<usize>,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()>;
    /// out = silu(gate) · up.
    fn swiglu_forward(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf) -> Result<()>;
    /// out = gelu(gate) · up, GELU's tanh approximation (Gemma's GeGLU).
    fn geglu_forward(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf) -> Result<()>;
    /// x *= s over the whole buffer (Gemma's embedding scale and query scale; also their backward).
    fn scale(&self, x: &mut Self::Buf, s: f32) -> Result<()>;
    /// y += x over the whole of y (x at least as long): a residual add (Gemma adds a normed sublayer output; its
    /// backward passes dy to both operands).
    fn add(&self, y: &mut Self::Buf, x: &Self::Buf) -> Result<()>;
    /// [`Backend::linear_forward`] for the few rows (N ≤ 4) of a decoding step, where a backend may quantize the
    /// activations against quantized weights, as llama.cpp decodes (the CPU: 8 bits, a scale per 4 values, against
    /// Q4_0…Q8_0, K-quant and NF4 blocks, [`FrozenMatrix::decode_forward`]). By default, the exact product.
    fn decode_linear_forward(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Matrix<'_>,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.linear_forward(y, x, w, n, accumulate)
    }
    /// [`Backend::lora_forward`] without dropout, its base product as [`Backend::decode_linear_forward`]'s.
    #[allow(clippy::too_many_arguments)]
    fn decode_lora_forward(
        &self,
        y: &mut Self::Buf,
        xa: &mut Self::Buf,
        xd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Matrix<'_>,
        lora: &Self::Lora,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.lora_forward(y, xa, xd, x, w, lora, None, n, accumulate)
    }

    // ---- Training pairs (backward of the frozen projections, norms, RoPE, SwiGLU, embedding, attention) ----

    /// dx[N, in] = dy[N, out] · W (+= with `accumulate`): the input gradient of [`Backend::linear_forward`]; the
    /// frozen W gets none.
    fn linear_backward_input(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        w: &Self::Matrix<'_>,
        n: usize,
        accumulate: bool,
    ) -> Result<()>;
    /// Training forward: y[N, C] = x / rms(x) · w, and rstd[N] = 1/rms of each row, kept for the backward.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_forward_train(
        &self,
        y: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Vector<'_>,
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()>;
    /// [`Backend::rmsnorm_forward_train`] that also copies x[N, C] into `skip` (a residual's skip path, onto which
    /// the sublayer's last product then accumulates). By default the two ops; a backend may write the copy while
    /// it reads each row, which saves the copy's own pass over x.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_forward_train_copy(
        &self,
        y: &mut Self::Buf,
        rstd: &mut Self::Buf,
        skip: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Vector<'_>,
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm_forward_train(y, rstd, x, w, n, c, eps)?;
        self.copy(x, 0, skip, 0, n * c)
    }
    /// Backward of [`Backend::rmsnorm_forward_train`]: dx[N, C] is ACCUMULATED into, and so is dw[C] when given.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Buf,
        dw: Option<&mut Self::Buf>,
        dy: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Vector<'_>,
        rstd: &Self::Buf,
        n: usize,
        c: usize,
    ) -> Result<()>;
    /// Backward of [`Backend::rope_forward`]: the inverse rotation of dx[T, H·D], in place.
    fn rope_backward(
        &self,
        dx: &mut Self::Buf,
        t: usize,
        h: usize,
        d: usize,
        cos: &Self::Buf,
        sin: &Self::Buf,
    ) -> Result<()>;
    /// Backward of [`Backend::swiglu_forward`]; dgate and dup are OVERWRITTEN.
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
    ) -> Result<()>;
    /// Backward of [`Backend::geglu_forward`]; dgate and dup are OVERWRITTEN.
    fn geglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
    ) -> Result<()>;
    /// Backward of the embedding for a trained table: dtable[V, C] += dout[N, C] scattered by `ids`.
    fn embedding_backward(&self, dtable: &mut Self::Buf, dout: &Self::Buf, ids: &[u32], c: usize) -> Result<()>;
    /// y[N, O] = (accumulate ? y : 0) + x·Wᵀ + scale · xa·Bᵀ, saving xa[N, R] = dropout(x)·Aᵀ for the backward;
    /// xd: scratch [N, I] for dropout(x), used only when `dropout` is Some.
    #[allow(clippy::too_many_arguments)]
    fn lora_forward(
        &self,
        y: &mut Self::Buf,
        xa: &mut Self::Buf,
        xd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Matrix<'_>,
        lora: &Self::Lora,
        dropout: Option<LoraDropout>,
        n: usize,
        accumulate: bool,
    ) -> Result<()>;
    /// Backward of [`Backend::lora_forward`] (same `dropout`): dx[N, I] = (accumulate ? dx : 0) + dy·W +
    /// dropout'(scale · dy·B·A); dA[R, I] and dB[O, R] are ACCUMULATED into. dxa: scratch [N, R]; xd: scratch
    /// [N, I], used only when `dropout` is Some.
    #[allow(clippy::too_many_arguments)]
    fn lora_backward(
        &self,
        dx: &mut Self::Buf,
        da: &mut Self::Buf,
        db: &mut Self::Buf,
        dxa: &mut Self::Buf,
        xd: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        xa: &Self::Buf,
        w: &Self::Matrix<'_>,
        lora: &Self::Lora,
        dropout: Option<LoraDropout>,
        n: usize,
        accumulate: bool,
    ) -> Result<()>;
    /// The linear layers of a group that reads one input x [N, I] (q/k/v_proj, or gate/up_proj), each overwriting its
    /// y: [`Backend::lora_forward`] where it is adapted, else [`Backend::linear_forward`]. The default runs them one
    /// by one; the CPU batches the adapters' products across the group.
    fn lora_group_forward(
        &self,
        mods: &mut [GroupLinear<'_, '_, Self>],
        xd: &mut Self::Buf,
        x: &Self::Buf,
        n: usize,
    ) -> Result<()> {
        group_forward_one_by_one(self, mods.iter_mut(), xd, x, n)
    }
    /// Backward of [`Backend::lora_group_forward`] (same dropouts): dx[N, I] = the sum of the layers' input
    /// gradients (overwritten); each adapter's dA, dB ACCUMULATED into. dxa, xd: [`Backend::lora_backward`]'s scratch.
    fn lora_group_backward(
        &self,
        dx: &mut Self::Buf,
        dxa: &mut Self::Buf,
        xd: &mut Self::Buf,
        mods: &mut [GroupLinearGrad<'_, '_, Self>],
        x: &Self::Buf,
        n: usize,
    ) -> Result<()> {
        if mods.is_empty() {
            return Err(Error::Invalid("lora_group_backward: an empty group".into()));
        }
        group_backward_one_by_one(self, dx, dxa, xd, mods.iter_mut(), x, n, false)
    }
    /// Loss only: (Σ over target rows of −log softmax(h·Wᵀ)[target], number of target rows). h [N, C]; head
    /// [V, C]; targets [N], the token row i predicts (already shifted), negative = ignored.
    fn cross_entropy_forward(
        &self,
        scratch: &mut Self::CrossEntropyScratch,
        h: &Self::Buf,
        head: Vocab<'_, Self::Matrix<'_>, Self::Buf>,
        targets: &[i32],
        c: usize,
    ) -> Result<(f64, usize)>;
    /// Loss and gradients: dh[N, C] is OVERWRITTEN with grad_scale · ∂loss_sum/∂h (zero on ignored rows); dhead
    /// [V, C], when the head is trained, is ACCUMULATED with grad_scale · ∂loss_sum/∂W. Returns what
    /// [`Backend::cross_entropy_forward`] does, unscaled.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_forward_backward(
        &self,
        dh: &mut Self::Buf,
        dhead: Option<&mut Self::Buf>,
        scratch: &mut Self::CrossEntropyScratch,
        h: &Self::Buf,
        head: Vocab<'_, Self::Matrix<'_>, Self::Buf>,
        targets: &[i32],
        c: usize,
        grad_scale: f32,
    ) -> Result<(f64, usize)>;
    /// Causal self-attention for training over q[B, T, NH·D], k, v [B, T, NKV·D]: out [B, T, NH·D] and
    /// lse[B, NH, T] (overwritten). Query (b, i) sees keys doc_start[b·T + i] ≤ j ≤ i (None: from 0), and with a
    /// `window` W only those with i − j < W.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        doc_start: Option<&[u32]>,
        window: Option<usize>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()>;
    /// Backward of [`Backend::attention_forward`]: dq [B, T, NH·D], dk and dv [B, T, NKV·D] are OVERWRITTEN;
    /// dk_heads, dv_heads are scratch [B, NH, T, D].
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dk_heads: &mut Self::Buf,
        dv_heads: &mut Self::Buf,
        dout: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        doc_start: Option<&[u32]>,
        window: Option<usize>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()>;

    // ---- The optimizer (engine::optim's kernels) ----

    /// Zero moments for a tensor of `len` values ([`crate::engine::optim::blockwise8`] decides 8-bit state).
    fn moments(&self, kind: OptimKind, len: usize) -> Result<Self::Moments>;
    /// One AdamW / 8-bit AdamW update of p [N] by its gradient g [N] at step t (1 for the first), as
    /// [`crate::engine::optim::Moments::update`] computes it.
    #[allow(clippy::too_many_arguments)]
    fn adamw_update(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        moments: &mut Self::Moments,
        config: &OptimConfig,
        lr: f32,
        t: u64,
    ) -> Result<()>;
    /// [`Backend::adamw_update`] of a step's tensors, each given as (p, g, moments, learning rate), all at step t.
    /// By default one after the other; the CPU updates them in one parallel pass.
    fn adamw_update_all(&self, tensors: Vec<AdamWTensor<'_, Self>>, config: &OptimConfig, t: u64) -> Result<()> {
        for (p, g, moments, lr) in tensors {
            self.adamw_update(p, g, moments, config, lr, t)?;
        }
        Ok(())
    }
    /// The moments' state tensors back on the host, in [`crate::engine::optim::moment_layout`] order.
    fn read_moments(&self, moments: &Self::Moments) -> Result<Vec<Vec<u8>>>;
    /// Restores what [`Backend::read_moments`] gave (sizes already checked against the layout).
    fn write_moments(&self, moments: &mut Self::Moments, parts: &[&[u8]]) -> Result<()>;
    /// The global L2 norm of all `grads`; when it is finite, `max_norm` > 0 and the norm exceeds it, every tensor
    /// is scaled by max_norm / (norm + 1e-6) on the device (torch's clip_grad_norm_). A non-finite norm leaves
    /// the tensors untouched. Returns the norm (the one value that comes back to the host).
    fn clip_grad_norm(&self, grads: &mut [&mut Self::Buf], max_norm: f32) -> Result<f32>;
}

/// One trained tensor of [`Backend::adamw_update_all`]: the parameter, its gradient, its moments and its learning
/// rate.
pub type AdamWTensor<'a, B> =
    (&'a mut <B as Backend>::Buf, &'a <B as Backend>::Buf, &'a mut <B as Backend>::Moments, f32);

/// One linear layer of a group that reads the same input, for [`Backend::lora_group_forward`]: its frozen weight,
/// its adapter and dropout where it is adapted, and where its output y [N, O] and saved xa [N, R] go (xa is empty
/// when the layer is not adapted).
pub struct GroupLinear<'a, 'w, B: Backend + ?Sized + 'w> {
    pub w: &'a B::Matrix<'w>,
    pub lora: Option<&'a B::Lora>,
    pub dropout: Option<LoraDropout>,
    pub y: &'a mut B::Buf,
    pub xa: &'a mut B::Buf,
}

/// The same layer in [`Backend::lora_group_backward`]: its output's gradient dy [N, O], the saved xa, and the
/// adapter with its gradients dA [R, I] and dB [O, R] where it is adapted.
pub struct GroupLinearGrad<'a, 'w, B: Backend + ?Sized + 'w> {
    pub w: &'a B::Matrix<'w>,
    pub lora: Option<(&'a B::Lora, &'a mut B::Buf, &'a mut B::Buf)>,
    pub dropout: Option<LoraDropout>,
    pub dy: &'a B::Buf,
    pub xa: &'a B::Buf,
}

/// A [V, C] matrix read by the output head on a backend: the frozen base weights (M, the backend's `Matrix`), or a
/// trained f32 copy (B, its `Buf`: an untied lm_head or the tied embedding being trained).
pub enum Vocab<'a, M, B> {
    Frozen(&'a M),
    Trained(&'a B),
}

/// The CPU engine: buffers are `Vec<f32>`, weights are borrowed from the host model as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

fn range(buf: &[f32], at: usize, len: usize) -> Result<&[f32]> {
    buf.get(at..at + len)
        .ok_or_else(|| Error::Invalid(format!("buffer of {} values has no range {at}..{}", buf.len(), at + len)))
}

fn cpu_vocab<'a>(head: Vocab<'a, &FrozenMatrix, Vec<f32>>) -> VocabMatrix<'a> {
    match head {
        Vocab::Frozen(m) => VocabMatrix::Frozen(m),
        Vocab::Trained(w) => VocabMatrix::Trained(w),
    }
}

/// The layers of a group one at a time, each overwriting its y: [`Backend::lora_forward`] where adapted, else
/// [`Backend::linear_forward`] (the trait's default group call, and the CPU's for the layers it does not batch).
fn group_forward_one_by_one<'a, 'w, B: Backend + ?Sized + 'w, M: BorrowMut<GroupLinear<'a, 'w, B>>>(
    be: &B,
    mods: impl IntoIterator<Item = M>,
    xd: &mut B::Buf,
    x: &B::Buf,
    n: usize,
) -> Result<()>
where
    B::Matrix<'w>: 'a,
    B::Lora: 'a,
    B::Buf: 'a,
{
    for mut m in mods {
        let m = m.borrow_mut();
        match m.lora {
            Some(lora) => be.lora_forward(m.y, m.xa, xd, x, m.w, lora, m.dropout, n, false)?,
            None => be.linear_forward(m.y, x, m.w, n, false)?,
        }
    }
    Ok(())
}

/// Backward of [`group_forward_one_by_one`]: each layer's input gradient added into dx in turn, the first
/// overwriting it unless `accumulate`.
#[allow(clippy::too_many_arguments)]
fn group_backward_one_by_one<'a, 'w, B: Backend + ?Sized + 'w, M: BorrowMut<GroupLinearGrad<'a, 'w, B>>>(
    be: &B,
    dx: &mut B::Buf,
    dxa: &mut B::Buf,
    xd: &mut B::Buf,
    mods: impl IntoIterator<Item = M>,
    x: &B::Buf,
    n: usize,
    mut accumulate: bool,
) -> Result<()>
where
    B::Matrix<'w>: 'a,
    B::Lora: 'a,
    B::Buf: 'a,
{
    for mut m in mods {
        let m = m.borrow_mut();
        match &mut m.lora {
            Some((lora, da, db)) => {
                be.lora_backward(dx, da, db, dxa, xd, m.dy, x, m.xa, m.w, lora, m.dropout, n, accumulate)?
            }
            None => be.linear_backward_input(dx, m.dy, m.w, n, accumulate)?,
        }
        accumulate = true;
    }
    Ok(())
}

/// A parameter, its gradient and its moments are the same size.
fn check_moments(p: &[f32], g: &[f32], moments: &Moments) -> Result<()> {
    let fits = match moments {
        Moments::F32 { exp_avg, .. } => exp_avg.len() == p.len(),
        Moments::Blockwise8 { state1, .. } => state1.len() == p.len(),
    };
    if !fits || g.len() != p.len() {
        return Err(Error::Invalid(format!(
            "adamw_update: a parameter of {} values, its gradient of {}, and moments of another size",
            p.len(),
            g.len()
        )));
    }
    Ok(())
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Matrix<'w> = &'w FrozenMatrix;
    type Vector<'w> = &'w [f32];
    type Lora = LoraWeights;
    type CrossEntropyScratch = CrossEntropyScratch;
    type Moments = Moments;

    fn describe(&self) -> String {
        "cpu".into()
    }

    fn allocated_bytes(&self) -> Option<u64> {
        None
    }

    fn hot_pool(&self) -> Option<HotPool> {
        Some(HotPool::start())
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn resize(&self, buf: &mut Vec<f32>, len: usize) -> Result<()> {
        buf.resize(len, 0.0);
        Ok(())
    }

    fn write(&self, buf: &mut Vec<f32>, data: &[f32]) -> Result<()> {
        let len = buf.len();
        let to = buf
            .get_mut(..data.len())
            .ok_or_else(|| Error::Invalid(format!("write: {} values into a buffer of {len}", data.len())))?;
        to.copy_from_slice(data);
        Ok(())
    }

    fn fill_zero(&self, buf: &mut Vec<f32>) -> Result<()> {
        buf.fill(0.0);
        Ok(())
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn read(&self, buf: &Vec<f32>, at: usize, len: usize) -> Result<Vec<f32>> {
        Ok(range(buf, at, len)?.to_vec())
    }

    fn download(&self, buf: Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf)
    }

    fn copy(&self, src: &Vec<f32>, src_at: usize, dst: &mut Vec<f32>, dst_at: usize, len: usize) -> Result<()> {
        let from = range(src, src_at, len)?;
        let to_len = dst.len();
        let to = dst.get_mut(dst_at..dst_at + len).ok_or_else(|| {
            Error::Invalid(format!("buffer of {to_len} values has no range {dst_at}..{}", dst_at + len))
        })?;
        to.copy_from_slice(from);
        Ok(())
    }

    fn matrix<'w>(&'w self, _name: &str, m: &'w FrozenMatrix) -> Result<&'w FrozenMatrix> {
        Ok(m)
    }

    fn vector<'w>(&'w self, v: &'w [f32]) -> Result<&'w [f32]> {
        Ok(v)
    }

    fn lora(&self, w: &LoraWeights) -> Result<LoraWeights> {
        Ok(w.clone())
    }

    fn lora_weights(&self, l: &LoraWeights) -> Result<LoraWeights> {
        Ok(l.clone())
    }

    fn lora_parts_mut(lora: &mut LoraWeights) -> (&mut Vec<f32>, &mut Vec<f32>) {
        (&mut lora.a, &mut lora.b)
    }

    fn cross_entropy_scratch(&self, chunk: usize, c: usize, v: usize) -> Result<CrossEntropyScratch> {
        if chunk == 0 {
            return Err(Error::Invalid("cross_entropy_scratch: the chunk must be at least one row".into()));
        }
        Ok(CrossEntropyScratch::new(chunk, c, v))
    }

    fn linear_forward(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&FrozenMatrix,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        w.forward(&mut y[..n * w.rows], &x[..n * w.cols], n, accumulate);
        Ok(())
    }

    fn embedding_forward(
        &self,
        out: &mut Vec<f32>,
        ids: &[u32],
        table: Vocab<'_, &FrozenMatrix, Vec<f32>>,
        c: usize,
    ) -> Result<()> {
        embedding_forward(&mut out[..ids.len() * c], ids, cpu_vocab(table), c);
        Ok(())
    }

    fn bias_forward(&self, y: &mut Vec<f32>, b: &&[f32], n: usize) -> Result<()> {
        if y.len() < n * b.len() {
            return Err(Error::Invalid(format!("bias_forward: {} values are not [{n}, {}]", y.len(), b.len())));
        }
        bias_forward(y, b, n);
        Ok(())
    }

    fn rmsnorm_forward(&self, y: &mut Vec<f32>, x: &Vec<f32>, w: &&[f32], c: usize, eps: f32) -> Result<()> {
        rmsnorm_forward(y, x, w, c, eps);
        Ok(())
    }

    fn rope_forward(
        &self,
        x: &mut Vec<f32>,
        t: usize,
        h: usize,
        d: usize,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
    ) -> Result<()> {
        rope_forward(&mut x[..t * h * d], t, h, d, cos, sin);
        Ok(())
    }

    fn attention_forward_cached(
        &self,
        att: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        t: usize,
        p0: usize,
        window: Option<usize>,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()> {
        let (qd, kvd) = (nh * d, nkv * d);
        let (att, q) = (&mut att[..t * qd], &q[..t * qd]);
        if p0 == 0 {
            // A fresh sequence: the tiled training kernel (blocks of queries and keys) is several times faster.
            let mut lse = vec![0.0f32; nh * t];
            attention_prefill(att, &mut lse, q, &k[..t * kvd], &v[..t * kvd], window, t, nh, nkv, d);
        } else {
            let (k, v) = (&k[..(p0 + t) * kvd], &v[..(p0 + t) * kvd]);
            attention_forward_cached(att, q, k, v, t, p0, window, nh, nkv, d);
        }
        Ok(())
    }

    fn swiglu_forward(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>) -> Result<()> {
        swiglu_forward(out, gate, up);
        Ok(())
    }

    fn geglu_forward(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>) -> Result<()> {
        geglu_forward(out, gate, up);
        Ok(())
    }

    fn scale(&self, x: &mut Vec<f32>, s: f32) -> Result<()> {
        scale_forward(x, s);
        Ok(())
    }

    fn add(&self, y: &mut Vec<f32>, x: &Vec<f32>) -> Result<()> {
        if x.len() < y.len() {
            return Err(Error::Invalid(format!("add: {} values onto a buffer of {}", x.len(), y.len())));
        }
        add_forward(y, x);
        Ok(())
    }

    fn decode_linear_forward(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&FrozenMatrix,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        w.decode_forward(&mut y[..n * w.rows], &x[..n * w.cols], n, accumulate);
        Ok(())
    }

    fn decode_lora_forward(
        &self,
        y: &mut Vec<f32>,
        xa: &mut Vec<f32>,
        _xd: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&FrozenMatrix,
        lora: &LoraWeights,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        lora_decode_forward(y, xa, x, w, lora, n, accumulate);
        Ok(())
    }

    fn linear_backward_input(
        &self,
        dx: &mut Vec<f32>,
        dy: &Vec<f32>,
        w: &&FrozenMatrix,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        w.backward_input(&mut dx[..n * w.cols], &dy[..n * w.rows], n, accumulate);
        Ok(())
    }

    fn rmsnorm_forward_train(
        &self,
        y: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&[f32],
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        rmsnorm_forward_train(y, rstd, x, w, n, c, eps);
        Ok(())
    }

    fn rmsnorm_forward_train_copy(
        &self,
        y: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        skip: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&[f32],
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        let skip_len = skip.len();
        let skip = skip.get_mut(..n * c).ok_or_else(|| {
            Error::Invalid(format!("rmsnorm_forward_train_copy: {skip_len} values cannot hold [{n}, {c}]"))
        })?;
        rmsnorm_forward_train_copy(y, rstd, skip, x, w, n, c, eps);
        Ok(())
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut Vec<f32>,
        dw: Option<&mut Vec<f32>>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        w: &&[f32],
        rstd: &Vec<f32>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        rmsnorm_backward(dx, dw.map(|dw| dw.as_mut_slice()), dy, x, w, rstd, n, c);
        Ok(())
    }

    fn rope_backward(
        &self,
        dx: &mut Vec<f32>,
        t: usize,
        h: usize,
        d: usize,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
    ) -> Result<()> {
        rope_backward(&mut dx[..t * h * d], t, h, d, cos, sin);
        Ok(())
    }

    fn swiglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
    ) -> Result<()> {
        swiglu_backward(dgate, dup, dout, gate, up);
        Ok(())
    }

    fn geglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
    ) -> Result<()> {
        geglu_backward(dgate, dup, dout, gate, up);
        Ok(())
    }

    fn embedding_backward(&self, dtable: &mut Vec<f32>, dout: &Vec<f32>, ids: &[u32], c: usize) -> Result<()> {
        embedding_backward(dtable, dout, ids, c);
        Ok(())
    }

    fn lora_forward(
        &self,
        y: &mut Vec<f32>,
        xa: &mut Vec<f32>,
        xd: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&FrozenMatrix,
        lora: &LoraWeights,
        dropout: Option<LoraDropout>,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        lora_forward(y, xa, xd, x, w, lora, dropout, n, accumulate);
        Ok(())
    }

    fn lora_backward(
        &self,
        dx: &mut Vec<f32>,
        da: &mut Vec<f32>,
        db: &mut Vec<f32>,
        dxa: &mut Vec<f32>,
        xd: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        xa: &Vec<f32>,
        w: &&FrozenMatrix,
        lora: &LoraWeights,
        dropout: Option<LoraDropout>,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        lora_backward(dx, da, db, dxa, xd, dy, x, xa, w, lora, dropout, n, accumulate);
        Ok(())
    }

    fn lora_group_forward(
        &self,
        mods: &mut [GroupLinear<'_, '_, Cpu>],
        xd: &mut Vec<f32>,
        x: &Vec<f32>,
        n: usize,
    ) -> Result<()> {
        // Adapted layers without dropout go together; a layer with dropout reads its own dropped-out x.
        let (grouped, rest): (Vec<_>, Vec<_>) = mods.iter_mut().partition(|m| m.lora.is_some() && m.dropout.is_none());
        let mut outs: Vec<LoraOut<'_>> =
            grouped.into_iter().filter_map(|m| Some(LoraOut { y: m.y, xa: m.xa, w: m.w, lora: m.lora? })).collect();
        if !outs.is_empty() {
            lora_group_forward(x, &mut outs, n);
        }
        group_forward_one_by_one(self, rest, xd, x, n)
    }

    fn lora_group_backward(
        &self,
        dx: &mut Vec<f32>,
        dxa: &mut Vec<f32>,
        xd: &mut Vec<f32>,
        mods: &mut [GroupLinearGrad<'_, '_, Cpu>],
        x: &Vec<f32>,
        n: usize,
    ) -> Result<()> {
        if mods.is_empty() {
            return Err(Error::Invalid("lora_group_backward: an empty group".into()));
        }
        let (grouped, rest): (Vec<_>, Vec<_>) = mods.iter_mut().partition(|m| m.lora.is_some() && m.dropout.is_none());
        let mut grads: Vec<LoraGrad<'_>> = grouped
            .into_iter()
            .filter_map(|m| {
                let (lora, da, db) = m.lora.as_mut()?;
                Some(LoraGrad { dy: m.dy, xa: m.xa, w: m.w, lora, da, db })
            })
            .collect();
        let batched = !grads.is_empty();
        if batched {
            lora_group_backward(dx, x, &mut grads, n, false);
        }
        group_backward_one_by_one(self, dx, dxa, xd, rest, x, n, batched)
    }

    fn cross_entropy_forward(
        &self,
        scratch: &mut CrossEntropyScratch,
        h: &Vec<f32>,
        head: Vocab<'_, &FrozenMatrix, Vec<f32>>,
        targets: &[i32],
        c: usize,
    ) -> Result<(f64, usize)> {
        Ok(cross_entropy_forward(scratch, h, cpu_vocab(head), targets, c))
    }

    fn cross_entropy_forward_backward(
        &self,
        dh: &mut Vec<f32>,
        dhead: Option<&mut Vec<f32>>,
        scratch: &mut CrossEntropyScratch,
        h: &Vec<f32>,
        head: Vocab<'_, &FrozenMatrix, Vec<f32>>,
        targets: &[i32],
        c: usize,
        grad_scale: f32,
    ) -> Result<(f64, usize)> {
        let dhead = dhead.map(|d| d.as_mut_slice());
        Ok(cross_entropy_forward_backward(dh, dhead, scratch, h, cpu_vocab(head), targets, c, grad_scale))
    }

    fn attention_forward(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        doc_start: Option<&[u32]>,
        window: Option<usize>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()> {
        attention_forward(out, lse, q, k, v, doc_start, window, b, t, nh, nkv, d);
        Ok(())
    }

    fn attention_backward(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dk_heads: &mut Vec<f32>,
        dv_heads: &mut Vec<f32>,
        dout: &Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        doc_start: Option<&[u32]>,
        window: Option<usize>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()> {
        let ds = doc_start;
        attention_backward(dq, dk, dv, dk_heads, dv_heads, dout, q, k, v, out, lse, ds, window, b, t, nh, nkv, d);
        Ok(())
    }

    fn moments(&self, kind: OptimKind, len: usize) -> Result<Moments> {
        Ok(Moments::zeros(kind, len))
    }

    fn adamw_update(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        moments: &mut Moments,
        config: &OptimConfig,
        lr: f32,
        t: u64,
    ) -> Result<()> {
        check_moments(p, g, moments)?;
        moments.update(config, p, g, lr, t);
        Ok(())
    }

    fn adamw_update_all(&self, tensors: Vec<AdamWTensor<'_, Cpu>>, config: &OptimConfig, t: u64) -> Result<()> {
        let mut all = Vec::with_capacity(tensors.len());
        for (p, g, moments, lr) in tensors {
            check_moments(p, g, moments)?;
            all.push((moments, &mut p[..], &g[..], lr));
        }
        Moments::update_all(all, config, t);
        Ok(())
    }

    fn read_moments(&self, moments: &Moments) -> Result<Vec<Vec<u8>>> {
        Ok(moments.tensors())
    }

    fn write_moments(&self, moments: &mut Moments, parts: &[&[u8]]) -> Result<()> {
        let want = moments.byte_sizes();
        let got: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        if want != got {
            return Err(Error::Invalid(format!("write_moments: parts of {got:?} bytes, the state holds {want:?}")));
        }
        moments.load(parts);
        Ok(())
    }

    fn clip_grad_norm(&self, grads: &mut [&mut Vec<f32>], max_norm: f32) -> Result<f32> {
        let norm = global_norm(&grads.iter().map(|g| g.as_slice()).collect::<Vec<_>>());
        if norm.is_finite() {
            if let Some(coef) = clip_coefficient(norm, max_norm) {
                for g in grads.iter_mut() {
                    scale(g, coef);
                }
            }
        }
        Ok(norm)
    }
}
