//! Dot products of one quantized weight row (ggml blocks) with an f32 vector, without dequantizing the row first.
//! Q4_0, Q4_1 and Q8_0 have direct kernels, portable and AVX2+FMA+F16C (chosen at run time); other
//! types decode the row into scratch and take an f32 dot. [`dot_rows`] takes up to [`MAX_ROWS`] vectors at once
//! (decoding several sequences together): each block's weights are widened to f32 once for all of them, and each
//! vector's result is the one [`dot`] gives it alone, bit for bit (the same operations in the same order).

use gguf::GgmlType;
use half::f16;

/// Σ w[j]·x[j] for one row `w` (whole blocks of `dtype`, x.len() elements).
pub fn dot(dtype: GgmlType, w: &[u8], x: &[f32], scratch: &mut Vec<f32>) -> f32 {
    match dtype {
        GgmlType::Q4_0 => dispatch(w, x, dot_q4_0_avx2, dot_q4_0_body),
        GgmlType::Q4_1 => dispatch(w, x, dot_q4_1_avx2, dot_q4_1_body),
        GgmlType::Q8_0 => dispatch(w, x, dot_q8_0_avx2, dot_q8_0_body),
        _ => {
            scratch.resize(x.len(), 0.0);
            gguf::dequantize(dtype, w, scratch).expect("row validated at construction");
            super::attention::dot(scratch, x)
        }
    }
}

/// The most vectors [`dot_rows`] takes at once.
pub const MAX_ROWS: usize = 4;

/// out[i] = Σ w[j]·xs[i][j] for each of up to [`MAX_ROWS`] vectors, each equal to `dot(dtype, w, xs[i], ..)`.
pub fn dot_rows(dtype: GgmlType, w: &[u8], xs: &[&[f32]], scratch: &mut Vec<f32>, out: &mut [f32]) {
    assert!(xs.len() <= MAX_ROWS && out.len() == xs.len(), "dot_rows: up to {MAX_ROWS} vectors");
    match (dtype, xs.len()) {
        (_, 1) => out[0] = dot(dtype, w, xs[0], scratch),
        (GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0, 2) => rows_n::<2>(dtype, w, xs, out),
        (GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0, 3) => rows_n::<3>(dtype, w, xs, out),
        (GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0, 4) => rows_n::<4>(dtype, w, xs, out),
        _ => {
            // Decoded once, then one f32 dot per vector (as `dot` does for one).
            scratch.resize(xs.first().map_or(0, |x| x.len()), 0.0);
            gguf::dequantize(dtype, w, scratch).expect("row validated at construction");
            for (o, x) in out.iter_mut().zip(xs) {
                *o = super::attention::dot(scratch, x);
            }
        }
    }
}

fn rows_n<const N: usize>(dtype: GgmlType, w: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    let xs: &[&[f32]; N] = xs.try_into().expect("N vectors");
    let r = match dtype {
        GgmlType::Q4_0 => dispatch_rows(w, xs, avx2_rows::dot_q4_0::<N>, dot_q4_0_rows::<N>),
        GgmlType::Q4_1 => dispatch_rows(w, xs, avx2_rows::dot_q4_1::<N>, dot_q4_1_rows::<N>),
        _ => dispatch_rows(w, xs, avx2_rows::dot_q8_0::<N>, dot_q8_0_rows::<N>),
    };
    out.copy_from_slice(&r);
}

fn dispatch_rows<const N: usize>(
    w: &[u8],
    xs: &[&[f32]; N],
    fast: unsafe fn(&[u8], &[&[f32]; N]) -> [f32; N],
    baseline: fn(&[u8], &[&[f32]; N]) -> [f32; N],
) -> [f32; N] {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU supports the features the fast version was compiled for.
        return unsafe { fast(w, xs) };
    }
    let _ = fast;
    baseline(w, xs)
}

/// [`dot_q4_0_body`] for N vectors: the nibbles widened once per block.
fn dot_q4_0_rows<const N: usize>(w: &[u8], xs: &[&[f32]; N]) -> [f32; N] {
    let mut acc = [[0.0f32; 16]; N];
    for (k, b) in w.chunks_exact(18).enumerate() {
        let d = half_at(b, 0);
        let qs = &b[2..18];
        let lo: [f32; 16] = std::array::from_fn(|j| (qs[j] & 15) as f32 - 8.0);
        let hi: [f32; 16] = std::array::from_fn(|j| (qs[j] >> 4) as f32 - 8.0);
        for (acc, x) in acc.iter_mut().zip(xs) {
            let (x0, x1) = x[k * 32..k * 32 + 32].split_at(16);
            for j in 0..16 {
                acc[j] += d * (lo[j] * x0[j] + hi[j] * x1[j]);
            }
        }
    }
    acc.map(|a| a.iter().sum())
}

