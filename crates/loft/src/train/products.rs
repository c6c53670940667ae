//! gemm alone on the LoRA step's frozen products: the ceiling the step is judged against (issue 15). For every
//! frozen product of one step of [`super::forward_backward`] (each layer's seven projections forward and their input
//! gradients, and the chunked head forward and input gradient) [`ProductTimer::round`] runs one product per distinct
//! shape on synthetic f32 operands, and weights its time by how often the step runs that shape: either gemm called
//! as it comes, with its own threading ([`Caller::Gemm`], the ceiling), or `engine::matmul` as the step calls it
//! ([`Caller::Loft`], which splits some shapes' output columns across the threads itself).
//! `loft bench train --vs-gemm` runs rounds between its timed steps, so gemm's figure and the step's come from the
//! same minutes of the same machine.

use std::time::Instant;

use crate::engine::cross_entropy::HEAD_CHUNK;
use crate::engine::matmul::{matmul_nn_split, matmul_nt_split, Split};
use crate::model::LlamaConfig;

/// One frozen product of the step: y[rows, out] = x[rows, inner] · Wᵀ (forward, `matmul_nt`) or its input
/// gradient dx[rows, out] = dy[rows, inner] · W (`matmul_nn`), run `count` times a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub name: String,
    pub rows: usize,
    pub inner: usize,
    pub out: usize,
    pub count: usize,
    pub backward: bool,
}

impl Product {
    /// Multiply-adds × 2 of one run.
    pub fn flops(&self) -> f64 {
        2.0 * (self.rows * self.inner * self.out) as f64
    }
}

/// The frozen products of one CPU step over `n` = batch × sequence tokens (no checkpointing: each forward once).
pub fn step_products(cfg: &LlamaConfig, n: usize) -> Vec<Product> {
    let (c, f, q, kv, v, l) =
        (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim(), cfg.vocab_size, cfg.num_hidden_layers);
    let mut products = Vec::new();
    for backward in [false, true] {
        let dir = if backward { "dx" } else { "y" };
        for (name, inner, out, count) in [
            ("q_proj", c, q, l),
            ("o_proj", q, c, l),
            ("k_proj/v_proj", c, kv, 2 * l),
            ("gate/up_proj", c, f, 2 * l),
            ("down_proj", f, c, l),
        ] {
            // The input gradient of y = x·Wᵀ [N, out] is dx = dy·W [N, inner]: its inner size is `out`.
            let (inner, out) = if backward { (out, inner) } else { (inner, out) };
            products.push(Product { name: format!("{dir} {name}"), rows: n, inner, out, count, backward });
        }
        let (inner, out) = if backward { (v, c) } else { (c, v) };
        let rows = HEAD_CHUNK.min(n);
        let chunks = n.div_ceil(HEAD_CHUNK);
        products.push(Product { name: format!("{dir} head chunk"), rows, inner, out, count: chunks, backward });
    }
    products
}

/// How a [`ProductTimer`] runs each product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// One call into gemm with its own threading (`Parallelism::Rayon` over the pool): gemm alone.
    Gemm,
    /// `engine::matmul::{matmul_nt, matmul_nn}`, the calls the step makes.
    Loft,
}

/// Times [`step_products`] round after round on operands allocated once (the largest x, W and y of the list).
pub struct ProductTimer {
    caller: Caller,
    products: Vec<Product>,
    x: Vec<f32>,
    w: Vec<f32>,
    y: Vec<f32>,
    /// Per product, every run's seconds.
    runs: Vec<Vec<f64>>,
}

impl ProductTimer {
    pub fn new(products: Vec<Product>, caller: Caller) -> Self {
        let most = |f: fn(&Product) -> usize| products.iter().map(f).max().unwrap_or(0);
        let x = (0..most(|p| p.rows * p.inner)).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
        let w = (0..most(|p| p.inner * p.out)).map(|i| ((i % 89) as f32 - 44.0) / 890.0).collect();
        let y = vec![0.0f32; most(|p| p.rows * p.out)];
        let runs = vec![Vec::new(); products.len()];
        ProductTimer { caller, products, x, w, y, runs }
    }

