//! The optimizer's kernels: AdamW as `torch.optim.AdamW` computes it, and 8-bit AdamW as bitsandbytes'
//! `AdamW8bit` computes it (blockwise dynamic quantization of both moments), one tensor at a time; and the sums a
//! global gradient-norm clip (`torch.nn.utils.clip_grad_norm_`) is made of. `train::optim` keeps the list of
//! trained tensors, their names and the checkpoint layout; a [`crate::engine::Backend`] runs these updates.
//!
//! Legend: N = elements of one tensor, B = [`BLOCK_SIZE`], t = step number (1 for the first update).

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::engine::dynamic_map::{create_dynamic_map, nearest_code};
use crate::engine::vector_math::widest_vectors;

/// Elements per quantization block of 8-bit state; bitsandbytes hard-codes 256 for its blockwise optimizers
/// (`Optimizer2State.init_state`, and the `kOptimizerStatic8bit2StateBlockwise<…, 256, 1>` instantiations).
pub const BLOCK_SIZE: usize = 256;

/// Tensors with fewer elements keep 32-bit state even in the 8-bit optimizer (bitsandbytes' `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;

/// Elements per rayon task in the 32-bit paths and the norm; a multiple of [`BLOCK_SIZE`].
const CHUNK: usize = 16 * BLOCK_SIZE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimKind {
    /// `torch.optim.AdamW`.
    AdamW,
    /// bitsandbytes `AdamW8bit` (blockwise).
    AdamW8bit,
}

impl OptimKind {
    /// Every name `parse` accepts, for hints; the first of each kind is its own name.
    pub const NAMES: [&'static str; 7] = [
        "adamw",
        "adamw_torch",
        "adamw_torch_fused",
        "adamw_8bit",
        "adamw_bnb_8bit",
        "paged_adamw_8bit",
        "paged_adamw",
    ];

    /// The config name; also accepts the Hugging Face `TrainingArguments.optim` spellings of the same optimizers
    /// (paging only moves state between GPU and host memory, so the paged variants are the same update).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "adamw" | "adamw_torch" | "adamw_torch_fused" | "paged_adamw" => Some(OptimKind::AdamW),
            "adamw_8bit" | "adamw_bnb_8bit" | "paged_adamw_8bit" => Some(OptimKind::AdamW8bit),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OptimKind::AdamW => "adamw",
            OptimKind::AdamW8bit => "adamw_8bit",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig { kind: OptimKind::AdamW, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// One trained tensor's moments on the CPU.
#[derive(Clone, Debug)]
pub enum Moments {
    /// exp_avg, exp_avg_sq: [N] (torch's names).
    F32 { exp_avg: Vec<f32>, exp_avg_sq: Vec<f32> },
    /// bitsandbytes' names: state1 (m, signed map), state2 (v, unsigned map): [N] codes;
    /// absmax1, absmax2: [ceil(N / B)] per-block scales.
    Blockwise8 { state1: Vec<u8>, absmax1: Vec<f32>, state2: Vec<u8>, absmax2: Vec<f32> },
}

/// Whether a tensor of `n` elements keeps 8-bit moments under `kind` (bitsandbytes' `min_8bit_size` rule).
pub fn blockwise8(kind: OptimKind, n: usize) -> bool {
    kind == OptimKind::AdamW8bit && n >= MIN_8BIT_SIZE
}

/// The state tensors of one parameter of `n` elements, in checkpoint order: (suffix after the parameter's key,
/// bytes, safetensors dtype). torch's `exp_avg`/`exp_avg_sq` (F32, [N]), or bitsandbytes' `state1`/`absmax1`/
/// `state2`/`absmax2` (U8 [N] codes, F32 [ceil(N / B)] scales).
pub fn moment_layout(kind: OptimKind, n: usize) -> Vec<(&'static str, usize, &'static str)> {
    if blockwise8(kind, n) {
        let blocks = n.div_ceil(BLOCK_SIZE);
        vec![("state1", n, "U8"), ("absmax1", 4 * blocks, "F32"), ("state2", n, "U8"), ("absmax2", 4 * blocks, "F32")]
    } else {
        vec![("exp_avg", 4 * n, "F32"), ("exp_avg_sq", 4 * n, "F32")]
    }
}

/// Bytes the moments of a tensor of `n` elements hold.
pub fn moment_bytes(kind: OptimKind, n: usize) -> usize {
    moment_layout(kind, n).iter().map(|&(_, bytes, _)| bytes).sum()
}

/// bitsandbytes' "dynamic" (signed, for m) and "udynamic" (unsigned, for v) maps with their lookup tables, built
/// once per process.
fn code_books() -> &'static (CodeBook, CodeBook) {
    static BOOKS: OnceLock<(CodeBook, CodeBook)> = OnceLock::new();
    BOOKS.get_or_init(|| (CodeBook::new(create_dynamic_map(true)), CodeBook::new(create_dynamic_map(false))))
}

impl Moments {
    /// Zero moments (8-bit state as all-zero codes with zero scales, which dequantize to 0).
    pub fn zeros(kind: OptimKind, n: usize) -> Self {
        if blockwise8(kind, n) {
            let blocks = n.div_ceil(BLOCK_SIZE);
            Moments::Blockwise8 {
                state1: vec![0; n],
                absmax1: vec![0.0; blocks],
                state2: vec![0; n],
                absmax2: vec![0.0; blocks],
            }
        } else {
            Moments::F32 { exp_avg: vec![0.0; n], exp_avg_sq: vec![0.0; n] }
        }
    }

