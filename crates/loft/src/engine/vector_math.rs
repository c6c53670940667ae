//! Element-wise math for the training step, compiled for the CPU's widest vectors: exp, SwiGLU's and GeGLU's products
//! and their backwards, RMSNorm's rows, RoPE's rotation, and the max / sum / shifted-exp passes of a softmax row. The step makes tens of millions of these per
//! layer; libm's expf is a scalar call each, and the crate is built for baseline x86-64 (SSE2), so each pass here
//! is compiled three times (AVX-512, AVX2, baseline) and the widest the CPU has is picked at run time.
//!
//! exp: Cody–Waite reduction x = n·ln2 + r with |r| ≤ ln2/2, then Cephes' degree-6 polynomial for exp(r) (about
//! 1 ulp over the range), scaled by 2ⁿ built from exponent bits in two halves so that subnormal results come out
//! right too. Only multiplies, adds, bit moves and selects, no fused multiply-adds: every build and CPU gives the
//! same bits, and the loops vectorize.

use super::geglu::{CUBIC, SQRT_2_OVER_PI};

/// ln 2 split so that n·LN2_HI is exact for the n that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5·2²³ rounds a float of magnitude below 2²² to the nearest integer.
const ROUND: f32 = 12_582_912.0;
/// Above this exp overflows f32; below the other, it is below half the smallest subnormal.
const MAX_ARG: f32 = 88.722_84;
const MIN_ARG: f32 = -103.972_08;

/// e^x: within 2 ulp of libm over the f32 range; +∞ above 88.72, 0 below −103.97, NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // NaN fails every comparison, so it passes through to the polynomial and comes out NaN.
    let xc = if x > MAX_ARG { MAX_ARG } else { x };
    let xc = if xc < MIN_ARG { MIN_ARG } else { xc };
    // t = 1.5·2²³ + n with n = round(x / ln2): at that magnitude the float's low bits are n itself, so n comes out
    // of the bits without a float-to-int conversion (Rust's saturating `as` does not vectorize).
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let r2 = r * r;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r2 + r + 1.0;
    // 2ⁿ as 2^(n/2) · 2^(n − n/2): n runs from −150 to 128, each half stays a normal float.
    let (h1, h2) = (ni >> 1, ni - (ni >> 1));
    let s1 = f32::from_bits(((h1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((h2 + 127) as u32) << 23);
    let e = y * s1 * s2;
    if x > MAX_ARG {
        f32::INFINITY
    } else if x < MIN_ARG {
        0.0
    } else {
        e
    }
}

/// Defines `VIS fn NAME(args) -> R` whose body is compiled for AVX-512, for AVX2 and for the baseline, and runs the
/// widest the CPU supports (the body must be plain safe code; inlined into each copy, it vectorizes at that width).
macro_rules! widest_vectors {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,avx")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,avx")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512bw")
                {
                    // SAFETY: the CPU has every feature avx512 was compiled with (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above, for AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use widest_vectors;

/// Lanes of the partial sums and maxima below: wide enough for the widest vectors, so the loops vectorize.
const LANES: usize = 16;

widest_vectors! {
    /// The largest value of `xs` (−∞ when empty; NaNs are skipped, as `f32::max` does).
    pub fn max(xs: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = xs.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a = if x > *a { x } else { *a };
            }
        }
        rest.iter().chain(&acc).fold(f32::NEG_INFINITY, |m, &x| m.max(x))
    }
}

widest_vectors! {
    /// Σ xs in f64, in LANES interleaved partial sums (the order differs from a sequential sum only in rounding).
    pub fn sum_f64(xs: &[f32]) -> f64 {
        let mut acc = [0.0f64; LANES];
        let chunks = xs.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += x as f64;
            }
        }
        acc.iter().sum::<f64>() + rest.iter().map(|&x| x as f64).sum::<f64>()
    }
}

widest_vectors! {
    /// Σ xs in f32, in LANES interleaved partial sums.
    pub fn sum(xs: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let chunks = xs.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += x;
            }
        }
        acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
    }
}

widest_vectors! {
    /// xs[i] = e^(xs[i] − shift) in place.
    pub fn exp_shifted(xs: &mut [f32], shift: f32) {
        for x in xs.iter_mut() {
            *x = exp(*x - shift);
        }
    }
}

