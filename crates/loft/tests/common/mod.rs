//! Paths to the default model and the reference numbers, shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model (fetched by `scripts/fetch.sh model`; `make test` does it first). None, with a loud
/// message, when it is missing.
pub fn default_model() -> Option<PathBuf> {
    let p = std::env::var_os("LOFT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} is missing; run scripts/fetch.sh model (make test does)", p.display());
        None
    }
}

pub fn reference_dir() -> PathBuf {
    std::env::var_os("LOFT_REFERENCE_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("../shared/reference"))
}

pub fn reference() -> serde_json::Value {
    let p = reference_dir().join("smollm2-135m.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// llama.cpp's `gguf` Python package in the venv `scripts/fetch.sh gguf-py` makes (or LOFT_GGUF_PY). None, with a
/// loud message, when it is missing.
pub fn gguf_py() -> Option<PathBuf> {
    let p = std::env::var_os("LOFT_GGUF_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/venv-gguf/bin/python"));
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("SKIPPED (gguf-py part): {} is missing; run scripts/fetch.sh gguf-py (make test does)", p.display());
        None
    }
}

/// A seeded adapter whose B matrices are not zero (a fresh PEFT adapter's are), so every A gets a gradient and a
/// merge or export changes the weights.
pub fn adapter_with_nonzero_b(model: &loft::model::Llama, config: loft::lora::LoraConfig) -> loft::lora::Adapter {
    let mut a = loft::lora::Adapter::new(config, model, 11).unwrap();
    let mut rng = loft::rng::SplitMix64::new(3);
    a.for_each_tensor_mut(|name, t| {
        if matches!(name, loft::lora::TensorName::LoraB(..)) {
            t.iter_mut().for_each(|v| *v = (rng.next_f64() as f32 - 0.5) * 0.4);
        }
    });
    a
}

pub mod tiny;