    /// One update of p by its gradient g at step t (p, g: [N]).
    ///
    /// `AdamW` follows torch's `_single_tensor_adam` operation by operation in f32 (decay before the moments).
    /// `AdamW8bit` follows bitsandbytes' kernels: the Adam step as `p += -lr·√c2/c1 · m / (√v + √c2·eps)`, then
    /// the decay `p *= 1 − lr·wd` (bitsandbytes decays after the step; the difference is O(lr²·wd)).
    pub fn update(&mut self, cfg: &OptimConfig, p: &mut [f32], g: &[f32], lr: f32, t: u64) {
        Moments::update_all(vec![(self, p, g, lr)], cfg, t);
    }

    /// [`Moments::update`] of many tensors at step t (each with its own learning rate), as one parallel pass over
    /// all their 32-bit chunks (the same arithmetic per element as one at a time, so the same bits); tensors with
    /// 8-bit moments are updated one after the other. A LoRA step's tensors are small (9,216 to 24,576 values for
    /// SmolLM2-135M at r16): one parallel pass per tensor left the threads waiting on each other 420 times a step.
    pub fn update_all(tensors: Vec<(&mut Moments, &mut [f32], &[f32], f32)>, cfg: &OptimConfig, t: u64) {
        let mut kernels = Vec::new();
        let mut chunks = Vec::new();
        for (moments, p, g, lr) in tensors {
            match moments {
                Moments::F32 { exp_avg, exp_avg_sq } => {
                    let k = kernels.len();
                    kernels.push(F32Update::new(cfg, lr, t));
                    let parts = p.chunks_mut(CHUNK).zip(g.chunks(CHUNK));
                    let parts = parts.zip(exp_avg.chunks_mut(CHUNK)).zip(exp_avg_sq.chunks_mut(CHUNK));
                    chunks.extend(parts.map(|(((p, g), m), v)| (k, p, g, m, v)));
                }
                Moments::Blockwise8 { state1, absmax1, state2, absmax2 } => {
                    let k = BnbAdam::new(cfg, lr, t);
                    let (signed, unsigned) = code_books();
                    p.par_chunks_mut(BLOCK_SIZE)
                        .zip(g.par_chunks(BLOCK_SIZE))
                        .zip(state1.par_chunks_mut(BLOCK_SIZE))
                        .zip(absmax1.par_iter_mut())
                        .zip(state2.par_chunks_mut(BLOCK_SIZE))
                        .zip(absmax2.par_iter_mut())
                        .with_min_len(16)
                        .for_each(|(((((p, g), c1), a1), c2), a2)| {
                            k.update_block8(p, g, c1, a1, c2, a2, signed, unsigned)
                        });
                }
            }
        }
        chunks.into_par_iter().for_each(|(k, p, g, m, v)| kernels[k].chunk(p, g, m, v));
    }

    /// The state tensors' bytes in [`moment_layout`] order.
    pub fn tensors(&self) -> Vec<Vec<u8>> {
        match self {
            Moments::F32 { exp_avg, exp_avg_sq } => vec![f32_bytes(exp_avg), f32_bytes(exp_avg_sq)],
            Moments::Blockwise8 { state1, absmax1, state2, absmax2 } => {
                vec![state1.clone(), f32_bytes(absmax1), state2.clone(), f32_bytes(absmax2)]
            }
        }
    }

