//! GeGLU, the gate of Gemma's MLP: out = gelu(gate) · up, elementwise, with GELU's tanh approximation (PyTorch's
//! `gelu(approximate="tanh")`, transformers' `gelu_pytorch_tanh`). Legend: N = rows, F = intermediate_size; every
//! buffer here is [N, F] (any length works: the op is elementwise).

#![forbid(unsafe_code)]

use rayon::prelude::*;

use super::vector_math::{gelu_mul, gelu_mul_backward};

/// Elements per parallel task, as SwiGLU's.
const CHUNK: usize = 1 << 14;

/// √(2/π), GELU's tanh approximation's constant.
pub(crate) const SQRT_2_OVER_PI: f32 = 0.797_884_6;
pub(crate) const CUBIC: f32 = 0.044_715;

/// gelu(g) = ½ · g · (1 + tanh(u)), u = √(2/π) · (g + 0.044715 · g³), with libm's tanh (the kernels below take
/// tanh from `vector_math`'s exp at the CPU's widest vectors, [`gelu_mul`]).
#[inline]
pub fn gelu_tanh(g: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (g + CUBIC * g * g * g);
    0.5 * g * (1.0 + u.tanh())
}

/// d gelu(g) / dg = ½ · (1 + tanh u) + ½ · g · (1 − tanh² u) · √(2/π) · (1 + 3 · 0.044715 · g²).
#[inline]
pub fn gelu_tanh_grad(g: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (g + CUBIC * g * g * g);
    let t = u.tanh();
    0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * g * g)
}

/// out = gelu(gate) · up.
pub fn geglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(out.len() == gate.len() && up.len() == gate.len(), "geglu_forward: shapes");
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK)).zip(up.par_chunks(CHUNK)).for_each(|((o, g), u)| {
        gelu_mul(o, g, u);
    });
}

