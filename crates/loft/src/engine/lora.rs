//! A frozen linear layer with a LoRA adapter, as PEFT computes it:
//!   y = x·Wᵀ + scale · (dropout(x)·Aᵀ)·Bᵀ,   W [out, in] frozen, A [r, in], B [out, r].
//! Legend: N = rows (tokens), I = in_features, O = out_features, R = rank.
//!
//! Dropout masks are not stored: each is regenerated from its seed in the backward (one SplitMix64 stream per row),
//! so the forward and backward of one micro-batch must be given the same [`LoraDropout`].

#![forbid(unsafe_code)]

use rayon::prelude::*;

use super::frozen::FrozenMatrix;
use super::matmul::{matmul_nn, matmul_nt, matmul_tn};
use crate::rng::SplitMix64;

/// The trained matrices of one adapted linear layer, with PEFT's names and layouts.
#[derive(Clone, Debug)]
pub struct LoraWeights {
    /// lora_A: [R, I]
    pub a: Vec<f32>,
    /// lora_B: [O, R]
    pub b: Vec<f32>,
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// lora_alpha / r, or lora_alpha / √r with rsLoRA.
    pub scale: f32,
}

/// PEFT's scaling: alpha / r, or alpha / √r when `use_rslora`.
pub fn lora_scale(alpha: f32, r: usize, use_rslora: bool) -> f32 {
    if use_rslora {
        alpha / (r as f32).sqrt()
    } else {
        alpha / r as f32
    }
}

impl LoraWeights {
    /// All-zero A and B (call [`LoraWeights::init`] before training, or load saved weights into them).
    pub fn zeros(r: usize, in_features: usize, out_features: usize, alpha: f32, use_rslora: bool) -> Self {
        LoraWeights {
            a: vec![0.0; r * in_features],
            b: vec![0.0; out_features * r],
            r,
            in_features,
            out_features,
            scale: lora_scale(alpha, r, use_rslora),
        }
    }

    /// PEFT's default initialisation: B = 0, and A by torch's `kaiming_uniform_(a=√5)`: gain = √(2 / (1 + 5)),
    /// bound = gain · √(3 / fan_in) = 1/√I, A ~ U(−bound, bound). The stream is fixed by `seed` (not torch's).
    pub fn init(&mut self, seed: u64) {
        let bound = 1.0 / (self.in_features as f64).sqrt();
        let mut rng = SplitMix64::new(seed);
        for a in self.a.iter_mut() {
            *a = ((rng.next_f64() * 2.0 - 1.0) * bound) as f32;
        }
        self.b.fill(0.0);
    }
}

/// Dropout on the adapter's input: each element kept with probability 1 − p and scaled by 1/(1 − p), the mask
/// drawn from `seed` (choose a fresh seed per layer, micro-batch and step).
#[derive(Clone, Copy, Debug)]
pub struct LoraDropout {
    pub p: f32,
    pub seed: u64,
}

impl LoraDropout {
    /// The stream that draws row `row`'s mask: the seed mixed with a hash of the row, so rows do not overlap.
    fn row_stream(&self, row: usize) -> SplitMix64 {
        SplitMix64::new(self.seed ^ SplitMix64::new(row as u64).next_u64())
    }

    /// xd[N, I] = dropout(x[N, I]); rows are independent streams, so this runs in parallel and is reproducible.
    pub fn apply(&self, xd: &mut [f32], x: &[f32], i: usize) {
        let keep = 1.0 / (1.0 - self.p);
        let p = self.p as f64;
        xd.par_chunks_mut(i).zip(x.par_chunks(i)).enumerate().with_min_len(8).for_each(|(row, (dst, src))| {
            let mut rng = self.row_stream(row);
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = if rng.next_f64() >= p { s * keep } else { 0.0 };
            }
        });
    }
}

/// y[N, O] = (accumulate ? y : 0) + x·Wᵀ + scale · xa·Bᵀ, saving xa[N, R] = dropout(x)·Aᵀ for the backward.
/// xd: scratch [N, I] holding dropout(x), used only when `dropout` is Some (may be empty otherwise).
#[allow(clippy::too_many_arguments)]
pub fn lora_forward(
    y: &mut [f32],
    xa: &mut [f32],
    xd: &mut [f32],
    x: &[f32],
    w: &FrozenMatrix,
    lora: &LoraWeights,
    dropout: Option<LoraDropout>,
    n: usize,
    accumulate: bool,
) {
    let (i, o, r) = (lora.in_features, lora.out_features, lora.r);
    assert!(w.rows == o && w.cols == i, "lora_forward: base weight is [{}, {}], adapter [{o}, {i}]", w.rows, w.cols);
    assert!(y.len() == n * o && x.len() == n * i && xa.len() == n * r, "lora_forward: shapes");
    w.forward(y, x, n, accumulate);
    add_lora_term(y, xa, xd, x, lora, dropout, n);
}