    /// Bytes of each state tensor, in [`moment_layout`] order (what [`Moments::tensors`] would give, without the
    /// copy).
    pub fn byte_sizes(&self) -> Vec<usize> {
        match self {
            Moments::F32 { exp_avg, exp_avg_sq } => vec![4 * exp_avg.len(), 4 * exp_avg_sq.len()],
            Moments::Blockwise8 { state1, absmax1, state2, absmax2 } => {
                vec![state1.len(), 4 * absmax1.len(), state2.len(), 4 * absmax2.len()]
            }
        }
    }

    /// Restores what [`Moments::tensors`] gave; `parts` must already match [`moment_layout`] in count and size.
    pub fn load(&mut self, parts: &[&[u8]]) {
        match self {
            Moments::F32 { exp_avg, exp_avg_sq } => {
                read_f32(parts[0], exp_avg);
                read_f32(parts[1], exp_avg_sq);
            }
            Moments::Blockwise8 { state1, absmax1, state2, absmax2 } => {
                state1.copy_from_slice(parts[0]);
                read_f32(parts[1], absmax1);
                state2.copy_from_slice(parts[2]);
                read_f32(parts[3], absmax2);
            }
        }
    }
}

/// Σ x² of each tensor in f64 (per chunk, added in a fixed order so that the norm does not depend on scheduling),
/// then the global L2 norm, as f32.
pub fn global_norm(tensors: &[&[f32]]) -> f32 {
    let sums: Vec<f64> = tensors
        .par_iter()
        .map(|t| {
            let parts: Vec<f64> = t.par_chunks(CHUNK).map(sum_of_squares).collect();
            parts.iter().sum::<f64>()
        })
        .collect();
    sums.iter().sum::<f64>().sqrt() as f32
}

/// The factor torch's clip applies: `max_norm / (norm + 1e-6)` when `max_norm` > 0 and it is below 1.
pub fn clip_coefficient(norm: f32, max_norm: f32) -> Option<f32> {
    let coef = max_norm / (norm + 1e-6);
    (max_norm > 0.0 && coef < 1.0).then_some(coef)
}

/// x *= coef, in parallel chunks.
pub fn scale(x: &mut [f32], coef: f32) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= coef));
}

/// torch's `_single_tensor_adam` with `decoupled_weight_decay` (AdamW): torch keeps the hyperparameters and bias
/// corrections as Python floats (f64) and casts each scalar to f32 where it meets a tensor; so do we.
/// Its scalars are public so that the GPU kernel (loft-gpu) runs the same update.
pub struct TorchAdamW {
    pub decay: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub bias_correction2_sqrt: f32,
    pub neg_step_size: f32,
    pub eps: f32,
    pub apply_decay: bool,
}

impl TorchAdamW {
    pub fn new(cfg: &OptimConfig, lr: f32, t: u64) -> Self {
        let (lr, wd) = (as_written(lr), as_written(cfg.weight_decay));
        let (beta1, beta2) = (as_written(cfg.beta1), as_written(cfg.beta2));
        let t = t as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        TorchAdamW {
            decay: (1.0 - lr * wd) as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            neg_step_size: (-(lr / bias_correction1)) as f32,
            eps: as_written(cfg.eps) as f32,
            apply_decay: wd != 0.0,
        }
    }
}

widest_vectors! {
    /// [`TorchAdamW`]'s update of one chunk, at the CPU's widest vectors (IEEE multiplies, adds, divisions and
    /// square roots, no fused multiply-adds: the same bits at every width).
    fn torch_adamw_chunk(k: &TorchAdamW, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let decay = if k.apply_decay { k.decay } else { 1.0 }; // skipped by torch when wd = 0; × 1 is exact
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *p *= decay; // param.mul_(1 - lr * weight_decay)
            *m += k.one_minus_beta1 * (g - *m); // exp_avg.lerp_(grad, 1 - beta1)
            *v = *v * k.beta2 + k.one_minus_beta2 * g * g; // exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
            let denom = v.sqrt() / k.bias_correction2_sqrt + k.eps;
            *p += k.neg_step_size * *m / denom; // param.addcdiv_(exp_avg, denom, value=-step_size)
        }
    }
}

/// The update of a tensor with 32-bit moments: torch's AdamW, or bitsandbytes' Adam (the 8-bit optimizer keeps
/// 32-bit moments for tensors under [`MIN_8BIT_SIZE`]).
enum F32Update {
    Torch(TorchAdamW),
    Bnb(BnbAdam),
}

