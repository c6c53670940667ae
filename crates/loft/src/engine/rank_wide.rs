//! Products whose output is only a LoRA rank wide: c[N, R] = alpha · x[N, K] · b[K, R] (+ c), as dxa = dy·B is in
//! the LoRA backward (b = B itself). gemm vectorizes along its output's rows here, which are only R long;
//! this kernel holds a block of rows' outputs in registers instead (ROWS rows × 16 lanes of R), and per step of K
//! broadcasts one x value per row against one 16-wide row of b: every load of b feeds ROWS fused multiply-adds.
//! Compiled for AVX-512 (8 rows), AVX2 (4 rows) and the baseline (4 rows, separate multiply and add), the widest
//! the CPU has chosen at run time. It runs on the calling thread (the LoRA backward shares blocks of rows out as
//! tasks).
//! Legend: N = rows, K = inner width, R = output width (a rank, or a sum of ranks).

/// Lanes of R held per accumulator: one AVX-512 vector, two AVX2 ones. Outputs up to this wide take one pass over x;
/// wider ones one pass per block of LANES columns (where gemm does better).
pub const LANES: usize = 16;

/// c[n, 0..R] = alpha · Σ_k x[n, k] · b[k, 0..R] (+ c[n, 0..R] when `accumulate`) for the N = x.len() / K rows of x,
/// row n of c at c[n · c_stride..], row k of b at b[k · b_stride..] (strides ≥ R).
#[allow(clippy::too_many_arguments)]
pub fn rank_wide_product(
    c: &mut [f32],
    c_stride: usize,
    x: &[f32],
    k: usize,
    b: &[f32],
    b_stride: usize,
    r: usize,
    alpha: f32,
    accumulate: bool,
) {
    let n = x.len().checked_div(k).unwrap_or(0);
    check(c, c_stride, x, k, b, b_stride, r, n);
    if n > 0 && r > 0 {
        rank_wide_rows(c, c_stride, x, k, b, b_stride, r, alpha, accumulate)
    }
}

#[allow(clippy::too_many_arguments)]
fn check(c: &[f32], c_stride: usize, x: &[f32], k: usize, b: &[f32], b_stride: usize, r: usize, n: usize) {
    assert!(c_stride >= r && b_stride >= r, "rank_wide_product: a stride is below R = {r}");
    assert!(k == 0 || x.len().is_multiple_of(k), "rank_wide_product: x is not [N, {k}]");
    assert!(n == 0 || c.len() >= (n - 1) * c_stride + r, "rank_wide_product: c is smaller than [{n}, {r}]");
    assert!(k == 0 || b.len() >= (k - 1) * b_stride + r, "rank_wide_product: b is smaller than [{k}, {r}]");
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

/// The run-time choice of the widest vectors, for one thread's rows.
#[allow(clippy::too_many_arguments)]
fn rank_wide_rows(
    c: &mut [f32],
    cs: usize,
    x: &[f32],
    k: usize,
    b: &[f32],
    bs: usize,
    r: usize,
    alpha: f32,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,avx,fma")]
        #[allow(clippy::too_many_arguments)]
        fn avx512(
            c: &mut [f32],
            cs: usize,
            x: &[f32],
            k: usize,
            b: &[f32],
            bs: usize,
            r: usize,
            alpha: f32,
            acc: bool,
        ) {
            rows_kernel::<8, Fused>(c, cs, x, k, b, bs, r, alpha, acc)
        }
        #[target_feature(enable = "avx2,avx,fma")]
        #[allow(clippy::too_many_arguments)]
        fn avx2(c: &mut [f32], cs: usize, x: &[f32], k: usize, b: &[f32], bs: usize, r: usize, alpha: f32, acc: bool) {
            rows_kernel::<4, Fused>(c, cs, x, k, b, bs, r, alpha, acc)
        }
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has every feature avx512 was compiled with (checked just above).
            return unsafe { avx512(c, cs, x, k, b, bs, r, alpha, accumulate) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above, for AVX2.
            return unsafe { avx2(c, cs, x, k, b, bs, r, alpha, accumulate) };
        }
    }
    rows_kernel::<4, Separate>(c, cs, x, k, b, bs, r, alpha, accumulate)
}

