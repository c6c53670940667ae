//! A frozen linear layer with a LoRA adapter, as PEFT computes it:
//!   y = x·Wᵀ + scale · (dropout(x)·Aᵀ)·Bᵀ,   W [out, in] frozen, A [r, in], B [out, r].
//! Legend: N = rows (tokens), I = in_features, O = out_features, R = rank.
//!
//! Linear layers that read the same input (q/k/v_proj, gate/up_proj) go through [`lora_group_forward`] and
//! [`lora_group_backward`] together: their adapters' A-side products are batched into one product against the
//! stacked [A_1; A_2; …] (x read once, one wide product instead of several rank-wide ones). The products are shared
//! out between the threads by hand, as tasks of single-threaded products (blocks of rows; in the backward, blocks of
//! dB's output rows too, and two kinds of product in one pool, so that a thread done with one kind takes the
//! other's): gemm's own threads gain little on products this narrow. A layer alone (o_proj, down_proj) takes the
//! same kernels as a group of one, except that in the forward its term gets a pass of its own after the frozen
//! product ([`lora_forward`] may accumulate onto y) instead of [`FrozenMatrix::forward_then`]'s.
//!
//! Dropout masks are not stored: each is regenerated from its seed in the backward (one SplitMix64 stream per row),
//! so the forward and backward of one micro-batch must be given the same [`LoraDropout`].

#![forbid(unsafe_code)]

use std::borrow::Cow;

use gemm::Parallelism;
use rayon::prelude::*;

use super::attention_tiles::transpose;
use super::frozen::FrozenMatrix;
use super::matmul::{gemm_strided, matmul_nn, matmul_nt, matmul_tn, parallelism};
use super::rank_wide::{rank_wide_product, LANES};
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
    match dropout {
        None => add_lora_group_terms(x, &mut [LoraOut { y, xa, w, lora }], n),
        Some(_) => add_lora_term(y, xa, xd, x, lora, dropout, n),
    }
}

/// [`lora_forward`] without dropout for the few rows of a decoding step: the base product through
/// [`FrozenMatrix::decode_forward`] (8-bit activations over the quantized blocks), the adapter's term in f32.
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
    let Some(dp) = dropout else {
        w.backward_input(dx, dy, n, accumulate);
        add_lora_group_grads(dx, x, &mut [LoraGrad { dy, xa, w, lora, da, db }], n);
        return;
    };
    // y += scale · xa·Bᵀ  →  dB += scale · dyᵀ·xa,  dxa = scale · dy·B
    add_db(db, dy, o, xa, n, o, r, lora.scale, parallelism(o, r, n));
    matmul_nn(dxa, dy, &lora.b, n, o, r, lora.scale, false);
    // y = x·Wᵀ  →  dx = dy·W
    w.backward_input(dx, dy, n, accumulate);
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

/// Output rows of dB per task of [`add_lora_group_grads`]'s backward (gate/up's 1536 in three).
const DB_BLOCK_COLS: usize = 512;

/// db[O, R] += alpha · dy[N, O]ᵀ · xa[N, R], with dy's rows dy_stride apart (a block of dy's columns) and xa's R.
/// gemm vectorizes along its output's contiguous side, which in db's own layout is only R wide; the product goes to
/// a transposed scratch [R, O] (O contiguous, about twice as fast at R = 16) and is added into db from there.
#[allow(clippy::too_many_arguments)]
fn add_db(
    db: &mut [f32],
    dy: &[f32],
    dy_stride: usize,
    xa: &[f32],
    n: usize,
    o: usize,
    r: usize,
    alpha: f32,
    threads: Parallelism,
) {
    let mut db_t = vec![0.0f32; r * o];
    gemm_strided(o, r, n, &mut db_t, (1, o), false, dy, (1, dy_stride), xa, (r, 1), alpha, threads);
    for (row, d) in db[..o * r].chunks_exact_mut(r).enumerate() {
        for (k, d) in d.iter_mut().enumerate() {
            *d += db_t[k * o + row];
        }
    }
}

/// One adapted linear layer of a group that reads the same input, in the forward: its frozen weight and adapter,
/// and its output y [N, O] and saved xa [N, R].
pub struct LoraOut<'a> {
    pub y: &'a mut [f32],
    pub xa: &'a mut [f32],
    pub w: &'a FrozenMatrix,
    pub lora: &'a LoraWeights,
}

