//! Against PyTorch + PEFT: a tiny random Llama (GQA, tied embeddings) and two PEFT-written adapters, produced by
//! scripts/make_peft_fixture.py (see tests/fixtures/peft_tiny/README.md). loft reads the adapters as PEFT wrote
//! them and reproduces PEFT's loss and the gradient of every trained tensor; its own PEFT files read back equal.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::PathBuf;

use loft::data::Batch;
use loft::engine::Cpu;
use loft::lora::peft::{load_peft_adapter, save_peft_adapter};
use loft::lora::Adapter;
use loft::model::load_base;
use loft::train::forward_backward::{forward_backward_host, TrainArena};
use safetensors::SafeTensors;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft_tiny")
}

fn f32s(st: &SafeTensors, key: &str) -> Vec<f32> {
    let t = st.tensor(key).unwrap_or_else(|_| panic!("expected.safetensors has no '{key}'"));
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn batch() -> Batch {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("batch.json")).unwrap()).unwrap();
    let rows = |k: &str| -> Vec<Vec<i64>> {
        json[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect())
            .collect()
    };
    let ids: Vec<Vec<u32>> = rows("input_ids").iter().map(|r| r.iter().map(|&v| v as u32).collect()).collect();
    let labels: Vec<Vec<i32>> = rows("labels").iter().map(|r| r.iter().map(|&v| v as i32).collect()).collect();
    Batch::from_rows(&ids, &labels)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    let d: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
    let n: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    d / n.max(1e-12)
}

#[test]
fn loss_and_gradients_equal_pefts() {
    let model = load_base(fixture().join("base").to_str().unwrap(), false).unwrap();
    let bytes = std::fs::read(fixture().join("expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let batch = batch();
    let n = batch.n_targets();
    for dir in ["adapter", "adapter_rslora_embed"] {
        let adapter = load_peft_adapter(&fixture().join(dir), &model).unwrap();
        let mut grads = adapter.zeros_like();
        let mut arena = TrainArena::new(&Cpu, &model.config, &adapter.config, batch.b, batch.t, false).unwrap();
        let (sum, count) =
            forward_backward_host(&model, &adapter, &mut grads, &mut arena, &batch, 1.0 / n as f32, 0).unwrap();
        let loss = sum / count as f64;
        let want = f32s(&expected, &format!("{dir}/loss"))[0] as f64;
        eprintln!("{dir}: loss {loss:.7} vs PEFT {want:.7}");
        assert!((loss - want).abs() / want < 1e-5, "{dir}: loss {loss} vs PEFT {want}");
        let mut worst = (0.0f32, String::new());
        let mut checked = 0;
        grads.for_each_tensor(|name, g| {
            let key = name.peft_key();
            let want = f32s(&expected, &format!("{dir}/grad/{key}"));
            let e = rel_l2(g, &want);
            if e > worst.0 {
                worst = (e, key);
            }
            checked += 1;
        });
        eprintln!("{dir}: {checked} gradients, worst relative L2 error {:.2e} ({})", worst.0, worst.1);
        assert!(worst.0 < 1e-4, "{dir}: gradient of {} differs by {} (relative)", worst.1, worst.0);
        assert_eq!(checked, if dir == "adapter" { 28 } else { 30 });
    }
}

#[test]
fn peft_files_round_trip() {
    let model = load_base(fixture().join("base").to_str().unwrap(), false).unwrap();
    for dir in ["adapter", "adapter_rslora_embed"] {
        let a = load_peft_adapter(&fixture().join(dir), &model).unwrap();
        let out = tempfile::tempdir().unwrap();
        save_peft_adapter(&a, model.config.hidden_size, out.path(), "base").unwrap();
        let b = load_peft_adapter(out.path(), &model).unwrap();
        assert_eq!(a.config, b.config);
        let flat = |x: &Adapter| {
            let mut v = Vec::new();
            x.for_each_tensor(|n, t| v.push((n.peft_key(), t.to_vec())));
            v
        };
        assert_eq!(flat(&a), flat(&b), "{dir}: tensors changed in a round trip");
    }
}

#[test]
fn broken_adapters_name_the_problem() {
    let model = load_base(fixture().join("base").to_str().unwrap(), false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture().join("adapter").join(f), dir.path().join(f)).unwrap();
    }
    let cfg_path = dir.path().join("adapter_config.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();

    std::fs::write(&cfg_path, original.replace("\"q_proj\"", "\"qq_proj\"")).unwrap();
    let err = load_peft_adapter(dir.path(), &model).unwrap_err().to_string();
    assert!(err.contains("qq_proj") && err.contains("adapter_config.json"), "{err}");

    std::fs::write(&cfg_path, original.replace("\"r\": 4", "\"r\": 8")).unwrap();
    let err = load_peft_adapter(dir.path(), &model).unwrap_err().to_string();
    assert!(err.contains("has shape [4,") && err.contains("[8,"), "{err}");

    std::fs::write(&cfg_path, original.replace("\"lora_alpha\": 8,", "")).unwrap();
    let err = load_peft_adapter(dir.path(), &model).unwrap_err().to_string();
    assert!(err.contains("lora_alpha"), "{err}");
}

#[test]
fn merged_adapters_give_pefts_logits() {
    let bytes = std::fs::read(fixture().join("expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let batch = batch();
    let (b, t) = (batch.b, batch.t);
    for dir in ["base", "adapter", "adapter_rslora_embed"] {
        let mut model = load_base(fixture().join("base").to_str().unwrap(), false).unwrap();
        if dir != "base" {
            let adapter = load_peft_adapter(&fixture().join(dir), &model).unwrap();
            loft::lora::merge::merge_adapter(&mut model, &adapter).unwrap();
        }
        let want = f32s(&expected, &format!("{dir}/logits"));
        let mut got = Vec::new();
        for row in 0..b {
            let ids = &batch.input_ids[row * t..(row + 1) * t];
            let mut cache = loft::model::KvCache::new(&model.config, t);
            let hidden = model.forward(ids, &mut cache).unwrap();
            got.extend(model.logits(&hidden));
        }
        let e = rel_l2(&got, &want);
        eprintln!("{dir}: logits relative L2 error {e:.2e}");
        assert!(e < 1e-5, "{dir}: logits differ from PEFT's by {e}");
    }
}
