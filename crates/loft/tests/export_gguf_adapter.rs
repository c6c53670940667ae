//! `loft export gguf-adapter`: a LoRA adapter as llama.cpp's GGUF adapter. llama.cpp's own `gguf` Python package
//! reads the keys, names, shapes and values as written; applying the file the way llama.cpp does (W + alpha/r ·
//! B·A, in the GGUF's permuted Q/K row order) gives the permuted merge of the PEFT adapter, plain and rsLoRA.
//! scripts/check_export_llamacpp.sh runs such a file in llama.cpp itself (`--lora`).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::tiny::{random_weights, write_gguf, TinyConfig};
use common::{adapter_with_nonzero_b as adapter, gguf_py};
use loft::export::{write_gguf_adapter, AdapterDtype};
use loft::lora::{LoraConfig, TargetModule};
use loft::model::weights::{permute_rope_rows, unpermute_rope_rows};
use loft::model::{llama_from_gguf, Llama};

/// gguf-py's view of a file: metadata key → JSON value (f32 as bit patterns), and the tensors.
struct Dump {
    metadata: HashMap<String, serde_json::Value>,
    tensors: Vec<DumpedTensor>,
}

struct DumpedTensor {
    name: String,
    /// ne order
    shape: Vec<u64>,
    /// GGUF type id
    dtype: u32,
    /// dequantized by gguf-py
    values: Vec<f32>,
}

fn dump(py: &Path, file: &Path) -> Dump {
    let dir = tempfile::tempdir().unwrap();
    let script = common::workspace().join("scripts/gguf_py_dump.py");
    let out = Command::new(py).arg(&script).arg(file).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "gguf_py_dump failed: {}", String::from_utf8_lossy(&out.stderr));
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("index.json")).unwrap()).unwrap();
    let metadata = index["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["key"].as_str().unwrap().to_string(), m["value"].clone()))
        .collect();
    let tensors = index["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let raw = std::fs::read(dir.path().join(t["file"].as_str().unwrap())).unwrap();
            let values = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let shape = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
            DumpedTensor {
                name: t["name"].as_str().unwrap().to_string(),
                shape,
                dtype: t["type"].as_u64().unwrap() as u32,
                values,
            }
        })
        .collect();
    Dump { metadata, tensors }
}

/// The tiny GQA model (4 heads, 2 KV heads) as written to a GGUF, with Q/K rows in llama.cpp's order.
fn tiny_model(dir: &Path) -> (Llama, gguf::GgufFile) {
    let cfg = TinyConfig::default();
    let path = dir.join("tiny.gguf");
    write_gguf(&path, &cfg, &random_weights(&cfg, 5));
    let file = gguf::GgufFile::open(&path).unwrap();
    (llama_from_gguf(&file).unwrap(), file)
}

/// The llama.cpp name of module `m` of layer `l`: `blk.3.attn_q.weight`.
fn gguf_name(l: usize, m: TargetModule) -> String {
    gguf::names::hf_to_gguf(&format!("model.layers.{l}.{}.weight", m.path())).unwrap()
}

/// out[O, I] = B[O, R] · A[R, I]
fn matmul(b: &[f32], a: &[f32], o: usize, r: usize, i: usize) -> Vec<f32> {
    let mut out = vec![0f32; o * i];
    for row in 0..o {
        for k in 0..r {
            let bv = b[row * r + k];
            for col in 0..i {
                out[row * i + col] += bv * a[k * i + col];
            }
        }
    }
    out
}