/// The kernel, inlined into each variant: blocks of ROWS rows × LANES columns of c, each accumulated over all of K
/// in registers, then scaled and stored. Partial blocks (the last rows, R not a multiple of LANES) take the same
/// loops with run-time bounds.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_kernel<const ROWS: usize, F: MulAdd>(
    c: &mut [f32],
    cs: usize,
    x: &[f32],
    k: usize,
    b: &[f32],
    bs: usize,
    r: usize,
    alpha: f32,
    accumulate: bool,
) {
    let n = x.len() / k;
    for row in (0..n).step_by(ROWS) {
        let rows = ROWS.min(n - row);
        for col in (0..r).step_by(LANES) {
            let width = LANES.min(r - col);
            let acc = if rows == ROWS && width == LANES {
                let xs: [&[f32]; ROWS] = std::array::from_fn(|j| &x[(row + j) * k..(row + j + 1) * k]);
                full_block::<ROWS, F>(xs, &b[col..], bs)
            } else {
                let mut acc = [[0.0f32; LANES]; ROWS];
                for kk in 0..k {
                    let bk = &b[kk * bs + col..][..width];
                    for (j, acc) in acc.iter_mut().take(rows).enumerate() {
                        let xv = x[(row + j) * k + kk];
                        for (a, &bv) in acc.iter_mut().zip(bk) {
                            *a = F::mul_add(xv, bv, *a);
                        }
                    }
                }
                acc
            };
            for (j, acc) in acc.iter().take(rows).enumerate() {
                let dst = &mut c[(row + j) * cs + col..][..width];
                for (d, &a) in dst.iter_mut().zip(acc) {
                    *d = if accumulate { *d + alpha * a } else { alpha * a };
                }
            }
        }
    }
}

/// One whole block: ROWS rows of x (each K long) against LANES columns of b (its row kk at b[kk · bs..]), the sums
/// in registers (a block of its own so that they are never addressed by a run-time index).
#[inline(always)]
fn full_block<const ROWS: usize, F: MulAdd>(xs: [&[f32]; ROWS], b: &[f32], bs: usize) -> [[f32; LANES]; ROWS] {
    let mut acc = [[0.0f32; LANES]; ROWS];
    for (kk, bk) in b.chunks(bs).take(xs[0].len()).enumerate() {
        let Some(bk) = bk.first_chunk::<LANES>() else { break };
        for (acc, xr) in acc.iter_mut().zip(&xs) {
            let xv = xr[kk];
            for (a, &bv) in acc.iter_mut().zip(bk) {
                *a = F::mul_add(xv, bv, *a);
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

    /// The chosen variant and the portable one against a naive loop in f64, for ranks 1, 8, 16, 64 and odd widths, strided c and b, both modes, rows that
    /// do and do not fill a block.
    #[test]
    fn rank_wide_product_matches_a_naive_loop() {
        for (n, k, r) in
            [(37, 53, 1), (64, 576, 8), (1024, 576, 16), (19, 101, 64), (33, 7, 17), (8, 1536, 48), (5, 3, 3)]
        {
            let (cs, bs) = (r + 3, r + 5);
            let x = rand(n * k, 1);
            let b = rand(k * bs, 2);
            let c0 = rand(n * cs, 3);
            for accumulate in [false, true] {
                let mut c = c0.clone();
                rank_wide_product(&mut c, cs, &x, k, &b, bs, r, 0.75, accumulate);
                let mut portable = c0.clone();
                rows_kernel::<4, Separate>(&mut portable, cs, &x, k, &b, bs, r, 0.75, accumulate);
                for i in 0..n {
                    for j in 0..cs {
                        let got = c[i * cs + j];
                        if j >= r {
                            assert_eq!(got, c0[i * cs + j], "column {j} beyond R = {r} was written");
                            continue;
                        }
                        let dot: f64 = (0..k).map(|p| x[i * k + p] as f64 * b[p * bs + j] as f64).sum();
                        let mag: f64 = (0..k).map(|p| (x[i * k + p] as f64 * b[p * bs + j] as f64).abs()).sum();
                        let base = if accumulate { c0[i * cs + j] as f64 } else { 0.0 };
                        let want = base + 0.75 * dot;
                        let tol = 1e-5 * (mag * 0.75 + base.abs()).max(1.0);
                        assert!((got as f64 - want).abs() <= tol, "n={n} k={k} r={r} [{i}, {j}]: {got} vs {want}");
                        let got = portable[i * cs + j] as f64;
                        assert!((got - want).abs() <= tol, "portable n={n} k={k} r={r} [{i}, {j}]: {got} vs {want}");
                    }
                }
            }
        }
    }
}