impl F32Update {
    fn new(cfg: &OptimConfig, lr: f32, t: u64) -> Self {
        match cfg.kind {
            OptimKind::AdamW => F32Update::Torch(TorchAdamW::new(cfg, lr, t)),
            OptimKind::AdamW8bit => F32Update::Bnb(BnbAdam::new(cfg, lr, t)),
        }
    }

    /// p, g, m, v: [chunk]
    fn chunk(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        match self {
            F32Update::Torch(k) => torch_adamw_chunk(k, p, g, m, v),
            F32Update::Bnb(k) => {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    k.update(p, g, m, v);
                }
            }
        }
    }
}

/// bitsandbytes' Adam update (`kOptimizer32bit2State` / `kOptimizerStatic8bit2StateBlockwise`, ADAM), all in
/// f32 as the kernels compute it. Its scalars are public so that the GPU kernels (loft-gpu) run the same update.
pub struct BnbAdam {
    pub beta1: f32,
    pub beta2: f32,
    /// -lr·√(1 − β2ᵗ) / (1 − β1ᵗ)
    pub step_size: f32,
    /// √(1 − β2ᵗ)·eps
    pub eps_hat: f32,
    pub decay: f32,
    pub apply_decay: bool,
}

impl BnbAdam {
    pub fn new(cfg: &OptimConfig, lr: f32, t: u64) -> Self {
        let correction1 = 1.0 - cfg.beta1.powf(t as f32);
        let correction2 = (1.0 - cfg.beta2.powf(t as f32)).sqrt();
        BnbAdam {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            step_size: -lr * correction2 / correction1,
            eps_hat: correction2 * cfg.eps,
            decay: 1.0 - lr * cfg.weight_decay,
            apply_decay: cfg.weight_decay > 0.0,
        }
    }

    #[inline]
    fn moments(&self, g: f32, m: &mut f32, v: &mut f32) {
        *v = *v * self.beta2 + (1.0 - self.beta2) * g * g;
        *m = *m * self.beta1 + (1.0 - self.beta1) * g;
    }

    #[inline]
    fn apply(&self, p: &mut f32, m: f32, v: f32) {
        *p += self.step_size * (m / (v.sqrt() + self.eps_hat));
        if self.apply_decay {
            *p *= self.decay;
        }
    }

    #[inline]
    fn update(&self, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        self.moments(g, m, v);
        self.apply(p, *m, *v);
    }

    /// One block: dequantize both moments, update them and the parameters in f32 (the step uses the unquantized
    /// new moments), requantize by nearest code against the block's new absmax. p, g, c1, c2: [≤ B].
    #[allow(clippy::too_many_arguments)]
    fn update_block8(
        &self,
        p: &mut [f32],
        g: &[f32],
        c1: &mut [u8],
        absmax1: &mut f32,
        c2: &mut [u8],
        absmax2: &mut f32,
        signed: &CodeBook,
        unsigned: &CodeBook,
    ) {
        let n = p.len();
        let (mut m, mut v) = ([0f32; BLOCK_SIZE], [0f32; BLOCK_SIZE]);
        let (mut new_absmax1, mut new_absmax2) = (0f32, 0f32);
        for j in 0..n {
            m[j] = signed.values[c1[j] as usize] * *absmax1;
            v[j] = unsigned.values[c2[j] as usize] * *absmax2;
            self.moments(g[j], &mut m[j], &mut v[j]);
            new_absmax1 = new_absmax1.max(m[j].abs());
            new_absmax2 = new_absmax2.max(v[j].abs());
        }
        for j in 0..n {
            self.apply(&mut p[j], m[j], v[j]);
        }
        *absmax1 = new_absmax1;
        *absmax2 = new_absmax2;
        for j in 0..n {
            let mut c = signed.quantize(m[j], new_absmax1);
            // As bitsandbytes: m keeps its sign through quantization (a tiny negative m must not become 0 or
            // positive), so step one code towards it.
            if signed.values[c as usize].is_sign_negative() != m[j].is_sign_negative() {
                c = if m[j] > 0.0 { c + 1 } else { c - 1 };
            }
            c1[j] = c;
            c2[j] = unsigned.quantize(v[j], new_absmax2);
        }
    }
}

