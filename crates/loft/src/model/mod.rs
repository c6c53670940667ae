//! Loading a Llama-family model from a GGUF file, a Hugging Face folder or a hub id, together with its tokenizer
//! and chat template.

pub mod batch;
pub mod bnb;
pub mod config;
pub mod gguf_source;
pub mod hub;
pub mod llama;
pub mod safetensors_source;
pub mod unmerged;
pub mod weights;

use std::path::{Path, PathBuf};

pub use config::{Arch, LlamaConfig};
pub use llama::{KvCache, Llama, Runner};
pub use safetensors_source::MatrixStorage;
pub use unmerged::{UnmergedAdapter, UnmergedOnDevice};
pub use weights::TargetModule;

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Where a model comes from, once `--model` has been resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelPath {
    Gguf(PathBuf),
    HfFolder(PathBuf),
}

impl ModelPath {
    /// A `.gguf` file, a folder with config.json, or a hub id (downloaded first).
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_file() {
            return Ok(ModelPath::Gguf(path.to_path_buf()));
        }
        if path.is_dir() {
            if path.join("config.json").is_file() {
                return Ok(ModelPath::HfFolder(path.to_path_buf()));
            }
            return Err(Error::hinted(
                format!("{spec}: folder has no config.json"),
                "pass a Hugging Face model folder (config.json, tokenizer.json, *.safetensors) or a .gguf file",
            ));
        }
        if hub::looks_like_hub_id(spec) {
            return Ok(ModelPath::HfFolder(hub::download(spec)?));
        }
        Err(Error::hinted(
            format!("{spec}: no such file or folder"),
            "a model is a .gguf file, a Hugging Face folder, or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct",
        ))
    }

    pub fn path(&self) -> &Path {
        match self {
            ModelPath::Gguf(p) | ModelPath::HfFolder(p) => p,
        }
    }
}

/// A model ready to run: weights, tokenizer and chat template.
pub struct LoadedModel {
    pub path: ModelPath,
    pub model: Llama,
    pub tokenizer: Tokenizer,
}

/// Choices made when loading, beyond the path.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Replaces a GGUF's `tokenizer.ggml.pre` (e.g. "gpt-2" reproduces transformers' GGUF loader, which ignores
    /// the pre-tokenizer name; by default loft splits text as llama.cpp does).
    pub tokenizer_pre: Option<String>,
    /// Convert a GGUF's quantized weights, or a bitsandbytes checkpoint's 4-bit ones, to f32 at load (training
    /// on a full-precision base); by default they stay in the file's blocks.
    pub dequantize: bool,
    /// QLoRA's 4-bit base from a Hugging Face folder: a bitsandbytes checkpoint keeps its NF4 blocks, and an
    /// unquantized one has its linear layers quantized to NF4 at load ([`MatrixStorage::QLORA`]). A GGUF keeps
    /// its own blocks either way (unless `dequantize`).
    pub load_in_4bit: bool,
}

impl LoadedModel {
    pub fn load(spec: &str) -> Result<Self> {
        Self::load_with(spec, &LoadOptions::default())
    }

    pub fn load_with(spec: &str, options: &LoadOptions) -> Result<Self> {
        let path = ModelPath::resolve(spec)?;
        let (model, tokenizer) = match &path {
            ModelPath::Gguf(p) => load_gguf(p, options)?,
            ModelPath::HfFolder(p) => {
                if options.tokenizer_pre.is_some() {
                    return Err(Error::hinted(
                        format!("{}: the pre-tokenizer can only be overridden for GGUF models", p.display()),
                        "a Hugging Face folder's tokenizer.json already names its pre-tokenizer",
                    ));
                }
                let storage = if options.load_in_4bit {
                    MatrixStorage::QLORA
                } else if options.dequantize {
                    MatrixStorage::F32
                } else {
                    MatrixStorage::KeepNf4
                };
                load_hf_folder(p, storage)?
            }
        };
        Ok(LoadedModel { path, model, tokenizer })
    }
}

pub fn load_gguf(path: &Path, options: &LoadOptions) -> Result<(Llama, Tokenizer)> {
    let file = gguf::GgufFile::open(path)?;
    let tokenizer = gguf_tokenizer(&file, options.tokenizer_pre.as_deref())?;
    Ok((llama_from_gguf_with(&file, !options.dequantize)?, tokenizer))
}

