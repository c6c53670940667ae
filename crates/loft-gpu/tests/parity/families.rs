//! The model families beside Llama on the wgpu backend: Qwen2's q/k/v biases (`bias_forward`), Qwen3's per-head
//! q/k norm (RMSNorm over rows T·NH of width D), Mistral's sliding window (4 positions of 9 to 12), and Gemma 3 (`scale`, `add`, `geglu_forward`/`geglu_backward`, local layers' window), through the inference forward (`loft::model::Runner`, see
//! runner.rs) and the training forward/backward (`loft::train::forward_backward`) against the same code on the
//! CPU, on tiny models written as GGUF by loft's own test helpers.

use loft::data::Batch;
use loft::engine::Cpu;
use loft::lora::{Adapter, DeviceAdapter, Gradients, LoraConfig};
use loft::model::{llama_from_gguf, Arch, Llama, Runner};
use loft::train::forward_backward::{forward_backward, forward_backward_host, TrainArena};

use crate::common::{assert_parity, gpu, TOL};
use crate::lcommon::adapter_with_nonzero_b;
use crate::lcommon::tiny::{random_weights, write_gguf, TinyConfig};

fn tiny_model(cfg: &TinyConfig, seed: u64) -> Llama {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, cfg, &random_weights(cfg, seed));
    let file = gguf::GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    llama_from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn families() -> Vec<(&'static str, Llama)> {
    let qwen2 = TinyConfig { arch: Arch::Qwen2, tied: false, ..TinyConfig::default() };
    let qwen3 = TinyConfig { arch: Arch::Qwen3, kv_heads: 1, head_dim: Some(12), ..TinyConfig::default() };
    let mistral = TinyConfig { kv_heads: 1, sliding_window: Some(4), ..TinyConfig::default() };
    // Gemma 3: scaled embedding, sandwich norms, GeGLU, local and global RoPE (6 layers), untied GQA.
    let gemma3 = TinyConfig { arch: Arch::Gemma3, tied: false, layers: 6, rope_theta: 1e6, ..TinyConfig::default() };
    vec![
        ("qwen2 untied", tiny_model(&qwen2, 31)),
        ("qwen3 tied, D = 12", tiny_model(&qwen3, 32)),
        ("mistral, window 4", tiny_model(&mistral, 33)),
        ("gemma3 untied, 6 layers", tiny_model(&gemma3, 34)),
    ]
}

fn flat(a: &Adapter) -> Vec<f32> {
    let mut v = Vec::new();
    a.for_each_tensor(|_, t| v.extend_from_slice(t));
    v
}

#[test]
fn qwen_inference_on_the_gpu_equals_the_cpu() {
    for (label, model) in families() {
        let tokens: Vec<u32> = (0..12).map(|i| (i * 11 + 5) % model.config.vocab_size as u32).collect();
        let (cpu, gpu) = (Runner::new(&Cpu, &model).unwrap(), Runner::new(gpu(), &model).unwrap());
        let (mut cc, mut gc) = (cpu.cache(tokens.len()).unwrap(), gpu.cache(tokens.len()).unwrap());
        // A prompt, then two tokens through the KV cache.
        for ids in [&tokens[..10], &tokens[10..11], &tokens[11..]] {
            let (hc, hg) = (cpu.forward(ids, &mut cc).unwrap(), gpu.forward(ids, &mut gc).unwrap());
            let (lc, lg) = (cpu.logits(&hc, 0, ids.len()).unwrap(), gpu.logits(&hg, 0, ids.len()).unwrap());
            assert_parity(&format!("{label} logits of {} tokens at {}", ids.len(), cc.len - ids.len()), &lg, &lc);
        }
    }
}

#[test]
fn qwen_training_on_the_gpu_equals_the_cpu() {
    for (label, model) in families() {
        let config = LoraConfig { r: 4, lora_alpha: 8.0, ..Default::default() };
        let adapter = adapter_with_nonzero_b(&model, config);
        let v = model.config.vocab_size as u32;
        let rows: Vec<Vec<u32>> = (0..2).map(|b| (0..9).map(|i| (i * 7 + 3 * b + 1) % v).collect()).collect();
        let labels: Vec<Vec<i32>> = rows.iter().map(|r| r.iter().map(|&t| t as i32).collect()).collect();
        let batch = Batch::from_rows(&rows, &labels);
        let scale = 1.0 / batch.n_targets() as f32;

        let mut cpu_grads = adapter.zeros_like();
        let mut arena = TrainArena::new(&Cpu, &model.config, &adapter.config, 2, 9, false).unwrap();
        let (cpu_loss, _) =
            forward_backward_host(&model, &adapter, &mut cpu_grads, &mut arena, &batch, scale, 3).unwrap();

        let be = gpu();
        let run = Runner::new(be, &model).unwrap();
        let dev = DeviceAdapter::upload(be, &adapter).unwrap();
        let mut grads = Gradients::zeros(be, &adapter).unwrap();
        let mut arena = TrainArena::new(be, &model.config, &adapter.config, 2, 9, false).unwrap();
        let (gpu_loss, _) = forward_backward(&run, &dev, &mut grads, &mut arena, &batch, scale, 3).unwrap();
        let gpu_grads = grads.download(be, &adapter).unwrap();

        let rel = ((gpu_loss - cpu_loss) / cpu_loss).abs();
        eprintln!("parity {label} training loss: cpu {cpu_loss:.6}, gpu {gpu_loss:.6}, rel {rel:.2e}");
        assert!(rel <= TOL as f64, "{label}: loss {gpu_loss} on the GPU, {cpu_loss} on the CPU");
        assert_parity(&format!("{label} LoRA gradients"), &flat(&gpu_grads), &flat(&cpu_grads));
    }
}
