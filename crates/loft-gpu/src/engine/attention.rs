//! Twin of `loft::engine::attention`: causal self-attention with grouped-query heads, optionally within a sliding
//! window (query i sees keys i − W < j ≤ i), with a KV cache (inference) and for training with document boundaries,
//! saving the row logsumexp; the backward recomputes the probabilities from q, k and lse.
//! Legend: B = batch, T = time, NH = query heads, NKV = key/value heads, D = head_dim (≤ 256 here), W = window.
//! Layouts: q, out [B, T, NH·D]; k, v [B, T, NKV·D]; lse [B, NH, T]; doc_start [B, T].

use loft::Result;

use crate::context::{groups_1d, groups_for, Binding, Context, GpuBuffer, Kernel};

/// Largest head_dim the kernels hold in workgroup memory.
pub const MAX_HEAD_DIM: usize = 256;

fn kernel(name: &str, source: &str) -> Kernel {
    Kernel { name: name.to_string(), source: source.to_string(), entry: "main" }
}

/// The parameter block of the attention kernels (the training ones read its first eight words; p0 and kv_t, the
/// cache offset and rows, only the forward reads). The window word is 0 for none; a window of `positions` keys or
/// more (every key any query sees) is the same as none, so it is capped there to stay within a u32.
fn params(b: usize, t: usize, nh: usize, nkv: usize, d: usize, has_doc: bool, window: Window) -> [u32; 12] {
    let scale = 1.0 / (d as f32).sqrt();
    let w = window.size.map_or(0, |w| w.min(window.positions) as u32);
    [b as u32, t as u32, nh as u32, nkv as u32, d as u32, has_doc as u32, scale.to_bits(), w, 0, t as u32, 0, 0]
}

/// A sliding window of `size` keys (None: every earlier key) over rows of `positions` keys.
#[derive(Clone, Copy)]
struct Window {
    size: Option<usize>,
    positions: usize,
}

/// out[T, NH·D] = softmax(q·kᵀ/√D, causal) · v for queries at positions p0..p0+T against k, v [P, NKV·D]
/// (P ≥ p0 + T; query t sees keys 0..=p0+t, only the last W of them with a window): decoding and prefill with a
/// KV cache.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_cached(
    ctx: &Context,
    out: &mut GpuBuffer,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    t: usize,
    p0: usize,
    window: Option<usize>,
    nh: usize,
    nkv: usize,
    d: usize,
) -> Result<()> {
    check_heads(nh, nkv, d)?;
    ensure!(window != Some(0), "attention: a window of 0 keys");
    let (qd, kvd) = (nh * d, nkv * d);
    ensure!(out.len() == t * qd && q.len() == t * qd, "attention_forward_cached: q/out are not [T, NH·D]");
    ensure!(k.len() >= (p0 + t) * kvd && v.len() >= (p0 + t) * kvd, "attention_forward_cached: cache too short");
    let lse = ctx.zeros(nh * t)?;
    let docs = ctx.zeros(1)?;
    let mut p = params(1, t, nh, nkv, d, false, Window { size: window, positions: p0 + t });
    p[8] = p0 as u32;
    p[9] = (p0 + t) as u32;
    ctx.dispatch(
        &kernel("attention_forward", include_str!("../shaders/attention_forward.wgsl")),
        &p,
        &[
            Binding::Write(out),
            Binding::Write(&lse),
            Binding::Read(q),
            Binding::Read(k),
            Binding::Read(v),
            Binding::Read(&docs),
        ],
        groups_for(t * nh),
    )
}

/// doc_start on the device (checked as the CPU checks it), or a one-word placeholder when every query sees from
/// the start of its row.
fn doc_buffer(ctx: &Context, doc_start: Option<&[u32]>, b: usize, t: usize) -> Result<GpuBuffer> {
    match doc_start {
        Some(ds) => {
            ensure!(ds.len() == b * t, "attention: doc_start is not [B, T]");
            ensure!(ds.iter().enumerate().all(|(i, &s)| s as usize <= i % t), "attention: doc_start after its token");
            ctx.upload_u32(ds)
        }
        None => ctx.zeros(1),
    }
}

fn check_heads(nh: usize, nkv: usize, d: usize) -> Result<()> {
    ensure!(nkv > 0 && nh.is_multiple_of(nkv) && d > 0, "attention: NH = {nh} is not a multiple of NKV = {nkv}");
    ensure!(d <= MAX_HEAD_DIM, "attention: head_dim {d} is above the GPU kernels' {MAX_HEAD_DIM}");
    Ok(())
}

