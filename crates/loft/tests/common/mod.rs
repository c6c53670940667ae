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

pub mod tiny;