/// [`dot_q4_1_body`] for N vectors.
fn dot_q4_1_rows<const N: usize>(w: &[u8], xs: &[&[f32]; N]) -> [f32; N] {
    let mut acc = [[0.0f32; 16]; N];
    for (k, b) in w.chunks_exact(20).enumerate() {
        let (d, m) = (half_at(b, 0), half_at(b, 2));
        let qs = &b[4..20];
        let lo: [f32; 16] = std::array::from_fn(|j| (qs[j] & 15) as f32);
        let hi: [f32; 16] = std::array::from_fn(|j| (qs[j] >> 4) as f32);
        for (acc, x) in acc.iter_mut().zip(xs) {
            let (x0, x1) = x[k * 32..k * 32 + 32].split_at(16);
            for j in 0..16 {
                acc[j] += d * (lo[j] * x0[j] + hi[j] * x1[j]) + m * (x0[j] + x1[j]);
            }
        }
    }
    acc.map(|a| a.iter().sum())
}

/// [`dot_q8_0_body`] for N vectors.
fn dot_q8_0_rows<const N: usize>(w: &[u8], xs: &[&[f32]; N]) -> [f32; N] {
    let mut acc = [[0.0f32; 32]; N];
    for (k, b) in w.chunks_exact(34).enumerate() {
        let d = half_at(b, 0);
        let q: [f32; 32] = std::array::from_fn(|j| b[2 + j] as i8 as f32);
        for (acc, x) in acc.iter_mut().zip(xs) {
            let xb = &x[k * 32..k * 32 + 32];
            for j in 0..32 {
                acc[j] += d * (q[j] * xb[j]);
            }
        }
    }
    acc.map(|a| a.iter().sum())
}

#[cfg(target_arch = "x86_64")]
fn dispatch(w: &[u8], x: &[f32], fast: unsafe fn(&[u8], &[f32]) -> f32, baseline: fn(&[u8], &[f32]) -> f32) -> f32 {
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU supports the features the fast version was compiled for.
        unsafe { fast(w, x) }
    } else {
        baseline(w, x)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn dispatch(w: &[u8], x: &[f32], _fast: unsafe fn(&[u8], &[f32]) -> f32, baseline: fn(&[u8], &[f32]) -> f32) -> f32 {
    baseline(w, x)
}

#[inline(always)]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_0: 18-byte blocks of 32: d (f16), then 16 bytes of nibbles; element j is (lo_j − 8)·d, element j+16 is
/// (hi_j − 8)·d.
#[inline(always)]
fn dot_q4_0_body(w: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (b, xb) in w.chunks_exact(18).zip(x.chunks_exact(32)) {
        let d = half_at(b, 0);
        let qs = &b[2..18];
        let (x0, x1) = xb.split_at(16);
        for j in 0..16 {
            let lo = (qs[j] & 15) as f32 - 8.0;
            let hi = (qs[j] >> 4) as f32 - 8.0;
            acc[j] += d * (lo * x0[j] + hi * x1[j]);
        }
    }
    acc.iter().sum()
}

/// Q4_1: 20-byte blocks of 32: d, m (f16), 16 bytes of nibbles; element = q·d + m.
#[inline(always)]
fn dot_q4_1_body(w: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (b, xb) in w.chunks_exact(20).zip(x.chunks_exact(32)) {
        let (d, m) = (half_at(b, 0), half_at(b, 2));
        let qs = &b[4..20];
        let (x0, x1) = xb.split_at(16);
        for j in 0..16 {
            let lo = (qs[j] & 15) as f32;
            let hi = (qs[j] >> 4) as f32;
            acc[j] += d * (lo * x0[j] + hi * x1[j]) + m * (x0[j] + x1[j]);
        }
    }
    acc.iter().sum()
}

/// Q8_0: 34-byte blocks of 32: d (f16), 32 signed bytes; element = q·d.
#[inline(always)]
fn dot_q8_0_body(w: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 32];
    for (b, xb) in w.chunks_exact(34).zip(x.chunks_exact(32)) {
        let d = half_at(b, 0);
        let qs = &b[2..34];
        for j in 0..32 {
            acc[j] += d * (qs[j] as i8 as f32 * xb[j]);
        }
    }
    acc.iter().sum()
}