#[test]
fn adapter_gguf_reads_back_in_gguf_py_and_applies_like_the_merge() {
    let dir = tempfile::tempdir().unwrap();
    let (model, base) = tiny_model(dir.path());
    let cfg = model.config.clone();
    for (rslora, dtype) in [(false, AdapterDtype::F32), (true, AdapterDtype::F32), (false, AdapterDtype::F16)] {
        let config = LoraConfig { r: 4, lora_alpha: 8.0, use_rslora: rslora, ..LoraConfig::default() };
        let a = adapter(&model, config);
        let out = dir.path().join(format!("lora-{rslora}-{dtype:?}.gguf"));
        let summary = write_gguf_adapter(&out, &a, &model, dtype, "tiny-lora").unwrap();
        // llama.cpp's scale is alpha / r: the file's alpha makes it PEFT's (alpha / √r for rsLoRA).
        let peft_scale = if rslora { 8.0 / 2.0 } else { 8.0 / 4.0 };
        let want_alpha: f32 = if rslora { 16.0 } else { 8.0 };
        assert_eq!((summary.pairs, summary.r, summary.alpha), (2 * 7, 4, want_alpha));
        assert!((summary.scale - peft_scale).abs() < 1e-6);
        let py = gguf_py();
        let d = dump(&py, &out);
        assert_eq!(d.metadata["general.type"], "adapter");
        assert_eq!(d.metadata["general.architecture"], "llama");
        assert_eq!(d.metadata["adapter.type"], "lora");
        assert_eq!(d.metadata["adapter.lora.alpha"], want_alpha.to_bits());
        assert_eq!(d.tensors.len(), 2 * 7 * 2);
        let by_name: HashMap<&str, &DumpedTensor> = d.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let round = |v: &[f32]| -> Vec<f32> {
            match dtype {
                AdapterDtype::F32 => v.to_vec(),
                AdapterDtype::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
            }
        };
        let want_type = if dtype == AdapterDtype::F16 { 1 } else { 0 };
        for (l, mods) in a.layers.iter().enumerate() {
            for m in TargetModule::ALL {
                let w = mods[m.index()].as_ref().unwrap();
                let (o, r, i) = (w.out_features, w.r, w.in_features);
                let name = gguf_name(l, m);
                let ta = by_name[format!("{name}.lora_a").as_str()];
                let tb = by_name[format!("{name}.lora_b").as_str()];
                let (a_vals, b_vals) = (&ta.values, &tb.values);
                assert_eq!((ta.shape.clone(), tb.shape.clone()), (vec![i as u64, r as u64], vec![r as u64, o as u64]));
                assert_eq!((ta.dtype, tb.dtype), (want_type, want_type), "{name}");
                assert_eq!(*a_vals, round(&w.a), "{name}.lora_a");
                let heads = match m {
                    TargetModule::QProj => Some(cfg.num_attention_heads),
                    TargetModule::KProj => Some(cfg.num_key_value_heads),
                    _ => None,
                };
                let b_hf = heads.map_or_else(|| b_vals.clone(), |h| unpermute_rope_rows(b_vals, h, r));
                assert_eq!(b_hf, round(&w.b), "{name}.lora_b (un-permuted)");

                // llama.cpp: W_gguf + alpha/r · B_file · A_file must be the merged weight in GGUF row order.
                let alpha = f32::from_bits(d.metadata["adapter.lora.alpha"].as_u64().unwrap() as u32);
                let w_gguf = base.dequantize(&name).unwrap();
                let applied: Vec<f32> = w_gguf
                    .iter()
                    .zip(matmul(b_vals, a_vals, o, r, i))
                    .map(|(x, ba)| x + alpha / r as f32 * ba)
                    .collect();
                let w_hf = heads.map_or_else(|| w_gguf.clone(), |h| unpermute_rope_rows(&w_gguf, h, i));
                let merged_hf: Vec<f32> =
                    w_hf.iter().zip(matmul(&w.b, &w.a, o, r, i)).map(|(x, ba)| x + w.scale * ba).collect();
                let merged = heads.map_or_else(|| merged_hf.clone(), |h| permute_rope_rows(&merged_hf, h, i));
                let tol = if dtype == AdapterDtype::F16 { 2e-3 } else { 1e-5 };
                let worst = applied.iter().zip(&merged).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(worst < tol, "{name} ({rslora}, {dtype:?}): llama.cpp's application differs by {worst}");
            }
        }
    }
}

#[test]
fn adapters_llama_cpp_cannot_hold_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny_model(dir.path());
    let out = dir.path().join("lora.gguf");
    let embed = adapter(&model, LoraConfig { train_embed_tokens: true, ..LoraConfig::default() });
    let e = write_gguf_adapter(&out, &embed, &model, AdapterDtype::F32, "x").unwrap_err();
    assert_eq!(
        e.to_string(),
        "the adapter trains embed_tokens in full (modules_to_save); a llama.cpp LoRA GGUF holds only lora_a/lora_b \
         pairs"
    );
    assert_eq!(e.hint(), Some("write the merged model instead: loft export gguf --model M --adapter A --out FILE"));
    let head = adapter(&model, LoraConfig { train_lm_head: true, ..LoraConfig::default() });
    assert!(write_gguf_adapter(&out, &head, &model, AdapterDtype::F32, "x").is_err());
    let zero = adapter(&model, LoraConfig { lora_alpha: 0.0, ..LoraConfig::default() });
    let e = write_gguf_adapter(&out, &zero, &model, AdapterDtype::F32, "x").unwrap_err();
    assert!(e.to_string().contains("llama.cpp reads alpha 0 as 'no scaling'"), "{e}");
    assert!(!out.exists());
}
