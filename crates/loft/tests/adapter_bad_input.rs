//! Adapter folders that must not load: every field of `adapter_config.json` and every tensor of
//! `adapter_model.safetensors` is checked against the model before anything is allocated, and a bad one gives one
//! line naming the file and the field or tensor, with a hint. Resume (a checkpoint's adapter) and an adapter built
//! from a training config go through the same checks. The folders are built here against the tiny model of
//! tests/common/tiny.rs (hidden 32, ffn 40, 4 heads of 8, 2 key/value heads: k_proj and v_proj are [16, 32]).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::path::Path;

use common::tiny::{random_weights, write_gguf, TinyConfig};
use loft::lora::peft::{load_peft_adapter, CONFIG_FILE, WEIGHTS_FILE};
use loft::lora::{Adapter, LoraConfig, TargetModule, TensorName};
use loft::model::{llama_from_gguf, Llama};
use loft::train::checkpoint::{load_checkpoint, COMPLETE_MARKER, STATE_FILE};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

fn tiny_model(dir: &Path) -> Llama {
    let cfg = TinyConfig::default();
    let path = dir.join("tiny.gguf");
    write_gguf(&path, &cfg, &random_weights(&cfg, 5));
    llama_from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap()
}

/// adapter_config.json as PEFT writes it, LoRA of rank `r` on all seven modules.
fn peft_config(r: usize) -> Value {
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.0,
        "use_rslora": false,
        "target_modules": TargetModule::ALL.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "modules_to_save": null,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_dora": false,
        "rank_pattern": {},
        "alpha_pattern": {},
    })
}

/// A tensor as stored: name, dtype, shape, little-endian bytes.
type Stored = (String, Dtype, Vec<usize>, Vec<u8>);

fn f32_tensor(name: String, shape: Vec<usize>, value: f32) -> Stored {
    let n: usize = shape.iter().product();
    (name, Dtype::F32, shape, (0..n).flat_map(|_| value.to_le_bytes()).collect())
}

/// The lora_A [r, in] and lora_B [out, r] tensors of every layer and module, with the shapes `model` needs.
fn lora_tensors(model: &Llama, r: usize) -> Vec<Stored> {
    let mut out = Vec::new();
    for l in 0..model.config.num_hidden_layers {
        for t in TargetModule::ALL {
            let (o, i) = t.shape(&model.config);
            out.push(f32_tensor(TensorName::LoraA(l, t).peft_key(), vec![r, i], 0.01));
            out.push(f32_tensor(TensorName::LoraB(l, t).peft_key(), vec![o, r], 0.02));
        }
    }
    out
}

fn write_adapter(dir: &Path, config: &Value, tensors: &[Stored]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string_pretty(config).unwrap()).unwrap();
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.join(WEIGHTS_FILE)).unwrap();
}

/// The error of loading `dir` against `model`, checked to be one line that names `file` and every one of
/// `names`, with a hint.
fn load_error(dir: &Path, model: &Llama, file: &str, names: &[&str]) -> String {
    let err = match load_peft_adapter(dir, model) {
        Ok(a) => panic!("{} loaded (r = {}); it must be refused", dir.display(), a.config.r),
        Err(e) => e,
    };
    check_error(&err, file, names)
}

fn check_error(err: &loft::Error, file: &str, names: &[&str]) -> String {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    assert!(msg.contains(file), "does not name {file}: {msg}");
    for n in names {
        assert!(msg.contains(n), "does not name '{n}': {msg}");
    }
    let hint = err.hint().unwrap_or_else(|| panic!("no hint: {msg}"));
    assert!(!hint.is_empty() && !hint.contains('\n'), "hint: {hint:?}");
    msg
}