/// AVX2 kernels: nibbles or bytes widened to 8-lane f32 vectors, FMA against x, one block-scale FMA per block into
/// a vector accumulator (no horizontal sum until the end).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline(always)]
    pub(super) unsafe fn half(b: &[u8], i: usize) -> f32 {
        let bits = u16::from_le_bytes([b[i], b[i + 1]]) as i32;
        // SAFETY (callers): compiled with f16c enabled.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))) }
    }

    #[inline(always)]
    pub(super) unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// 8 unsigned bytes → 8 f32.
    #[inline(always)]
    pub(super) unsafe fn u8x8(v: __m128i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)) }
    }

    /// 8 signed bytes → 8 f32.
    #[inline(always)]
    pub(super) unsafe fn i8x8(v: __m128i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)) }
    }

    /// Σ (q·d + m)·x = Σ_blocks d·Σ q·x + m·Σ x, for Q4_1 (20-byte blocks of 32).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1(w: &[u8], x: &[f32]) -> f32 {
        unsafe {
            let (mut acc, mut accm) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mask = _mm_set1_epi8(0x0F);
            for (b, xb) in w.chunks_exact(20).zip(x.chunks_exact(32)) {
                let (d, m) = (_mm256_set1_ps(half(b, 0)), _mm256_set1_ps(half(b, 2)));
                let qs = _mm_loadu_si128(b.as_ptr().add(4) as *const __m128i);
                let lo = _mm_and_si128(qs, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                let p = xb.as_ptr();
                let (x0, x1, x2, x3) = (
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                );
                let mut s = _mm256_mul_ps(u8x8(lo), x0);
                s = _mm256_fmadd_ps(u8x8(_mm_srli_si128(lo, 8)), x1, s);
                s = _mm256_fmadd_ps(u8x8(hi), x2, s);
                s = _mm256_fmadd_ps(u8x8(_mm_srli_si128(hi, 8)), x3, s);
                acc = _mm256_fmadd_ps(d, s, acc);
                accm = _mm256_fmadd_ps(m, _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)), accm);
            }
            hsum(_mm256_add_ps(acc, accm))
        }
    }

    /// Σ (q − 8)·d·x for Q4_0 (18-byte blocks of 32).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_0(w: &[u8], x: &[f32]) -> f32 {
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mask = _mm_set1_epi8(0x0F);
            let eight = _mm256_set1_ps(8.0);
            for (b, xb) in w.chunks_exact(18).zip(x.chunks_exact(32)) {
                let d = _mm256_set1_ps(half(b, 0));
                let qs = _mm_loadu_si128(b.as_ptr().add(2) as *const __m128i);
                let lo = _mm_and_si128(qs, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                let p = xb.as_ptr();
                let q = |v: __m128i| _mm256_sub_ps(u8x8(v), eight);
                let mut s = _mm256_mul_ps(q(lo), _mm256_loadu_ps(p));
                s = _mm256_fmadd_ps(q(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(p.add(8)), s);
                s = _mm256_fmadd_ps(q(hi), _mm256_loadu_ps(p.add(16)), s);
                s = _mm256_fmadd_ps(q(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(p.add(24)), s);
                acc = _mm256_fmadd_ps(d, s, acc);
            }
            hsum(acc)
        }
    }

    /// Σ q·d·x for Q8_0 (34-byte blocks of 32 signed bytes).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(w: &[u8], x: &[f32]) -> f32 {
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for (b, xb) in w.chunks_exact(34).zip(x.chunks_exact(32)) {
                let d = _mm256_set1_ps(half(b, 0));
                let q = b.as_ptr().add(2);
                let p = xb.as_ptr();
                let load = |o: usize| i8x8(_mm_loadl_epi64(q.add(o) as *const __m128i));
                let mut s = _mm256_mul_ps(load(0), _mm256_loadu_ps(p));
                s = _mm256_fmadd_ps(load(8), _mm256_loadu_ps(p.add(8)), s);
                s = _mm256_fmadd_ps(load(16), _mm256_loadu_ps(p.add(16)), s);
                s = _mm256_fmadd_ps(load(24), _mm256_loadu_ps(p.add(24)), s);
                acc = _mm256_fmadd_ps(d, s, acc);
            }
            hsum(acc)
        }
    }
}