/// The same layer in the backward: its output's gradient dy [N, O], the saved xa [N, R], and the adapter's
/// gradients dA [R, I], dB [O, R] (accumulated).
pub struct LoraGrad<'a> {
    pub dy: &'a [f32],
    pub xa: &'a [f32],
    pub w: &'a FrozenMatrix,
    pub lora: &'a LoraWeights,
    pub da: &'a mut [f32],
    pub db: &'a mut [f32],
}

/// Checks a group's shapes against x [N, I] (I from the first adapter); returns (I, each module's offset in the
/// stacked rank, ΣR).
fn group_shapes<'a>(
    op: &str,
    x: &[f32],
    n: usize,
    mods: impl Iterator<Item = (&'a LoraWeights, &'a FrozenMatrix, usize, usize)>,
) -> (usize, Vec<usize>, usize) {
    let (mut i, mut offsets, mut total) = (None, Vec::new(), 0);
    for (lora, w, y_len, xa_len) in mods {
        let (o, r) = (lora.out_features, lora.r);
        let i = *i.get_or_insert(lora.in_features);
        assert!(lora.in_features == i, "{op}: adapters of {i} and {} inputs in one group", lora.in_features);
        assert!(w.rows == o && w.cols == i, "{op}: base weight is [{}, {}], adapter [{o}, {i}]", w.rows, w.cols);
        assert!(x.len() == n * i && y_len == n * o && xa_len == n * r, "{op}: shapes");
        offsets.push(total);
        total += r;
    }
    let i = i.unwrap_or_else(|| panic!("{op}: an empty group"));
    (i, offsets, total)
}

/// [A_1; A_2; …] [ΣR, I]: borrowed when the group has one module.
fn stacked_a<'a>(loras: &[&'a LoraWeights]) -> Cow<'a, [f32]> {
    match loras {
        [one] => Cow::Borrowed(&one.a),
        _ => Cow::Owned(loras.iter().flat_map(|l| l.a.iter().copied()).collect()),
    }
}

