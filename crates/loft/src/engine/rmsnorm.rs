//! RMSNorm: y = x / sqrt(mean(x²) + eps) · w, row by row. Legend: N = rows, C = channels.

#![forbid(unsafe_code)]

use rayon::prelude::*;

use super::vector_math as vm;

/// y[N, C] = rmsnorm(x[N, C]) · w[C]; returns nothing else (inference). The training forward also keeps
/// 1/rms per row for the backward.
pub fn rmsnorm_forward(y: &mut [f32], x: &[f32], w: &[f32], c: usize, eps: f32) {
    for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        vm::rmsnorm_row(yr, xr, w, eps);
    }
}

/// 1 / sqrt(mean(x²) + eps), in f32 as transformers computes it (the squares summed in interleaved partial sums).
pub fn inv_rms(x: &[f32], eps: f32) -> f32 {
    vm::inv_rms(x, eps)
}

/// Training forward: y[N, C] = x[N, C] / rms(x) · w[C], and rstd[N] = 1/rms of each row, kept for the backward.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward_train(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], n: usize, c: usize, eps: f32) {
    assert!(y.len() == n * c && x.len() == n * c && rstd.len() == n && w.len() == c, "rmsnorm_forward_train: shapes");
    y.par_chunks_mut(c).zip(rstd.par_iter_mut()).zip(x.par_chunks(c)).with_min_len(8).for_each(|((yr, rs), xr)| {
        *rs = vm::rmsnorm_row(yr, xr, w, eps);
    });
}

/// [`rmsnorm_forward_train`], and skip[N, C] = x: each row copied while it is in cache (the residual's skip path).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward_train_copy(
    y: &mut [f32],
    rstd: &mut [f32],
    skip: &mut [f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    c: usize,
    eps: f32,
) {
    assert!(y.len() == n * c && skip.len() == n * c, "rmsnorm_forward_train_copy: shapes");
    assert!(x.len() == n * c && rstd.len() == n && w.len() == c, "rmsnorm_forward_train_copy: shapes");
    let outs = y.par_chunks_mut(c).zip(skip.par_chunks_mut(c)).zip(rstd.par_iter_mut());
    outs.zip(x.par_chunks(c)).with_min_len(8).for_each(|(((yr, sr), rs), xr)| {
        *rs = vm::rmsnorm_row(yr, xr, w, eps);
        sr.copy_from_slice(xr);
    });
}

/// Backward of [`rmsnorm_forward_train`]. dx[N, C] is ACCUMULATED into (it is normally the residual stream's
/// gradient, which already holds the skip path); dw[C], when the norm weight is trained, is accumulated too.
///
/// With x̂ = x·rstd and g = dy ⊙ w:  dx = rstd · (g − x̂ · mean(g ⊙ x̂)),  dw = Σ_rows dy ⊙ x̂.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    assert!(dx.len() == n * c && dy.len() == n * c && x.len() == n * c, "rmsnorm_backward: shapes");
    assert!(rstd.len() == n && w.len() == c, "rmsnorm_backward: shapes");
    dx.par_chunks_mut(c).zip(dy.par_chunks(c)).zip(x.par_chunks(c)).zip(rstd.par_iter()).with_min_len(8).for_each(
        // mean(g ⊙ x̂) = rstd · Σ(dy·w·x) / C
        |(((dxr, dyr), xr), &rs)| vm::rmsnorm_row_backward(dxr, dyr, xr, w, rs),
    );
    if let Some(dw) = dw {
        assert_eq!(dw.len(), c, "rmsnorm_backward: dw shape");
        for ((dyr, xr), &rs) in dy.chunks_exact(c).zip(x.chunks_exact(c)).zip(rstd) {
            for ((d, &g), &xi) in dw.iter_mut().zip(dyr).zip(xr) {
                *d += g * xi * rs;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused norm-and-copy equals the norm followed by a copy, bit for bit.
    #[test]
    fn forward_with_copy_equals_forward_then_copy() {
        let (n, c) = (37, 576);
        let x: Vec<f32> = (0..n * c).map(|i| ((i * 7919 % 1013) as f32 - 500.0) / 137.0).collect();
        let w: Vec<f32> = (0..c).map(|i| 1.0 + ((i * 31 % 97) as f32 - 48.0) / 200.0).collect();
        let (mut y, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
        rmsnorm_forward_train(&mut y, &mut rstd, &x, &w, n, c, 1e-5);
        let (mut y2, mut rstd2, mut skip) = (vec![1.0; n * c], vec![1.0; n], vec![1.0; n * c]);
        rmsnorm_forward_train_copy(&mut y2, &mut rstd2, &mut skip, &x, &w, n, c, 1e-5);
        assert_eq!((y2, rstd2, skip), (y, rstd, x));
    }
}
