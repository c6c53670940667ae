//! The products of the training attention's tiles (engine::attention): c[M, N] = a[M, K] · b[K, N] at the block
//! sizes of a score tile (M, N, K up to a few hundred), written for them instead of going through the general gemm,
//! whose packing and copies cost as much as its multiply-adds at these sizes.
//!
//! b's rows and c's rows are contiguous (N lanes each, rows strided), a is read through any (row, column) strides, one
//! value at a time: a block of ROWS rows × LANES columns of c is held in registers, and per step of K each row's a
//! value is broadcast against one LANES-wide row of b, so that every load of b feeds ROWS fused multiply-adds (as
//! engine::rank_wide does). The result goes through a [`Store`]: plain, accumulated, or fused with the softmax's
//! element-wise step, so that a score block is written once. Compiled for AVX-512 (8 rows × 32 lanes), AVX2 (4 × 16)
//! and the baseline (4 × 8, separate multiply and add), the widest the CPU has chosen at run time.
//! Legend: M = rows of c, N = columns of c, K = inner width.

use super::vector_math as vm;

/// One product's operands: c[M, N] (row r at c[r · c_stride..]) from a[M, K] (a[r, kk] at a[r · a_s.0 + kk · a_s.1])
/// and b[K, N] (row kk at b[kk · b_stride..]).
pub struct Tiles<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub c: &'a mut [f32],
    pub c_stride: usize,
    pub a: &'a [f32],
    pub a_s: (usize, usize),
    pub b: &'a [f32],
    pub b_stride: usize,
}

/// What is written to c[r, j] from the product's value ab = Σ_kk a[r, kk] · b[kk, j].
#[derive(Clone, Copy)]
pub enum Store<'a> {
    /// c = alpha · ab
    Set(f32),
    /// c += alpha · ab
    Add(f32),
    /// c = exp(alpha · ab − shift[r]) for the columns keys[r].0 ≤ j < keys[r].1, 0 elsewhere: a softmax row's
    /// probabilities under a mask. Column blocks that no row of a register block sees are not multiplied.
    Exp { alpha: f32, shift: &'a [f32], keys: &'a [(usize, usize)] },
    /// c = alpha · p[r, j] · (ab − delta[r]), p laid out as c: the softmax's backward dS = P ⊙ (dP − Δ).
    SoftmaxGrad { alpha: f32, p: &'a [f32], delta: &'a [f32] },
}

/// c = store(a · b), on the calling thread.
pub fn tile_product(t: Tiles, store: Store) {
    let Tiles { m, n, k, ref c, c_stride, a, a_s, b, b_stride } = t;
    if m == 0 || n == 0 {
        return;
    }
    assert!(c_stride >= n && b_stride >= n, "tile_product: a row stride is below N = {n}");
    assert!(c.len() >= (m - 1) * c_stride + n, "tile_product: c is smaller than [{m}, {n}]");
    assert!(k == 0 || b.len() >= (k - 1) * b_stride + n, "tile_product: b is smaller than [{k}, {n}]");
    assert!(k == 0 || a.len() > (m - 1) * a_s.0 + (k - 1) * a_s.1, "tile_product: a is smaller than [{m}, {k}]");
    match store {
        Store::Set(_) | Store::Add(_) => {}
        Store::Exp { shift, keys, .. } => {
            assert!(shift.len() >= m && keys.len() >= m, "tile_product: a shift and keys per row");
        }
        Store::SoftmaxGrad { p, delta, .. } => {
            assert!(p.len() >= (m - 1) * c_stride + n && delta.len() >= m, "tile_product: p and delta per row");
        }
    }
    widest(t, store)
}

