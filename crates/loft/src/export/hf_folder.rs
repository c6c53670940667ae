//! Writing a Hugging Face model folder that transformers loads: config.json, safetensors weights (sharded past a
//! size limit, with model.safetensors.index.json), tokenizer.json, tokenizer_config.json (with the chat template)
//! and generation_config.json (with EOS). The folder is written under a temporary name and renamed at the end,
//! so it is complete or absent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

/// The element type of the written weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    BF16,
}

impl WeightDtype {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "float32" => Some(WeightDtype::F32),
            "f16" | "float16" => Some(WeightDtype::F16),
            "bf16" | "bfloat16" => Some(WeightDtype::BF16),
            _ => None,
        }
    }

    fn torch_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "float32",
            WeightDtype::F16 => "float16",
            WeightDtype::BF16 => "bfloat16",
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
            WeightDtype::BF16 => Dtype::BF16,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            WeightDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            WeightDtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            WeightDtype::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        }
    }
}

/// Shards hold at most this many bytes (transformers' default `max_shard_size` is 5 GB).
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;

/// Writes `model` and `tokenizer` as a Hugging Face folder at `out` (which must not exist).
pub fn write_hf_folder(
    out: &Path,
    model: &Llama,
    tokenizer: &Tokenizer,
    dtype: WeightDtype,
    max_shard_bytes: usize,
) -> Result<()> {
    if out.exists() {
        return Err(Error::hinted(format!("{}: already exists", out.display()), "choose a new folder or pass --force"));
    }
    let tmp = temporary_sibling(out);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = write_contents(&tmp, model, tokenizer, dtype, max_shard_bytes);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
}

fn temporary_sibling(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    out.with_file_name(format!(".{name}.partial"))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::format(path, e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

fn write_contents(
    dir: &Path,
    model: &Llama,
    tokenizer: &Tokenizer,
    dtype: WeightDtype,
    max_shard_bytes: usize,
) -> Result<()> {
    let cfg = &model.config;
    let (bos, eos) = (tokenizer.bos_id(), tokenizer.eos_id());
    write_json(&dir.join("config.json"), &cfg.to_hf_json(bos, eos, dtype.torch_name()))?;
    let mut generation = serde_json::json!({ "bos_token_id": bos, "eos_token_id": eos });
    if let Some(pad) = tokenizer.pad_id() {
        generation["pad_token_id"] = pad.into();
    }
    write_json(&dir.join("generation_config.json"), &generation)?;
    write_json(&dir.join("tokenizer.json"), &tokenizer.hf_tokenizer_json())?;
    let pad_token = tokenizer.pad_id().and_then(|id| tokenizer.id_to_token(id));
    let mut tok_cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token(),
        "eos_token": tokenizer.eos_token(),
        "pad_token": pad_token,
        "add_bos_token": tokenizer.add_bos(),
        "clean_up_tokenization_spaces": false,
        "model_max_length": cfg.max_position_embeddings,
    });
    if let Some(t) = tokenizer.chat_template() {
        tok_cfg["chat_template"] = t.into();
    }
    write_json(&dir.join("tokenizer_config.json"), &tok_cfg)?;

    // Weights, grouped into shards in checkpoint order.
    let tensors = model.weights.named_tensors();
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut shard_bytes = 0usize;
    let elem = match dtype {
        WeightDtype::F32 => 4,
        _ => 2,
    };
    for (i, t) in tensors.iter().enumerate() {
        let bytes = t.data.len() * elem;
        if shard_bytes > 0 && shard_bytes + bytes > max_shard_bytes {
            shards.push(vec![]);
            shard_bytes = 0;
        }
        shards.last_mut().expect("at least one shard").push(i);
        shard_bytes += bytes;
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    let metadata: Option<HashMap<String, String>> = Some([("format".to_string(), "pt".to_string())].into());
    for (s, members) in shards.iter().enumerate() {
        let file =
            if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", s + 1) };
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = members
            .iter()
            .map(|&i| {
                let t = &tensors[i];
                // A (1 + w) norm is held as its factor; the checkpoint stores w.
                let data: std::borrow::Cow<'_, [f32]> = match t.norm_factor {
                    true => t.data.iter().map(|v| v - 1.0).collect::<Vec<f32>>().into(),
                    false => std::borrow::Cow::Borrowed(&t.data[..]),
                };
                (t.name.clone(), t.shape.clone(), dtype.encode(&data))
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = encoded
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(dtype.safetensors(), shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Invalid(format!("tensor '{name}': {e}")))
            })
            .collect::<Result<_>>()?;
        let path = dir.join(&file);
        safetensors::tensor::serialize_to_file(views, metadata.clone(), &path)
            .map_err(|e| Error::format(&path, format!("cannot write safetensors: {e}")))?;
        for (name, _, bytes) in &encoded {
            weight_map.insert(name.clone(), file.clone().into());
            total += bytes.len();
        }
    }
    if n > 1 {
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(())
}
