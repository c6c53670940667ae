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
/// strides from the start of its slice. `gemm` is an unsafe fn: the strided extent of each operand is checked
/// against its slice first, so a wrong stride panics instead of reading out of bounds.
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
    product(m, n, k, dst, dst_s, accumulate, lhs, lhs_s, rhs, rhs_s, alpha, Split::Gemm(parallelism))
}

/// How a product is shared out between the threads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Split {
    /// One gemm call, with this threading of its own.
    Gemm(Parallelism),
    /// dst's n columns in this many ranges (starting at multiples of 16 columns), each a single-threaded gemm call,
    /// run in parallel on the calling thread's pool.
    Columns(usize),
}

impl Split {
    /// What [`matmul_nt`] and [`matmul_nn`] do for a product y[rows, cols] with inner size `inner`: its output
    /// columns in a part per thread where the inner size is at least the output's width (and each part keeps
    /// [`PART_MIN_COLUMNS`]), else gemm's own threading ([`Split::gemm_alone`]). 2 threads, AVX-512 EPYC, best of
    /// 30 runs, gemm's own threading → column parts: the forward's [1024, 1536]·[576, 1536]ᵀ 428–430 → 471–474
    /// GFLOP/s, [1024, 576]·[576, 576]ᵀ 480–488 → 507–510, the head's input gradient [256, 49152]·[49152, 576]
    /// 411–414 → 455–457; the other shapes of a SmolLM2-135M step the same within 1–2 % either way (wider outputs,
    /// where it does not pay, keep gemm's threading).
    pub(crate) fn chosen(rows: usize, cols: usize, inner: usize) -> Split {
        let threads = rayon::current_num_threads();
        match Split::gemm_alone(rows, cols, inner) {
            Split::Gemm(Parallelism::Rayon(_)) if inner >= cols && cols >= threads * PART_MIN_COLUMNS => {
                Split::Columns(threads)
            }
            gemm => gemm,
        }
    }

    /// gemm's own threading over the pool, for products large enough to be worth waking it.
    pub(crate) fn gemm_alone(rows: usize, cols: usize, inner: usize) -> Split {
        Split::Gemm(parallelism(rows, cols, inner))
    }
}

/// Output columns a thread's part of a product keeps at least (a multiple of the 16 f32 lanes of AVX-512).
const PART_MIN_COLUMNS: usize = 64;

/// [`gemm_strided`], shared out as `split` says.
#[allow(clippy::too_many_arguments)]
fn product(
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
    split: Split,
) {
    use rayon::prelude::*;
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
    match split {
        // SAFETY: every strided index reached lies inside its slice (checked above); dst does not alias lhs or rhs
        // (it is a distinct &mut).
        Split::Gemm(threads) => unsafe {
            let (dst, lhs, rhs) = (dst.as_mut_ptr(), lhs.as_ptr(), rhs.as_ptr());
            gemm_raw_ptr(m, n, k, dst, dst_s, accumulate, lhs, lhs_s, rhs, rhs_s, alpha, threads)
        },
        Split::Columns(parts) => {
            let width = n.div_ceil(parts).next_multiple_of(16);
            let base = SendPtr(dst.as_mut_ptr());
            (0..n.div_ceil(width)).into_par_iter().for_each(|p| {
                let (c0, c1) = (p * width, ((p + 1) * width).min(n));
                // SAFETY: the whole product's extents were checked above, and a part reads and writes a subset of
                // them: columns c0..c1 of dst and rhs. dst outlives the loop, which holds its only borrow, and no
                // two parts touch the same element of it (gemm's own threads share dst through raw pointers the
                // same way); lhs and rhs are only read.
                unsafe {
                    let (dst, lhs, rhs) = (base.get().add(c0 * dst_s.1), lhs.as_ptr(), rhs.as_ptr().add(c0 * rhs_s.1));
                    let single = Parallelism::None;
                    gemm_raw_ptr(m, c1 - c0, k, dst, dst_s, accumulate, lhs, lhs_s, rhs, rhs_s, alpha, single)
                }
            });
        }
    }
}