/// The AVX2 kernels for N vectors: per block, the weights are widened to f32 vectors once; then each vector takes
/// exactly the single-vector kernel's operations.
#[cfg(target_arch = "x86_64")]
mod avx2_rows {
    use super::avx2::{half, hsum, i8x8, u8x8};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1<const N: usize>(w: &[u8], xs: &[&[f32]; N]) -> [f32; N] {
        unsafe {
            let (mut acc, mut accm) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
            let mask = _mm_set1_epi8(0x0F);
            for (k, b) in w.chunks_exact(20).enumerate() {
                let (d, m) = (_mm256_set1_ps(half(b, 0)), _mm256_set1_ps(half(b, 2)));
                let qs = _mm_loadu_si128(b.as_ptr().add(4) as *const __m128i);
                let lo = _mm_and_si128(qs, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                let (w0, w1, w2, w3) = (u8x8(lo), u8x8(_mm_srli_si128(lo, 8)), u8x8(hi), u8x8(_mm_srli_si128(hi, 8)));
                for r in 0..N {
                    let p = xs[r].as_ptr().add(k * 32);
                    let (x0, x1, x2, x3) = (
                        _mm256_loadu_ps(p),
                        _mm256_loadu_ps(p.add(8)),
                        _mm256_loadu_ps(p.add(16)),
                        _mm256_loadu_ps(p.add(24)),
                    );
                    let mut s = _mm256_mul_ps(w0, x0);
                    s = _mm256_fmadd_ps(w1, x1, s);
                    s = _mm256_fmadd_ps(w2, x2, s);
                    s = _mm256_fmadd_ps(w3, x3, s);
                    acc[r] = _mm256_fmadd_ps(d, s, acc[r]);
                    accm[r] = _mm256_fmadd_ps(m, _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)), accm[r]);
                }
            }
            std::array::from_fn(|r| hsum(_mm256_add_ps(acc[r], accm[r])))
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_0<const N: usize>(w: &[u8], xs: &[&[f32]; N]) -> [f32; N] {
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            let mask = _mm_set1_epi8(0x0F);
            let eight = _mm256_set1_ps(8.0);
            for (k, b) in w.chunks_exact(18).enumerate() {
                let d = _mm256_set1_ps(half(b, 0));
                let qs = _mm_loadu_si128(b.as_ptr().add(2) as *const __m128i);
                let lo = _mm_and_si128(qs, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                let q = |v: __m128i| _mm256_sub_ps(u8x8(v), eight);
                let (w0, w1, w2, w3) = (q(lo), q(_mm_srli_si128(lo, 8)), q(hi), q(_mm_srli_si128(hi, 8)));
                for r in 0..N {
                    let p = xs[r].as_ptr().add(k * 32);
                    let mut s = _mm256_mul_ps(w0, _mm256_loadu_ps(p));
                    s = _mm256_fmadd_ps(w1, _mm256_loadu_ps(p.add(8)), s);
                    s = _mm256_fmadd_ps(w2, _mm256_loadu_ps(p.add(16)), s);
                    s = _mm256_fmadd_ps(w3, _mm256_loadu_ps(p.add(24)), s);
                    acc[r] = _mm256_fmadd_ps(d, s, acc[r]);
                }
            }
            std::array::from_fn(|r| hsum(acc[r]))
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0<const N: usize>(w: &[u8], xs: &[&[f32]; N]) -> [f32; N] {
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            for (k, b) in w.chunks_exact(34).enumerate() {
                let d = _mm256_set1_ps(half(b, 0));
                let q = b.as_ptr().add(2);
                let load = |o: usize| i8x8(_mm_loadl_epi64(q.add(o) as *const __m128i));
                let (w0, w1, w2, w3) = (load(0), load(8), load(16), load(24));
                for r in 0..N {
                    let p = xs[r].as_ptr().add(k * 32);
                    let mut s = _mm256_mul_ps(w0, _mm256_loadu_ps(p));
                    s = _mm256_fmadd_ps(w1, _mm256_loadu_ps(p.add(8)), s);
                    s = _mm256_fmadd_ps(w2, _mm256_loadu_ps(p.add(16)), s);
                    s = _mm256_fmadd_ps(w3, _mm256_loadu_ps(p.add(24)), s);
                    acc[r] = _mm256_fmadd_ps(d, s, acc[r]);
                }
            }
            std::array::from_fn(|r| hsum(acc[r]))
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx2_rows {
    pub unsafe fn dot_q4_1<const N: usize>(w: &[u8], xs: &[&[f32]; N]) -> [f32; N] {
        super::dot_q4_1_rows(w, xs)
    }
    pub unsafe fn dot_q4_0<const N: usize>(w: &[u8], xs: &[&[f32]; N]) -> [f32; N] {
        super::dot_q4_0_rows(w, xs)
    }
    pub unsafe fn dot_q8_0<const N: usize>(w: &[u8], xs: &[&[f32]; N]) -> [f32; N] {
        super::dot_q8_0_rows(w, xs)
    }
}

#[cfg(target_arch = "x86_64")]
use avx2::{dot_q4_0 as dot_q4_0_avx2, dot_q4_1 as dot_q4_1_avx2, dot_q8_0 as dot_q8_0_avx2};

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_q4_0_avx2(w: &[u8], x: &[f32]) -> f32 {
    dot_q4_0_body(w, x)
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_q4_1_avx2(w: &[u8], x: &[f32]) -> f32 {
    dot_q4_1_body(w, x)
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn dot_q8_0_avx2(w: &[u8], x: &[f32]) -> f32 {
    dot_q8_0_body(w, x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_kernels_equal_dequantize_then_dot() {
        let cols = 256;
        let mut s = crate::rng::SplitMix64::new(5);
        let w: Vec<f32> = (0..cols).map(|_| s.next_f64() as f32 * 2.0 - 1.0).collect();
        let x: Vec<f32> = (0..cols).map(|_| s.next_f64() as f32 * 2.0 - 1.0).collect();
        for dtype in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
            let q = gguf::quantize(dtype, &w, cols).unwrap();
            let mut deq = vec![0.0; cols];
            gguf::dequantize(dtype, &q, &mut deq).unwrap();
            let want: f64 = deq.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let got = dot(dtype, &q, &x, &mut Vec::new()) as f64;
            assert!((got - want).abs() < 1e-4, "{dtype}: {got} vs {want}");
            let base = match dtype {
                GgmlType::Q4_0 => dot_q4_0_body(&q, &x),
                GgmlType::Q4_1 => dot_q4_1_body(&q, &x),
                GgmlType::Q8_0 => dot_q8_0_body(&q, &x),
                _ => continue,
            } as f64;
            assert!((base - want).abs() < 1e-4, "{dtype} baseline: {base} vs {want}");
        }
    }

    /// Several vectors at once give each the bits it gets alone, on the fast path and the portable one.
    #[test]
    fn rows_at_once_equal_each_row_alone_bit_for_bit() {
        let cols = 256;
        let mut s = crate::rng::SplitMix64::new(8);
        let w: Vec<f32> = (0..cols).map(|_| s.next_f64() as f32 * 2.0 - 1.0).collect();
        let xs: Vec<Vec<f32>> =
            (0..MAX_ROWS).map(|_| (0..cols).map(|_| s.next_f64() as f32 * 2.0 - 1.0).collect()).collect();
        for dtype in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
            let q = gguf::quantize(dtype, &w, cols).unwrap();
            for n in 1..=MAX_ROWS {
                let rows: Vec<&[f32]> = xs[..n].iter().map(Vec::as_slice).collect();
                let mut out = vec![0.0f32; n];
                dot_rows(dtype, &q, &rows, &mut Vec::new(), &mut out);
                for (i, x) in rows.iter().enumerate() {
                    let alone = dot(dtype, &q, x, &mut Vec::new());
                    assert_eq!(out[i].to_bits(), alone.to_bits(), "{dtype}, {n} rows, row {i}");
                }
                let portable: Option<Vec<f32>> = match (dtype, n) {
                    (GgmlType::Q4_0, 3) => Some(dot_q4_0_rows::<3>(&q, rows[..].try_into().unwrap()).to_vec()),
                    (GgmlType::Q4_1, 3) => Some(dot_q4_1_rows::<3>(&q, rows[..].try_into().unwrap()).to_vec()),
                    (GgmlType::Q8_0, 3) => Some(dot_q8_0_rows::<3>(&q, rows[..].try_into().unwrap()).to_vec()),
                    _ => None,
                };
                let body = |x: &[f32]| match dtype {
                    GgmlType::Q4_0 => dot_q4_0_body(&q, x),
                    GgmlType::Q4_1 => dot_q4_1_body(&q, x),
                    _ => dot_q8_0_body(&q, x),
                };
                for (i, p) in portable.iter().flatten().enumerate() {
                    assert_eq!(p.to_bits(), body(rows[i]).to_bits(), "{dtype} portable, row {i}");
                }
            }
        }
    }
}
