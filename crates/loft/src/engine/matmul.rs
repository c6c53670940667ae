//! Matrix products on the CPU through the `gemm` crate (runtime-dispatched AVX2/AVX-512 micro-kernels).
//!
//! Three shapes cover a transformer's forward and backward. All matrices are row-major and contiguous:
//! - `matmul_nt`: y[N,M] (+)= x[N,K] · w[M,K]ᵀ   (a linear layer: torch weight layout [out, in])
//! - `matmul_nn`: y[N,K] (+)= x[N,M] · w[M,K]     (gradient w.r.t. a linear layer's input)
//! - `matmul_tn`: y[M,K] (+)= x[N,M]ᵀ · z[N,K]    (gradient w.r.t. a weight: dyᵀ · x)

use gemm::Parallelism;

/// Products smaller than this many multiply-adds run on the calling thread: below it, waking the pool costs more
/// than it saves.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

pub(crate) fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_FLOPS {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// dst[m,n] = (accumulate ? dst : 0) + alpha · lhs[m,k] · rhs[k,n], every operand given by its (row, column)
/// strides from the start of its slice. The one call into `gemm` (an unsafe fn): the strided extent of each
/// operand is checked against its slice first, so a wrong stride panics instead of reading out of bounds.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_s: (usize, usize),
    accumulate: bool,
    lhs: &[f32],
    lhs_s: (usize, usize),
    rhs: &[f32],
    rhs_s: (usize, usize),
    alpha: f32,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let extent = |rows: usize, cols: usize, (rs, cs): (usize, usize)| (rows - 1) * rs + (cols - 1) * cs + 1;
    assert!(dst.len() >= extent(m, n, dst_s), "gemm_strided: dst out of bounds");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_s.0 + j * dst_s.1] = 0.0;
                }
            }
        }
        return;
    }
    assert!(
        lhs.len() >= extent(m, k, lhs_s) && rhs.len() >= extent(k, n, rhs_s),
        "gemm_strided: operand out of bounds"
    );
    // SAFETY: every strided index reached lies inside its slice (checked above); dst does not alias lhs or rhs
    // (it is a distinct &mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_s.1 as isize,
            dst_s.0 as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_s.1 as isize,
            lhs_s.0 as isize,
            rhs.as_ptr(),
            rhs_s.1 as isize,
            rhs_s.0 as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// y[N,M] = (accumulate ? y : 0) + alpha · x[N,K] · w[M,K]ᵀ
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt(y: &mut [f32], x: &[f32], w: &[f32], n: usize, k: usize, m: usize, alpha: f32, accumulate: bool) {
    assert!(y.len() >= n * m && x.len() >= n * k && w.len() >= m * k, "matmul_nt: operand too small");
    gemm_strided(n, m, k, y, (m, 1), accumulate, x, (k, 1), w, (1, k), alpha, parallelism(n, m, k))
}

/// y[N,M] = x[N,K] · w[M,K]ᵀ on the calling thread (callers run several such products in parallel).
pub fn matmul_nt_single(y: &mut [f32], x: &[f32], w: &[f32], n: usize, k: usize, m: usize) {
    assert!(y.len() >= n * m && x.len() >= n * k && w.len() >= m * k, "matmul_nt_single: operand too small");
    gemm_strided(n, m, k, y, (m, 1), false, x, (k, 1), w, (1, k), 1.0, Parallelism::None)
}

/// y[N,K] = (accumulate ? y : 0) + alpha · x[N,M] · w[M,K]
#[allow(clippy::too_many_arguments)]
pub fn matmul_nn(y: &mut [f32], x: &[f32], w: &[f32], n: usize, m: usize, k: usize, alpha: f32, accumulate: bool) {
    assert!(y.len() >= n * k && x.len() >= n * m && w.len() >= m * k, "matmul_nn: operand too small");
    gemm_strided(n, k, m, y, (k, 1), accumulate, x, (m, 1), w, (k, 1), alpha, parallelism(n, k, m))
}

/// y[M,K] = (accumulate ? y : 0) + alpha · x[N,M]ᵀ · z[N,K]
#[allow(clippy::too_many_arguments)]
pub fn matmul_tn(y: &mut [f32], x: &[f32], z: &[f32], n: usize, m: usize, k: usize, alpha: f32, accumulate: bool) {
    assert!(y.len() >= m * k && x.len() >= n * m && z.len() >= n * k, "matmul_tn: operand too small");
    gemm_strided(m, k, n, y, (k, 1), accumulate, x, (1, m), z, (k, 1), alpha, parallelism(m, k, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn transpose(a: &[f32], r: usize, c: usize) -> Vec<f32> {
        let mut t = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = a[i * c + j];
            }
        }
        t
    }

    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn three_layouts_match_naive_products() {
        let (n, k, m) = (37, 53, 29);
        let x: Vec<f32> = (0..n * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let w: Vec<f32> = (0..m * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let mut y = vec![1.0; n * m];
        matmul_nt(&mut y, &x, &w, n, k, m, 1.0, false);
        close(&y, &naive(&x, &transpose(&w, m, k), n, k, m));

        let dy: Vec<f32> = (0..n * m).map(|i| ((i * 3 % 7) as f32 - 3.0) / 2.0).collect();
        let mut dx = vec![0.5; n * k];
        matmul_nn(&mut dx, &dy, &w, n, m, k, 2.0, true);
        let want: Vec<f32> = naive(&dy, &w, n, m, k).iter().map(|v| 0.5 + 2.0 * v).collect();
        close(&dx, &want);

        let mut dw = vec![0.0; m * k];
        matmul_tn(&mut dw, &dy, &x, n, m, k, 1.0, false);
        close(&dw, &naive(&transpose(&dy, n, m), &x, m, n, k));
    }
}
