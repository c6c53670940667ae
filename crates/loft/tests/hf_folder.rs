//! A Hugging Face folder made from the default model (dequantized, Q/K un-permuted, safetensors + config.json +
//! tokenizer files) loads back and gives the same numbers as the GGUF; hub ids fail clearly when offline.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use loft::export::{write_hf_folder, WeightDtype};
use loft::model::{LoadedModel, ModelPath};

#[test]
fn hf_folder_from_gguf_gives_the_same_loss_and_ids() {
    let model_path = common::default_model();
    let gguf = LoadedModel::load(model_path.to_str().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-hf");
    // A small shard limit forces sharding and the index file.
    write_hf_folder(&out, &gguf.model, &gguf.tokenizer, WeightDtype::F32, 200_000_000).unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(!dir.path().join(".smollm2-hf.partial").exists());
    let tok_cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tok_cfg["eos_token"], "<|im_end|>");
    assert!(tok_cfg["chat_template"].as_str().unwrap().contains("<|im_start|>"));
    let gen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("generation_config.json")).unwrap()).unwrap();
    assert_eq!(gen["eos_token_id"], 2);

    let hf = LoadedModel::load(out.to_str().unwrap()).unwrap();
    assert!(matches!(hf.path, ModelPath::HfFolder(_)));
    assert_eq!(hf.model.config, gguf.model.config);

    let text = std::fs::read_to_string(common::reference_dir().join("apache-2.0.txt")).unwrap();
    assert_eq!(hf.tokenizer.encode(&text, false, false), gguf.tokenizer.encode(&text, false, false));

    let ids: Vec<u32> = common::reference()["apache_2_0_text"]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .take(512)
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let mean = |nll: Vec<f64>| nll.iter().sum::<f64>() / nll.len() as f64;
    let (a, b) = (mean(gguf.model.next_token_nll(&ids).unwrap()), mean(hf.model.next_token_nll(&ids).unwrap()));
    eprintln!("GGUF loss {a:.7}, HF folder loss {b:.7}");
    assert!((a - b).abs() < 1e-5, "GGUF {a} vs HF folder {b}");

    // Writing over an existing folder is refused.
    let err = write_hf_folder(&out, &gguf.model, &gguf.tokenizer, WeightDtype::F16, usize::MAX).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn an_unreachable_hub_id_fails_with_a_hint() {
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", cache.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let err = match LoadedModel::load("loft-tests/no-such-model") {
        Ok(_) => panic!("loaded a model that does not exist"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains("loft-tests/no-such-model") && msg.contains("config.json"), "{msg}");
    assert!(err.hint().unwrap_or("").contains("--model"), "{:?}", err.hint());
}

#[test]
fn a_truncated_safetensors_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("broken");
    std::fs::create_dir(&folder).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft_tiny/base");
    std::fs::copy(fixture.join("config.json"), folder.join("config.json")).unwrap();
    let bytes = std::fs::read(fixture.join("model.safetensors")).unwrap();
    std::fs::write(folder.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    let err = match loft::model::load_base(folder.to_str().unwrap(), false) {
        Ok(_) => panic!("loaded a truncated file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors file"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}
