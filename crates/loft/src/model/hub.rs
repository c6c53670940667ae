//! Hugging Face hub ids (`owner/name`): download the files loft needs into the hub cache (`HF_HOME`, as Python's
//! huggingface_hub uses), then load the folder like any other.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// True for strings that look like a hub id rather than a path: `owner/name`, no further slashes, not on disk.
pub fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        && !spec.starts_with('.')
        && !std::path::Path::new(spec).exists()
}

/// Downloads config.json, tokenizer files and the safetensors weights of `repo_id`; returns the snapshot folder.
pub fn download(repo_id: &str) -> Result<PathBuf> {
    let offline_hint = "no network? download the model elsewhere and pass its folder or .gguf file to --model \
                        (or set HF_HOME to a cache that already holds it)";
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| Error::caused(format!("{repo_id}: cannot start the hub client"), e).with_hint(offline_hint))?;
    let repo = api.model(repo_id.to_string());
    let fetch = |file: &str| {
        repo.get(file).map_err(|e| {
            Error::caused(format!("{repo_id}: cannot download '{file}' from the Hugging Face hub"), e)
                .with_hint(offline_hint)
        })
    };
    let config = fetch("config.json")?;
    fetch("tokenizer.json")?;
    let _ = fetch("tokenizer_config.json");
    let _ = fetch("generation_config.json");
    match fetch("model.safetensors.index.json") {
        Ok(index_path) => {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&index_path, format!("invalid JSON: {e}")))?;
            let mut files: Vec<String> = json["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            files.sort();
            files.dedup();
            for f in files {
                fetch(&f)?;
            }
        }
        Err(_) => {
            fetch("model.safetensors")?;
        }
    }
    Ok(config.parent().map(PathBuf::from).unwrap_or_default())
}
