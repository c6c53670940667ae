//! bitsandbytes 4-bit checkpoints (the `*-bnb-4bit` hub repositories): what transformers' `save_pretrained`
//! writes for a model loaded with `BitsAndBytesConfig(load_in_4bit=True)`. Each quantized `<name>` (a
//! `Linear4bit` weight) is stored as these tensors, read here into [`Nf4Blocks`] without going through f16:
//!
//!   <name>                                     packed 4-bit codes, uint8 [n/2, 1] (or another storage dtype)
//!   <name>.absmax                              f32 [blocks], or uint8 codes with double quantization
//!   <name>.quant_map                           f32 [16], the NF4 table
//!   <name>.nested_absmax                       f32 [blocks / 256] (double quantization only)
//!   <name>.nested_quant_map                    f32 [256], the dynamic map (double quantization only)
//!   <name>.quant_state.bitsandbytes__nf4       uint8, JSON: quant_type, blocksize, dtype, shape,
//!                                              nested_blocksize, nested_dtype, nested_offset
//!
//! (`QuantState.as_dict(packed=True)` in bitsandbytes/functional.py), and config.json carries
//! `quantization_config` with `quant_method: "bitsandbytes"`.

use std::path::Path;

use safetensors::tensor::Dtype;
use serde::Deserialize;

use crate::engine::nf4::{Absmax, Nf4Blocks, Nf4Dtype};
use crate::error::{Error, Result};
use crate::model::safetensors_source::{decode_floats, SafetensorsSource};
use crate::model::weights::TensorSource;

/// Suffixes of the tensors that describe one quantized weight, as bitsandbytes names them.
pub const ABSMAX: &str = "absmax";
pub const QUANT_MAP: &str = "quant_map";
pub const NESTED_ABSMAX: &str = "nested_absmax";
pub const NESTED_QUANT_MAP: &str = "nested_quant_map";
pub const QUANT_STATE_NF4: &str = "quant_state.bitsandbytes__nf4";
pub const QUANT_STATE_FP4: &str = "quant_state.bitsandbytes__fp4";

/// config.json's `quantization_config`, the keys loft reads (transformers' `BitsAndBytesConfig.to_dict()`).
#[derive(Deserialize)]
struct QuantizationConfigFile {
    quant_method: Option<String>,
    #[serde(default)]
    load_in_4bit: bool,
    #[serde(default)]
    load_in_8bit: bool,
    bnb_4bit_quant_type: Option<String>,
}

/// The JSON in `<name>.quant_state.bitsandbytes__nf4`.
#[derive(Deserialize)]
struct QuantStateFile {
    quant_type: String,
    blocksize: usize,
    dtype: String,
    shape: Vec<usize>,
    nested_blocksize: Option<usize>,
    nested_offset: Option<f32>,
}

/// Reads `quantization_config` from a folder's config.json: None for an unquantized checkpoint, an error for a
/// quantization loft cannot read (8-bit, fp4, GPTQ, AWQ…). True for a bitsandbytes NF4 checkpoint, false for
/// an unquantized one (or a folder without config.json).
pub fn read_quantization_config(config_json: &Path) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(config_json) else { return Ok(false) };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(config_json, format!("invalid JSON: {e}")))?;
    let Some(q) = json.get("quantization_config") else { return Ok(false) };
    let q: QuantizationConfigFile = serde_json::from_value(q.clone())
        .map_err(|e| Error::format(config_json, format!("quantization_config: {e}")))?;
    let unsupported = |what: String| {
        Error::hinted(
            format!("{}: {what}", config_json.display()),
            "loft reads bitsandbytes 4-bit NF4 checkpoints (the *-bnb-4bit repositories) and unquantized \
             f32/f16/bf16 ones",
        )
    };
    let method = q.quant_method.as_deref().unwrap_or("bitsandbytes");
    if method != "bitsandbytes" {
        return Err(unsupported(format!("quantization_config.quant_method is '{method}', which loft does not read")));
    }
    if q.load_in_8bit || !q.load_in_4bit {
        return Err(unsupported("an 8-bit bitsandbytes checkpoint (LLM.int8), which loft does not read".into()));
    }
    match q.bnb_4bit_quant_type.as_deref().unwrap_or("fp4") {
        "nf4" => Ok(true),
        other => Err(unsupported(format!("quantization_config.bnb_4bit_quant_type is '{other}'; loft reads 'nf4'"))),
    }
}

/// True when the checkpoint stores `name` as a bitsandbytes 4-bit weight.
pub fn is_quantized(src: &SafetensorsSource, name: &str) -> bool {
    [QUANT_STATE_NF4, QUANT_STATE_FP4, ABSMAX].iter().any(|s| src.contains(&format!("{name}.{s}")))
        || src.raw(name).is_some_and(|(dtype, _, _)| dtype == Dtype::U8)
}