/// Backward of [`geglu_forward`]; dgate and dup are OVERWRITTEN.
/// dup = dout · gelu(gate);  dgate = dout · up · gelu'(gate).
pub fn geglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    let len = gate.len();
    assert!(dgate.len() == len && dup.len() == len && dout.len() == len && up.len() == len, "geglu_backward: shapes");
    let ins = dout.par_chunks(CHUNK).zip(gate.par_chunks(CHUNK)).zip(up.par_chunks(CHUNK));
    dgate.par_chunks_mut(CHUNK).zip(dup.par_chunks_mut(CHUNK)).zip(ins).for_each(|((dg, du), ((d, g), u))| {
        gelu_mul_backward(dg, du, d, g, u);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's gelu(x, approximate="tanh") in f64 at a few points, and the gradient against central differences
    /// of the f64 formula.
    #[test]
    fn gelu_matches_its_formula_and_its_gradient_the_finite_differences() {
        let f64_gelu =
            |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
        for &x in &[-6.0f32, -3.1, -1.0, -0.3, 0.0, 0.2, 0.9, 2.5, 7.0, 20.0] {
            let want = f64_gelu(x as f64);
            assert!((gelu_tanh(x) as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "gelu({x})");
            let h = 1e-4;
            let fd = (f64_gelu(x as f64 + h) - f64_gelu(x as f64 - h)) / (2.0 * h);
            assert!((gelu_tanh_grad(x) as f64 - fd).abs() <= 1e-5, "gelu'({x}) = {} vs {fd}", gelu_tanh_grad(x));
        }
        // Known value: gelu_tanh(1) = 0.841192 (torch.nn.functional.gelu(torch.tensor(1.), approximate="tanh")).
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-6);
    }

    /// The vectorized kernels against the scalar forms with libm's tanh they replaced, and both against the f64
    /// formula, relative to the operands' scale (|g·u|, |d·g|, |d·u|; gelu' crosses zero near g = −0.75, where
    /// either form cancels): within 1e-6 of the scalar forms, and within 5e-7 of their distance from f64 (where
    /// 1 + tanh u cancels, g below about −2, the backward's σ(2u) is the more accurate).
    #[test]
    fn kernels_match_the_libm_forms() {
        let n = 4099;
        let gate: Vec<f32> = (0..n).map(|i| ((i * 7919 % 4001) as f32 - 2000.0) / 200.0).collect();
        let up: Vec<f32> = (0..n).map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 97.0).collect();
        let dout: Vec<f32> = (0..n).map(|i| ((i * 31 % 211) as f32 - 105.0) / 50.0).collect();
        let (c0, c1) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
        let f64_gelu = |x: f64| 0.5 * x * (1.0 + (c0 * (x + c1 * x.powi(3))).tanh());
        let f64_grad = |x: f64| {
            let t = (c0 * (x + c1 * x.powi(3))).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c0 * (1.0 + 3.0 * c1 * x * x)
        };
        let mut out = vec![0.0; n];
        geglu_forward(&mut out, &gate, &up);
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        geglu_backward(&mut dg, &mut du, &dout, &gate, &up);
        let check = |got: f32, old: f32, exact: f64, scale: f32, what: &str| {
            let scale = scale.abs() as f64 + 1e-30;
            let diff = (got - old).abs() as f64;
            assert!(diff <= 1e-6 * scale, "{what}: {got} vs the libm form's {old}, {:e} of scale", diff / scale);
            let (err, old_err) = ((got as f64 - exact).abs(), (old as f64 - exact).abs());
            assert!(err <= old_err + 5e-7 * scale, "{what}: {got} is {err:e} from f64, the libm form {old_err:e}");
        };
        for i in 0..n {
            let (g, u, d) = (gate[i], up[i], dout[i]);
            let (gd, ud, dd) = (g as f64, u as f64, d as f64);
            check(out[i], gelu_tanh(g) * u, f64_gelu(gd) * ud, g * u, &format!("gelu({g}) · {u}"));
            check(du[i], d * gelu_tanh(g), dd * f64_gelu(gd), d * g, &format!("dup at {g}"));
            check(dg[i], d * u * gelu_tanh_grad(g), dd * ud * f64_grad(gd), d * u, &format!("dgate at {g}"));
        }
    }

    /// The backward against central differences of the forward, through a random linear read-out.
    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = crate::rng::SplitMix64::new(7);
        let n = 37;
        let mut r = || (rng.next_f64() * 6.0 - 3.0) as f32;
        let gate: Vec<f32> = (0..n).map(|_| r()).collect();
        let up: Vec<f32> = (0..n).map(|_| r()).collect();
        let dout: Vec<f32> = (0..n).map(|_| r()).collect();
        let loss = |g: &[f32], u: &[f32]| -> f64 {
            let mut out = vec![0.0; n];
            geglu_forward(&mut out, g, u);
            out.iter().zip(&dout).map(|(&o, &d)| o as f64 * d as f64).sum()
        };
        let (mut dgate, mut dup) = (vec![0.0; n], vec![0.0; n]);
        geglu_backward(&mut dgate, &mut dup, &dout, &gate, &up);
        let h = 1e-2f32;
        for i in 0..n {
            let (mut gp, mut gm) = (gate.clone(), gate.clone());
            gp[i] += h;
            gm[i] -= h;
            let fd = (loss(&gp, &up) - loss(&gm, &up)) / (2.0 * h as f64);
            assert!((dgate[i] as f64 - fd).abs() <= 2e-3 * (1.0 + fd.abs()), "dgate[{i}] {} vs {fd}", dgate[i]);
            let (mut up_p, mut up_m) = (up.clone(), up.clone());
            up_p[i] += h;
            up_m[i] -= h;
            let fd = (loss(&gate, &up_p) - loss(&gate, &up_m)) / (2.0 * h as f64);
            assert!((dup[i] as f64 - fd).abs() <= 2e-3 * (1.0 + fd.abs()), "dup[{i}] {} vs {fd}", dup[i]);
        }
    }
}