/// 1 / sqrt(mean(x²) + eps), in f32 as transformers computes it, the squares summed in LANES interleaved partial
/// sums (a fixed order: the same bits at every vector width).
#[inline(always)]
fn inv_rms_lanes(x: &[f32], eps: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    let ss = acc.iter().sum::<f32>() + rest.iter().map(|v| v * v).sum::<f32>();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

widest_vectors! {
    /// 1 / sqrt(mean(x²) + eps): RMSNorm's scale of row x.
    pub fn inv_rms(x: &[f32], eps: f32) -> f32 {
        inv_rms_lanes(x, eps)
    }
}

widest_vectors! {
    /// One row of RMSNorm: y = x · rstd · w, returning rstd = [`inv_rms`]`(x, eps)`.
    pub fn rmsnorm_row(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) -> f32 {
        let rstd = inv_rms_lanes(x, eps);
        for ((yo, &xi), &wi) in y.iter_mut().zip(x).zip(w) {
            *yo = xi * rstd * wi;
        }
        rstd
    }
}

widest_vectors! {
    /// Backward of [`rmsnorm_row`], ACCUMULATED: dx += rstd · (dy·w − x · k) with k = rstd² · Σ(dy·w·x) / C (the
    /// sum in LANES interleaved partial sums).
    pub fn rmsnorm_row_backward(dx: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], rstd: f32) {
        let mut acc = [0.0f32; LANES];
        let (dyc, xc, wc) = (dy.chunks_exact(LANES), x.chunks_exact(LANES), w.chunks_exact(LANES));
        let tail = dyc.remainder().iter().zip(xc.remainder()).zip(wc.remainder());
        for ((g, xs), ws) in dyc.zip(xc).zip(wc) {
            for i in 0..LANES {
                acc[i] += g[i] * ws[i] * xs[i];
            }
        }
        let gx = acc.iter().sum::<f32>() + tail.map(|((&g, &xi), &wi)| g * wi * xi).sum::<f32>();
        let k = gx * rstd * rstd / x.len() as f32;
        for (((d, &g), &xi), &wi) in dx.iter_mut().zip(dy).zip(x).zip(w) {
            *d += rstd * (g * wi - xi * k);
        }
    }
}

widest_vectors! {
    /// [`exp_shifted`] and [`sum`] in one pass: xs[i] = e^(xs[i] − shift) in place, returning their sum added as
    /// [`sum`] adds (the same bits as the two passes).
    pub fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
        let mut acc = [0.0f32; LANES];
        let mut chunks = xs.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (a, x) in acc.iter_mut().zip(c) {
                *x = exp(*x - shift);
                *a += *x;
            }
        }
        let rest = chunks.into_remainder();
        rest.iter_mut().for_each(|x| *x = exp(*x - shift));
        acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
    }
}

/// σ(x) = 1 / (1 + e^−x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

widest_vectors! {
    /// SwiGLU: out = silu(gate) · up = gate · σ(gate) · up, element by element.
    pub fn silu_mul(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    }
}

