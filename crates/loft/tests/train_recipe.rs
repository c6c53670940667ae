//! The training recipe: batch × accumulation equivalence, determinism, evaluation, checkpoints, init adapters,
//! divergence and the output folder rules. All of it is plumbing, the same whatever the weights, so it runs on a
//! tiny Llama with the default model's byte-level BPE cut down (common::tiny_bpe_model) rather than on the 135M
//! model. (Resume after SIGKILL and TensorBoard are checked through the CLI in loft-cli's tests/train.rs; the
//! memory estimate, which needs the real model's shapes, there too.)
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{adapter_tensors, relative_l2};
use loft::train::{train, Quiet, RunConfig, TrainConfig, TrainOptions};

/// Alpaca records of varied lengths (so padded micro-batches differ in length).
fn write_alpaca(dir: &Path, n: usize) -> PathBuf {
    let topics = ["the sea", "a mountain", "bread", "a small red fox", "rain on a tin roof", "the number seven"];
    let mut text = String::new();
    for i in 0..n {
        let topic = topics[i % topics.len()];
        let words = "and then it was quiet ".repeat(i % 4);
        let rec = serde_json::json!({
            "instruction": format!("Write one sentence about {topic}."),
            "input": "",
            "output": format!("Here is a sentence about {topic}: it is lovely {words}today."),
        });
        text.push_str(&format!("{rec}\n"));
    }
    let p = dir.join("data.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn config(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> RunConfig {
    let base = format!(
        "[model]\npath = {:?}\nmax_seq_length = 64\n\
         [lora]\nr = 8\nlora_alpha = 16\n\
         [data]\ntrain_files = [{:?}]\nformat = \"alpaca\"\n\
         [train]\noutput_dir = {:?}\nlearning_rate = 1e-3\nwarmup_steps = 0\nlogging_steps = 1\nseed = 7\n",
        model.display().to_string(),
        data.display().to_string(),
        out.display().to_string()
    );
    let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    TrainConfig::parse(&base, &sets).unwrap().resolve().unwrap()
}

fn losses(out: &Path, key: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["step"].as_u64()?, v.get(key)?.as_f64()?))
        })
        .collect()
}

#[test]
fn batch_times_accumulation_gives_the_same_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bpe_model(tmp.path());
    let data = write_alpaca(tmp.path(), 8);
    let mut runs = Vec::new();
    for (b, a) in [(4, 1), (2, 2), (1, 4)] {
        let out = tmp.path().join(format!("run-{b}x{a}"));
        let cfg = config(
            &model,
            &data,
            &out,
            &[
                &format!("train.per_device_train_batch_size={b}"),
                &format!("train.gradient_accumulation_steps={a}"),
                "train.max_steps=3",
            ],
        );
        let summary = train(&cfg, &TrainOptions::default(), &mut Quiet).unwrap();
        assert_eq!(summary.steps, 3);
        runs.push((losses(&out, "loss"), adapter_tensors(&out.join("adapter"))));
    }
    let (ref_losses, ref_adapter) = &runs[0];
    assert_eq!(ref_losses.len(), 3);
    for (l, a) in &runs[1..] {
        for ((s1, x), (s2, y)) in l.iter().zip(ref_losses) {
            assert_eq!(s1, s2);
            assert!(((x - y) / y).abs() <= 1e-4, "step {s1}: loss {x} vs {y}");
        }
        let rel = relative_l2(a, ref_adapter);
        assert!(rel <= 1e-3, "adapter differs by {rel:e} (relative L2)");
    }
    // The adapter moved: B is no longer zero.
    let b_norm: f64 =
        ref_adapter.iter().filter(|(n, _)| n.contains("lora_B")).flat_map(|(_, t)| t).map(|&x| (x as f64).abs()).sum();
    assert!(b_norm > 0.0);
}

#[test]
fn same_seed_same_bytes_and_validation_loss_falls() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bpe_model(tmp.path());
    let data = write_alpaca(tmp.path(), 12);
    let run = |name: &str| {
        let out = tmp.path().join(name);
        let cfg = config(
            &model,
            &data,
            &out,
            &[
                "train.per_device_train_batch_size=2",
                "train.gradient_accumulation_steps=2",
                "train.num_train_epochs=3",
                "data.validation_split=0.25",
                "train.eval_steps=2",
                "lora.lora_dropout=0.1",
                "train.optim=adamw_8bit",
                "train.lr_scheduler_type=cosine",
                "train.warmup_ratio=0.2",
            ],
        );
        train(&cfg, &TrainOptions::default(), &mut Quiet).unwrap();
        out
    };
    let (a, b) = (run("a"), run("b"));
    let bytes = |o: &PathBuf| std::fs::read(o.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(bytes(&a) == bytes(&b), "same seed, different adapter bytes");
    let evals = losses(&a, "eval_loss");
    // 9 train examples → 5 micro-batches of 2 → 3 steps per epoch → 9 steps; eval before the first step, at 2, 4,
    // 6, 8 and at the end.
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 2, 4, 6, 8, 9]);
    assert!(evals[5].1 < evals[0].1, "validation loss did not fall: {evals:?}");
}