/// a · b + c, fused where the CPU has FMA (a method, not a closure, so that it is inlined into each variant and
/// compiled with its features).
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// The portable variant: without FMA in the build, `f32::mul_add` is a library call.
struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The AVX-512 variant in intrinsics: blocks of up to 6 rows × 64 columns (24 vectors of sums, as gemm's own
/// AVX-512 kernel holds), with masked loads for the last columns, so that every size takes the register-blocked loop.
/// Written as safe code, the compiler assembled b's rows from pieces with shuffles and spilled the row offsets.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{seen_columns, store_rows, Store, Tiles};

    /// Rows and columns of a block.
    const ROWS: usize = 6;
    const COLS: usize = 64;

    /// The product, column blocks outermost: a block of b (K × 64) is read from cache by every row block.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,avx,fma")]
    pub(super) fn product(t: Tiles, store: Store) {
        let Tiles { m, n, k, c, c_stride: cs, a, a_s, b, b_stride: bs } = t;
        for col in (0..n).step_by(COLS) {
            let width = COLS.min(n - col);
            let b = &b[col..];
            for row in (0..m).step_by(ROWS) {
                let rows = ROWS.min(m - row);
                let (seen_lo, seen_hi) = seen_columns(store, row, rows, n);
                let sums = if col >= seen_hi || col + width <= seen_lo {
                    [[0.0f32; COLS]; ROWS]
                } else {
                    // SAFETY (of every arm): row + rows ≤ M, and b holds width ≤ COLS columns of K rows (both checked
                    // by tile_product), as `block` requires.
                    let f = match (rows, width.div_ceil(16)) {
                        (6, 4) => block::<6, 4>,
                        (6, 3) => block::<6, 3>,
                        (6, 2) => block::<6, 2>,
                        (6, _) => block::<6, 1>,
                        (5, 4) => block::<5, 4>,
                        (5, 3) => block::<5, 3>,
                        (5, 2) => block::<5, 2>,
                        (5, _) => block::<5, 1>,
                        (4, 4) => block::<4, 4>,
                        (4, 3) => block::<4, 3>,
                        (4, 2) => block::<4, 2>,
                        (4, _) => block::<4, 1>,
                        (3, 4) => block::<3, 4>,
                        (3, 3) => block::<3, 3>,
                        (3, 2) => block::<3, 2>,
                        (3, _) => block::<3, 1>,
                        (2, 4) => block::<2, 4>,
                        (2, 3) => block::<2, 3>,
                        (2, 2) => block::<2, 2>,
                        (2, _) => block::<2, 1>,
                        (_, 4) => block::<1, 4>,
                        (_, 3) => block::<1, 3>,
                        (_, 2) => block::<1, 2>,
                        (_, _) => block::<1, 1>,
                    };
                    unsafe { f(a, a_s, row, k, b, bs, width) }
                };
                store_rows(c, cs, row, col, width, &sums[..rows], store);
            }
        }
    }

    /// Rows row..row + R of the sums a · b[.., ..width] (R rows × V vectors, the last one masked to the columns
    /// below width), in registers over all of K.
    ///
    /// # Safety
    /// row + R ≤ M and a holds a[M, K] at strides a_s; b holds K rows of at least width ≤ 16·V columns at stride bs,
    /// width > 16·(V − 1).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const R: usize, const V: usize>(
        a: &[f32],
        (ars, acs): (usize, usize),
        row: usize,
        k: usize,
        b: &[f32],
        bs: usize,
        width: usize,
    ) -> [[f32; COLS]; ROWS] {
        let last: __mmask16 = (1u32 << (width - 16 * (V - 1))).wrapping_sub(1) as __mmask16;
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for kk in 0..k {
            // SAFETY: row kk < K of b has `width` columns, and the last vector's load reads only those (masked).
            let bk = unsafe { b.add(kk * bs) };
            let bv: [__m512; V] = std::array::from_fn(|v| unsafe {
                if v + 1 < V {
                    _mm512_loadu_ps(bk.add(16 * v))
                } else {
                    _mm512_maskz_loadu_ps(last, bk.add(16 * v))
                }
            });
            let ak = unsafe { a.add(row * ars + kk * acs) };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row + r < M and kk < K: within a.
                let x = _mm512_set1_ps(unsafe { *ak.add(r * ars) });
                for (s, &y) in acc.iter_mut().zip(&bv) {
                    *s = _mm512_fmadd_ps(x, y, *s);
                }
            }
        }
        let mut sums = [[0.0f32; COLS]; ROWS];
        for (s, acc) in sums.iter_mut().zip(&acc) {
            for (v, &x) in acc.iter().enumerate() {
                // SAFETY: s holds COLS = 64 ≥ 16·V floats.
                unsafe { _mm512_storeu_ps(s.as_mut_ptr().add(16 * v), x) };
            }
        }
        sums
    }
}

