//! Two epochs of packed, shuffled data: each epoch packs its own order into rows, so epochs hold different
//! numbers of batches. Every step must run real tokens, every batch of every epoch must be used once, and each
//! logged loss must equal an independent f64 recount over that step's batches.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use loft::data::{pad_id, Batcher, Packing};
use loft::engine::Cpu;
use loft::lora::Adapter;
use loft::model::{LoadOptions, LoadedModel};
use loft::train::forward_backward::{loss_host, TrainArena};
use loft::train::recipe::prepare_data;
use loft::train::{train, Quiet, TrainConfig, TrainOptions};

/// Plain-text records of very different lengths, so greedy packing of each shuffled order gives another row count.
fn write_texts(path: &Path) {
    let words = ["river", "stone", "lamp", "orchard", "winter", "copper", "thread", "harbour", "meadow", "signal"];
    let mut text = String::new();
    for i in 0..23 {
        let n = 3 + (i * 11) % 29;
        let body: Vec<&str> = (0..n).map(|k| words[(i + 3 * k) % words.len()]).collect();
        text.push_str(&format!("{}\n", serde_json::json!({ "text": body.join(" ") })));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn packed_shuffled_epochs_use_every_batch_and_log_exact_losses() {
    let dir = tempfile::tempdir().unwrap();
    // Plumbing: a tiny Llama with the default model's BPE (cut) is enough.
    let model_path = common::tiny_bpe_model(dir.path());
    let data = dir.path().join("texts.jsonl");
    write_texts(&data);
    let out = dir.path().join("run");
    let toml = format!(
        "[model]\npath = {:?}\nmax_seq_length = 48\n\
         [lora]\nr = 4\nlora_alpha = 8\n\
         [data]\ntrain_files = [{:?}]\nformat = \"text\"\npacking = true\nshuffle = true\n\
         [train]\noutput_dir = {:?}\nper_device_train_batch_size = 1\ngradient_accumulation_steps = 3\n\
         num_train_epochs = 2\nlearning_rate = 1e-9\nlr_scheduler_type = \"constant\"\nlogging_steps = 1\nseed = 11\n",
        model_path.display().to_string(),
        data.display().to_string(),
        out.display().to_string()
    );
    let config = TrainConfig::parse(&toml, &[]).unwrap().resolve().unwrap();

    // The batches each epoch holds, built independently of the recipe's step plan.
    let load = LoadOptions { dequantize: true, ..LoadOptions::default() };
    let loaded = LoadedModel::load_with(model_path.to_str().unwrap(), &load).unwrap();
    let (train_set, _, _) = prepare_data(&config, &loaded.tokenizer).unwrap();
    let batcher = Batcher {
        batch_size: 1,
        max_seq_length: 48,
        packing: Packing::Packed,
        pad_id: pad_id(&loaded.tokenizer),
        seed: 11,
        shuffle: true,
    };
    let epochs: Vec<_> = (0..2).map(|e| batcher.epoch(&train_set, e)).collect();
    let counts: Vec<usize> = epochs.iter().map(Vec::len).collect();
    let steps: Vec<usize> = counts.iter().map(|c| c.div_ceil(3)).collect();
    assert!(steps.iter().any(|&s| s != steps[0]), "the epochs must pack into different step counts: {counts:?}");
    eprintln!("batches per epoch: {counts:?}");

    // Expected per-step losses: each epoch's batches in groups of 3, the model as loaded (lr 1e-9 leaves it).
    let adapter = Adapter::new(config.lora.clone(), &loaded.model, 11).unwrap();
    let mut arena = TrainArena::new(&Cpu, &loaded.model.config, &adapter.config, 1, 48, false).unwrap();
    let mut want = Vec::new();
    let mut tokens = 0u64;
    for batches in &epochs {
        for group in batches.chunks(3) {
            let (mut sum, mut n) = (0f64, 0usize);
            for b in group {
                arena.fit(&Cpu, b.b, b.t).unwrap();
                let (s, c) = loss_host(&loaded.model, &adapter, &mut arena, b).unwrap();
                sum += s;
                n += c;
                tokens += (b.b * b.t) as u64;
            }
            assert!(n > 0);
            want.push(sum / n as f64);
        }
    }

    let summary = train(&config, &TrainOptions::default(), &mut Quiet).unwrap();
    assert_eq!(summary.steps, want.len(), "steps: one per group of 3 batches in each of the 2 epochs {counts:?}");
    let logged: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect();
    assert_eq!(logged.len(), want.len());
    for (i, (got, w)) in logged.iter().zip(&want).enumerate() {
        assert!((got - w).abs() <= 1e-5 * w, "step {}: logged loss {got}, recount {w}", i + 1);
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_summary.json")).unwrap()).unwrap();
    assert_eq!(s["tokens_seen"].as_u64(), Some(tokens), "every batch of every epoch runs once");
}
