//! Twin of `loft::engine::lora`: a frozen linear layer with a LoRA adapter, as PEFT computes it:
//!   y = x·Wᵀ + scale · (dropout(x)·Aᵀ)·Bᵀ,   W [out, in] frozen, A [r, in], B [out, r].
//! Legend: N = rows (tokens), I = in_features, O = out_features, R = rank.
//!
//! Dropout masks are regenerated on the device from the same seeds and streams as the CPU's (shaders/dropout.wgsl),
//! so a run's masks do not depend on where it runs.

use loft::engine::{LoraDropout, LoraWeights};
use loft::Result;

use super::frozen::GpuFrozen;
use super::matmul::{matmul_nn, matmul_nt, matmul_tn};
use crate::context::{groups_1d, Binding, Context, GpuBuffer, Kernel};

/// The trained matrices of one adapted linear layer on the device, with PEFT's names and layouts.
pub struct GpuLoraWeights {
    /// lora_A: [R, I]
    pub a: GpuBuffer,
    /// lora_B: [O, R]
    pub b: GpuBuffer,
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub scale: f32,
}

impl GpuLoraWeights {
    pub fn upload(ctx: &Context, w: &LoraWeights) -> Result<Self> {
        Ok(GpuLoraWeights {
            a: ctx.upload_f32(&w.a)?,
            b: ctx.upload_f32(&w.b)?,
            r: w.r,
            in_features: w.in_features,
            out_features: w.out_features,
            scale: w.scale,
        })
    }
}

/// out[N, I] = dropout(x) (accumulate: out += dropout(g), the mask's backward).
fn dropout(
    ctx: &Context,
    out: &mut GpuBuffer,
    x: &GpuBuffer,
    dp: LoraDropout,
    n: usize,
    i: usize,
    accumulate: bool,
) -> Result<()> {
    let keep = 1.0 / (1.0 - dp.p);
    // Draw u/2^53 is kept iff u ≥ ceil(p · 2^53) (exact: scaling by a power of two, then an integer).
    let threshold = (dp.p as f64 * (1u64 << 53) as f64).ceil().min((1u64 << 53) as f64) as u64;
    let params = [
        n as u32,
        i as u32,
        dp.seed as u32,
        (dp.seed >> 32) as u32,
        threshold as u32,
        (threshold >> 32) as u32,
        keep.to_bits(),
        accumulate as u32,
    ];
    ctx.dispatch(
        &Kernel { name: "lora_dropout".into(), source: include_str!("../shaders/dropout.wgsl").into(), entry: "main" },
        &params,
        &[Binding::Write(out), Binding::Read(x)],
        groups_1d(n * i, 256),
    )
}

/// y[N, O] = (accumulate ? y : 0) + x·Wᵀ + scale · xa·Bᵀ, saving xa[N, R] = dropout(x)·Aᵀ for the backward.
/// xd: scratch [N, I] holding dropout(x), used only when `dropout` is Some.
#[allow(clippy::too_many_arguments)]
pub fn lora_forward(
    ctx: &Context,
    y: &mut GpuBuffer,
    xa: &mut GpuBuffer,
    xd: &mut GpuBuffer,
    x: &GpuBuffer,
    w: &GpuFrozen,
    lora: &GpuLoraWeights,
    dropout: Option<LoraDropout>,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    let (i, o, r) = (lora.in_features, lora.out_features, lora.r);
    ensure!(w.rows == o && w.cols == i, "lora_forward: base weight is [{}, {}], adapter [{o}, {i}]", w.rows, w.cols);
    ensure!(y.len() == n * o && x.len() == n * i && xa.len() == n * r, "lora_forward: shapes");
    w.forward(ctx, y, x, n, accumulate)?;
    let x_in: &GpuBuffer = match dropout {
        Some(dp) => {
            ensure!(xd.len() >= n * i, "lora_forward: xd is smaller than [N, I]");
            self::dropout(ctx, xd, x, dp, n, i, false)?;
            xd
        }
        None => x,
    };
    matmul_nt(ctx, xa, x_in, &lora.a, n, i, r, 1.0, false)?;
    matmul_nt(ctx, y, xa, &lora.b, n, r, o, lora.scale, true)
}

/// Backward of [`lora_forward`]:
///   dx[N, I] = (accumulate ? dx : 0) + dy·W + dropout'(scale · dy·B·A)
///   dA[R, I] += (scale · dy·B)ᵀ · dropout(x),   dB[O, R] += scale · dyᵀ · xa   (both accumulate)
/// dxa: scratch [N, R]; xd: scratch [N, I], used only when `dropout` is Some.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    ctx: &Context,
    dx: &mut GpuBuffer,
    da: &mut GpuBuffer,
    db: &mut GpuBuffer,
    dxa: &mut GpuBuffer,
    xd: &mut GpuBuffer,
    dy: &GpuBuffer,
    x: &GpuBuffer,
    xa: &GpuBuffer,
    w: &GpuFrozen,
    lora: &GpuLoraWeights,
    dropout: Option<LoraDropout>,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    let (i, o, r) = (lora.in_features, lora.out_features, lora.r);
    ensure!(dx.len() == n * i && dy.len() == n * o && x.len() == n * i && xa.len() == n * r, "lora_backward: shapes");
    ensure!(da.len() == r * i && db.len() == o * r && dxa.len() == n * r, "lora_backward: gradient shapes");
    // y += scale · xa·Bᵀ  →  dB += scale · dyᵀ·xa,  dxa = scale · dy·B
    matmul_tn(ctx, db, dy, xa, n, o, r, lora.scale, true)?;
    matmul_nn(ctx, dxa, dy, &lora.b, n, o, r, lora.scale, false)?;
    // y = x·Wᵀ  →  dx = dy·W
    w.backward_input(ctx, dx, dy, n, accumulate)?;
    match dropout {
        None => {
            // xa = x·Aᵀ  →  dA += dxaᵀ·x,  dx += dxa·A
            matmul_tn(ctx, da, dxa, x, n, r, i, 1.0, true)?;
            matmul_nn(ctx, dx, dxa, &lora.a, n, r, i, 1.0, true)
        }
        Some(dp) => {
            // xa = xd·Aᵀ with xd = x ⊙ mask/(1−p)  →  dA += dxaᵀ·xd,  dx += (dxa·A) ⊙ mask/(1−p)
            ensure!(xd.len() >= n * i, "lora_backward: xd is smaller than [N, I]");
            self::dropout(ctx, xd, x, dp, n, i, false)?;
            matmul_tn(ctx, da, dxa, xd, n, r, i, 1.0, true)?;
            matmul_nn(ctx, xd, dxa, &lora.a, n, r, i, 1.0, false)?;
            // The masked gradient goes through the same kernel, reading xd and adding into dx.
            self::dropout(ctx, dx, xd, dp, n, i, true)
        }
    }
}