/// The 4-bit weight `name` as NF4 blocks with its shape (outermost first), or None when `name` is not a
/// bitsandbytes 4-bit weight. Every part is checked against the shape the quant_state gives before use.
pub fn read_nf4(src: &SafetensorsSource, name: &str) -> Result<Option<(Vec<usize>, Nf4Blocks)>> {
    if !is_quantized(src, name) {
        return Ok(None);
    }
    let bad = |what: String| {
        Error::hinted(
            format!("{}: tensor '{name}' {what}", src.describe()),
            "a bitsandbytes 4-bit weight is <name> (packed uint8), <name>.absmax, <name>.quant_map and \
             <name>.quant_state.bitsandbytes__nf4 (plus nested_absmax and nested_quant_map with double \
             quantization), as transformers' save_pretrained writes them",
        )
    };
    if src.contains(&format!("{name}.{QUANT_STATE_FP4}")) {
        return Err(Error::hinted(
            format!("{}: tensor '{name}' is bitsandbytes fp4; loft reads nf4 4-bit weights", src.describe()),
            "quantize the 16-bit model with bnb_4bit_quant_type=\"nf4\" (the QLoRA default), or give loft the \
             16-bit model and model.load_in_4bit = true",
        ));
    }
    let Some((_, _, state_bytes)) = src.raw(&format!("{name}.{QUANT_STATE_NF4}")) else {
        return Err(bad(format!("has no {name}.{QUANT_STATE_NF4}")));
    };
    let state: QuantStateFile =
        serde_json::from_slice(state_bytes).map_err(|e| bad(format!("has an unreadable {QUANT_STATE_NF4} ({e})")))?;
    if state.quant_type != "nf4" {
        return Err(bad(format!("has quant_type '{}'; loft reads 'nf4'", state.quant_type)));
    }
    let dtype = Nf4Dtype::parse(&state.dtype)
        .ok_or_else(|| bad(format!("has dtype '{}' (expected float32, float16 or bfloat16)", state.dtype)))?;
    let len =
        state.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| bad("is too large".into()))?;
    let (_, _, packed) = src.raw(name).ok_or_else(|| bad("is missing".into()))?;
    // Another quant_storage (bfloat16 for FSDP) holds the same bytes, padded to its element size.
    if packed.len() < len.div_ceil(2) || packed.len() > len.div_ceil(2) + 3 {
        return Err(bad(format!(
            "holds {} packed bytes for shape {:?} (expected {})",
            packed.len(),
            state.shape,
            len.div_ceil(2)
        )));
    }
    let blocks = len.div_ceil(state.blocksize.max(1));
    let floats = |suffix: &str, want: usize| -> Result<Vec<f32>> {
        let part = format!("{name}.{suffix}");
        let (dtype, _, bytes) = src.raw(&part).ok_or_else(|| bad(format!("has no {part}")))?;
        let v =
            decode_floats(dtype, bytes).ok_or_else(|| bad(format!("has {part} of dtype {dtype:?} (expected F32)")))?;
        if v.len() != want {
            return Err(bad(format!("has {} values in {part}, expected {want}", v.len())));
        }
        Ok(v)
    };
    let map = floats(QUANT_MAP, 16)?;
    let absmax_name = format!("{name}.{ABSMAX}");
    let (absmax_dtype, _, absmax_bytes) = src.raw(&absmax_name).ok_or_else(|| bad(format!("has no {absmax_name}")))?;
    let absmax = if absmax_dtype == Dtype::U8 {
        let nested_blocksize = state.nested_blocksize.filter(|&b| b > 0);
        let (Some(nested_blocksize), Some(offset)) = (nested_blocksize, state.nested_offset) else {
            return Err(bad(format!("has uint8 {absmax_name} but no nested_blocksize and nested_offset")));
        };
        if absmax_bytes.len() != blocks {
            return Err(bad(format!("has {} values in {absmax_name}, expected {blocks}", absmax_bytes.len())));
        }
        let nested_map = floats(NESTED_QUANT_MAP, 256)?;
        let mut quant_map = Box::new([0f32; 256]);
        quant_map.copy_from_slice(&nested_map);
        Absmax::Nested {
            codes: absmax_bytes.to_vec(),
            quant_map,
            absmax: floats(NESTED_ABSMAX, blocks.div_ceil(nested_blocksize))?,
            blocksize: nested_blocksize,
            offset,
        }
    } else {
        Absmax::F32(floats(ABSMAX, blocks)?)
    };
    let mut quant_map = [0f32; 16];
    quant_map.copy_from_slice(&map);
    let nf4 = Nf4Blocks {
        packed: packed[..len.div_ceil(2)].to_vec(),
        len,
        blocksize: state.blocksize,
        quant_map,
        absmax,
        dtype,
    };
    nf4.validate().map_err(|e| bad(e.to_string()))?;
    Ok(Some((state.shape, nf4)))
}
