//! RMSNorm: y = x / sqrt(mean(x²) + eps) · w, row by row. Legend: N = rows, C = channels.

/// y[N, C] = rmsnorm(x[N, C]) · w[C]; returns nothing else (inference). The training forward also keeps
/// 1/rms per row for the backward.
pub fn rmsnorm_forward(y: &mut [f32], x: &[f32], w: &[f32], c: usize, eps: f32) {
    for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let rstd = inv_rms(xr, eps);
        for ((yo, &xi), &wi) in yr.iter_mut().zip(xr).zip(w) {
            *yo = xi * rstd * wi;
        }
    }
}

/// 1 / sqrt(mean(x²) + eps), in f32 as transformers computes it.
pub fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}
