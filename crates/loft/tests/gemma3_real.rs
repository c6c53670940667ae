//! Gemma 3 270M, its real Q4_K_M GGUF (`scripts/fetch.sh gemma3`), against what transformers 5.24 computes on the
//! same file loaded with `gguf_file=` (dequantized to f32; scripts/make_gemma3_reference.py wrote
//! fixtures/gemma3_270m/expected.json): the tokenizer's ids for texts with runs of spaces, newlines, tabs, digits,
//! Unicode and Gemma's turn markers; the mean next-token loss over 105 tokens after BOS; the greedy continuation of a
//! prompt through the KV cache; and the same over a text of 758 tokens, past the local layers' window of 512.
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
    follow_greedy(model, &ids(&greedy["prompt_ids"]), &ids(&greedy["tokens"]), "the short prompt");
}

/// Past the local layers' window: each of the 758 positions' NLL equals transformers' (from position 512 on, the
/// local layers see only the last 512 keys; transformers with the window widened scores those positions 1.8 nats
/// worse, so a loft that ignored the window could not pass), and the greedy tokens after all 758 through the KV
/// cache (the cached path's window).
#[test]
fn gemma3_270m_past_the_sliding_window_matches_transformers() {
    let loaded = load();
    let model = &loaded.model;
    let want = expected();
    let long = &want["long"];
    let window = model.config.local_layers.as_ref().unwrap().sliding_window;
    assert_eq!(window, 512);
    let text_ids = ids(&long["ids"]);
    assert_eq!(loaded.tokenizer.encode(long["text"].as_str().unwrap(), true, true), text_ids, "the long text's ids");
    assert!(text_ids.len() > window + 200, "the text must reach well past the window");

    let nll = model.next_token_nll(&text_ids).unwrap();
    let want_nll: Vec<f64> = long["nll"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(nll.len(), want_nll.len());
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (loss, tail) = (mean(&nll), mean(&nll[window..]));
    let (reference, reference_tail) = (long["loss"].as_f64().unwrap(), long["loss_tail"].as_f64().unwrap());
    let no_window = long["loss_tail_no_window"].as_f64().unwrap();
    let worst = nll.iter().zip(&want_nll).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!(
        "gemma3 270m Q4_K_M, {} tokens: loft loss {loss:.6}, transformers {reference:.6} (rel {:.2e}); positions from \
         {window}: {tail:.6} vs {reference_tail:.6} (rel {:.2e}; transformers without the window {no_window:.6}); \
         worst token |dNLL| {worst:.2e}",
        nll.len(),
        (loss - reference).abs() / reference,
        (tail - reference_tail).abs() / reference_tail,
    );
    assert!(
        (no_window - reference_tail).abs() > 0.1,
        "the fixture's window does not bind: {no_window} vs {reference_tail}"
    );
    assert!((loss - reference).abs() / reference < 1e-4, "loss {loss} vs transformers {reference}");
    assert!((tail - reference_tail).abs() / reference_tail < 1e-4, "tail loss {tail} vs transformers {reference_tail}");
    for (i, (a, b)) in nll.iter().zip(&want_nll).enumerate() {
        assert!((a - b).abs() < 2e-3 * (1.0 + b.abs()), "token {i}: nll {a} vs transformers {b}");
    }

    follow_greedy(model, &text_ids, &ids(&long["greedy"]), "the long text");
}

/// How far below loft's top logit transformers' greedy token may be and still count as loft's choice: a near-tie
/// that f32 sums in another order (another CPU's gemm kernels, a rewritten kernel) can break either way. loft's
/// smallest top-2 margin along these continuations is 0.0235 (on a top logit of 21.3); a real error moves a token
/// by far more.
const NEAR_TIE: f32 = 0.05;

/// transformers' greedy tokens `want` after `prompt`, checked step by step through loft's KV cache (the prompt in
/// one forward, then one token at a time): each must be loft's argmax, or within [`NEAR_TIE`] of its top logit, and
/// at most one step of the continuation may be such a near-tie. The reference token is fed back at every step, so
/// one near-tie does not send the rest down another path.
fn follow_greedy(model: &loft::model::Llama, prompt: &[u32], want: &[u32], what: &str) {
    let mut cache = loft::model::KvCache::new(&model.config, prompt.len() + want.len());
    let runner = loft::model::Runner::new(&loft::engine::Cpu, model).unwrap();
    let mut hidden = runner.forward(prompt, &mut cache).unwrap();
    let mut row = prompt.len() - 1;
    let mut ties = Vec::new();
    for (step, &token) in want.iter().enumerate() {
        let logits = runner.logits(&hidden, row, 1).unwrap();
        let (top, best) =
            logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &v)| if v > m.1 { (i, v) } else { m });
        if top != token as usize {
            let gap = best - logits[token as usize];
            assert!(
                gap < NEAR_TIE,
                "greedy after {what}, step {step}: loft picks token {top} ({best}), transformers {token}, {gap} lower"
            );
            ties.push((step, top, gap));
        }
        hidden = runner.forward(&[token], &mut cache).unwrap();
        row = 0;
    }
    assert!(ties.len() <= 1, "greedy after {what}: near-ties (step, loft's token, gap) at {ties:?}");
    if !ties.is_empty() {
        println!("greedy after {what}: near-tie (step, loft's token, gap) {ties:?}, within {NEAR_TIE}");
    }
}