    pub fn products(&self) -> &[Product] {
        &self.products
    }

    /// Runs every product once; returns the round's step-weighted seconds (Σ count × this run's time).
    pub fn round(&mut self) -> f64 {
        let mut total = 0.0;
        for (p, runs) in self.products.iter().zip(&mut self.runs) {
            let (x, w, y) = (&self.x[..p.rows * p.inner], &self.w[..p.inner * p.out], &mut self.y[..p.rows * p.out]);
            let (n, k, m) = (p.rows, p.inner, p.out);
            let start = Instant::now();
            // y[n, m] = x[n, k] · w[k, m] (the input gradient) or x[n, k] · w[m, k]ᵀ (the forward).
            let split = match self.caller {
                Caller::Gemm => Split::gemm_alone(n, m, k),
                Caller::Loft => Split::chosen(n, m, k),
            };
            if p.backward {
                matmul_nn_split(y, x, w, n, k, m, 1.0, false, split)
            } else {
                matmul_nt_split(y, x, w, n, k, m, 1.0, false, split)
            }
            let s = start.elapsed().as_secs_f64();
            runs.push(s);
            total += s * p.count as f64;
        }
        total
    }

    /// The step's frozen FLOPs (Σ count × flops).
    pub fn flops(&self) -> f64 {
        self.products.iter().map(|p| p.flops() * p.count as f64).sum()
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> usize {
        self.runs.first().map_or(0, Vec::len)
    }

    /// The step's frozen products at each shape's best run so far: gemm's peak on these shapes, in FLOP/s.
    pub fn best_flops_per_second(&self) -> f64 {
        self.flops() / self.weighted(|runs| runs.iter().copied().fold(f64::INFINITY, f64::min))
    }

    /// The same at each shape's median run.
    pub fn median_flops_per_second(&self) -> f64 {
        self.flops() / self.weighted(median)
    }

    fn weighted(&self, pick: impl Fn(&[f64]) -> f64) -> f64 {
        self.products.iter().zip(&self.runs).map(|(p, runs)| pick(runs) * p.count as f64).sum()
    }
}

/// The median of `values` (NaN when empty): the middle one, or the mean of the two middle ones.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_add_up_to_the_steps_frozen_flops() {
        // Forward and input gradient through every linear layer and the head: 4 FLOPs per weight per token.
        let cfg = LlamaConfig::smollm2_135m();
        let n = 1024;
        let per_layer = cfg.hidden_size * (2 * cfg.q_dim() + 2 * cfg.kv_dim() + 3 * cfg.intermediate_size);
        let weights = cfg.num_hidden_layers * per_layer + cfg.vocab_size * cfg.hidden_size;
        let timer = ProductTimer::new(step_products(&cfg, n), Caller::Gemm);
        assert_eq!(timer.flops(), 4.0 * (weights * n) as f64);
        // A head chunk smaller than the step's rows runs once per chunk.
        let head = timer.products().iter().find(|p| p.name == "y head chunk").unwrap();
        assert_eq!((head.rows, head.count), (HEAD_CHUNK, n.div_ceil(HEAD_CHUNK)));
    }

    #[test]
    fn rounds_are_recorded_and_weighted() {
        let cfg = LlamaConfig { num_hidden_layers: 1, vocab_size: 64, ..LlamaConfig::smollm2_135m() };
        for caller in [Caller::Gemm, Caller::Loft] {
            let mut timer = ProductTimer::new(step_products(&cfg, 8), caller);
            let total = timer.round();
            timer.round();
            assert_eq!(timer.rounds(), 2);
            assert!(total > 0.0 && timer.best_flops_per_second() >= timer.median_flops_per_second());
        }
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
