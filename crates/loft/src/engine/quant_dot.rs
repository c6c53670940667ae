//! Dot products of one quantized weight row (ggml blocks) with an f32 vector, without dequantizing the row first.
//! Q4_0, Q4_1 and Q8_0 have direct kernels, compiled twice (baseline and AVX2+FMA, chosen at run time); other
//! types decode the row into scratch and take an f32 dot.

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

#[cfg(target_arch = "x86_64")]
fn dispatch(w: &[u8], x: &[f32], fast: unsafe fn(&[u8], &[f32]) -> f32, baseline: fn(&[u8], &[f32]) -> f32) -> f32 {
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
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

macro_rules! avx2_versions {
    ($($fast:ident => $body:ident),*) => {$(
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $fast(w: &[u8], x: &[f32]) -> f32 {
            $body(w, x)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unsafe fn $fast(w: &[u8], x: &[f32]) -> f32 {
            $body(w, x)
        }
    )*};
}

avx2_versions!(dot_q4_0_avx2 => dot_q4_0_body, dot_q4_1_avx2 => dot_q4_1_body, dot_q8_0_avx2 => dot_q8_0_body);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_kernels_equal_dequantize_then_dot() {
        let cols = 256;
        let mut s = crate::infer::sample::SplitMix64::new(5);
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
}
