//! Tensors of a Hugging Face folder: one `model.safetensors`, or shards listed in `model.safetensors.index.json`.
//! Files are memory-mapped; F32, F16 and BF16 tensors are converted to f32 when asked for, and a bitsandbytes
//! 4-bit weight (see [`crate::model::bnb`]) is read as NF4 blocks, kept or dequantized as [`MatrixStorage`] says.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::engine::nf4::{Nf4Blocks, Nf4Dtype, BLOCKSIZE};
use crate::engine::FrozenMatrix;
use crate::error::{Error, Result};
use crate::model::bnb;
use crate::model::weights::{check_shape, TensorSource};

struct Shard {
    path: PathBuf,
    mmap: memmap2::Mmap,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    meta: Metadata,
}

/// How weight matrices are held once read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatrixStorage {
    /// f32 throughout: a bitsandbytes checkpoint's 4-bit weights are dequantized (as bitsandbytes does).
    #[default]
    F32,
    /// A bitsandbytes checkpoint's 4-bit weights stay NF4; every other matrix is f32 (inference).
    KeepNf4,
    /// QLoRA's 4-bit base: a bitsandbytes checkpoint's weights stay NF4; in an unquantized checkpoint the seven
    /// linear layers of each block are quantized to NF4 at load as bitsandbytes does (blocks of 64, double
    /// quantization of the scales when `double_quant`). Embeddings and head are not (bitsandbytes leaves them
    /// too) and keep a 16-bit checkpoint's own type.
    Nf4 { double_quant: bool },
}

impl MatrixStorage {
    /// What `load_in_4bit` means for a Hugging Face folder: NF4 with double quantization, the QLoRA paper's
    /// choice and what Unsloth's loader and its `*-bnb-4bit` uploads use (`bnb_4bit_use_double_quant=True`):
    /// about 0.4 bits per weight less than f32 scales, for no measurable loss.
    pub const QLORA: MatrixStorage = MatrixStorage::Nf4 { double_quant: true };
}

pub struct SafetensorsSource {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// tensor name → index into `shards`
    index: HashMap<String, usize>,
    /// config.json names a bitsandbytes 4-bit quantization.
    bnb_checkpoint: bool,
    storage: MatrixStorage,
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
        let bnb_checkpoint = bnb::read_quantization_config(&dir.join("config.json"))?;
        Ok(SafetensorsSource { dir: dir.to_path_buf(), shards, index, bnb_checkpoint, storage: MatrixStorage::F32 })
    }

    /// The same source, holding matrices as `storage` says.
    pub fn with_storage(mut self, storage: MatrixStorage) -> Self {
        self.storage = storage;
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    /// True when config.json describes a bitsandbytes 4-bit checkpoint.
    pub fn is_bnb_checkpoint(&self) -> bool {
        self.bnb_checkpoint
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A tensor's dtype, shape and little-endian bytes as stored.
    pub fn raw(&self, name: &str) -> Option<(Dtype, &[usize], &[u8])> {
        let shard = &self.shards[*self.index.get(name)?];
        let info = shard.meta.info(name)?;
        let (start, end) = info.data_offsets;
        Some((info.dtype, &info.shape, &shard.mmap[shard.data_start + start..shard.data_start + end]))
    }
}

/// The seven linear layers of a block, which QLoRA stores in 4 bits (bitsandbytes converts every nn.Linear but
/// the head).
fn is_block_linear(hf_name: &str) -> bool {
    hf_name.starts_with("model.layers.")
        && crate::model::TargetModule::ALL.iter().any(|m| hf_name.ends_with(&format!(".{}.weight", m.name())))
}

impl TensorSource for SafetensorsSource {
    fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        if let Some((shape, blocks)) = bnb::read_nf4(self, name)? {
            let mut data = vec![0.0f32; blocks.len];
            blocks.dequantize(0, &mut data);
            return Ok(Some((shape, data)));
        }
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

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Option<FrozenMatrix>> {
        if let Some((shape, blocks)) = bnb::read_nf4(self, name)? {
            check_shape(self, name, &shape, &[rows, cols])?;
            let m = FrozenMatrix::from_nf4(rows, cols, blocks).ok_or_else(|| {
                Error::Invalid(format!("{}: tensor '{name}' does not fit [{rows}, {cols}]", self.describe()))
            })?;
            return Ok(Some(if self.storage == MatrixStorage::F32 { m.to_f32_matrix() } else { m }));
        }
        let Some((dtype, shape, bytes)) = self.raw(name) else { return Ok(None) };
        check_shape(self, name, shape, &[rows, cols])?;
        let MatrixStorage::Nf4 { double_quant } = self.storage else {
            return Ok(self.tensor(name)?.map(|(_, data)| FrozenMatrix::from_f32(rows, cols, data)));
        };
        let ggml_16 = match dtype {
            Dtype::F16 => Some(gguf::GgmlType::F16),
            Dtype::BF16 => Some(gguf::GgmlType::BF16),
            _ => None,
        };
        if !self.bnb_checkpoint && is_block_linear(name) {
            let data = self.tensor(name)?.map(|(_, d)| d).unwrap_or_default();
            let nf4_dtype = match dtype {
                Dtype::F16 => Nf4Dtype::F16,
                Dtype::BF16 => Nf4Dtype::BF16,
                _ => Nf4Dtype::F32,
            };
            let blocks = Nf4Blocks::quantize(&data, BLOCKSIZE, double_quant, nf4_dtype);
            return Ok(FrozenMatrix::from_nf4(rows, cols, blocks));
        }
        if let Some(t) = ggml_16 {
            // 16-bit values are kept as they are: half the memory of f32, nothing lost.
            return Ok(FrozenMatrix::from_quantized(rows, cols, t, bytes.to_vec()));
        }
        Ok(self.tensor(name)?.map(|(_, data)| FrozenMatrix::from_f32(rows, cols, data)))
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
