//! gemm's speed on the LoRA step's own products, the ceiling `loft bench train` is judged against (issue 15).
//!
//! `cargo run --release -p loft --example gemm_peak [-- B T]` (default 4 256, SmolLM2-135M's shape). For every
//! frozen product of one training step (each layer's seven projections forward and their input gradients, and
//! the chunked head forward and backward at 256 rows a chunk) it times `engine::matmul` alone, best of several
//! repetitions, and prints each shape's GFLOP/s and the step's: the step's base FLOPs over the sum of the best
//! times, weighted by how often the step runs each shape. Threads: rayon's default (RAYON_NUM_THREADS).
//!
//! Legend: N = B·T rows, C = hidden, F = intermediate, Q = NH·D, KV = NKV·D, V = vocab, L = layers.

use std::time::Instant;

use loft::engine::matmul::{matmul_nn, matmul_nt};
use loft::model::LlamaConfig;

/// Rows of logits the head holds at once (train::forward_backward's HEAD_CHUNK).
const HEAD_CHUNK: usize = 256;

struct Product {
    name: String,
    /// y[rows, out] = x[rows, inner] · W (nt) or its input gradient (nn).
    rows: usize,
    inner: usize,
    out: usize,
    /// How many times one step runs it.
    count: usize,
    backward: bool,
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (b, t) = (args.first().copied().unwrap_or(4), args.get(1).copied().unwrap_or(256));
    let cfg = LlamaConfig::smollm2_135m();
    let (n, c, f, q, kv, v, l) = (
        b * t,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.vocab_size,
        cfg.num_hidden_layers,
    );
    let chunks = n.div_ceil(HEAD_CHUNK);
    let mut products = Vec::new();
    for backward in [false, true] {
        let dir = if backward { "dx" } else { "y" };
        for (name, inner, out, count) in [
            ("q_proj/o_proj", c, q, 2 * l),
            ("k_proj/v_proj", c, kv, 2 * l),
            ("gate/up_proj", c, f, 2 * l),
            ("down_proj", f, c, l),
        ] {
            // The input gradient of y = x·Wᵀ [N, out] is dx = dy·W [N, inner]: the product's inner size is `out`.
            let (inner, out) = if backward { (out, inner) } else { (inner, out) };
            products.push(Product { name: format!("{dir} {name}"), rows: n, inner, out, count, backward });
        }
        let (inner, out) = if backward { (v, c) } else { (c, v) };
        let rows = HEAD_CHUNK.min(n);
        products.push(Product { name: format!("{dir} head chunk"), rows, inner, out, count: chunks, backward });
    }

    let threads = rayon::current_num_threads();
    println!("gemm on the LoRA step's products: {b}×{t} (N = {n}), SmolLM2-135M's shape, {threads} threads");
    let (mut flops, mut seconds) = (0.0f64, 0.0f64);
    for p in &products {
        let x: Vec<f32> = (0..p.rows * p.inner).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
        let w: Vec<f32> = (0..p.inner * p.out).map(|i| ((i % 89) as f32 - 44.0) / 890.0).collect();
        let mut y = vec![0.0f32; p.rows * p.out];
        let mut best = f64::INFINITY;
        let reps = (2e9 / (2.0 * (p.rows * p.inner * p.out) as f64)).clamp(3.0, 40.0) as usize;
        for _ in 0..reps {
            let start = Instant::now();
            if p.backward {
                // w is [inner, out] here: dx[rows, out] = dy[rows, inner] · W[inner, out]
                matmul_nn(&mut y, &x, &w, p.rows, p.inner, p.out, 1.0, false);
            } else {
                matmul_nt(&mut y, &x, &w, p.rows, p.inner, p.out, 1.0, false);
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        let f = 2.0 * (p.rows * p.inner * p.out) as f64;
        println!(
            "{:<18} [{:>4} × {:>5}] · [{:>5} × {:>5}]  ×{:>3}  {:>6.1} GFLOP/s",
            p.name,
            p.rows,
            p.inner,
            p.inner,
            p.out,
            p.count,
            f / best / 1e9
        );
        flops += f * p.count as f64;
        seconds += best * p.count as f64;
    }
    println!(
        "step's frozen products: {:.2} GFLOP in {:.3} s at gemm's best: {:.1} GFLOP/s ({:.0} tok/s if the step were only these)",
        flops / 1e9,
        seconds,
        flops / seconds / 1e9,
        n as f64 / seconds
    );
}