/// The decode products (8-bit activations against the file's Q4_K, Q5_0, Q6_K and Q8_0 blocks in integers,
/// engine::q8_dot) against the exact f32 products, step by step through the KV cache along the greedy continuation:
/// each step's argmax is the same, and the logits move by less than 0.4 (measured: 0.316 of a largest |logit| of
/// 29.4 over the 16 steps since the prefill's attention runs engine::attention_tiles, 0.288 before; 0.128 when only
/// the Q8_0 blocks took integers, before Q4_K/Q5_0/Q6_K had kernels).
#[test]
fn gemma3_270m_integer_decode_products_stay_near_the_exact_ones() {
    use loft::model::{KvCache, Runner};
    let loaded = load();
    let model = &loaded.model;
    let greedy = &expected()["greedy"];
    let (prompt, tokens) = (ids(&greedy["prompt_ids"]), ids(&greedy["tokens"]));
    let steps = |runner: &Runner<'_, loft::engine::Cpu>| -> Vec<Vec<f32>> {
        let mut cache = KvCache::new(&model.config, prompt.len() + tokens.len());
        let mut hidden = runner.forward(&prompt, &mut cache).unwrap();
        let mut row = prompt.len() - 1;
        let mut out = Vec::new();
        for &t in &tokens {
            out.push(runner.logits(&hidden, row, 1).unwrap());
            hidden = runner.forward(&[t], &mut cache).unwrap();
            row = 0;
        }
        out
    };
    let fast = steps(&Runner::new(&loft::engine::Cpu, model).unwrap());
    let exact = steps(&Runner::new(&loft::engine::Cpu, model).unwrap().with_exact_products());
    let argmax =
        |l: &[f32]| l.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &v)| if v > m.1 { (i, v) } else { m }).0;
    let mut worst = 0.0f32;
    let mut largest = 0.0f32;
    for (i, (f, e)) in fast.iter().zip(&exact).enumerate() {
        worst = f.iter().zip(e).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
        largest = e.iter().fold(largest, |m, v| m.max(v.abs()));
        assert_eq!(argmax(f), argmax(e), "step {i}: the integer products changed the greedy token");
    }
    println!(
        "gemma3 270m decode products vs exact over {} steps: logits differ by {worst:.3} (largest {largest:.1})",
        fast.len()
    );
    assert!(worst < 0.4, "decoding with 8-bit activations moved the logits by {worst}");
}
