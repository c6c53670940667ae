//! Causal self-attention with grouped-query heads.
//! Legend: T = new tokens, P = positions in the cache (past + new), NH = query heads, NKV = key/value heads,
//! D = head_dim. Query head h reads key/value head h / (NH / NKV).

use rayon::prelude::*;

/// out[T, NH·D] = softmax(q·kᵀ/√D, causal) · v for queries at positions p0..p0+T against k, v [P, NKV·D]
/// (P ≥ p0 + T; query t sees keys 0..=p0+t). One task per query row; each keeps one score row.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_cached(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    p0: usize,
    nh: usize,
    nkv: usize,
    d: usize,
) {
    let (qd, kvd) = (nh * d, nkv * d);
    let group = nh / nkv;
    let scale = 1.0 / (d as f32).sqrt();
    debug_assert!(out.len() == t * qd && q.len() == t * qd && k.len() >= (p0 + t) * kvd && v.len() >= (p0 + t) * kvd);
    out.par_chunks_mut(qd).zip(q.par_chunks(qd)).enumerate().for_each(|(ti, (orow, qrow))| {
        let seen = p0 + ti + 1;
        let mut scores = vec![0.0f32; seen];
        for h in 0..nh {
            let g = h / group;
            let qh = &qrow[h * d..(h + 1) * d];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                let kj = &k[j * kvd + g * d..j * kvd + (g + 1) * d];
                *s = dot(qh, kj) * scale;
                max = max.max(*s);
            }
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let oh = &mut orow[h * d..(h + 1) * d];
            oh.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                let vj = &v[j * kvd + g * d..j * kvd + (g + 1) * d];
                let p = p / sum;
                for (o, &x) in oh.iter_mut().zip(vj) {
                    *o += p * x;
                }
            }
        }
    });
}

/// Dot product with eight independent accumulators, which the compiler keeps in vector registers.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}