/// Causal self-attention for training: out = softmax(q·kᵀ/√D + mask) · v, saving lse[b, h, i] = log Σⱼ exp(sᵢⱼ).
/// Query (b, i) sees keys j with doc_start[b·T + i] ≤ j ≤ i (doc_start None: from 0), and i − j < W with a window.
/// out and lse are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    ctx: &Context,
    out: &mut GpuBuffer,
    lse: &mut GpuBuffer,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    doc_start: Option<&[u32]>,
    window: Option<usize>,
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    d: usize,
) -> Result<()> {
    check_heads(nh, nkv, d)?;
    ensure!(window != Some(0), "attention: a window of 0 keys");
    let (qd, kvd) = (nh * d, nkv * d);
    ensure!(out.len() == b * t * qd && q.len() == b * t * qd, "attention_forward: q/out are not [B, T, NH·D]");
    ensure!(k.len() == b * t * kvd && v.len() == b * t * kvd, "attention_forward: k/v are not [B, T, NKV·D]");
    ensure!(lse.len() == b * nh * t, "attention_forward: lse is not [B, NH, T]");
    let docs = doc_buffer(ctx, doc_start, b, t)?;
    ctx.dispatch(
        &kernel("attention_forward", include_str!("../shaders/attention_forward.wgsl")),
        &params(b, t, nh, nkv, d, doc_start.is_some(), Window { size: window, positions: t }),
        &[
            Binding::Write(out),
            Binding::Write(lse),
            Binding::Read(q),
            Binding::Read(k),
            Binding::Read(v),
            Binding::Read(&docs),
        ],
        groups_for(b * t * nh),
    )
}

/// Backward of [`attention_forward`]. dq [B, T, NH·D], dk and dv [B, T, NKV·D] are OVERWRITTEN (dk, dv summed over
/// the query heads that share a key/value head). dk_heads, dv_heads: scratch [B, NH, T, D], each head's share.
///
/// With P = exp(S − lse) and Δᵢ = Σ_d dOᵢ·Oᵢ: dV = Pᵀ·dO, dS = P ⊙ (dO·Vᵀ − Δ), dQ = dS·K/√D, dK = dSᵀ·Q/√D.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    ctx: &Context,
    dq: &mut GpuBuffer,
    dk: &mut GpuBuffer,
    dv: &mut GpuBuffer,
    dk_heads: &mut GpuBuffer,
    dv_heads: &mut GpuBuffer,
    dout: &GpuBuffer,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    out: &GpuBuffer,
    lse: &GpuBuffer,
    doc_start: Option<&[u32]>,
    window: Option<usize>,
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    d: usize,
) -> Result<()> {
    check_heads(nh, nkv, d)?;
    ensure!(window != Some(0), "attention: a window of 0 keys");
    let (nq, nk) = (b * t * nh * d, b * t * nkv * d);
    ensure!(dq.len() == nq && q.len() == nq && out.len() == nq && dout.len() == nq, "attention_backward: q shapes");
    ensure!(dk.len() == nk && dv.len() == nk && k.len() == nk && v.len() == nk, "attention_backward: k/v shapes");
    ensure!(dk_heads.len() == nq && dv_heads.len() == nq, "attention_backward: head scratch is not [B, NH, T, D]");
    ensure!(lse.len() == b * nh * t, "attention_backward: lse is not [B, NH, T]");
    let docs = doc_buffer(ctx, doc_start, b, t)?;
    let p = params(b, t, nh, nkv, d, doc_start.is_some(), Window { size: window, positions: t });
    // lse and Δ side by side in one buffer (keeps every kernel within 8 storage bindings).
    let n_lse = b * nh * t;
    let mut lse_delta = ctx.zeros(2 * n_lse)?;
    ctx.copy(lse, 0, &mut lse_delta, 0, n_lse)?;
    ctx.dispatch(
        &kernel("attention_delta", include_str!("../shaders/attention_delta.wgsl")),
        &p,
        &[Binding::Write(&lse_delta), Binding::Read(dout), Binding::Read(out)],
        groups_1d(n_lse, 256),
    )?;
    ctx.dispatch(
        &kernel("attention_backward_query", include_str!("../shaders/attention_backward_query.wgsl")),
        &p,
        &[
            Binding::Write(dq),
            Binding::Read(dout),
            Binding::Read(q),
            Binding::Read(k),
            Binding::Read(v),
            Binding::Read(&lse_delta),
            Binding::Read(&docs),
        ],
        groups_for(b * t * nh),
    )?;
    ctx.dispatch(
        &kernel("attention_backward_key", include_str!("../shaders/attention_backward_key.wgsl")),
        &p,
        &[
            Binding::Write(dk_heads),
            Binding::Write(dv_heads),
            Binding::Read(dout),
            Binding::Read(q),
            Binding::Read(k),
            Binding::Read(v),
            Binding::Read(&lse_delta),
            Binding::Read(&docs),
        ],
        groups_for(b * t * nh),
    )?;
    ctx.dispatch(
        &kernel("attention_reduce_heads", include_str!("../shaders/attention_reduce_heads.wgsl")),
        &p,
        &[Binding::Write(dk), Binding::Write(dv), Binding::Read(dk_heads), Binding::Read(dv_heads)],
        groups_1d(nk, 256),
    )
}