/// The well-formed adapter of rank 4 loads; the same folder with `edit` applied to its config does not.
fn with_config_edit(dir: &Path, model: &Llama, edit: impl FnOnce(&mut Value)) {
    let mut config = peft_config(4);
    write_adapter(dir, &config, &lora_tensors(model, 4));
    let a = load_peft_adapter(dir, model).unwrap();
    assert_eq!((a.config.r, a.config.target_modules.len()), (4, 7));
    edit(&mut config);
    std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

#[test]
fn rank_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // Tensors of rank 0 agree with r = 0; the scale alpha / r would be infinite.
    let ad = dir.path().join("adapter");
    let mut config = peft_config(0);
    config["lora_alpha"] = json!(8);
    write_adapter(&ad, &config, &lora_tensors(&model, 0));
    load_error(&ad, &model, CONFIG_FILE, &["r = 0"]);
}

#[test]
fn a_huge_rank_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let ad = dir.path().join("adapter");
    // 10^9 × 32 f32 per matrix would be 128 GB: refused from the config alone, not by running out of memory.
    with_config_edit(&ad, &model, |c| c["r"] = json!(1_000_000_000u64));
    load_error(&ad, &model, CONFIG_FILE, &["r = 1000000000", "k_proj"]);
    with_config_edit(&ad, &model, |c| c["r"] = json!(u64::MAX));
    load_error(&ad, &model, CONFIG_FILE, &["r = 18446744073709551615"]);
}

#[test]
fn a_rank_above_a_targeted_modules_smaller_side_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let ad = dir.path().join("adapter");
    // k_proj is [16, 32]: r = 17 cannot be its rank, though the tensors agree with r.
    write_adapter(&ad, &peft_config(17), &lora_tensors(&model, 17));
    load_error(&ad, &model, CONFIG_FILE, &["r = 17", "k_proj", "16"]);
    // Without k_proj and v_proj, the smallest targeted module is q_proj [32, 32]: r = 17 is a valid rank.
    let mut config = peft_config(17);
    config["target_modules"] = json!(["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]);
    let only: Vec<Stored> = lora_tensors(&model, 17)
        .into_iter()
        .filter(|t| !t.0.contains(".k_proj.") && !t.0.contains(".v_proj."))
        .collect();
    write_adapter(&ad, &config, &only);
    assert_eq!(load_peft_adapter(&ad, &model).unwrap().config.r, 17);
    // r = 33 exceeds q_proj [32, 32] as well.
    config["r"] = json!(33);
    let only: Vec<Stored> = lora_tensors(&model, 33)
        .into_iter()
        .filter(|t| !t.0.contains(".k_proj.") && !t.0.contains(".v_proj."))
        .collect();
    write_adapter(&ad, &config, &only);
    load_error(&ad, &model, CONFIG_FILE, &["r = 33", "q_proj"]);
}

#[test]
fn lora_alpha_must_be_a_finite_number() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let ad = dir.path().join("adapter");
    // 1e39 is past f32's range: it would read as infinity, and so would every LoRA product.
    with_config_edit(&ad, &model, |c| c["lora_alpha"] = json!(1e39));
    load_error(&ad, &model, CONFIG_FILE, &["lora_alpha"]);
    with_config_edit(&ad, &model, |c| {
        c.as_object_mut().unwrap().remove("lora_alpha");
    });
    load_error(&ad, &model, CONFIG_FILE, &["lora_alpha"]);
    with_config_edit(&ad, &model, |c| c["lora_alpha"] = json!(null));
    load_error(&ad, &model, CONFIG_FILE, &["lora_alpha"]);
}

#[test]
fn lora_dropout_must_be_a_probability() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let ad = dir.path().join("adapter");
    for p in [1.0, 1.5, -0.1] {
        with_config_edit(&ad, &model, |c| c["lora_dropout"] = json!(p));
        load_error(&ad, &model, CONFIG_FILE, &["lora_dropout"]);
    }
}

#[test]
fn unknown_or_malformed_target_modules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let ad = dir.path().join("adapter");
    with_config_edit(&ad, &model, |c| c["target_modules"] = json!(["q_proj", "qkv_proj"]));
    load_error(&ad, &model, CONFIG_FILE, &["target_modules", "qkv_proj"]);
    // A non-string entry was dropped silently, loading fewer modules than the file names.
    with_config_edit(&ad, &model, |c| c["target_modules"] = json!(["q_proj", 7]));
    load_error(&ad, &model, CONFIG_FILE, &["target_modules", "7"]);
    with_config_edit(&ad, &model, |c| c["modules_to_save"] = json!(["classifier"]));
    load_error(&ad, &model, CONFIG_FILE, &["modules_to_save", "classifier"]);
}

