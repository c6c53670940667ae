//! Rotary position embedding, Hugging Face layout: within each head of size D, element i pairs with i + D/2
//! (`rotate_half`). GGUF files store Q/K rows permuted for llama.cpp's interleaved layout; the model loader undoes
//! that, so every kernel here sees Hugging Face's layout.
//!
//! Legend: T = tokens, H = heads, D = head_dim.
#![forbid(unsafe_code)]

use rayon::prelude::*;

use super::vector_math as vm;

/// How RoPE frequencies are scaled for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1's piecewise scaling (HF `rope_type = "llama3"`).
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: usize },
    /// Linear position interpolation (HF `rope_type = "linear"`).
    Linear { factor: f32 },
    /// Per-frequency divisors given outright (GGUF's `rope_freqs.weight`, which llama.cpp's converter computes from
    /// the llama3 parameters).
    FreqFactors(Vec<f32>),
}

/// Inverse frequencies of one head, with the model's scaling applied: inv_freq[D/2].
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// The frequencies of a head of `head_dim` values at base `theta`, scaled as `scaling` says.
    pub fn new(head_dim: usize, theta: f32, scaling: Option<&RopeScaling>) -> Self {
        let d = head_dim;
        let base = theta as f64;
        let mut inv_freq: Vec<f64> = (0..d / 2).map(|i| 1.0 / base.powf(2.0 * i as f64 / d as f64)).collect();
        match scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => inv_freq.iter_mut().for_each(|f| *f /= *factor as f64),
            Some(RopeScaling::FreqFactors(factors)) => {
                inv_freq.iter_mut().zip(factors).for_each(|(f, s)| *f /= *s as f64)
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let (factor, low, high) = (*factor as f64, *low_freq_factor as f64, *high_freq_factor as f64);
                let old_ctx = *original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        Rope { inv_freq: inv_freq.into_iter().map(|f| f as f32).collect() }
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    pub fn half_dim(&self) -> usize {
        self.inv_freq.len()
    }

    /// cos and sin tables for the given positions: each [T, D/2].
    pub fn tables(&self, positions: impl Iterator<Item = usize>) -> (Vec<f32>, Vec<f32>) {
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for p in positions {
            for &f in &self.inv_freq {
                // Angle in f32 as transformers computes it (positions · inv_freq in float32).
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        (cos, sin)
    }
}

/// Tokens per parallel task: [32, H·D] is 72 KiB of SmolLM2's queries.
const ROWS: usize = 32;

/// x[T, H, D] rotated in place by the angles in cos/sin [T, D/2].
pub fn rope_forward(x: &mut [f32], t: usize, h: usize, d: usize, cos: &[f32], sin: &[f32]) {
    rope_rotate(x, t, h, d, cos, sin, false);
}

/// The rotation is orthogonal, so the gradient is the inverse rotation: dx = Rᵀ dy, in place.
pub fn rope_backward(dx: &mut [f32], t: usize, h: usize, d: usize, cos: &[f32], sin: &[f32]) {
    rope_rotate(dx, t, h, d, cos, sin, true);
}

/// x[T, H, D] turned by R (or Rᵀ when `inverse`), [`ROWS`] tokens a task.
fn rope_rotate(x: &mut [f32], t: usize, h: usize, d: usize, cos: &[f32], sin: &[f32], inverse: bool) {
    let half = d / 2;
    assert!(x.len() == t * h * d && cos.len() >= t * half && sin.len() >= t * half, "rope: shapes");
    if half == 0 || h == 0 {
        return;
    }
    let (cos, sin) = (&cos[..t * half], &sin[..t * half]);
    x.par_chunks_mut(ROWS * h * d)
        .zip(cos.par_chunks(ROWS * half))
        .zip(sin.par_chunks(ROWS * half))
        .for_each(|((x, c), s)| vm::rope_rows(x, h, d, c, s, inverse));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_matches_transformers_formula() {
        // Values from transformers' `_compute_llama3_parameters` (Llama 3.1: factor 8, low 1, high 4, 8192),
        // evaluated in Python float64.
        let llama31 = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let rope = Rope::new(128, 500_000.0, Some(&llama31));
        let want = [
            (0, 1.0),
            (10, 0.12868737343265052),
            (20, 0.016560440080994446),
            (30, 0.0013718935677611381),
            (40, 3.428102195952591e-05),
            (50, 4.411534674558404e-06),
            (63, 3.068925988914511e-07),
        ];
        for (i, w) in want {
            let got = rope.inv_freq()[i] as f64;
            assert!((got - w).abs() <= 1e-6 * w, "inv_freq[{i}] = {got}, want {w}");
        }
        // Without scaling, the same index is the plain base^(-2i/D).
        let plain = Rope::new(128, 500_000.0, None);
        assert!((plain.inv_freq()[63] as f64 - 500_000f64.powf(-126.0 / 128.0)).abs() < 1e-12);
    }

    /// The kernels before vectorizing: one token, one head, one pair at a time.
    fn rope_scalar(x: &mut [f32], t: usize, h: usize, d: usize, cos: &[f32], sin: &[f32], inverse: bool) {
        let half = d / 2;
        for (ti, row) in x.chunks_exact_mut(h * d).enumerate().take(t) {
            let (c, s) = (&cos[ti * half..(ti + 1) * half], &sin[ti * half..(ti + 1) * half]);
            for head in row.chunks_exact_mut(d) {
                let (lo, hi) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (lo[i], hi[i]);
                    let sign = if inverse { -1.0 } else { 1.0 };
                    lo[i] = a * c[i] - sign * b * s[i];
                    hi[i] = b * c[i] + sign * a * s[i];
                }
            }
        }
    }

    /// Forward and backward equal the scalar forms bit for bit (the same products and sums, in the same order),
    /// over token counts that leave a partial task and head sizes that leave a partial vector.
    #[test]
    fn rows_match_the_scalar_forms() {
        for (t, h, d) in [(1, 1, 2), (33, 3, 64), (70, 9, 64), (5, 2, 80), (40, 4, 256)] {
            let rope = Rope::new(d, 10_000.0, None);
            let (cos, sin) = rope.tables(3..3 + t + 2); // longer tables than T, as a batch's may be
            let x: Vec<f32> = (0..t * h * d).map(|i| ((i * 7919 % 1013) as f32 - 500.0) / 137.0).collect();
            for inverse in [false, true] {
                let (mut got, mut want) = (x.clone(), x.clone());
                match inverse {
                    false => rope_forward(&mut got, t, h, d, &cos, &sin),
                    true => rope_backward(&mut got, t, h, d, &cos, &sin),
                }
                rope_scalar(&mut want, t, h, d, &cos, &sin, inverse);
                assert_eq!(got, want, "T {t}, H {h}, D {d}, inverse {inverse}");
            }
        }
    }

    #[test]
    fn backward_inverts_forward() {
        let rope = Rope::new(128, 500_000.0, None);
        let (t, h, d) = (3, 2, 128);
        let x: Vec<f32> = (0..t * h * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let (cos, sin) = rope.tables(5..5 + t);
        let mut y = x.clone();
        rope_forward(&mut y, t, h, d, &cos, &sin);
        assert!(y.iter().zip(&x).any(|(a, b)| (a - b).abs() > 1e-3));
        rope_backward(&mut y, t, h, d, &cos, &sin);
        assert!(y.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