widest_vectors! {
    /// Backward of [`silu_mul`], OVERWRITING dgate and dup:
    /// dup = dout · silu(gate);  dgate = dout · up · σ(gate) · (1 + gate · (1 − σ(gate))).
    pub fn silu_mul_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
        for ((dg, du), ((&d, &g), &u)) in dgate.iter_mut().zip(dup.iter_mut()).zip(dout.iter().zip(gate).zip(up)) {
            let s = sigmoid(g);
            *du = d * g * s;
            *dg = d * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

widest_vectors! {
    /// RoPE over rows x[rows, H·D] with the tables cos, sin [rows, D/2], in place: in each head, element i and
    /// element i + D/2 are turned by the row's angle i (`inverse`: turned back, the backward's Rᵀ).
    pub fn rope_rows(x: &mut [f32], h: usize, d: usize, cos: &[f32], sin: &[f32], inverse: bool) {
        let half = d / 2;
        for ((row, c), s) in x.chunks_exact_mut(h * d).zip(cos.chunks_exact(half)).zip(sin.chunks_exact(half)) {
            for head in row.chunks_exact_mut(d) {
                let (lo, hi) = head.split_at_mut(half);
                let pairs = lo.iter_mut().zip(hi.iter_mut()).zip(c.iter().zip(s));
                if inverse {
                    for ((l, h), (&c, &s)) in pairs {
                        (*l, *h) = (*l * c + *h * s, *h * c - *l * s);
                    }
                } else {
                    for ((l, h), (&c, &s)) in pairs {
                        (*l, *h) = (*l * c - *h * s, *h * c + *l * s);
                    }
                }
            }
        }
    }
}

widest_vectors! {
    /// GeGLU: out = gelu(gate) · up with GELU's tanh approximation, element by element:
    /// gelu(g) = ½ · g · (1 + tanh u), u = √(2/π) · (g + 0.044715 · g³), tanh u = 1 − 2 / (1 + e^2u). Written as
    /// PyTorch rounds it: g · σ(2u) is equal and more accurate where 1 + tanh u cancels (g below about −2), but
    /// greedy decoding against transformers (tests/gemma3_real.rs) meets near-ties that follow that rounding.
    pub fn gelu_mul(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            let t = 1.0 - 2.0 / (1.0 + exp(2.0 * SQRT_2_OVER_PI * (g + CUBIC * g * g * g)));
            *o = 0.5 * g * (1.0 + t) * u;
        }
    }
}

widest_vectors! {
    /// Backward of [`gelu_mul`], OVERWRITING dgate and dup: dup = dout · gelu(gate);  dgate = dout · up · gelu'(gate)
    /// with gelu'(g) = ½(1 + tanh u) + ½ g (1 − tanh² u) u' = s + 2 g s (1 − s) · √(2/π) (1 + 3 · 0.044715 · g²),
    /// s = σ(2u) = 1 / (1 + e^−2u).
    pub fn gelu_mul_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
        for ((dg, du), ((&d, &g), &u)) in dgate.iter_mut().zip(dup.iter_mut()).zip(dout.iter().zip(gate).zip(up)) {
            let g2 = g * g;
            let e = exp(-2.0 * SQRT_2_OVER_PI * (g + CUBIC * g2 * g));
            let s = 1.0 / (1.0 + e);
            // 1 − s without its cancellation as s nears 1: e · s there (e ≤ 1, finite)
            let one_minus_s = if s < 0.5 { 1.0 - s } else { e * s };
            *du = d * g * s;
            *dg = d * u * (s + 2.0 * g * s * one_minus_s * SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * g2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 97th f32 bit pattern between −104 and 89 (and the edges): within 2 ulp of libm's expf.
    #[test]
    fn exp_matches_libm_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut check = |x: f32| {
            let (got, want) = (exp(x), x.exp());
            if want == 0.0 || want.is_infinite() {
                assert_eq!(got, want, "exp({x})");
                return;
            }
            // Subnormal results have fewer bits; judge those against the smallest subnormal instead.
            let ulp = (want.abs() * f32::EPSILON).max(f32::from_bits(1)) as f64;
            let err = (got as f64 - want as f64).abs() / ulp;
            assert!(err <= 2.0, "exp({x}) = {got}, libm {want}: {err} ulp");
            worst = worst.max(err);
        };
        for bits in (0u32..=u32::MAX).step_by(97) {
            let x = f32::from_bits(bits);
            if x.is_finite() && (-104.0..=89.0).contains(&x) {
                check(x);
            }
        }
        for x in [0.0, -0.0, 1.0, -1.0, MAX_ARG, MIN_ARG, 88.7, -87.3, -100.0, 1e-30, -1e-30] {
            check(x);
        }
        assert!(worst > 0.0 && worst <= 2.0, "worst {worst} ulp");
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(200.0), f32::INFINITY);
        assert_eq!(exp(-200.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_match_sequential_ones() {
        for len in [0, 1, 15, 16, 17, 1000, 49152] {
            let xs: Vec<f32> = (0..len).map(|i| ((i * 7919 % 1013) as f32 - 500.0) / 37.0).collect();
            let seq_max = xs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!(max(&xs), seq_max);
            let seq: f64 = xs.iter().map(|&x| x as f64).sum();
            assert!((sum_f64(&xs) - seq).abs() <= 1e-12 * (1.0 + seq.abs()));
            let s32: f32 = xs.iter().sum();
            assert!((sum(&xs) - s32).abs() <= 1e-4 * (1.0 + s32.abs()), "{} vs {s32}", sum(&xs));
            let mut e = xs.clone();
            exp_shifted(&mut e, 1.5);
            // The fused pass gives the same values and the same sum, bit for bit.
            let mut e32 = xs.clone();
            assert_eq!(exp_shifted_sum(&mut e32, 1.5).to_bits(), sum(&e).to_bits());
            assert_eq!(e32, e);
            for (a, &x) in e.iter().zip(&xs) {
                let want = (x - 1.5).exp();
                assert!((a - want).abs() <= 2.5e-7 * want, "exp({x} − 1.5)");
            }
        }
        assert_eq!(max(&[f32::NAN, 1.0, f32::NAN]), 1.0);
    }

    /// RMSNorm's row and its backward against their sequential forms, as the kernels were before: within 1e-5
    /// relative to the row's scale.
    #[test]
    fn rmsnorm_rows_match_the_sequential_forms() {
        for c in [1, 17, 64, 576, 1536] {
            let x: Vec<f32> = (0..c).map(|i| ((i * 7919 % 1013) as f32 - 500.0) / 137.0).collect();
            let w: Vec<f32> = (0..c).map(|i| 1.0 + ((i * 31 % 97) as f32 - 48.0) / 200.0).collect();
            let dy: Vec<f32> = (0..c).map(|i| ((i * 104_729 % 211) as f32 - 105.0) / 50.0).collect();
            let eps = 1e-5;
            let want_rstd = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / c as f32 + eps).sqrt();
            let mut y = vec![0.0; c];
            let rstd = rmsnorm_row(&mut y, &x, &w, eps);
            assert!((rstd - want_rstd).abs() <= 1e-6 * want_rstd, "rstd over {c}: {rstd} vs {want_rstd}");
            let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) * want_rstd * 1.25;
            for i in 0..c {
                let want = x[i] * want_rstd * w[i];
                assert!((y[i] - want).abs() <= 1e-5 * scale, "y[{i}] over {c}: {} vs {want}", y[i]);
            }
            let mut dx = vec![0.5; c];
            rmsnorm_row_backward(&mut dx, &dy, &x, &w, want_rstd);
            let mut gx = 0.0f32;
            for i in 0..c {
                gx += dy[i] * w[i] * x[i];
            }
            let k = gx * want_rstd * want_rstd / c as f32;
            let want: Vec<f32> = (0..c).map(|i| 0.5 + want_rstd * (dy[i] * w[i] - x[i] * k)).collect();
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for i in 0..c {
                assert!((dx[i] - want[i]).abs() <= 1e-5 * scale, "dx[{i}] over {c}: {} vs {}", dx[i], want[i]);
            }
        }
    }

    /// SwiGLU and its backward against their scalar forms with libm's expf, as the kernels were before: within
    /// 1e-5 relative (with 1e-30 absolute for results that underflow).
    #[test]
    fn silu_mul_and_backward_match_the_libm_forms() {
        let n = 4099;
        let gate: Vec<f32> = (0..n).map(|i| ((i * 7919 % 4001) as f32 - 2000.0) / 20.0).collect();
        let up: Vec<f32> = (0..n).map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 97.0).collect();
        let dout: Vec<f32> = (0..n).map(|i| ((i * 31 % 211) as f32 - 105.0) / 50.0).collect();
        let libm_sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        let close = |got: f32, want: f32, what: &str| {
            assert!((got - want).abs() <= 1e-5 * want.abs() + 1e-30, "{what}: {got} vs {want}");
        };
        let mut out = vec![0.0; n];
        silu_mul(&mut out, &gate, &up);
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        silu_mul_backward(&mut dg, &mut du, &dout, &gate, &up);
        for i in 0..n {
            let (g, u, d) = (gate[i], up[i], dout[i]);
            let s = libm_sigmoid(g);
            close(out[i], g * s * u, &format!("silu_mul({g}, {u})"));
            close(du[i], d * g * s, &format!("dup at {g}"));
            close(dg[i], d * u * s * (1.0 + g * (1.0 - s)), &format!("dgate at {g}"));
        }
    }
}
