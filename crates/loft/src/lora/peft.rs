//! PEFT's adapter format: `adapter_config.json` + `adapter_model.safetensors`, keys as PEFT writes them
//! (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, and for modules trained in full
//! `base_model.model.model.embed_tokens.weight` / `base_model.model.lm_head.weight`), in Hugging Face layout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::engine::LoraWeights;
use crate::error::{Error, Result};
use crate::lora::{Adapter, LoraConfig, TargetModule, TensorName};
use crate::model::safetensors_source::decode_floats;
use crate::model::Llama;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The fields of `adapter_config.json` loft reads and writes (PEFT writes many more; unknown ones are kept out).
#[derive(Debug, Deserialize, Serialize)]
struct PeftConfigFile {
    peft_type: Option<String>,
    r: Option<usize>,
    lora_alpha: Option<f32>,
    #[serde(default)]
    lora_dropout: f32,
    #[serde(default)]
    use_rslora: bool,
    target_modules: Option<serde_json::Value>,
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: HashMap<String, serde_json::Value>,
    layers_to_transform: Option<serde_json::Value>,
    bias: Option<String>,
}

/// Reads a PEFT LoRA adapter for `model`. Every field of the config is checked against the model before anything
/// is allocated (r against the adapted modules' shapes, see [`LoraConfig::check`]), and every tensor's shape,
/// dtype and values before it is used; a bad one is an error naming the file and the field or tensor.
pub fn load_peft_adapter(dir: &Path, model: &Llama) -> Result<Adapter> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        let missing = e.kind() == std::io::ErrorKind::NotFound;
        let e = Error::io(&config_path, e);
        if missing {
            e.with_hint(format!(
                "an adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE}, as PEFT and `loft train` write them \
                 (a run's adapter/ or checkpoint-N/)"
            ))
        } else {
            e
        }
    })?;
    let bad = |message: String, hint: &str| Err(Error::hinted(format!("{}: {message}", config_path.display()), hint));
    let raw: PeftConfigFile = match serde_json::from_str(&text) {
        Ok(raw) => raw,
        Err(e) => return bad(format!("invalid JSON: {e}"), "PEFT writes this file with save_pretrained"),
    };
    match raw.peft_type.as_deref() {
        Some("LORA") => {}
        Some(other) => return bad(format!("peft_type is '{other}'"), "loft reads LORA adapters"),
        None => return bad("missing key 'peft_type'".into(), "PEFT writes \"peft_type\": \"LORA\""),
    }
    let Some(r) = raw.r else { return bad("missing key 'r'".into(), "r is the adapter rank, e.g. \"r\": 16") };
    let Some(lora_alpha) = raw.lora_alpha else {
        return bad("missing key 'lora_alpha'".into(), "lora_alpha scales the update by lora_alpha / r, e.g. 32");
    };
    if raw.use_dora || raw.fan_in_fan_out || !raw.rank_pattern.is_empty() || !raw.alpha_pattern.is_empty() {
        return bad(
            "DoRA, fan_in_fan_out, rank_pattern and alpha_pattern are not supported".into(),
            "loft reads plain LoRA with one r and one lora_alpha for all modules",
        );
    }
    if raw.layers_to_transform.as_ref().is_some_and(|v| !v.is_null())
        || raw.bias.as_deref().is_some_and(|b| b != "none")
    {
        return bad(
            "layers_to_transform and LoRA biases are not supported".into(),
            "loft reads LoRA on every layer, with bias \"none\"",
        );
    }
    let valid: Vec<&str> = TargetModule::ALL.iter().map(|t| t.name()).collect();
    let valid = format!("valid modules: {}", valid.join(", "));
    let names: Vec<String> = match &raw.target_modules {
        Some(serde_json::Value::Array(a)) => {
            let mut names = Vec::with_capacity(a.len());
            for v in a {
                match v.as_str() {
                    Some(n) => names.push(n.to_string()),
                    None => return bad(format!("target_modules holds {v}, not a module name"), &valid),
                }
            }
            names
        }
        Some(serde_json::Value::String(s)) => {
            return bad(format!("target_modules is a pattern ('{s}'); loft reads a list of module names"), &valid)
        }
        _ => return bad("missing key 'target_modules'".into(), &valid),
    };
    let target_modules = match LoraConfig::parse_targets(&names) {
        Ok(t) => t,
        Err(e) => return bad(format!("target_modules: {e}"), &valid),
    };
    let modules_to_save = raw.modules_to_save.unwrap_or_default();
    for m in &modules_to_save {
        if !matches!(m.as_str(), "embed_tokens" | "lm_head" | "model.embed_tokens") {
            return bad(format!("modules_to_save holds '{m}'"), "loft trains embed_tokens and lm_head in full");
        }
    }
    let config = LoraConfig {
        r,
        lora_alpha,
        lora_dropout: raw.lora_dropout,
        use_rslora: raw.use_rslora,
        target_modules,
        train_embed_tokens: modules_to_save.iter().any(|m| m.ends_with("embed_tokens")),
        train_lm_head: modules_to_save.iter().any(|m| m == "lm_head"),
    };
    let cfg = &model.config;
    if let Err(p) = config.check(cfg) {
        return bad(p.message, &p.hint);
    }

    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(|e| Error::io(&weights_path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::hinted(
            format!("{}: not a valid safetensors file: {e}", weights_path.display()),
            "the file is truncated or was not written by safetensors; save the adapter again",
        )
    })?;
    let tensor_error = |key: &str, message: String, hint: &str| {
        Error::hinted(format!("{}: tensor '{key}' {message}", weights_path.display()), hint)
    };
    // The tensor `key` of `shape` (decoded to f32 only once its shape is right), or None when absent.
    let read = |key: &str, shape: &[usize]| -> Result<Option<Vec<f32>>> {
        let Ok(view) = st.tensor(key) else { return Ok(None) };
        if view.shape() != shape {
            return Err(tensor_error(
                key,
                format!("has shape {:?}, the model needs {shape:?} (r = {r})", view.shape()),
                "the adapter was trained for another model, or adapter_config.json's r does not match its tensors",
            ));
        }
        let data = decode_floats(view.dtype(), view.data()).ok_or_else(|| {
            tensor_error(key, format!("has dtype {:?}", view.dtype()), "loft reads F32, F16 and BF16 adapters")
        })?;
        if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(tensor_error(
                key,
                format!("holds {v} at index {i}"),
                "the run that saved it diverged; use an earlier checkpoint or a lower learning rate",
            ));
        }
        Ok(Some(data))
    };
    let missing = |k: &str, why: &str| tensor_error(k, "is missing".into(), why);
    let scale = config.scale();
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    let mut used = 0usize;
    for l in 0..cfg.num_hidden_layers {
        let mut mods: [Option<LoraWeights>; 7] = Default::default();
        for &t in &config.target_modules {
            let (o, i) = t.shape(cfg);
            let (ka, kb) = (TensorName::LoraA(l, t).peft_key(), TensorName::LoraB(l, t).peft_key());
            let why = "target_modules names this module; the adapter has fewer layers or modules than the model";
            let a = read(&ka, &[r, i])?.ok_or_else(|| missing(&ka, why))?;
            let b = read(&kb, &[o, r])?.ok_or_else(|| missing(&kb, why))?;
            used += 2;
            mods[t.index()] = Some(LoraWeights { a, b, r, in_features: i, out_features: o, scale });
        }
        layers.push(mods);
    }
    let (v, c) = (cfg.vocab_size, cfg.hidden_size);
    let embed_tokens = if config.train_embed_tokens {
        used += 1;
        let key = TensorName::EmbedTokens.peft_key();
        Some(read(&key, &[v, c])?.ok_or_else(|| missing(&key, "modules_to_save names embed_tokens"))?)
    } else {
        None
    };
    // PEFT keeps its own copy of a trained lm_head even when the base ties it to the embedding.
    let lm_head = if config.train_lm_head {
        used += 1;
        let key = TensorName::LmHead.peft_key();
        Some(read(&key, &[v, c])?.ok_or_else(|| missing(&key, "modules_to_save names lm_head"))?)
    } else {
        None
    };
    if st.len() > used {
        let pairs = (0..cfg.num_hidden_layers).flat_map(|l| {
            config.target_modules.iter().flat_map(move |&t| [TensorName::LoraA(l, t), TensorName::LoraB(l, t)])
        });
        let known: Vec<String> =
            pairs.chain([TensorName::EmbedTokens, TensorName::LmHead]).map(TensorName::peft_key).collect();
        if let Some(extra) = st.names().into_iter().find(|n| !known.iter().any(|k| k == *n)) {
            return Err(Error::hinted(
                format!("{}: tensor '{extra}' is not part of a LoRA adapter loft understands", weights_path.display()),
                "is this adapter for another architecture, or does it use layers_to_transform?",
            ));
        }
    }
    Ok(Adapter { config, layers, embed_tokens, lm_head })
}

