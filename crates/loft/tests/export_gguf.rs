//! `loft export gguf`: the exported file loads back in loft with the same tokenizer and nearly the same loss, and
//! llama.cpp's own `gguf` Python package reads every tensor and key as loft wrote them.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::path::Path;
use std::process::Command;

use common::gguf_py;
use loft::export::{write_gguf_model, GgufQuant};
use loft::model::LoadedModel;

fn mean(v: Vec<f64>) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// gguf-py's view of the file: metadata keys, tensor names and each tensor dequantized, compared with loft's.
fn check_with_gguf_py(py: &Path, file: &Path) {
    let out_dir = tempfile::tempdir().unwrap();
    let script = common::workspace().join("scripts/gguf_py_dump.py");
    let out = Command::new(py).arg(&script).arg(file).arg(out_dir.path()).output().unwrap();
    assert!(out.status.success(), "gguf_py_dump failed: {}", String::from_utf8_lossy(&out.stderr));
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("index.json")).unwrap()).unwrap();
    let keys: Vec<&str> = index["metadata"].as_array().unwrap().iter().map(|m| m["key"].as_str().unwrap()).collect();
    for k in [
        "general.architecture",
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.freq_base",
        "llama.rope.dimension_count",
        "llama.context_length",
        "llama.vocab_size",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
    ] {
        assert!(keys.contains(&k), "gguf-py does not see key {k}");
    }
    let ours = gguf::GgufFile::open(file).unwrap();
    let tensors = index["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), ours.tensors.len());
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        assert!(
            gguf::names::gguf_to_hf(name).is_some() || name == "rope_freqs.weight",
            "tensor name '{name}' is not one llama.cpp uses"
        );
        let raw = std::fs::read(out_dir.path().join(t["file"].as_str().unwrap())).unwrap();
        let theirs: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let mine = ours.dequantize(name).unwrap();
        assert!(mine == theirs, "{name}: gguf-py's dequantization differs from loft's");
    }
}

#[test]
fn exported_gguf_reads_back_everywhere() {
    let path = common::default_model();
    let src = LoadedModel::load(path.to_str().unwrap()).unwrap();
    let ids: Vec<u32> = common::reference()["apache_2_0_text"]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .take(256)
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let base = mean(src.model.next_token_nll(&ids).unwrap());
    let text = std::fs::read_to_string(common::reference_dir().join("apache-2.0.txt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (quant, tolerance) in [(GgufQuant::F16, 1e-3), (GgufQuant::Q8_0, 0.02)] {
        let out = dir.path().join(format!("{quant:?}.gguf"));
        let fallbacks = write_gguf_model(&out, &src.model, &src.tokenizer, quant, "SmolLM2-135M-Instruct").unwrap();
        assert!(fallbacks.is_empty(), "{fallbacks:?}");
        let back = LoadedModel::load(out.to_str().unwrap()).unwrap();
        assert_eq!(back.model.config, src.model.config);
        assert_eq!(back.tokenizer.encode(&text, false, false), src.tokenizer.encode(&text, false, false));
        assert_eq!(back.tokenizer.chat_template(), src.tokenizer.chat_template());
        assert_eq!(back.tokenizer.eos_id(), Some(2));
        let loss = mean(back.model.next_token_nll(&ids).unwrap());
        eprintln!("{quant:?}: loss {loss:.6} vs source {base:.6}");
        assert!((loss - base).abs() < tolerance, "{quant:?}: loss {loss} vs {base}");
        check_with_gguf_py(&gguf_py(), &out);
    }
}

/// The Q4_K_M mix on SmolLM2-135M (30 layers, hidden 576, FFN 1536), written out by hand from llama.cpp's
/// src/llama-quant.cpp: rows of 576 cannot hold K-quants, so Q4_K falls back to Q5_0 and Q6_K to Q8_0; only
/// ffn_down (rows of 1536) keeps K-quants. "More bits" layers: the first and last eighth, and every third between.
/// scripts/check_export_llamacpp.sh checks the same types against llama-quantize's own Q4_K_M.
fn smollm2_q4_k_m_type(name: &str) -> gguf::GgmlType {
    use gguf::GgmlType::*;
    const MORE_BITS: [usize; 14] = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29];
    if name == "token_embd.weight" {
        return Q8_0;
    }
    let (layer, rest) = name.strip_prefix("blk.").unwrap().split_once('.').unwrap();
    let more_bits = MORE_BITS.contains(&layer.parse().unwrap());
    match rest {
        "attn_norm.weight" | "ffn_norm.weight" => F32,
        "attn_v.weight" if more_bits => Q8_0,
        "ffn_down.weight" if more_bits => Q6K,
        "ffn_down.weight" => Q4K,
        _ => Q5_0,
    }
}

#[test]
fn q4_k_m_export_follows_llama_cpps_mix() {
    let path = common::default_model();
    let src = LoadedModel::load(path.to_str().unwrap()).unwrap();
    let ids: Vec<u32> = common::reference()["apache_2_0_text"]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .take(256)
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let base = mean(src.model.next_token_nll(&ids).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q4_k_m.gguf");
    let fallbacks = write_gguf_model(&out, &src.model, &src.tokenizer, GgufQuant::Q4KM, "SmolLM2").unwrap();
    // token_embd (the tied head), and every matrix with rows of 576: 30 × (q, k, v, output, gate, up).
    assert_eq!(fallbacks.len(), 1 + 30 * 6, "{fallbacks:#?}");
    assert_eq!(fallbacks[0], "token_embd.weight: rows of 576 are not whole 256-value Q6_K blocks; written as Q8_0");
    let file = gguf::GgufFile::open(&out).unwrap();
    assert_eq!(file.get("general.file_type").and_then(|v| v.as_u64()), Some(15));
    for t in &file.tensors {
        let want = if t.name == "output_norm.weight" { gguf::GgmlType::F32 } else { smollm2_q4_k_m_type(&t.name) };
        assert_eq!(t.dtype, want, "{}", t.name);
    }
    let back = LoadedModel::load(out.to_str().unwrap()).unwrap();
    let loss = mean(back.model.next_token_nll(&ids).unwrap());
    eprintln!("Q4_K_M: loss {loss:.6} vs source {base:.6}");
    assert!((loss - base).abs() < 0.15, "Q4_K_M: loss {loss} vs {base}");
    check_with_gguf_py(&gguf_py(), &out);
}
