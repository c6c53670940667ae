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

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_FLOPS {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// dst[m,n] = (accumulate ? dst : 0) + alpha · lhs[m,k] · rhs[k,n], with explicit (row, column) strides.
///
/// # Safety
/// Every index `i*rs + j*cs` reached by the three operands must lie inside their slices; the public wrappers below
/// check it for the contiguous layouts they use.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    alpha: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: the caller guarantees the strided extents lie inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism(m, n, k),
        )
    }
}

/// y[N,M] = (accumulate ? y : 0) + alpha · x[N,K] · w[M,K]ᵀ
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt(y: &mut [f32], x: &[f32], w: &[f32], n: usize, k: usize, m: usize, alpha: f32, accumulate: bool) {
    assert!(y.len() >= n * m && x.len() >= n * k && w.len() >= m * k, "matmul_nt: operand too small");
    // SAFETY: lengths checked above for the contiguous row-major layouts.
    unsafe { gemm_strided(n, m, k, y, m, 1, accumulate, x, k, 1, w, 1, k, alpha) }
}

/// y[N,K] = (accumulate ? y : 0) + alpha · x[N,M] · w[M,K]
#[allow(clippy::too_many_arguments)]
pub fn matmul_nn(y: &mut [f32], x: &[f32], w: &[f32], n: usize, m: usize, k: usize, alpha: f32, accumulate: bool) {
    assert!(y.len() >= n * k && x.len() >= n * m && w.len() >= m * k, "matmul_nn: operand too small");
    // SAFETY: lengths checked above for the contiguous row-major layouts.
    unsafe { gemm_strided(n, k, m, y, k, 1, accumulate, x, m, 1, w, k, 1, alpha) }
}

/// y[M,K] = (accumulate ? y : 0) + alpha · x[N,M]ᵀ · z[N,K]
#[allow(clippy::too_many_arguments)]
pub fn matmul_tn(y: &mut [f32], x: &[f32], z: &[f32], n: usize, m: usize, k: usize, alpha: f32, accumulate: bool) {
    assert!(y.len() >= m * k && x.len() >= n * m && z.len() >= n * k, "matmul_tn: operand too small");
    // SAFETY: lengths checked above for the contiguous row-major layouts.
    unsafe { gemm_strided(m, k, n, y, k, 1, accumulate, x, 1, m, z, k, 1, alpha) }
}

/// Columns [c0, c0+M) of y[N, ld] = (accumulate ? y : 0) + x[N,K] · w[M,K]ᵀ, on the calling thread (callers
/// run several column ranges in parallel).
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt_into_columns(
    y: &mut [f32],
    ld: usize,
    c0: usize,
    x: &[f32],
    w: &[f32],
    n: usize,
    k: usize,
    m: usize,
    accumulate: bool,
) {
    assert!(n == 0 || (c0 + m <= ld && (n - 1) * ld + c0 + m <= y.len()), "matmul_nt_into_columns: y too small");
    assert!(x.len() >= n * k && w.len() >= m * k, "matmul_nt_into_columns: operand too small");
    if n == 0 || m == 0 {
        return;
    }
    // SAFETY: the strided extent of y starting at c0 was checked above; x and w are contiguous and checked.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            y.as_mut_ptr().add(c0),
            1,
            ld as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
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