/// Writes `adapter` (of a model with `hidden_size` channels) in PEFT's format into `dir` (created if needed);
/// `base_model` goes to base_model_name_or_path.
/// Both files are written under temporary names and renamed, so each is complete or absent.
/// An f32 tensor borrowed for writing: safetensors stores little-endian bytes, which on a little-endian machine
/// are the buffer itself.
#[derive(Clone)]
struct F32Tensor<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl safetensors::View for F32Tensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            // SAFETY: any f32 is 4 initialised bytes; u8 has alignment 1; the length covers the same memory.
            std::borrow::Cow::Borrowed(unsafe {
                std::slice::from_raw_parts(self.data.as_ptr().cast::<u8>(), std::mem::size_of_val(self.data))
            })
        } else {
            std::borrow::Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        std::mem::size_of_val(self.data)
    }
}

pub fn save_peft_adapter(adapter: &Adapter, hidden_size: usize, dir: &Path, base_model: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let c = &adapter.config;
    let mut modules_to_save = Vec::new();
    if adapter.embed_tokens.is_some() {
        modules_to_save.push("embed_tokens");
    }
    if adapter.lm_head.is_some() || (c.train_lm_head && adapter.embed_tokens.is_some()) {
        modules_to_save.push("lm_head");
    }
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": c.r,
        "lora_alpha": c.lora_alpha,
        "lora_dropout": c.lora_dropout,
        "use_rslora": c.use_rslora,
        "target_modules": c.target_modules.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "modules_to_save": if modules_to_save.is_empty() { serde_json::Value::Null } else { modules_to_save.into() },
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "use_dora": false,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    // The tensors are written straight from the adapter's own buffers (no byte copies: a trained embedding is
    // 100+ MB, and a save must not raise the run's peak memory).
    let mut tensors: BTreeMap<String, F32Tensor<'_>> = BTreeMap::new();
    adapter.for_each_tensor(|name, t| {
        let shape = match name {
            TensorName::LoraA(l, m) => adapter.layers[l][m.index()].as_ref().map(|w| vec![w.r, w.in_features]),
            TensorName::LoraB(l, m) => adapter.layers[l][m.index()].as_ref().map(|w| vec![w.out_features, w.r]),
            TensorName::EmbedTokens | TensorName::LmHead => Some(vec![t.len() / hidden_size, hidden_size]),
        };
        let shape = shape.expect("for_each_tensor visits existing tensors");
        tensors.insert(name.peft_key(), F32Tensor { shape, data: t });
    });
    // A tied model trained through one shared matrix: PEFT stores the head as its own copy.
    if c.train_lm_head && adapter.lm_head.is_none() {
        if let Some(e) = tensors.get(&TensorName::EmbedTokens.peft_key()).cloned() {
            tensors.insert(TensorName::LmHead.peft_key(), e);
        }
    }
    let views: Vec<(String, F32Tensor<'_>)> = tensors.into_iter().collect();
    let weights = dir.join(WEIGHTS_FILE);
    let tmp = dir.join(format!("{WEIGHTS_FILE}.tmp"));
    let meta: Option<HashMap<String, String>> = Some([("format".to_string(), "pt".to_string())].into());
    safetensors::tensor::serialize_to_file(views, meta, &tmp)
        .map_err(|e| Error::format(&tmp, format!("cannot write safetensors: {e}")))?;
    std::fs::rename(&tmp, &weights).map_err(|e| Error::io(&weights, e))?;
    let cfg_path = dir.join(CONFIG_FILE);
    let cfg_tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::format(&cfg_path, e.to_string()))?;
    std::fs::write(&cfg_tmp, text + "\n").map_err(|e| Error::io(&cfg_tmp, e))?;
    std::fs::rename(&cfg_tmp, &cfg_path).map_err(|e| Error::io(&cfg_path, e))
}