#[test]
fn output_dir_rules_and_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bpe_model(tmp.path());
    let data = write_alpaca(tmp.path(), 8);
    let out = tmp.path().join("run");
    let cfg = config(
        &model,
        &data,
        &out,
        &["train.per_device_train_batch_size=2", "train.max_steps=5", "train.save_steps=2", "train.save_total_limit=1"],
    );
    train(&cfg, &TrainOptions::default(), &mut Quiet).unwrap();
    let ckpts = loft::train::checkpoint::list_checkpoints(&out).unwrap();
    assert_eq!(ckpts.iter().map(|c| c.0).collect::<Vec<_>>(), vec![4], "save_total_limit = 1 keeps the newest");
    assert!(out.join("adapter/adapter_config.json").is_file());

    // A second run into the same folder is refused, with a hint.
    let e = train(&cfg, &TrainOptions::default(), &mut Quiet).unwrap_err();
    assert!(e.to_string().contains("holds another run"), "{e}");
    assert!(e.hint().unwrap().contains("--resume"));

    // Resuming with another shape is refused, naming both.
    let other = config(
        &model,
        &data,
        &out,
        &["train.per_device_train_batch_size=1", "train.max_steps=5", "train.save_steps=2"],
    );
    let e = train(&other, &TrainOptions { resume: true, ..Default::default() }, &mut Quiet).unwrap_err();
    assert!(e.to_string().contains("belongs to another run"), "{e}");

    // Resuming the finished run from checkpoint-4 redoes step 5 and gives the same adapter.
    let before = std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    train(&cfg, &TrainOptions { resume: true, ..Default::default() }, &mut Quiet).unwrap();
    assert!(std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap() == before);
    assert_eq!(losses(&out, "loss").iter().map(|l| l.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);

    // --overwrite starts over.
    train(&cfg, &TrainOptions { overwrite: true, ..Default::default() }, &mut Quiet).unwrap();
    assert_eq!(losses(&out, "loss").len(), 5);
}

#[test]
fn bad_data_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bpe_model(tmp.path());
    let data = tmp.path().join("bad.jsonl");
    std::fs::write(&data, "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \n").unwrap();
    let cfg = config(&model, &data, &tmp.path().join("o"), &[]);
    let e = train(&cfg, &TrainOptions::default(), &mut Quiet).unwrap_err();
    assert!(e.to_string().contains("bad.jsonl:2"), "{e}");

    let data = tmp.path().join("text.jsonl");
    std::fs::write(&data, "{\"title\": \"a\", \"body\": \"b\"}\n").unwrap();
    let cfg = config(&model, &data, &tmp.path().join("o"), &["data.format=text", "data.text_template={title} {bdy}"]);
    let e = train(&cfg, &TrainOptions::default(), &mut Quiet).unwrap_err();
    assert!(e.to_string().contains("{bdy}"), "{e}");
    assert_eq!(e.hint(), Some("did you mean {body}?"));
}

#[test]
fn init_adapter_merges_or_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bpe_model(tmp.path());
    let data = write_alpaca(tmp.path(), 4);
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut sets = vec!["train.per_device_train_batch_size=4", "data.shuffle=false"];
        sets.extend_from_slice(extra);
        train(&config(&model, &data, &out, &sets), &TrainOptions::default(), &mut Quiet).unwrap();
        losses(&out, "loss")
    };
    let first = run("first", &["train.max_steps=3", "train.learning_rate=3e-3"]);
    let init = format!("lora.init_adapter={:?}", tmp.path().join("first/adapter").display().to_string());
    let merged = run("merged", &["train.max_steps=1", &init, "lora.r=4"]);
    let continued = run("continued", &["train.max_steps=1", &init, "lora.init_adapter_mode=continue"]);
    // Both start from base + the first adapter: the first forward of each sees the same model.
    let (m, c) = (merged[0].1, continued[0].1);
    assert!(((m - c) / c).abs() < 1e-4, "merge {m} vs continue {c}");
    assert!((m - first[0].1).abs() > 1e-3, "the init adapter changed nothing: {m} vs {}", first[0].1);
    // A merged start trains a new LoRA of its own rank; a continued one keeps the first adapter's.
    let r = |name: &str| {
        let text = std::fs::read_to_string(tmp.path().join(name).join("adapter/adapter_config.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["r"].as_u64().unwrap()
    };
    assert_eq!((r("merged"), r("continued")), (4, 8));
}

#[test]
fn a_diverging_run_stops_at_the_step_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bpe_model(tmp.path());
    let data = write_alpaca(tmp.path(), 4);
    let out = tmp.path().join("run");
    // An absurd learning rate: after the first update the activations overflow f32.
    let cfg = config(
        &model,
        &data,
        &out,
        &["train.per_device_train_batch_size=2", "train.max_steps=4", "train.save_steps=1", "train.learning_rate=1e30"],
    );
    let e = train(&cfg, &TrainOptions::default(), &mut Quiet).unwrap_err();
    let (msg, hint) = (e.to_string(), e.hint().unwrap_or_default().to_string());
    assert!(msg.starts_with("step 2: "), "{msg}");
    assert!(msg.contains("NaN") || msg.contains("inf"), "{msg}");
    assert!(hint.contains("checkpoint-1 is the last good checkpoint"), "{hint}");
    let ckpts = loft::train::checkpoint::list_checkpoints(&out).unwrap();
    assert_eq!(ckpts.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1]);
    assert!(!out.join("adapter").exists(), "no final adapter from a diverged run");
}