/// `x / absmax` to its nearest code; a zero block (absmax = 0) stores the code of 0.
fn quantize_value(map: &[f32; 256], x: f32, absmax: f32) -> u8 {
    if absmax > 0.0 {
        nearest_code(map, x / absmax)
    } else {
        nearest_code(map, 0.0)
    }
}

/// A map with a lookup table that gives [`nearest_code`]'s answer in one or two comparisons: the table holds, for
/// each bucket of floats sharing their top 16 bits (sign, exponent, 7 mantissa bits; 0.8% wide), the nearest
/// code of the bucket's lowest value; since the nearest code grows with x, the answer for any x in the bucket is
/// found by stepping up past the midpoints x exceeds, and a bucket is narrower than the gap between codes.
struct CodeBook {
    values: [f32; 256],
    /// mids[i] = (values[i] + values[i + 1]) / 2, nearest_code's rounding boundary.
    mids: [f32; 255],
    /// [65536], by `x.to_bits() >> 16`.
    table: Vec<u8>,
}

impl CodeBook {
    fn new(values: [f32; 256]) -> Self {
        let mut mids = [0f32; 255];
        for (i, m) in mids.iter_mut().enumerate() {
            *m = (values[i] + values[i + 1]) * 0.5;
        }
        let table = (0..=u16::MAX as u32)
            .map(|key| {
                // The bucket's lowest value: its smallest magnitude for positives, its largest for negatives.
                let lowest = if key & 0x8000 == 0 { key << 16 } else { (key << 16) | 0xFFFF };
                nearest_code(&values, f32::from_bits(lowest))
            })
            .collect();
        CodeBook { values, mids, table }
    }

    #[inline]
    fn nearest(&self, x: f32) -> u8 {
        let mut c = self.table[(x.to_bits() >> 16) as usize] as usize;
        while c < 255 && x > self.mids[c] {
            c += 1;
        }
        c as u8
    }

    /// As [`quantize_value`].
    #[inline]
    fn quantize(&self, x: f32, absmax: f32) -> u8 {
        self.nearest(if absmax > 0.0 { x / absmax } else { 0.0 })
    }
}

/// Blockwise quantization (bitsandbytes' `quantize_blockwise` with a dynamic map): per block of [`BLOCK_SIZE`]
/// values the absmax, and each value's nearest code of `value / absmax`.
/// values, codes: [N]; absmax: [ceil(N / B)].
pub fn quantize_blockwise(values: &[f32], map: &[f32; 256], codes: &mut [u8], absmax: &mut [f32]) {
    assert_eq!(values.len(), codes.len());
    assert_eq!(absmax.len(), values.len().div_ceil(BLOCK_SIZE));
    for ((x, c), a) in values.chunks(BLOCK_SIZE).zip(codes.chunks_mut(BLOCK_SIZE)).zip(absmax.iter_mut()) {
        *a = x.iter().fold(0f32, |acc, v| acc.max(v.abs()));
        for (c, &x) in c.iter_mut().zip(x) {
            *c = quantize_value(map, x, *a);
        }
    }
}

/// The inverse: `map[code] · absmax` of its block. codes, out: [N]; absmax: [ceil(N / B)].
pub fn dequantize_blockwise(codes: &[u8], absmax: &[f32], map: &[f32; 256], out: &mut [f32]) {
    assert_eq!(codes.len(), out.len());
    assert_eq!(absmax.len(), codes.len().div_ceil(BLOCK_SIZE));
    for ((c, &a), o) in codes.chunks(BLOCK_SIZE).zip(absmax).zip(out.chunks_mut(BLOCK_SIZE)) {
        for (o, &c) in o.iter_mut().zip(c) {
            *o = map[c as usize] * a;
        }
    }
}

/// Σ x² in f64, over eight lanes so that the additions do not wait on each other.
fn sum_of_squares(x: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += (v as f64) * (v as f64);
        }
    }
    let rest: f64 = chunks.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
    lanes.iter().sum::<f64>() + rest
}

