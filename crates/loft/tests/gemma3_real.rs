//! Gemma 3 270M, its real Q4_K_M GGUF (`scripts/fetch.sh gemma3`), against what transformers 5.24 computes on the
//! same file loaded with `gguf_file=` (dequantized to f32; scripts/make_gemma3_reference.py wrote
//! fixtures/gemma3_270m/expected.json): the tokenizer's ids for texts with runs of spaces, newlines, tabs, digits,
//! Unicode and Gemma's turn markers; the mean next-token loss over 105 tokens after BOS; the greedy continuation of a
//! prompt through the KV cache.
#![allow(clippy::unwrap_used)]

mod common;

use loft::model::{Arch, LoadedModel};

fn expected() -> serde_json::Value {
    let path = common::workspace().join("crates/loft/tests/fixtures/gemma3_270m/expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn load() -> LoadedModel {
    LoadedModel::load(common::GEMMA3_MODEL.path().to_str().unwrap()).unwrap()
}

#[test]
fn gemma3_270m_tokenizes_as_transformers() {
    let loaded = load();
    assert_eq!(loaded.model.config.arch, Arch::Gemma3);
    assert_eq!(loaded.model.config.vocab_size, 262_144);
    let want = expected();
    for case in want["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = loaded.tokenizer.encode(text, false, true);
        assert_eq!(got, ids(&case["ids"]), "{text:?}");
    }
    let eval = &want["eval"];
    let text_ids = loaded.tokenizer.encode(eval["text"].as_str().unwrap(), true, true);
    assert_eq!(text_ids, ids(&eval["ids"]), "the eval text with BOS");
}

#[test]
fn gemma3_270m_loss_and_greedy_tokens_match_transformers() {
    let loaded = load();
    let model = &loaded.model;
    let want = expected();
    let eval = &want["eval"];
    let nll = model.next_token_nll(&ids(&eval["ids"])).unwrap();
    let loss = nll.iter().sum::<f64>() / nll.len() as f64;
    let reference = eval["loss"].as_f64().unwrap();
    let rel = (loss - reference).abs() / reference;
    println!(
        "gemma3 270m Q4_K_M: loft loss {loss:.6}, transformers {reference:.6} (rel {rel:.2e}) over {} tokens",
        nll.len()
    );
    assert!(rel < 1e-4, "loss {loss} vs transformers {reference}: rel {rel:.2e}");
    for (i, (a, b)) in nll.iter().zip(eval["nll"].as_array().unwrap()).enumerate() {
        let b = b.as_f64().unwrap();
        assert!((a - b).abs() < 2e-3 * (1.0 + b.abs()), "token {i}: nll {a} vs {b}");
    }

    let greedy = &want["greedy"];
    let prompt = ids(&greedy["prompt_ids"]);
    let expected_tokens = ids(&greedy["tokens"]);
    let mut cache = loft::model::KvCache::new(&model.config, prompt.len() + expected_tokens.len());
    let runner = loft::model::Runner::new(&loft::engine::Cpu, model).unwrap();
    let mut hidden = runner.forward(&prompt, &mut cache).unwrap();
    let mut row = prompt.len() - 1;
    let mut got = Vec::new();
    for _ in 0..expected_tokens.len() {
        let logits = runner.logits(&hidden, row, 1).unwrap();
        let next =
            logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &v)| if v > m.1 { (i, v) } else { m }).0;
        got.push(next as u32);
        hidden = runner.forward(&[next as u32], &mut cache).unwrap();
        row = 0;
    }
    assert_eq!(got, expected_tokens, "greedy after {:?}", greedy["prompt"]);
}
