//! Twin of `loft::engine::cross_entropy`: the output head fused with cross-entropy, chunk by chunk, so only
//! [chunk, V] logits ever exist on the device. Legend: N = rows (tokens), C = hidden_size, V = vocab_size.
//!
//! Targets are host data (the batch), so the rows that count are gathered by an index list built on the host;
//! per-row losses stay on the device until the call ends, and come back as one read.

use loft::Result;

use super::embedding::VocabMatrix;
use super::matmul::matmul_tn;
use crate::context::{groups_1d, groups_for, Binding, Context, GpuBuffer, Kernel};

/// Buffers of the chunked head, allocated once for a given chunk size and model shape.
pub struct CrossEntropyScratch {
    chunk: usize,
    /// Target rows gathered into the current chunk: [chunk, C].
    h: GpuBuffer,
    /// Their logits, then the logits' gradient: [chunk, V].
    logits: GpuBuffer,
    /// Their input gradient: [chunk, C].
    dh: GpuBuffer,
}

impl CrossEntropyScratch {
    pub fn new(ctx: &Context, chunk: usize, c: usize, v: usize) -> Result<Self> {
        ensure!(chunk > 0, "CrossEntropyScratch: chunk must be positive");
        Ok(CrossEntropyScratch {
            chunk,
            h: ctx.zeros(chunk * c)?,
            logits: ctx.zeros(chunk * v)?,
            dh: ctx.zeros(chunk * c)?,
        })
    }

    /// Whether this scratch was built for rows of width `c` and a vocabulary of `v`.
    pub fn fits(&self, c: usize, v: usize) -> bool {
        self.h.len() == self.chunk * c && self.logits.len() == self.chunk * v
    }
}

/// Loss only (evaluation): returns (Σ over target rows of −log softmax(h·Wᵀ)[target], number of target rows).
pub fn cross_entropy_forward(
    ctx: &Context,
    scratch: &mut CrossEntropyScratch,
    h: &GpuBuffer,
    head: VocabMatrix<'_>,
    targets: &[i32],
    c: usize,
) -> Result<(f64, usize)> {
    head_cross_entropy(ctx, None, None, scratch, h, head, targets, c, 0.0)
}

/// Loss and gradients. dh[N, C] is OVERWRITTEN with grad_scale · ∂loss_sum/∂h (zero on ignored rows);
/// dhead[V, C], when the head is trained, is ACCUMULATED with grad_scale · ∂loss_sum/∂W.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_forward_backward(
    ctx: &Context,
    dh: &mut GpuBuffer,
    dhead: Option<&mut GpuBuffer>,
    scratch: &mut CrossEntropyScratch,
    h: &GpuBuffer,
    head: VocabMatrix<'_>,
    targets: &[i32],
    c: usize,
    grad_scale: f32,
) -> Result<(f64, usize)> {
    head_cross_entropy(ctx, Some(dh), dhead, scratch, h, head, targets, c, grad_scale)
}

fn rows_copy(
    ctx: &Context,
    dst: &GpuBuffer,
    src: &GpuBuffer,
    rows: &GpuBuffer,
    m: usize,
    c: usize,
    scatter: bool,
) -> Result<()> {
    ctx.dispatch(
        &Kernel { name: "rows_copy".into(), source: include_str!("../shaders/rows_copy.wgsl").into(), entry: "main" },
        &[m as u32, c as u32, scatter as u32, 0],
        &[Binding::Write(dst), Binding::Read(src), Binding::Read(rows)],
        groups_1d(m * c, 256),
    )
}

#[allow(clippy::too_many_arguments)]
fn head_cross_entropy(
    ctx: &Context,
    mut dh: Option<&mut GpuBuffer>,
    mut dhead: Option<&mut GpuBuffer>,
    s: &mut CrossEntropyScratch,
    h: &GpuBuffer,
    head: VocabMatrix<'_>,
    targets: &[i32],
    c: usize,
    grad_scale: f32,
) -> Result<(f64, usize)> {
    let (n, v) = (targets.len(), head.rows(c));
    ensure!(h.len() == n * c, "cross_entropy: h is not [N, C]");
    ensure!(
        s.h.len() == s.chunk * c && s.logits.len() == s.chunk * v,
        "cross_entropy: scratch built for another shape"
    );
    ensure!(targets.iter().all(|&t| (t as i64) < v as i64), "cross_entropy: target outside the vocabulary");
    if let Some(dh) = dh.as_deref_mut() {
        ensure!(dh.len() == n * c, "cross_entropy: dh is not [N, C]");
        ctx.clear(dh)?;
    }
    if let Some(dw) = dhead.as_deref() {
        ensure!(dw.len() == v * c, "cross_entropy: dhead is not [V, C]");
    }
    let grads = dh.is_some();
    let counted: Vec<u32> = (0..n as u32).filter(|&i| targets[i as usize] >= 0).collect();
    if counted.is_empty() {
        return Ok((0.0, 0));
    }
    let losses = ctx.zeros(counted.len())?;
    let ce = Kernel {
        name: "cross_entropy".into(),
        source: include_str!("../shaders/cross_entropy.wgsl").into(),
        entry: "main",
    };
    for (ci, rows) in counted.chunks(s.chunk).enumerate() {
        let m = rows.len();
        let tgt: Vec<u32> = rows.iter().map(|&i| targets[i as usize] as u32).collect();
        let (rows_buf, tgt_buf) = (ctx.upload_u32(rows)?, ctx.upload_u32(&tgt)?);
        rows_copy(ctx, &s.h, h, &rows_buf, m, c, false)?;
        head.forward(ctx, &mut s.logits, &s.h, m, c)?;
        let params = [m as u32, v as u32, grads as u32, grad_scale.to_bits(), (ci * s.chunk) as u32, 0, 0, 0];
        ctx.dispatch(
            &ce,
            &params,
            &[Binding::Write(&s.logits), Binding::Write(&losses), Binding::Read(&tgt_buf)],
            groups_for(m),
        )?;
        if let Some(dh) = dh.as_deref_mut() {
            head.backward_input(ctx, &mut s.dh, &s.logits, m, c)?;
            rows_copy(ctx, dh, &s.dh, &rows_buf, m, c, true)?;
        }
        if let Some(dw) = dhead.as_deref_mut() {
            // dW[V, C] += dlogitsᵀ · h
            matmul_tn(ctx, dw, &s.logits, &s.h, m, v, c, 1.0, true)?;
        }
    }
    let loss_sum = ctx.read_f32(&losses)?.iter().map(|&l| l as f64).sum();
    Ok((loss_sum, counted.len()))
}
