//! The LoRA training forward/backward of a whole model: gradients against finite differences on a tiny model
//! (2 layers, GQA, tied head) through the LoRA parameters and the trained embedding; checkpointing and
//! micro-batching change nothing; on the default model the training loss equals the evaluation loss.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use common::adapter_with_nonzero_b as adapter;
use common::tiny::{random_weights, write_gguf, TinyConfig};
use common::{mean_loss, random_batch};
use loft::data::Batch;
use loft::engine::Cpu;
use loft::lora::{Adapter, LoraConfig, TensorName};
use loft::model::{llama_from_gguf, llama_from_gguf_with, Llama};
use loft::rng::SplitMix64;
use loft::train::forward_backward::{forward_backward_host, TrainArena};

fn tiny_model(seed: u64) -> Llama {
    let cfg = TinyConfig::default();
    let w = random_weights(&cfg, seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &cfg, &w);
    llama_from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap()
}

fn gradients(model: &Llama, a: &Adapter, batch: &Batch, checkpointing: bool) -> (f64, Adapter) {
    let mut arena = TrainArena::new(&Cpu, &model.config, &a.config, batch.b, batch.t, checkpointing).unwrap();
    let mut grads = a.zeros_like();
    let n = batch.n_targets();
    let (sum, count) = forward_backward_host(model, a, &mut grads, &mut arena, batch, 1.0 / n as f32, 5).unwrap();
    assert_eq!(count, n);
    (sum / n as f64, grads)
}

fn flat(a: &Adapter) -> Vec<f32> {
    let mut v = Vec::new();
    a.for_each_tensor(|_, t| v.extend_from_slice(t));
    v
}

#[test]
fn whole_model_gradients_match_finite_differences() {
    let model = tiny_model(21);
    let config =
        LoraConfig { r: 4, lora_alpha: 8.0, train_embed_tokens: true, train_lm_head: true, ..Default::default() };
    let a = adapter(&model, config);
    assert!(a.lm_head.is_none(), "a tied model trains one shared matrix");
    let batch = random_batch(48, 2, 9, 1);
    let (l0, grads) = gradients(&model, &a, &batch, false);
    assert!((l0 - mean_loss(&model, &a, &batch)).abs() < 1e-6);

    // Central differences on a sample of entries of every tensor, in f32 with a step that keeps rounding small.
    let eps = 1e-2f32;
    let mut rng = SplitMix64::new(8);
    let mut names = Vec::new();
    a.for_each_tensor(|name, t| names.push((name, t.len())));
    let (mut num, mut ana) = (Vec::new(), Vec::new());
    for (name, len) in names {
        for _ in 0..4 {
            let i = (rng.next_u64() % len as u64) as usize;
            let probe = |delta: f32| {
                let mut p = a.clone();
                p.for_each_tensor_mut(|n, t| {
                    if n == name {
                        t[i] += delta;
                    }
                });
                mean_loss(&model, &p, &batch)
            };
            num.push(((probe(eps) - probe(-eps)) / (2.0 * eps as f64)) as f32);
            let mut g = 0.0;
            grads.for_each_tensor(|n, t| {
                if n == name {
                    g = t[i];
                }
            });
            ana.push(g);
        }
    }
    let diff: f32 = num.iter().zip(&ana).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
    let norm: f32 = num.iter().map(|a| a * a).sum::<f32>().sqrt();
    eprintln!("relative error {:.2e} over {} entries (|g| = {norm:.3})", diff / norm, num.len());
    assert!(norm > 1e-3, "gradients vanished");
    assert!(diff / norm < 1e-2, "analytic vs numeric gradient: relative error {}", diff / norm);
}

#[test]
fn checkpointing_and_micro_batches_give_the_same_gradients() {
    let model = tiny_model(22);
    let config = LoraConfig { r: 4, lora_alpha: 8.0, use_rslora: true, ..Default::default() };
    let a = adapter(&model, config);
    let full = random_batch(48, 2, 10, 2);
    let (l_full, g_full) = gradients(&model, &a, &full, false);
    let (l_ckpt, g_ckpt) = gradients(&model, &a, &full, true);
    assert_eq!(l_full, l_ckpt);
    assert_eq!(flat(&g_full), flat(&g_ckpt), "checkpointing changed the gradients");

    // The same two rows as two micro-batches of one, each scaled by 1 / (targets of the whole step).
    let n = full.n_targets();
    let mut grads = a.zeros_like();
    let mut total = 0.0;
    for r in 0..2 {
        let mut one = full.clone();
        one.b = 1;
        one.input_ids = full.input_ids[r * 10..(r + 1) * 10].to_vec();
        one.targets = full.targets[r * 10..(r + 1) * 10].to_vec();
        one.positions = full.positions[r * 10..(r + 1) * 10].to_vec();
        let mut arena = TrainArena::new(&Cpu, &model.config, &a.config, 1, 10, false).unwrap();
        total += forward_backward_host(&model, &a, &mut grads, &mut arena, &one, 1.0 / n as f32, 5).unwrap().0;
    }
    assert!((total / n as f64 - l_full).abs() < 1e-6);
    let (x, y) = (flat(&grads), flat(&g_full));
    // Equal up to f32 summation order: relative L2 difference.
    let diff: f32 = x.iter().zip(&y).map(|(p, q)| (p - q) * (p - q)).sum::<f32>().sqrt();
    let norm: f32 = y.iter().map(|q| q * q).sum::<f32>().sqrt();
    assert!(diff / norm < 1e-5, "micro-batching changed the gradients by {} (relative)", diff / norm);
}

#[test]
fn training_loss_equals_evaluation_loss_on_the_default_model() {
    let path = common::default_model();
    let file = gguf::GgufFile::open(&path).unwrap();
    for keep_quantized in [false, true] {
        let model = llama_from_gguf_with(&file, keep_quantized).unwrap();
        let ids: Vec<u32> = common::reference()["apache_2_0_text"]["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .take(128)
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let nll = model.next_token_nll(&ids).unwrap();
        let eval = nll.iter().sum::<f64>() / nll.len() as f64;
        let a = Adapter::new(LoraConfig::default(), &model, 1).unwrap();
        let labels: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let b = Batch::from_rows(std::slice::from_ref(&ids), &[labels]);
        let mut grads = a.zeros_like();
        let mut arena = TrainArena::new(&Cpu, &model.config, &a.config, 1, ids.len(), true).unwrap();
        let (sum, n) = forward_backward_host(&model, &a, &mut grads, &mut arena, &b, 1.0 / 127.0, 0).unwrap();
        let train = sum / n as f64;
        eprintln!("keep_quantized={keep_quantized}: train {train:.6} eval {eval:.6}");
        assert_eq!(n, 127);
        assert!((train - eval).abs() < 1e-4, "train {train} vs eval {eval}");
        // With B = 0 only the B matrices get gradients, and layer 0's reach it.
        let mut layer0_b = 0.0f32;
        grads.for_each_tensor(|name, t| {
            if let TensorName::LoraB(0, _) = name {
                layer0_b += t.iter().map(|v| v * v).sum::<f32>();
            }
        });
        assert!(layer0_b > 0.0, "no gradient reached layer 0");
    }
}