/// A product's dst handed to its parts (see [`Split::Columns`]).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the parts write disjoint elements of dst through it (see product).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The one call into `gemm`.
/// SAFETY: the caller guarantees every strided index of the three operands lies in memory it may read (lhs, rhs)
/// or write (dst) for the call, and that dst does not overlap lhs or rhs.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw_ptr(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_s: (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    lhs_s: (usize, usize),
    rhs: *const f32,
    rhs_s: (usize, usize),
    alpha: f32,
    parallelism: Parallelism,
) {
    // SAFETY: the caller's guarantee above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_s.1 as isize,
            dst_s.0 as isize,
            accumulate,
            lhs,
            lhs_s.1 as isize,
            lhs_s.0 as isize,
            rhs,
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
    matmul_nt_split(y, x, w, n, k, m, alpha, accumulate, Split::chosen(n, m, k))
}

/// [`matmul_nt`] shared out as `split` says.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_nt_split(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    k: usize,
    m: usize,
    alpha: f32,
    accumulate: bool,
    split: Split,
) {
    assert!(y.len() >= n * m && x.len() >= n * k && w.len() >= m * k, "matmul_nt: operand too small");
    product(n, m, k, y, (m, 1), accumulate, x, (k, 1), w, (1, k), alpha, split)
}

/// y[N,M] = x[N,K] · w[M,K]ᵀ on the calling thread (callers run several such products in parallel).
pub fn matmul_nt_single(y: &mut [f32], x: &[f32], w: &[f32], n: usize, k: usize, m: usize) {
    assert!(y.len() >= n * m && x.len() >= n * k && w.len() >= m * k, "matmul_nt_single: operand too small");
    gemm_strided(n, m, k, y, (m, 1), false, x, (k, 1), w, (1, k), 1.0, Parallelism::None)
}

/// y[N,K] = (accumulate ? y : 0) + alpha · x[N,M] · w[M,K]
#[allow(clippy::too_many_arguments)]
pub fn matmul_nn(y: &mut [f32], x: &[f32], w: &[f32], n: usize, m: usize, k: usize, alpha: f32, accumulate: bool) {
    matmul_nn_split(y, x, w, n, m, k, alpha, accumulate, Split::chosen(n, k, m))
}

/// [`matmul_nn`] shared out as `split` says.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_nn_split(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    m: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
    split: Split,
) {
    assert!(y.len() >= n * k && x.len() >= n * m && w.len() >= m * k, "matmul_nn: operand too small");
    product(n, k, m, y, (k, 1), accumulate, x, (m, 1), w, (k, 1), alpha, split)
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

    #[test]
    fn products_split_by_output_columns_match_naive_products() {
        // Inner size at least the output's width, and wide enough for a part per thread: the products run as column
        // parts (200 columns: parts of 112 and 88 on 2 threads, 80, 80 and 40 on 3), accumulated and scaled.
        let (n, k, m) = (64, 300, 200);
        let x: Vec<f32> = (0..n * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let w: Vec<f32> = (0..m * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let dy: Vec<f32> = (0..n * k).map(|i| ((i * 3 % 7) as f32 - 3.0) / 2.0).collect();
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                assert!(matches!(Split::chosen(n, m, k), Split::Columns(p) if p == threads));
                let mut y = vec![1.0; n * m];
                matmul_nt(&mut y, &x, &w, n, k, m, 0.5, true);
                let want: Vec<f32> = naive(&x, &transpose(&w, m, k), n, k, m).iter().map(|v| 1.0 + 0.5 * v).collect();
                close(&y, &want);
                // dx[n, m] = dy[n, k] · wᵀ[k, m] through matmul_nn with wᵀ as its [k, m] matrix.
                let wt = transpose(&w, m, k);
                let mut dx = vec![0.0; n * m];
                matmul_nn(&mut dx, &dy, &wt, n, k, m, 1.0, false);
                close(&dx, &naive(&dy, &wt, n, k, m));
            });
        }
        // A wider output than the inner size keeps gemm's own threading.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| assert!(matches!(Split::chosen(n, k, m), Split::Gemm(Parallelism::Rayon(2)))));
    }
}