/// The run-time choice of the widest vectors.
fn widest(t: Tiles, store: Store) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,avx,fma")]
        fn avx2(t: Tiles, store: Store) {
            kernel::<4, 16, Fused>(t, store)
        }
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has every feature avx512::product was compiled with (checked just above).
            return unsafe { avx512::product(t, store) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above, for AVX2.
            return unsafe { avx2(t, store) };
        }
    }
    kernel::<4, 8, Separate>(t, store)
}

/// The kernel, inlined into each variant: blocks of ROWS rows × LANES columns of c, each summed over all of K in
/// registers, then stored. Partial blocks (the last rows, N not a multiple of LANES) take the same loops with
/// run-time bounds.
#[inline(always)]
fn kernel<const ROWS: usize, const LANES: usize, F: MulAdd>(t: Tiles, store: Store) {
    let Tiles { m, n, k, c, c_stride: cs, a, a_s, b, b_stride: bs } = t;
    for row in (0..m).step_by(ROWS) {
        let rows = ROWS.min(m - row);
        let (seen_lo, seen_hi) = seen_columns(store, row, rows, n);
        for col in (0..n).step_by(LANES) {
            let width = LANES.min(n - col);
            let acc = if col >= seen_hi || col + width <= seen_lo {
                [[0.0f32; LANES]; ROWS]
            } else if rows == ROWS && width == LANES {
                full_block::<ROWS, LANES, F>(a, a_s, row, k, &b[col..], bs)
            } else {
                let mut acc = [[0.0f32; LANES]; ROWS];
                for kk in 0..k {
                    let bk = &b[kk * bs + col..][..width];
                    for (r, acc) in acc.iter_mut().take(rows).enumerate() {
                        let x = a[(row + r) * a_s.0 + kk * a_s.1];
                        for (s, &y) in acc.iter_mut().zip(bk) {
                            *s = F::mul_add(x, y, *s);
                        }
                    }
                }
                acc
            };
            store_rows(c, cs, row, col, width, &acc[..rows], store);
        }
    }
}

/// The columns [lo, hi) that any of rows [row, row + rows) sees under an Exp store's mask (all N under the others).
#[inline(always)]
fn seen_columns(store: Store, row: usize, rows: usize, n: usize) -> (usize, usize) {
    match store {
        Store::Exp { keys, .. } => keys[row..row + rows]
            .iter()
            .filter(|(ja, jb)| ja < jb)
            .fold((n, 0), |(lo, hi), &(ja, jb)| (lo.min(ja), hi.max(jb))),
        _ => (0, n),
    }
}

/// Stores the sums of rows row.. and columns col..col + width through `store` (inlined into each variant).
#[inline(always)]
fn store_rows<const L: usize>(
    c: &mut [f32],
    cs: usize,
    row: usize,
    col: usize,
    width: usize,
    sums: &[[f32; L]],
    store: Store,
) {
    for (r, acc) in sums.iter().enumerate() {
        let at = (row + r) * cs + col;
        let (dst, acc) = (&mut c[at..at + width], &acc[..width]);
        match store {
            Store::Set(alpha) => dst.iter_mut().zip(acc).for_each(|(d, &s)| *d = alpha * s),
            Store::Add(alpha) => dst.iter_mut().zip(acc).for_each(|(d, &s)| *d += alpha * s),
            Store::Exp { alpha, shift, keys } => {
                let ((ja, jb), shift) = (keys[row + r], shift[row + r]);
                for (j, (d, &s)) in dst.iter_mut().zip(acc).enumerate() {
                    let e = vm::exp(alpha * s - shift);
                    *d = if col + j >= ja && col + j < jb { e } else { 0.0 };
                }
            }
            Store::SoftmaxGrad { alpha, p, delta } => {
                let (p, delta) = (&p[at..at + width], delta[row + r]);
                for ((d, &s), &p) in dst.iter_mut().zip(acc).zip(p) {
                    *d = alpha * p * (s - delta);
                }
            }
        }
    }
}

