//! Tensors of a Hugging Face folder: one `model.safetensors`, or shards listed in `model.safetensors.index.json`.
//! Files are memory-mapped; F32, F16 and BF16 tensors are converted to f32 when asked for.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::model::weights::TensorSource;

struct Shard {
    path: PathBuf,
    mmap: memmap2::Mmap,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    meta: Metadata,
}

pub struct SafetensorsSource {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// tensor name → index into `shards`
    index: HashMap<String, usize>,
}

impl SafetensorsSource {
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&index_path, format!("invalid JSON: {e}")))?;
            let map = json["weight_map"]
                .as_object()
                .ok_or_else(|| Error::format(&index_path, "missing object 'weight_map'"))?;
            let mut files: Vec<PathBuf> = Vec::new();
            for (name, file) in map {
                let file = file
                    .as_str()
                    .ok_or_else(|| Error::format(&index_path, format!("weight_map['{name}'] is not a file name")))?;
                if file.contains('/') || file.contains("..") {
                    return Err(Error::format(
                        &index_path,
                        format!("weight_map['{name}'] = '{file}' leaves the folder"),
                    ));
                }
                let p = dir.join(file);
                if !files.contains(&p) {
                    files.push(p);
                }
            }
            files
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::hinted(
                format!("{}: no model.safetensors or model.safetensors.index.json", dir.display()),
                "a Hugging Face model folder holds config.json, tokenizer.json and safetensors weights",
            ));
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the map is read-only; a file changed underneath would give wrong numbers, not memory unsafety
            // in Rust's sense beyond what every mmap-based loader accepts.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e}")))?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(Shard { path, mmap, data_start: 8 + header_len, meta });
        }
        Ok(SafetensorsSource { dir: dir.to_path_buf(), shards, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }
}

impl TensorSource for SafetensorsSource {
    fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some(&i) = self.index.get(name) else { return Ok(None) };
        let shard = &self.shards[i];
        let info =
            shard.meta.info(name).ok_or_else(|| Error::format(&shard.path, format!("tensor '{name}' vanished")))?;
        let (start, end) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + start..shard.data_start + end];
        let data = decode_floats(info.dtype, bytes).ok_or_else(|| {
            Error::format(
                &shard.path,
                format!("tensor '{name}' has dtype {:?}; loft reads F32, F16 and BF16 here", info.dtype),
            )
        })?;
        Ok(Some((info.shape.clone(), data)))
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// F32, F16 or BF16 little-endian bytes as f32 values; None for any other dtype.
pub fn decode_floats(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => return None,
    })
}
