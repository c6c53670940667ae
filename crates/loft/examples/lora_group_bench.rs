//! The training step's LoRA adapter products (not the frozen ones), per layer of SmolLM2-135M's shape at 4×256 and
//! r16: the batched path ([`loft::engine::lora`]'s group kernels: q/k/v and gate/up together, o and down alone)
//! against the per-module products it replaced, interleaved in one process, best of many runs each (issue 15).
//!
//! `cargo run --release -p loft --example lora_group_bench [-- ROUNDS]` (default 30). Threads: RAYON_NUM_THREADS.
//! The forward's adapter term is timed as a pass of its own after the frozen product (`add_lora_group_terms`, o_proj
//! and down_proj's path); q/k/v and gate/up add it inside the frozen product in the step
//! (`FrozenMatrix::forward_then`). The buffers here are not cache-hot as in the step, so the gains here overstate
//! the step's (measured: 133.7 → 116.2 ms here while the step moved by about 1 %); the whole step's split is
//! `examples/train_profile`'s.

use std::time::Instant;

use loft::engine::lora::{add_lora_group_grads, add_lora_group_terms, LoraGrad, LoraOut};
use loft::engine::matmul::{matmul_nn, matmul_nt, matmul_tn};
use loft::engine::{FrozenMatrix, LoraWeights};
use loft::rng::SplitMix64;

fn rand(len: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..len).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
}

/// One adapted module with its buffers.
struct Module {
    w: FrozenMatrix,
    lora: LoraWeights,
    y: Vec<f32>,
    xa: Vec<f32>,
    dy: Vec<f32>,
    da: Vec<f32>,
    db: Vec<f32>,
}

/// The per-module products as engine::lora computed them before the group kernels (without dropout).
fn per_module(x: &[f32], dx: &mut [f32], mods: &mut [Module], n: usize) {
    for m in mods.iter_mut() {
        let (i, o, r) = (m.lora.in_features, m.lora.out_features, m.lora.r);
        matmul_nt(&mut m.xa, x, &m.lora.a, n, i, r, 1.0, false);
        matmul_nt(&mut m.y, &m.xa, &m.lora.b, n, r, o, m.lora.scale, true);
    }
    let mut dxa = vec![0.0f32; n * mods[0].lora.r];
    for m in mods.iter_mut() {
        let (i, o, r) = (m.lora.in_features, m.lora.out_features, m.lora.r);
        matmul_tn(&mut m.db, &m.dy, &m.xa, n, o, r, m.lora.scale, true);
        matmul_nn(&mut dxa, &m.dy, &m.lora.b, n, o, r, m.lora.scale, false);
        matmul_tn(&mut m.da, &dxa, x, n, r, i, 1.0, true);
        matmul_nn(dx, &dxa, &m.lora.a, n, r, i, 1.0, true);
    }
}

fn batched(x: &[f32], dx: &mut [f32], mods: &mut [Module], n: usize) {
    let mut outs: Vec<LoraOut<'_>> =
        mods.iter_mut().map(|m| LoraOut { y: &mut m.y, xa: &mut m.xa, w: &m.w, lora: &m.lora }).collect();
    add_lora_group_terms(x, &mut outs, n);
    let mut grads: Vec<LoraGrad<'_>> = mods
        .iter_mut()
        .map(|m| LoraGrad { dy: &m.dy, xa: &m.xa, w: &m.w, lora: &m.lora, da: &mut m.da, db: &mut m.db })
        .collect();
    add_lora_group_grads(dx, x, &mut grads, n);
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let (n, c, f, kv, r) = (1024, 576, 1536, 192, 16);
    // (name, input width, output widths): the groups one layer runs.
    let groups = [("q/k/v", c, vec![c, kv, kv]), ("o", c, vec![c]), ("gate/up", c, vec![f, f]), ("down", f, vec![c])];
    let mut seed = 1;
    let mut next = || {
        seed += 1;
        seed
    };
    let mut cases: Vec<(Vec<f32>, Vec<f32>, Vec<Module>)> = groups
        .iter()
        .map(|(_, i, outs)| {
            let mods = outs
                .iter()
                .map(|&o| {
                    let mut lora = LoraWeights::zeros(r, *i, o, 32.0, false);
                    lora.a = rand(r * i, next());
                    lora.b = rand(o * r, next());
                    Module {
                        w: FrozenMatrix::from_f32(o, *i, vec![0.0; o * i]),
                        lora,
                        y: vec![0.0; n * o],
                        xa: vec![0.0; n * r],
                        dy: rand(n * o, next()),
                        da: vec![0.0; r * i],
                        db: vec![0.0; o * r],
                    }
                })
                .collect();
            (rand(n * i, next()), vec![0.0; n * i], mods)
        })
        .collect();
    let mut best = vec![[f64::MAX; 2]; groups.len()];
    type Run = fn(&[f32], &mut [f32], &mut [Module], usize);
    let runs: [Run; 2] = [per_module, batched];
    for round in 0..rounds {
        for (g, (x, dx, mods)) in cases.iter_mut().enumerate() {
            // Each goes first in every other round: the second finds the buffers warmer.
            for j in 0..runs.len() {
                let k = (j + round) % runs.len();
                let start = Instant::now();
                runs[k](x, dx, mods, n);
                best[g][k] = best[g][k].min(start.elapsed().as_secs_f64());
            }
        }
    }
    println!(
        "LoRA adapter products of one layer, 4×256, r16, {} threads, best of {rounds}:",
        rayon::current_num_threads()
    );
    let (mut before, mut after) = (0.0, 0.0);
    for ((name, _, _), [a, b]) in groups.iter().zip(&best) {
        println!("{name:<8} per-module {:>6.3} ms   batched {:>6.3} ms   ({:.2}×)", a * 1e3, b * 1e3, a / b);
        (before, after) = (before + a, after + b);
    }
    let layers = 30.0;
    println!(
        "{layers} layers: per-module {:.1} ms, batched {:.1} ms ({:.2}×)",
        before * layers * 1e3,
        after * layers * 1e3,
        before / after
    );
}