/// One whole block: rows row..row + ROWS of a against LANES columns of b (its row kk at b[kk · bs..]), the sums in
/// registers (a block of its own so that they are never addressed by a run-time index). Its caller guarantees
/// row + ROWS ≤ M for the M that [`tile_product`] checked a's extent against.
#[inline(always)]
fn full_block<const ROWS: usize, const LANES: usize, F: MulAdd>(
    a: &[f32],
    (ars, acs): (usize, usize),
    row: usize,
    k: usize,
    b: &[f32],
    bs: usize,
) -> [[f32; LANES]; ROWS] {
    let mut acc = [[0.0f32; LANES]; ROWS];
    for kk in 0..k {
        let Some(bk) = b[kk * bs..].first_chunk::<LANES>() else { break };
        let base = row * ars + kk * acs;
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row + r < M and kk < K, so the index is at most (M − 1)·ars + (K − 1)·acs, which tile_product
            // asserted is within a. (Checked indexing here spilled the ROWS offsets and doubled the loop's work.)
            let x = unsafe { *a.get_unchecked(base + r * ars) };
            for (s, &y) in acc.iter_mut().zip(bk) {
                *s = F::mul_add(x, y, *s);
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn rand(len: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..len).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
    }

    /// The chosen variant and the portable one against a plain loop in f64, for every store, both layouts of a
    /// (rows and columns contiguous), odd sizes, sizes that fill whole blocks and strided rows.
    #[test]
    fn tile_product_matches_a_plain_loop() {
        let variants: [(&str, fn(Tiles, Store)); 2] =
            [("chosen", tile_product), ("portable", kernel::<4, 8, Separate>)];
        for (m, n, k) in [(96, 256, 64), (37, 53, 19), (5, 3, 1), (64, 33, 96), (17, 64, 256), (8, 32, 7), (1, 1, 0)] {
            let (cs, bs) = (n + 3, n + 5);
            let b = rand(k.max(1) * bs, 2);
            let c0 = rand(m * cs, 3);
            let p = rand(m * cs, 4);
            let delta = rand(m, 5);
            let shift: Vec<f32> = rand(m, 6).iter().map(|x| x * 3.0).collect();
            // Masks of every kind: empty, all, a causal edge, a band.
            let keys: Vec<(usize, usize)> =
                (0..m).map(|r| [(0, 0), (0, n), (0, (r + 1).min(n)), (r / 3, r)][r % 4]).collect();
            for transposed in [false, true] {
                let a_s = if transposed { (1, m + 2) } else { (k + 1, 1) };
                let a = rand(m * (k + 1) + k * (m + 2) + 1, 1);
                let ab = |r: usize, j: usize| -> (f64, f64) {
                    let terms = (0..k).map(|kk| a[r * a_s.0 + kk * a_s.1] as f64 * b[kk * bs + j] as f64);
                    terms.fold((0.0, 0.0), |(s, mag), x| (s + x, mag + x.abs()))
                };
                let stores: [(&str, Store); 4] = [
                    ("set", Store::Set(0.75)),
                    ("add", Store::Add(0.75)),
                    ("exp", Store::Exp { alpha: 0.75, shift: &shift, keys: &keys }),
                    ("grad", Store::SoftmaxGrad { alpha: 0.75, p: &p, delta: &delta }),
                ];
                for (name, store) in stores {
                    for (variant, f) in variants {
                        let mut c = c0.clone();
                        f(Tiles { m, n, k, c: &mut c, c_stride: cs, a: &a, a_s, b: &b, b_stride: bs }, store);
                        for r in 0..m {
                            for j in 0..cs {
                                let (got, old) = (c[r * cs + j] as f64, c0[r * cs + j] as f64);
                                let at =
                                    format!("{variant} {name} m={m} n={n} k={k} transposed={transposed} [{r}, {j}]");
                                if j >= n {
                                    assert_eq!(got, old, "{at}: column beyond N was written");
                                    continue;
                                }
                                let (s, mag) = ab(r, j);
                                let (want, tol) = match name {
                                    "set" => (0.75 * s, 0.75 * mag),
                                    "add" => (old + 0.75 * s, 0.75 * mag + old.abs()),
                                    "exp" => {
                                        let (ja, jb) = keys[r];
                                        let e = (0.75 * s - shift[r] as f64).exp();
                                        if (ja..jb).contains(&j) {
                                            (e, e * (1.0 + 0.75 * mag))
                                        } else {
                                            (0.0, 0.0)
                                        }
                                    }
                                    _ => {
                                        let pr = p[r * cs + j] as f64;
                                        (
                                            0.75 * pr * (s - delta[r] as f64),
                                            0.75 * pr.abs() * (mag + delta[r].abs() as f64),
                                        )
                                    }
                                };
                                let err = (got - want).abs();
                                assert!(err <= 1e-5 * tol.max(1e-3), "{at}: {got} vs {want}");
                            }
                        }
                    }
                }
            }
        }
    }
}