/// A model's tokenizer without its weights (`loft inspect --data`, the data pipeline); `tokenizer_pre` replaces a
/// GGUF's pre-tokenizer name.
pub fn load_tokenizer(spec: &str, tokenizer_pre: Option<&str>) -> Result<Tokenizer> {
    match ModelPath::resolve(spec)? {
        ModelPath::Gguf(p) => gguf_tokenizer(&gguf::GgufFile::open(&p)?, tokenizer_pre),
        ModelPath::HfFolder(p) => folder_tokenizer(&p),
    }
}

fn gguf_tokenizer(file: &gguf::GgufFile, tokenizer_pre: Option<&str>) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_gguf_with_pre(file, tokenizer_pre)?;
    // Gemma 3's GGUF files carry no chat template: its turn format, built in.
    let gemma = file.get(gguf::names::GENERAL_ARCHITECTURE).and_then(|v| v.as_str()) == Some(gguf::names::ARCH_GEMMA3);
    if gemma && tokenizer.chat_template().is_none() {
        let source = crate::chat_template::ChatTemplate::named("gemma").expect("a built-in template");
        tokenizer.set_chat_template(source.to_string());
    }
    Ok(tokenizer)
}

fn folder_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let tokenizer_json = dir.join("tokenizer.json");
    if !tokenizer_json.is_file() {
        return Err(Error::hinted(
            format!("{}: no tokenizer.json", dir.display()),
            "loft reads the fast-tokenizer file that transformers writes with save_pretrained",
        ));
    }
    let tokenizer_config = dir.join("tokenizer_config.json");
    Ok(Tokenizer::from_hf_files(&tokenizer_json, tokenizer_config.is_file().then_some(tokenizer_config.as_path()))?)
}

/// The model of a GGUF file, without its tokenizer, its weights kept in the file's own block types.
pub fn llama_from_gguf(file: &gguf::GgufFile) -> Result<Llama> {
    llama_from_gguf_with(file, true)
}

/// The model of a GGUF file; `keep_quantized = false` converts every weight to f32 at load.
pub fn llama_from_gguf_with(file: &gguf::GgufFile, keep_quantized: bool) -> Result<Llama> {
    let rope_freqs = match file.tensor_info("rope_freqs.weight") {
        Some(_) => Some(file.dequantize("rope_freqs.weight")?),
        None => None,
    };
    let vocab_len = file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map_or(0, |a| a.len());
    let config = LlamaConfig::from_gguf(file, rope_freqs, vocab_len)?;
    let source = gguf_source::GgufSource::new(file, &config, keep_quantized);
    let weights = weights::LlamaWeights::load(&source, &config)?;
    Ok(Llama::new(config, weights))
}

/// The model and tokenizer of a Hugging Face folder, its matrices held as `storage` says.
pub fn load_hf_folder(dir: &Path, storage: MatrixStorage) -> Result<(Llama, Tokenizer)> {
    let config = LlamaConfig::from_hf_json(&dir.join("config.json"))?;
    let tokenizer = folder_tokenizer(dir)?;
    let source = safetensors_source::SafetensorsSource::open(dir)?.with_storage(storage);
    let weights = weights::LlamaWeights::load(&source, &config)?;
    Ok((Llama::new(config, weights), tokenizer))
}

/// The frozen base alone (no tokenizer), for training and benchmarks. With `keep_quantized` (QLoRA's
/// `load_in_4bit`) a GGUF keeps its own quantized blocks, a bitsandbytes checkpoint its NF4 blocks, and an
/// unquantized Hugging Face folder is quantized to NF4 at load ([`MatrixStorage::QLORA`]); without it every
/// matrix is f32.
pub fn load_base(spec: &str, keep_quantized: bool) -> Result<Llama> {
    match ModelPath::resolve(spec)? {
        ModelPath::Gguf(p) => llama_from_gguf_with(&gguf::GgufFile::open(&p)?, keep_quantized),
        ModelPath::HfFolder(p) => {
            let storage = if keep_quantized { MatrixStorage::QLORA } else { MatrixStorage::F32 };
            let config = LlamaConfig::from_hf_json(&p.join("config.json"))?;
            let source = safetensors_source::SafetensorsSource::open(&p)?.with_storage(storage);
            Ok(Llama::new(config.clone(), weights::LlamaWeights::load(&source, &config)?))
        }
    }
}