/// [`lora_forward`] without dropout for the few rows of a decoding step: the base product through
/// [`FrozenMatrix::decode_forward`] (8-bit activations over Q4_0/Q4_1/Q8_0 blocks), the adapter's term in f32.
pub fn lora_decode_forward(
    y: &mut [f32],
    xa: &mut [f32],
    x: &[f32],
    w: &FrozenMatrix,
    lora: &LoraWeights,
    n: usize,
    accumulate: bool,
) {
    let (i, o, r) = (lora.in_features, lora.out_features, lora.r);
    assert!(w.rows == o && w.cols == i, "lora_forward: base weight is [{}, {}], adapter [{o}, {i}]", w.rows, w.cols);
    assert!(y.len() == n * o && x.len() == n * i && xa.len() == n * r, "lora_forward: shapes");
    w.decode_forward(y, x, n, accumulate);
    add_lora_term(y, xa, &mut [], x, lora, None, n);
}

/// y[N, O] += scale · (dropout(x)·Aᵀ)·Bᵀ, keeping xa = dropout(x)·Aᵀ.
fn add_lora_term(
    y: &mut [f32],
    xa: &mut [f32],
    xd: &mut [f32],
    x: &[f32],
    lora: &LoraWeights,
    dropout: Option<LoraDropout>,
    n: usize,
) {
    let (i, o, r) = (lora.in_features, lora.out_features, lora.r);
    let x_in: &[f32] = match dropout {
        Some(dp) => {
            dp.apply(&mut xd[..n * i], x, i);
            &xd[..n * i]
        }
        None => x,
    };
    matmul_nt(xa, x_in, &lora.a, n, i, r, 1.0, false);
    matmul_nt(y, xa, &lora.b, n, r, o, lora.scale, true);
}

/// Backward of [`lora_forward`]:
///   dx[N, I] = (accumulate ? dx : 0) + dy·W + dropout'(scale · dy·B·A)
///   dA[R, I] += (scale · dy·B)ᵀ · dropout(x),   dB[O, R] += scale · dyᵀ · xa   (both accumulate: micro-batches add)
/// dxa: scratch [N, R]; xd: scratch [N, I], used only when `dropout` is Some.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    dx: &mut [f32],
    da: &mut [f32],
    db: &mut [f32],
    dxa: &mut [f32],
    xd: &mut [f32],
    dy: &[f32],
    x: &[f32],
    xa: &[f32],
    w: &FrozenMatrix,
    lora: &LoraWeights,
    dropout: Option<LoraDropout>,
    n: usize,
    accumulate: bool,
) {
    let (i, o, r) = (lora.in_features, lora.out_features, lora.r);
    assert!(dx.len() == n * i && dy.len() == n * o && x.len() == n * i && xa.len() == n * r, "lora_backward: shapes");
    assert!(da.len() == r * i && db.len() == o * r && dxa.len() == n * r, "lora_backward: gradient shapes");
    // y += scale · xa·Bᵀ  →  dB += scale · dyᵀ·xa,  dxa = scale · dy·B
    matmul_tn(db, dy, xa, n, o, r, lora.scale, true);
    matmul_nn(dxa, dy, &lora.b, n, o, r, lora.scale, false);
    // y = x·Wᵀ  →  dx = dy·W
    w.backward_input(dx, dy, n, accumulate);
    match dropout {
        None => {
            // xa = x·Aᵀ  →  dA += dxaᵀ·x,  dx += dxa·A
            matmul_tn(da, dxa, x, n, r, i, 1.0, true);
            matmul_nn(dx, dxa, &lora.a, n, r, i, 1.0, true);
        }
        Some(dp) => {
            // xa = xd·Aᵀ with xd = x ⊙ mask/(1−p)  →  dA += dxaᵀ·xd,  dx += (dxa·A) ⊙ mask/(1−p)
            let xd = &mut xd[..n * i];
            dp.apply(xd, x, i);
            matmul_tn(da, dxa, xd, n, r, i, 1.0, true);
            matmul_nn(xd, dxa, &lora.a, n, r, i, 1.0, false);
            let keep = 1.0 / (1.0 - dp.p);
            // The mask is where dropout(x) was nonzero; regenerate it rather than compare floats.
            let pp = dp.p as f64;
            dx.par_chunks_mut(i).zip(xd.par_chunks(i)).enumerate().with_min_len(8).for_each(|(row, (d, g))| {
                let mut rng = dp.row_stream(row);
                for (d, &g) in d.iter_mut().zip(g) {
                    if rng.next_f64() >= pp {
                        *d += g * keep;
                    }
                }
            });
        }
    }
}