/// The f64 a decimal hyperparameter was written as (`0.9f32` → `0.9`): torch holds hyperparameters as Python
/// floats, so `1 − β1` must be computed from 0.9, not from 0.899999976.
fn as_written(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// bytes: [4·N] little-endian, already checked against `out`: [N].
fn read_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn code_book_table_agrees_with_the_search() {
        for signed in [true, false] {
            let book = CodeBook::new(create_dynamic_map(signed));
            // Every 251st float pattern, all midpoints and their neighbours, and the specials.
            let mut xs: Vec<f32> = (0..=u32::MAX / 251).map(|k| f32::from_bits(k * 251)).collect();
            for &m in &book.mids {
                xs.extend([m, f32::from_bits(m.to_bits() + 1), f32::from_bits(m.to_bits().wrapping_sub(1))]);
            }
            xs.extend([0.0, -0.0, 1.0, -1.0, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE]);
            for x in xs.into_iter().filter(|x| !x.is_nan()) {
                assert_eq!(book.nearest(x), nearest_code(&book.values, x), "x = {x:e} ({:#x})", x.to_bits());
            }
        }
    }

    /// [`Moments::update_all`] gives every tensor the bits [`Moments::update`] gives it alone: both optimizers, with
    /// weight decay, tensors of different learning rates, sizes that leave partial chunks, and (8-bit) a mix of
    /// blockwise and 32-bit state.
    #[test]
    fn update_all_equals_one_tensor_at_a_time() {
        let sizes = [1, 4095, 4096, 9217, 24_576, 3];
        for kind in [OptimKind::AdamW, OptimKind::AdamW8bit] {
            let cfg = OptimConfig { kind, weight_decay: 0.01, ..OptimConfig::default() };
            let grad = |n: usize, s: usize| -> Vec<f32> {
                (0..n).map(|i| (((i + s) * 7919 % 1013) as f32 - 500.0) / 3e3).collect()
            };
            let mut alone: Vec<(Moments, Vec<f32>)> =
                sizes.iter().map(|&n| (Moments::zeros(kind, n), grad(n, 1))).collect();
            let mut all = alone.clone();
            assert!(kind == OptimKind::AdamW || matches!(all[4].0, Moments::Blockwise8 { .. }));
            for t in 1..=3 {
                for (i, ((m, p), &n)) in alone.iter_mut().zip(&sizes).enumerate() {
                    m.update(&cfg, p, &grad(n, t), 1e-3 * (i + 1) as f32, t as u64);
                }
                let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| grad(n, t)).collect();
                let tensors = all.iter_mut().zip(&grads).enumerate();
                let tensors = tensors.map(|(i, ((m, p), g))| (m, &mut p[..], &g[..], 1e-3 * (i + 1) as f32)).collect();
                Moments::update_all(tensors, &cfg, t as u64);
            }
            for ((ma, pa), (mb, pb)) in alone.iter().zip(&all) {
                assert!(pa.iter().zip(pb).all(|(a, b)| a.to_bits() == b.to_bits()), "{kind:?}: parameters differ");
                assert_eq!(ma.tensors(), mb.tensors(), "{kind:?}: moments differ");
            }
        }
    }

    /// The update at the CPU's widest vectors equals the scalar loop it replaced, bit for bit (with and without
    /// weight decay, over a length that leaves a partial vector).
    #[test]
    fn torch_adamw_chunk_matches_the_scalar_loop() {
        let n = 4099;
        for weight_decay in [0.0, 0.01] {
            let cfg = OptimConfig { weight_decay, ..OptimConfig::default() };
            let k = TorchAdamW::new(&cfg, 3e-4, 7);
            let g: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1013) as f32 - 500.0) / 3e3).collect();
            let p0: Vec<f32> = (0..n).map(|i| ((i * 31 % 211) as f32 - 105.0) / 50.0).collect();
            let m0: Vec<f32> = g.iter().map(|g| g * 0.3).collect();
            let v0: Vec<f32> = g.iter().map(|g| g * g * 0.7).collect();
            let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
            torch_adamw_chunk(&k, &mut p, &g, &mut m, &mut v);
            let (mut wp, mut wm, mut wv) = (p0, m0, v0);
            let decay = if k.apply_decay { k.decay } else { 1.0 };
            for i in 0..n {
                wp[i] *= decay;
                wm[i] += k.one_minus_beta1 * (g[i] - wm[i]);
                wv[i] = wv[i] * k.beta2 + k.one_minus_beta2 * g[i] * g[i];
                let denom = wv[i].sqrt() / k.bias_correction2_sqrt + k.eps;
                wp[i] += k.neg_step_size * wm[i] / denom;
            }
            assert_eq!((p, m, v), (wp, wm, wv), "weight decay {weight_decay}");
        }
    }

    #[test]
    fn hyperparameters_as_written() {
        assert_eq!(as_written(0.9), 0.9);
        assert_eq!(as_written(1e-8), 1e-8);
        assert_eq!(1.0 - as_written(0.999), 1.0 - 0.999);
    }
}
