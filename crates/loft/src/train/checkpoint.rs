//! Checkpoints: `<output_dir>/checkpoint-<step>/` holds the adapter in PEFT's format, the optimizer moments
//! (`optimizer.safetensors`), the trainer state (`trainer_state.json`: step, epoch, the run's fingerprint) and
//! the resolved config (`config.toml`). Everything is written into `checkpoint-<step>.partial/`, the completion
//! marker last, and the folder is renamed only then: a checkpoint is complete or absent, and a crash or a full
//! disk while saving leaves the previous one as it was.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lora::peft::{load_peft_adapter, save_peft_adapter};
use crate::lora::Adapter;
use crate::model::Llama;
use crate::train::optim::SavedOptimizer;

/// Written last; a folder without it is not a checkpoint.
pub const COMPLETE_MARKER: &str = "checkpoint_complete";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";
pub const CONFIG_FILE: &str = "config.toml";

/// Where a run stands: enough, with the config, to continue it exactly (data order, dropout masks and the
/// schedule all derive from the seed and the step).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    /// Model, adapter and batch shape this run was started with; resuming with another is refused.
    pub fingerprint: String,
    /// Tokens processed so far (padding included).
    pub tokens_seen: u64,
}

/// Saves a checkpoint of step `state.global_step` into `output_dir`, returning its folder.
pub fn save_checkpoint(
    output_dir: &Path,
    adapter: &Adapter,
    hidden_size: usize,
    base_model: &str,
    optimizer: &SavedOptimizer,
    state: &TrainerState,
    config_toml: &str,
) -> Result<PathBuf> {
    let name = format!("checkpoint-{}", state.global_step);
    let dir = output_dir.join(&name);
    let partial = output_dir.join(format!("{name}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        save_peft_adapter(adapter, hidden_size, &partial, base_model)?;
        write_optimizer(&partial.join(OPTIMIZER_FILE), optimizer)?;
        let text = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
        write_synced(&partial.join(STATE_FILE), text.as_bytes())?;
        write_synced(&partial.join(CONFIG_FILE), config_toml.as_bytes())?;
        write_synced(&partial.join(COMPLETE_MARKER), format!("{}\n", state.global_step).as_bytes())?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::rename(&partial, &dir).map_err(|e| Error::io(&dir, e))
    })();
    if let Err(e) = result {
        // Best effort: the partial folder is never mistaken for a checkpoint, but it takes space.
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    Ok(dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

fn write_optimizer(path: &Path, optimizer: &SavedOptimizer) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = optimizer
        .tensors
        .iter()
        .map(|(name, bytes, dtype)| {
            let (dt, width) = if *dtype == "F32" { (Dtype::F32, 4) } else { (Dtype::U8, 1) };
            TensorView::new(dt, vec![bytes.len() / width], bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Invalid(format!("optimizer tensor '{name}': {e}")))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> =
        [("steps".to_string(), optimizer.steps.to_string()), ("optim".to_string(), optimizer.kind.name().to_string())]
            .into();
    // Streamed to the file (an in-memory copy of the moments would raise the run's peak), then synced.
    safetensors::tensor::serialize_to_file(views, Some(meta), path)
        .map_err(|e| Error::format(path, format!("cannot write safetensors: {e}")))?;
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// The complete checkpoints in `output_dir`, oldest first.
pub fn list_checkpoints(output_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(output_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(output_dir, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(|n| n.strip_prefix("checkpoint-")).and_then(|s| s.parse().ok()) else {
            continue;
        };
        if entry.path().join(COMPLETE_MARKER).is_file() {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes the oldest complete checkpoints beyond `limit` (0 keeps all), and leftover `.partial` folders.
pub fn prune_checkpoints(output_dir: &Path, limit: usize) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(output_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.starts_with("checkpoint-") && n.ends_with(".partial")) {
                let p = entry.path();
                std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
    }
    if limit == 0 {
        return Ok(());
    }
    let all = list_checkpoints(output_dir)?;
    for (step, dir) in all.iter().take(all.len().saturating_sub(limit)) {
        // Renamed first (atomic), then deleted: a run killed while deleting leaves a `.partial` folder, which the
        // next prune removes, never a `checkpoint-N` without its marker that nothing would clean up.
        let doomed = output_dir.join(format!("checkpoint-{step}.partial"));
        if doomed.exists() {
            std::fs::remove_dir_all(&doomed).map_err(|e| Error::io(&doomed, e))?;
        }
        std::fs::rename(dir, &doomed).map_err(|e| Error::io(dir, e))?;
        std::fs::remove_dir_all(&doomed).map_err(|e| Error::io(&doomed, e))?;
    }
    Ok(())
}

/// What a checkpoint restores.
pub struct Restored {
    pub adapter: Adapter,
    pub state: TrainerState,
    pub optimizer_tensors: Vec<(String, Vec<u8>)>,
    pub optimizer_steps: u64,
}

/// Reads a checkpoint folder written by [`save_checkpoint`] (the adapter checked against `model`).
pub fn load_checkpoint(dir: &Path, model: &Llama) -> Result<Restored> {
    if !dir.join(COMPLETE_MARKER).is_file() {
        return Err(Error::hinted(
            format!("{}: not a complete checkpoint (no {COMPLETE_MARKER})", dir.display()),
            "it was interrupted while saving; resume from an earlier checkpoint",
        ));
    }
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::format(&state_path, e.to_string()))?;
    let adapter = load_peft_adapter(dir, model)?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&opt_path).map_err(|e| Error::io(&opt_path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(&opt_path, e.to_string()))?;
    let optimizer_steps = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("steps"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::format(&opt_path, "metadata has no 'steps'"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(&opt_path, e.to_string()))?;
    let optimizer_tensors = st.tensors().into_iter().map(|(name, view)| (name, view.data().to_vec())).collect();
    Ok(Restored { adapter, state, optimizer_tensors, optimizer_steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pruning keeps the newest complete checkpoints and leaves no folder behind: leftover `.partial` folders (a
    /// save or a prune cut short) go, and the checkpoints beyond the limit are gone, not half-deleted.
    #[test]
    fn pruning_leaves_only_the_newest_complete_checkpoints() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let out = dir.path();
        for step in [2, 4, 6] {
            let c = out.join(format!("checkpoint-{step}"));
            std::fs::create_dir_all(&c).expect("mkdir");
            std::fs::write(c.join(OPTIMIZER_FILE), b"state").expect("write");
            std::fs::write(c.join(COMPLETE_MARKER), format!("{step}\n")).expect("write");
        }
        std::fs::create_dir_all(out.join("checkpoint-1.partial")).expect("mkdir");
        std::fs::create_dir_all(out.join("checkpoint-2.partial")).expect("mkdir");
        std::fs::create_dir_all(out.join("adapter")).expect("mkdir");
        prune_checkpoints(out, 2).expect("prune");
        let mut left: Vec<String> =
            std::fs::read_dir(out).expect("read_dir").flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["adapter", "checkpoint-4", "checkpoint-6"]);
    }
}
