//! The Llama forward pass against numbers measured with PyTorch (transformers 5.24, torch 2.15, fp32) on the
//! default model, from ../shared/reference/smollm2-135m.json.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use loft::model::{llama_from_gguf, KvCache};

#[test]
fn apache_loss_matches_pytorch() {
    let model_path = common::default_model();
    let reference = common::reference();
    let ids: Vec<u32> = reference["apache_2_0_text"]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids.len(), 2000);
    let file = gguf::GgufFile::open(&model_path).unwrap();
    let model = llama_from_gguf(&file).unwrap();
    let nll = model.next_token_nll(&ids).unwrap();
    let loss = nll.iter().sum::<f64>() / nll.len() as f64;
    let want = reference["apache_2_0_text"]["mean_next_token_loss_fp32"].as_f64().unwrap();
    eprintln!("loss {loss:.6} vs PyTorch {want:.6}");
    assert!((loss - want).abs() < 2e-4, "loss {loss} vs {want}");
    // Per-position agreement (fp64 reference): the largest deviation stays small.
    let per_pos: Vec<f64> = reference["apache_2_0_text"]["nll_per_position_fp64"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let worst = nll.iter().zip(&per_pos).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("largest per-position difference {worst:.2e}");
    assert!(worst < 5e-3, "per-position nll differs by {worst}");
}

#[test]
fn greedy_answer_matches_pytorch_and_cache_equals_full_forward() {
    let model_path = common::default_model();
    let reference = common::reference();
    let ids = |key: &str| -> Vec<u32> {
        reference["chat_greedy"][key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
    };
    let (prompt, want) = (ids("prompt_ids"), ids("greedy_ids"));
    let file = gguf::GgufFile::open(&model_path).unwrap();
    let model = llama_from_gguf(&file).unwrap();
    let opts = loft::infer::GenerateOptions { max_new_tokens: 20, sampling: Default::default(), stop_ids: vec![2] };
    let mut cache = KvCache::new(&model.config, 128);
    let runner = loft::model::Runner::new(&loft::engine::Cpu, &model).unwrap();
    let (got, stats) = loft::infer::generate(&runner, &prompt, &opts, &mut cache, |_| Ok(())).unwrap();
    assert_eq!(got, want);
    assert!(stats.stopped);

    // The last position's logits from one full forward equal those from the cached, token-by-token path with exact
    // products: the cache changes only the order of f32 sums.
    let all: Vec<u32> = prompt.iter().chain(&got[..got.len() - 1]).copied().collect();
    let mut full = KvCache::new(&model.config, all.len());
    let h = model.forward(&all, &mut full).unwrap();
    let c = model.config.hidden_size;
    let full_logits = model.logits(&h[h.len() - c..]);
    let step_logits = |runner: &loft::model::Runner<'_, loft::engine::Cpu>| {
        let mut step = KvCache::new(&model.config, all.len());
        runner.forward(&all[..prompt.len()], &mut step).unwrap();
        let mut last = Vec::new();
        for &id in &all[prompt.len()..] {
            last = runner.forward(&[id], &mut step).unwrap();
        }
        runner.logits(&last, 0, 1).unwrap()
    };
    let largest = full_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = |logits: &[f32]| full_logits.iter().zip(logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let exact = loft::model::Runner::new(&loft::engine::Cpu, &model).unwrap().with_exact_products();
    let diff = worst(&step_logits(&exact));
    assert!(diff < 1e-3, "cached vs full forward differ by {diff}");
    // Decoding's own products take 8-bit activations (engine::q8_dot, the same bits on every CPU): over these 7
    // steps they move the logits by 0.163 (largest 17.3), and the greedy answer above is PyTorch's.
    let diff = worst(&step_logits(&runner));
    eprintln!("decode products vs exact: logits differ by {diff:.3} (largest {largest:.1})");
    assert!(diff < 0.2, "decoding with 8-bit activations moved the logits by {diff}");
}

/// QLoRA's NF4 base, decoded with integer products: the default model's linear layers quantized to NF4 as a 16-bit
/// folder loaded with load_in_4bit is (blocks of 64, double quantization, bf16), then run along PyTorch's greedy
/// answer through the KV cache with the decode products (NF4 levels as integer codes, engine::q8_dot::Nf4Codes, against
/// 8-bit activations) and with the exact f32 products of the same NF4 weights: each step's argmax is the same and
/// the logits differ by less than 0.4. Measured: 0.283 (largest |logit| 34.7). When the kernels were written (before
/// RMSNorm's vectorized sums), side by side: 0.342; 0.266 with only the activations quantized (the exact path's
/// weights, rounded to bf16 as bitsandbytes does, which the codes are not); 0.575 with one-byte codes
/// round(127 · level).
#[test]
fn nf4_decode_products_stay_near_the_exact_ones() {
    use loft::engine::nf4::{Nf4Blocks, Nf4Dtype, BLOCKSIZE};
    use loft::engine::FrozenMatrix;
    let reference = common::reference();
    let ids = |key: &str| -> Vec<u32> {
        reference["chat_greedy"][key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
    };
    let (prompt, tokens) = (ids("prompt_ids"), ids("greedy_ids"));
    let file = gguf::GgufFile::open(common::default_model()).unwrap();
    let mut model = loft::model::llama_from_gguf_with(&file, false).unwrap();
    for layer in &mut model.weights.layers {
        for m in [
            &mut layer.q_proj,
            &mut layer.k_proj,
            &mut layer.v_proj,
            &mut layer.o_proj,
            &mut layer.gate_proj,
            &mut layer.up_proj,
            &mut layer.down_proj,
        ] {
            let blocks = Nf4Blocks::quantize(&m.to_f32(), BLOCKSIZE, true, Nf4Dtype::BF16);
            *m = FrozenMatrix::from_nf4(m.rows, m.cols, blocks).unwrap();
        }
    }
    let steps = |runner: &loft::model::Runner<'_, loft::engine::Cpu>| -> Vec<Vec<f32>> {
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
    let fast = steps(&loft::model::Runner::new(&loft::engine::Cpu, &model).unwrap());
    let exact = steps(&loft::model::Runner::new(&loft::engine::Cpu, &model).unwrap().with_exact_products());
    let argmax =
        |l: &[f32]| l.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &v)| if v > m.1 { (i, v) } else { m }).0;
    let (mut worst, mut largest) = (0.0f32, 0.0f32);
    for (i, (f, e)) in fast.iter().zip(&exact).enumerate() {
        worst = f.iter().zip(e).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
        largest = e.iter().fold(largest, |m, v| m.max(v.abs()));
        assert_eq!(argmax(f), argmax(e), "step {i}: the NF4 decode products changed the greedy token");
    }
    eprintln!(
        "NF4 decode products vs exact over {} steps: logits differ by {worst:.3} (largest {largest:.1})",
        fast.len()
    );
    assert!(worst < 0.4, "the NF4 decode products moved the logits by {worst}");
}
