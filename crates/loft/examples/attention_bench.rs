//! The training attention's forward and backward alone, at SmolLM2-135M's heads (NH 9, NKV 3, D 64) and 4×256 by
//! default: best of many runs each, and the GFLOP/s of their products (issue 15).
//!
//! `cargo run --release -p loft --example attention_bench [-- B T ROUNDS]`. Threads: RAYON_NUM_THREADS.

use std::time::Instant;

use loft::engine::attention::{attention_backward, attention_forward};
use loft::rng::SplitMix64;

fn rand(len: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..len).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("B T ROUNDS are numbers")).collect();
    let (b, t, rounds) =
        (args.first().copied().unwrap_or(4), args.get(1).copied().unwrap_or(256), args.get(2).copied().unwrap_or(30));
    let (nh, nkv, d) = (9, 3, 64);
    let (nq, nk) = (b * t * nh * d, b * t * nkv * d);
    let (q, k, v, dout) = (rand(nq, 1), rand(nk, 2), rand(nk, 3), rand(nq, 4));
    let (mut out, mut lse) = (vec![0.0f32; nq], vec![0.0f32; b * nh * t]);
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; nq], vec![0.0f32; nk], vec![0.0f32; nk]);
    let (mut dk_heads, mut dv_heads) = (vec![0.0f32; nq], vec![0.0f32; nq]);
    let (mut fwd, mut bwd) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        let start = Instant::now();
        attention_forward(&mut out, &mut lse, &q, &k, &v, None, None, b, t, nh, nkv, d);
        fwd = fwd.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        #[rustfmt::skip]
        attention_backward(&mut dq, &mut dk, &mut dv, &mut dk_heads, &mut dv_heads, &dout, &q, &k, &v, &out, &lse, None, None, b, t, nh, nkv, d);
        bwd = bwd.min(start.elapsed().as_secs_f64());
    }
    // Causal: about half of the T² scores; the forward has 2 products of 2·D flops per score, the backward 5.
    let scores = (b * nh) as f64 * (t * (t + 1) / 2) as f64;
    let gflops = |products: f64, s: f64| products * 2.0 * d as f64 * scores / s / 1e9;
    println!(
        "B {b} T {t}: forward {:.3} ms ({:.0} GFLOP/s), backward {:.3} ms ({:.0} GFLOP/s); checksum {:.6e}",
        fwd * 1e3,
        gflops(2.0, fwd),
        bwd * 1e3,
        gflops(5.0, bwd),
        dq.iter().chain(&dk).chain(&dv).map(|&x| x as f64).sum::<f64>()
    );
}