#[test]
fn tensors_that_disagree_with_r_or_the_model_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let ad = dir.path().join("adapter");
    let key = TensorName::LoraB(1, TargetModule::DownProj).peft_key();
    // r = 8 in the config, rank-4 tensors.
    with_config_edit(&ad, &model, |c| c["r"] = json!(8));
    let first = TensorName::LoraA(0, TargetModule::QProj).peft_key();
    load_error(&ad, &model, WEIGHTS_FILE, &[&first, "[4, 32]", "[8, 32]"]);
    // One tensor of the wrong model shape.
    let mut tensors = lora_tensors(&model, 4);
    let bad = tensors.iter_mut().find(|t| t.0 == key).unwrap();
    *bad = f32_tensor(key.clone(), vec![48, 4], 0.0);
    write_adapter(&ad, &peft_config(4), &tensors);
    load_error(&ad, &model, WEIGHTS_FILE, &[&key, "[48, 4]", "[32, 4]"]);
    // A missing tensor.
    let mut tensors = lora_tensors(&model, 4);
    tensors.retain(|t| t.0 != key);
    write_adapter(&ad, &peft_config(4), &tensors);
    load_error(&ad, &model, WEIGHTS_FILE, &[&key, "missing"]);
    // An integer tensor.
    let mut tensors = lora_tensors(&model, 4);
    let bad = tensors.iter_mut().find(|t| t.0 == key).unwrap();
    bad.1 = Dtype::I32;
    write_adapter(&ad, &peft_config(4), &tensors);
    load_error(&ad, &model, WEIGHTS_FILE, &[&key, "I32"]);
    // A NaN in a weight would make every output NaN.
    let mut tensors = lora_tensors(&model, 4);
    let bad = tensors.iter_mut().find(|t| t.0 == key).unwrap();
    bad.3[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    write_adapter(&ad, &peft_config(4), &tensors);
    load_error(&ad, &model, WEIGHTS_FILE, &[&key, "NaN"]);
}

#[test]
fn resume_refuses_a_checkpoint_whose_adapter_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let ck = dir.path().join("out/checkpoint-3");
    let mut config = peft_config(4);
    config["r"] = json!(1_000_000_000u64);
    write_adapter(&ck, &config, &lora_tensors(&model, 4));
    let state = json!({"global_step": 3, "total_steps": 10, "epoch": 0.3, "fingerprint": "x", "tokens_seen": 96});
    std::fs::write(ck.join(STATE_FILE), state.to_string()).unwrap();
    std::fs::write(ck.join(COMPLETE_MARKER), "3\n").unwrap();
    let err = match load_checkpoint(&ck, &model) {
        Ok(_) => panic!("a checkpoint with r = 10^9 loaded"),
        Err(e) => e,
    };
    let msg = check_error(&err, CONFIG_FILE, &["r = 1000000000"]);
    assert!(msg.contains("checkpoint-3"), "does not name the checkpoint: {msg}");
}

#[test]
fn a_training_config_rank_that_cannot_fit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    for r in [17, 1_000_000_000] {
        let config = LoraConfig { r, lora_alpha: 16.0, ..LoraConfig::default() };
        let err = match Adapter::new(config, &model, 1) {
            Ok(_) => panic!("Adapter::new accepted r = {r} for a model whose k_proj is [16, 32]"),
            Err(e) => e,
        };
        check_error(&err, "lora.r", &[&format!("r = {r}"), "k_proj"]);
    }
    let config = LoraConfig { lora_alpha: f32::INFINITY, ..LoraConfig::default() };
    let err = match Adapter::new(config, &model, 1) {
        Ok(_) => panic!("Adapter::new accepted lora_alpha = inf"),
        Err(e) => e,
    };
    check_error(&err, "lora.lora_alpha", &[]);
    assert_eq!(Adapter::new(LoraConfig { r: 16, ..LoraConfig::default() }, &model, 1).unwrap().config.r, 16);
}
