//! The inference forward written once (`loft::model::Runner`) on the wgpu backend against the same code on the CPU
//! engine, on tiny Llamas written as GGUF by loft's own test helpers: a prompt, decode steps through the KV cache,
//! and a second chunk at a cache offset; logits within [`TOL`] relative at every step.

use gguf::GgmlType;
use loft::engine::{Backend, Cpu, FrozenMatrix};
use loft::model::{llama_from_gguf, Llama, Runner, TargetModule};

use crate::common::{assert_parity, gpu, TOL};

use crate::lcommon::tiny::{random_weights, write_gguf, TinyConfig};

/// The tiny model `cfg` with random weights (f32), loaded back from GGUF as `loft` loads any file.
fn tiny_model(cfg: &TinyConfig, seed: u64) -> Llama {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, cfg, &random_weights(cfg, seed));
    let file = gguf::GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    llama_from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every matrix of `model` re-stored as `dtype` blocks (as a quantized GGUF would hold them).
fn quantize(model: &mut Llama, dtype: GgmlType) {
    let requant = |m: &mut FrozenMatrix| {
        let bytes = gguf::quantize(dtype, &m.to_f32(), m.cols).unwrap_or_else(|e| panic!("{e}"));
        *m = FrozenMatrix::from_quantized(m.rows, m.cols, dtype, bytes).expect("the shape fits the blocks");
    };
    let w = &mut model.weights;
    requant(&mut w.embed_tokens);
    if let Some(h) = w.lm_head.as_mut() {
        requant(h);
    }
    for layer in &mut w.layers {
        for t in TargetModule::ALL {
            requant(layer.module_mut(t));
        }
    }
}

/// Runs the same schedule on both backends and compares logits: a prompt of 9 tokens (all rows), 3 single-token
/// decode steps, then a chunk of 4 tokens at position 12 (a prefill into a non-empty cache); then the hidden rows
/// read back by range, and next_token_nll over the whole sequence.
fn compare(label: &str, model: &Llama) {
    let tokens: Vec<u32> = (0..16).map(|i| (i * 11 + 5) % model.config.vocab_size as u32).collect();
    // The CPU's decode products take 8-bit activations over quantized blocks; the GPU's equal its exact ones.
    let cpu = Runner::new(&Cpu, model).unwrap_or_else(|e| panic!("{label}: {e}")).with_exact_products();
    let gpu = Runner::new(gpu(), model).unwrap_or_else(|e| panic!("{label}: {e}"));
    let mut cpu_cache = cpu.cache(tokens.len()).unwrap_or_else(|e| panic!("{e}"));
    let mut gpu_cache = gpu.cache(tokens.len()).unwrap_or_else(|e| panic!("{e}"));
    let mut step = |what: &str, ids: &[u32]| {
        let h_cpu = cpu.forward(ids, &mut cpu_cache).unwrap_or_else(|e| panic!("{label} {what}: {e}"));
        let h_gpu = gpu.forward(ids, &mut gpu_cache).unwrap_or_else(|e| panic!("{label} {what}: {e}"));
        let l_cpu = cpu.logits(&h_cpu, 0, ids.len()).unwrap_or_else(|e| panic!("{e}"));
        let l_gpu = gpu.logits(&h_gpu, 0, ids.len()).unwrap_or_else(|e| panic!("{e}"));
        assert_parity(&format!("runner {label} {what} logits"), &l_gpu, &l_cpu);
        let c = model.config.hidden_size;
        let last = (ids.len() - 1) * c;
        let row = gpu.backend().read(&h_gpu, last, c).unwrap_or_else(|e| panic!("{e}"));
        assert_parity(&format!("runner {label} {what} last hidden row"), &row, &h_cpu[last..]);
    };
    step("prompt of 9", &tokens[..9]);
    for (i, &id) in tokens[9..12].iter().enumerate() {
        step(&format!("decode step {}", i + 1), &[id]);
    }
    step("chunk of 4 at 12", &tokens[12..]);
    assert_eq!((cpu_cache.len, gpu_cache.len), (16, 16));

    let nll_cpu = cpu.next_token_nll(&tokens).unwrap_or_else(|e| panic!("{e}"));
    let nll_gpu = gpu.next_token_nll(&tokens).unwrap_or_else(|e| panic!("{e}"));
    let (mean_cpu, mean_gpu) = (nll_cpu.iter().sum::<f64>() / 15.0, nll_gpu.iter().sum::<f64>() / 15.0);
    let rel = (mean_gpu - mean_cpu).abs() / mean_cpu.abs();
    eprintln!("parity runner {label} mean nll: cpu {mean_cpu:.6}, gpu {mean_gpu:.6}, rel {rel:.2e}");
    assert!(rel <= TOL as f64, "{label}: mean nll {mean_gpu} on the GPU, {mean_cpu} on the CPU");
}

#[test]
fn runner_on_the_gpu_equals_the_cpu_f32_tied_and_untied() {
    compare("f32 tied, 4 heads over 2", &tiny_model(&TinyConfig::default(), 1));
    let untied = TinyConfig { tied: false, kv_heads: 1, ..TinyConfig::default() };
    compare("f32 untied, 4 heads over 1", &tiny_model(&untied, 2));
}

#[test]
fn runner_on_the_gpu_equals_the_cpu_with_q4_1_blocks() {
    // The default model's storage; rows of 64 and 96 values are whole Q4_1 blocks.
    let cfg = TinyConfig { hidden: 64, ffn: 96, tied: false, ..TinyConfig::default() };
    let mut model = tiny_model(&cfg, 3);
    quantize(&mut model, GgmlType::Q4_1);
    compare("q4_1 untied", &model);
}

#[test]
fn a_block_type_without_a_gpu_kernel_names_the_tensor() {
    let cfg = TinyConfig { hidden: 64, ffn: 96, ..TinyConfig::default() };
    let mut model = tiny_model(&cfg, 4);
    // Q8_1 (ggml's activation blocks, 36 bytes per 32 values) has no GPU decoder; zero blocks are valid ones.
    let q = model.weights.layers[0].module_mut(TargetModule::QProj);
    let bytes = vec![0u8; q.rows * GgmlType::Q8_1.row_bytes(q.cols).expect("whole blocks")];
    *q = FrozenMatrix::from_quantized(q.rows, q.cols, GgmlType::Q8_1, bytes).expect("the shape fits the blocks");
    let e = Runner::new(gpu(), &model).err().expect("q8_1 has no GPU kernel");
    let msg = e.to_string();
    assert!(
        msg.starts_with("model.layers.0.self_attn.q_proj.weight: ") && msg.contains("q8_1") && !msg.contains('\n'),
        "{msg}"
    );
    assert!(e.hint().is_some_and(|h| h.contains("--device cpu")), "{msg}");
}

#[test]
fn bad_operands_are_errors_not_panics() {
    let be = gpu();
    let mut dst = be.zeros(4).unwrap_or_else(|e| panic!("{e}"));
    let src = be.upload(&[1.0, 2.0, 3.0]).unwrap_or_else(|e| panic!("{e}"));
    assert!(be.copy(&src, 1, &mut dst, 0, 3).is_err());
    assert!(be.copy(&src, 0, &mut dst, 2, 3).is_err());
    assert!(be.read(&src, 2, 2).is_err());
    assert!(be.swiglu_forward(&mut dst, &src, &src).is_err());
    be.copy(&src, 0, &mut dst, 1, 3).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(be.read(&dst, 0, 4).unwrap_or_else(|e| panic!("{e}")), [0.0, 1.0, 2.0, 3.0]);
}