/// For every module m of a group reading x [N, I] (q/k/v_proj, or gate/up_proj): y_m = x·W_mᵀ + scale_m ·
/// (x·A_mᵀ)·B_mᵀ, saving xa_m = x·A_mᵀ. What [`lora_forward`] computes module by module without dropout
/// (overwriting y), with the A-side products batched: [`lora_group_xa`] first, then each module's frozen product
/// with its adapter's term added to each block of y the product writes ([`FrozenMatrix::forward_then`]): over a
/// quantized base, whose product goes through tiles of output columns, the rank-R term gets no pass of its own over y.
pub fn lora_group_forward(x: &[f32], mods: &mut [LoraOut<'_>], n: usize) {
    let (xa_all, offsets, total) = lora_group_xa(x, mods, n);
    for (m, &off) in mods.iter_mut().zip(&offsets) {
        let (r, l) = (m.lora.r, m.lora);
        for (dst, src) in m.xa.chunks_exact_mut(r).zip(xa_all.chunks_exact(total)) {
            dst.copy_from_slice(&src[off..off + r]);
        }
        // part [rows, cols] += scale · xa[row0.., off..off + R] · B[cols, :]ᵀ
        let xa_all = &xa_all[off..];
        m.w.forward_then(m.y, x, n, false, |part, row0, cols| {
            let width = cols.len();
            let rows = part.len() / width;
            let (xa, b) = (&xa_all[row0 * total..], &l.b[cols.start * r..]);
            gemm_strided(rows, width, r, part, (width, 1), true, xa, (total, 1), b, (1, r), l.scale, Parallelism::None)
        });
    }
}

/// y_m += scale_m · xa_m·B_mᵀ with xa_m = x·A_mᵀ (saved) for every module of a group reading x [N, I].
pub fn add_lora_group_terms(x: &[f32], mods: &mut [LoraOut<'_>], n: usize) {
    let (xa_all, offsets, total) = lora_group_xa(x, mods, n);
    for (m, &off) in mods.iter_mut().zip(&offsets) {
        add_lora_term_from(m, &xa_all, total, off, n);
    }
}

/// The group's one A-side product: xa = x·[A_1; A_2; …]ᵀ [N, ΣR] (the shapes checked), with each module's first
/// column in it and ΣR.
pub fn lora_group_xa(x: &[f32], mods: &[LoraOut<'_>], n: usize) -> (Vec<f32>, Vec<usize>, usize) {
    let shapes = mods.iter().map(|m| (m.lora, m.w, m.y.len(), m.xa.len()));
    let (i, offsets, total) = group_shapes("lora_group_xa", x, n, shapes);
    let loras: Vec<&LoraWeights> = mods.iter().map(|m| m.lora).collect();
    let mut xa_all = vec![0.0f32; n * total];
    if n == 0 || total == 0 {
        return (xa_all, offsets, total);
    }
    // In blocks of rows, single-threaded each (gemm's own threads gain little on an output this narrow), against
    // [A_1; A_2; …]ᵀ laid out [I, ΣR] row-major: about twice gemm's speed with A's own rows as the columns (one
    // thread, [128, 32] · [32, 576]ᵀ: 212 against 104 GFLOP/s).
    let mut at = vec![0.0f32; i * total];
    for (l, &off) in loras.iter().zip(&offsets) {
        transpose(&mut at[off..], total, &l.a, i, l.r, i);
    }
    let rows = rows_per_task(n);
    xa_all.par_chunks_mut(rows * total).zip(x.par_chunks(rows * i)).for_each(|(xa, x)| {
        gemm_strided(
            xa.len() / total,
            total,
            i,
            xa,
            (total, 1),
            false,
            x,
            (i, 1),
            &at,
            (total, 1),
            1.0,
            Parallelism::None,
        )
    });
    (xa_all, offsets, total)
}

/// One module's term from the group's xa [N, ΣR] (its columns off..off+R): xa_m saved, y_m += scale_m · xa_m·B_mᵀ,
/// split by rows over the threads (a rank-wide product gains little from gemm's own threads).
pub fn add_lora_term_from(m: &mut LoraOut<'_>, xa_all: &[f32], total: usize, off: usize, n: usize) {
    let (o, r, l) = (m.lora.out_features, m.lora.r, m.lora);
    assert!(xa_all.len() == n * total && off + r <= total, "add_lora_term_from: xa is not [N, ΣR]");
    if n == 0 {
        return;
    }
    let rows = n.div_ceil(rayon::current_num_threads().max(1));
    let parts = m.y.par_chunks_mut(rows * o).zip(m.xa.par_chunks_mut(rows * r)).zip(xa_all.par_chunks(rows * total));
    parts.for_each(|((y, xa), all)| {
        for (dst, src) in xa.chunks_exact_mut(r).zip(all.chunks_exact(total)) {
            dst.copy_from_slice(&src[off..off + r]);
        }
        gemm_strided(y.len() / o, o, r, y, (o, 1), true, xa, (r, 1), &l.b, (1, r), l.scale, Parallelism::None);
    });
}

/// Backward of [`lora_group_forward`]: dx[N, I] = (accumulate ? dx : 0) + Σ_m (dy_m·W_m + scale_m · dy_m·B_m·A_m),
/// and each module's dA_m, dB_m accumulated as [`lora_backward`] does.
pub fn lora_group_backward(dx: &mut [f32], x: &[f32], mods: &mut [LoraGrad<'_>], n: usize, accumulate: bool) {
    assert!(!mods.is_empty() && dx.len() == x.len(), "lora_group_backward: dx is not [N, I], or an empty group");
    for (j, m) in mods.iter().enumerate() {
        assert!(m.dy.len() == n * m.w.rows, "lora_group_backward: dy is not [N, O]");
        m.w.backward_input(dx, m.dy, n, accumulate || j > 0);
    }
    add_lora_group_grads(dx, x, mods, n);
}

/// Rows of N per task where a product is shared out by rows: four tasks a thread (whole blocks of 8 rows), so that a
/// thread the system holds back is made up for by the others; all N on one thread.
fn rows_per_task(n: usize) -> usize {
    match rayon::current_num_threads() {
        0 | 1 => n.max(1),
        t => n.div_ceil(4 * t).next_multiple_of(8).max(1),
    }
}

/// What each of two products run side by side (rayon::join) gets of the pool: none of it on two threads, where
/// the pair already fills the machine, half of it on more.
fn half_the_threads() -> Parallelism {
    match rayon::current_num_threads() / 2 {
        0 | 1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    }
}

/// The adapters' part of [`lora_group_backward`]: dxa_m = scale_m · dy_m·B_m and dB_m += scale_m · dy_mᵀ·xa_m, then
/// with dxa = [dxa_1, dxa_2, …] [N, ΣR] one product each for [dA_1; dA_2; …] += dxaᵀ·x and dx += dxa·[A_1; A_2; …].
pub fn add_lora_group_grads(dx: &mut [f32], x: &[f32], mods: &mut [LoraGrad<'_>], n: usize) {
    let shapes = mods.iter().map(|m| (m.lora, m.w, m.dy.len(), m.xa.len()));
    let (i, offsets, total) = group_shapes("lora_group_backward", x, n, shapes);
    assert!(dx.len() == n * i, "lora_group_backward: dx is not [N, I]");
    for m in mods.iter() {
        let (o, r) = (m.lora.out_features, m.lora.r);
        assert!(m.da.len() == r * i && m.db.len() == o * r, "lora_group_backward: gradient shapes");
    }
    if n == 0 {
        return;
    }
    // y_m += scale_m · xa_m·B_mᵀ  →  dB_m += scale_m · dy_mᵀ·xa_m,  dxa_m = scale_m · dy_m·B_m: the dB products (each
    // cut into blocks of O) and the dxa products (blocks of rows, every module's columns of dxa [N, ΣR] in each) as
    // one pool of single-threaded tasks, so that a thread done with its side takes tasks from the other (dB costs
    // more than dxa at gate/up's widths). dxa_m by engine::rank_wide's kernel up to rank 16, where gemm is slowest
    // (about 1.6× gemm's speed on one thread).
    let mut dxa = vec![0.0f32; n * total];
    let dys: Vec<(&[f32], &LoraWeights)> = mods.iter().map(|m| (m.dy, m.lora)).collect();
    let mut db_blocks = Vec::new();
    for m in mods.iter_mut() {
        let (o, r, l, dy, xa) = (m.lora.out_features, m.lora.r, m.lora, m.dy, m.xa);
        let cols = o.div_ceil(o.div_ceil(DB_BLOCK_COLS));
        for (j, db) in m.db.chunks_mut(cols * r).enumerate() {
            db_blocks.push((db, &dy[j * cols..], o, xa, l));
        }
    }
    let block_rows = rows_per_task(n);
    let db_side = || {
        db_blocks
            .into_par_iter()
            .with_max_len(1)
            .for_each(|(db, dy, o, xa, l)| add_db(db, dy, o, xa, n, db.len() / l.r, l.r, l.scale, Parallelism::None))
    };
    let dxa_side = || {
        dxa.par_chunks_mut(block_rows * total).enumerate().for_each(|(c, dst)| {
            let (row0, rows) = (c * block_rows, dst.len() / total);
            for ((dy, l), &off) in dys.iter().zip(&offsets) {
                let (o, r) = (l.out_features, l.r);
                let (dst, dy) = (&mut dst[off..], &dy[row0 * o..(row0 + rows) * o]);
                match r {
                    _ if r > LANES => gemm_strided(
                        rows,
                        r,
                        o,
                        dst,
                        (total, 1),
                        false,
                        dy,
                        (o, 1),
                        &l.b,
                        (r, 1),
                        l.scale,
                        Parallelism::None,
                    ),
                    _ => rank_wide_product(dst, total, dy, o, &l.b, r, r, l.scale, false),
                }
            }
        })
    };
    rayon::join(db_side, dxa_side);
    let side = half_the_threads();
    let loras: Vec<&LoraWeights> = mods.iter().map(|m| m.lora).collect();
    let a = stacked_a(&loras);
    // xa = x·Aᵀ  →  dA += dxaᵀ·x,  dx += dxa·A: two products of the same size, side by side (dx in blocks of rows).
    let (dxa, a) = (&dxa[..], &*a);
    let da_side = || match mods {
        [m] => gemm_strided(total, i, n, m.da, (i, 1), true, dxa, (1, total), x, (i, 1), 1.0, side),
        _ => {
            let mut da = vec![0.0f32; total * i];
            gemm_strided(total, i, n, &mut da, (i, 1), false, dxa, (1, total), x, (i, 1), 1.0, side);
            for (m, &off) in mods.iter_mut().zip(&offsets) {
                let part = &da[off * i..(off + m.lora.r) * i];
                m.da.iter_mut().zip(part).for_each(|(d, g)| *d += g);
            }
        }
    };
    // dx in blocks of rows, single-threaded each: the thread done with dA takes what is left of them.
    let dx_side = || {
        dx.par_chunks_mut(block_rows * i).zip(dxa.par_chunks(block_rows * total)).for_each(|(dx, dxa)| {
            gemm_strided(dx.len() / i, i, total, dx, (i, 1), true, dxa, (total, 1), a, (i, 1), 1.0, Parallelism::None)
        })
    };
    rayon::join(da_side, dx_side);
}
