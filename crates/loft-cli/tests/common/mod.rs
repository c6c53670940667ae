//! Paths shared by the CLI's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model (fetched by `scripts/fetch.sh model`; `make test` does it first). None, with a loud
/// message, when it is missing.
pub fn default_model() -> Option<String> {
    let p = std::env::var_os("LOFT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.is_file() {
        Some(p.display().to_string())
    } else {
        eprintln!("SKIPPED: {} is missing; run scripts/fetch.sh model (make test does)", p.display());
        None
    }
}
