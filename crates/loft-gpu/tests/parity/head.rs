//! The chunked head with cross-entropy: loss, input gradient and (trained head) weight gradient, with ignored rows.

use gguf::GgmlType;
use loft::engine::{cross_entropy as cpu, embedding::VocabMatrix as CpuVocab, FrozenMatrix};
use loft_gpu::engine::{cross_entropy, GpuFrozen, VocabMatrix};

use crate::common::{assert_parity, ctx, rand, read, up};

#[test]
fn head_cross_entropy_equals_the_cpu() {
    let c = ctx();
    let (v, ch, chunk) = (1000, 576, 4);
    // 11 rows, 3 ignored: chunks of 4, 4 and a partial one.
    let targets = [3, -100, 999, 0, 17, 17, -100, 500, 2, -100, 42];
    let n = targets.len();
    let h = rand(n * ch, 1);
    let w: Vec<f32> = rand(v * ch, 2).iter().map(|x| x * 0.2).collect();
    let grad_scale = 1.0 / 8.0;
    let mut scratch = cpu::CrossEntropyScratch::new(chunk, ch, v);
    let mut gscratch = cross_entropy::CrossEntropyScratch::new(c, chunk, ch, v).unwrap();
    let gh = up(&h);

    // A trained (untied) head: loss, dh and dW.
    let (mut dh, mut dw) = (vec![0.0; n * ch], rand(v * ch, 3));
    let (loss, count) = cpu::cross_entropy_forward_backward(
        &mut dh,
        Some(&mut dw),
        &mut scratch,
        &h,
        CpuVocab::Trained(&w),
        &targets,
        ch,
        grad_scale,
    );
    let gw = up(&w);
    let (mut gdh, mut gdw) = (c.zeros(n * ch).unwrap(), up(&rand(v * ch, 3)));
    let (gloss, gcount) = cross_entropy::cross_entropy_forward_backward(
        c,
        &mut gdh,
        Some(&mut gdw),
        &mut gscratch,
        &gh,
        VocabMatrix::Trained(&gw),
        &targets,
        ch,
        grad_scale,
    )
    .unwrap();
    assert_eq!(gcount, count);
    assert_parity("cross-entropy loss sum, trained head", &[gloss as f32], &[loss as f32]);
    assert_parity("cross-entropy dh, trained head [11,576]x[1000,576]", &read(&gdh), &dh);
    assert_parity("cross-entropy dW, trained head [1000,576]", &read(&gdw), &dw);

    // A frozen Q8_0 head (the default model's tied token_embd): loss only, then loss and dh.
    let fm =
        FrozenMatrix::from_quantized(v, ch, GgmlType::Q8_0, gguf::quantize(GgmlType::Q8_0, &w, ch).unwrap()).unwrap();
    let gf = GpuFrozen::upload(c, &fm, "token_embd.weight").unwrap();
    let (loss, count) = cpu::cross_entropy_forward(&mut scratch, &h, CpuVocab::Frozen(&fm), &targets, ch);
    let (gloss, gcount) =
        cross_entropy::cross_entropy_forward(c, &mut gscratch, &gh, VocabMatrix::Frozen(&gf), &targets, ch).unwrap();
    assert_eq!(gcount, count);
    assert_parity("cross-entropy loss sum, frozen Q8_0 head", &[gloss as f32], &[loss as f32]);
    let mut dh = vec![0.0; n * ch];
    cpu::cross_entropy_forward_backward(
        &mut dh,
        None,
        &mut scratch,
        &h,
        CpuVocab::Frozen(&fm),
        &targets,
        ch,
        grad_scale,
    );
    let mut gdh = c.zeros(n * ch).unwrap();
    cross_entropy::cross_entropy_forward_backward(
        c,
        &mut gdh,
        None,
        &mut gscratch,
        &gh,
        VocabMatrix::Frozen(&gf),
        &targets,
        ch,
        grad_scale,
    )
    .unwrap();
    assert_parity("cross-entropy dh, frozen Q8_0 head", &read(&gdh), &dh);
}

/// A vocabulary wide enough that 256 rows of f32 logits pass one storage binding (lavapipe's 128 MiB holds 223 rows
/// of 150,000): the head takes fewer rows at a time (`Backend::head_chunk`), the arena holds what its estimate
/// says, and a LoRA step over 256 target rows (two chunks on the device, one on the CPU) equals the CPU's.
#[test]
fn a_vocabulary_past_one_binding_narrows_the_head_chunk_and_trains_as_the_cpu() {
    use loft::data::Batch;
    use loft::engine::{Backend, Cpu};
    use loft::lora::{DeviceAdapter, Gradients, LoraConfig};
    use loft::model::{Llama, LlamaConfig, Runner};
    use loft::train::forward_backward::{forward_backward, forward_backward_host, TrainArena};

    let cfg = LlamaConfig {
        vocab_size: 150_000,
        hidden_size: 32,
        intermediate_size: 40,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        max_position_embeddings: 256,
        ..LlamaConfig::smollm2_135m()
    };
    let model = Llama::new(cfg.clone(), loft::model::weights::LlamaWeights::random(&cfg, 5, None).unwrap());
    let gpu = crate::common::gpu();
    let v = cfg.vocab_size;
    let chunk = gpu.head_chunk(v);
    let binding = gpu.context().max_buffer_bytes();
    assert_eq!(chunk as u64, (binding / (4 * v as u64)).min(256), "the head's rows at a time");
    assert!(chunk < 256, "this test needs a device binding under 256 rows of {v} logits ({binding} bytes)");
    assert_eq!(Cpu.head_chunk(v), 256);

    let adapter =
        crate::lcommon::adapter_with_nonzero_b(&model, LoraConfig { r: 4, lora_alpha: 8.0, ..Default::default() });
    let (b, t) = (1, 256);
    let rows: Vec<Vec<u32>> = (0..b).map(|_| (0..t).map(|i| ((i * 7919 + 13) % v) as u32).collect()).collect();
    let labels: Vec<Vec<i32>> = rows.iter().map(|r| r.iter().map(|&x| x as i32).collect()).collect();
    let batch = Batch::from_rows(&rows, &labels);
    let scale = 1.0 / batch.n_targets() as f32;

    let mut cpu_grads = adapter.zeros_like();
    let mut cpu_arena = TrainArena::new(&Cpu, &cfg, &adapter.config, b, t, false).unwrap();
    let (cpu_loss, _) =
        forward_backward_host(&model, &adapter, &mut cpu_grads, &mut cpu_arena, &batch, scale, 1).unwrap();

    let run = Runner::new(gpu, &model).unwrap();
    let dev = DeviceAdapter::upload(gpu, &adapter).unwrap();
    let mut grads = Gradients::zeros(gpu, &adapter).unwrap();
    let mut arena = TrainArena::new(gpu, &cfg, &adapter.config, b, t, false).unwrap();
    assert_eq!(arena.bytes(gpu), TrainArena::estimate_bytes(gpu, &cfg, &adapter.config, b, t, false));
    assert!(arena.bytes(gpu) < cpu_arena.bytes(&Cpu), "the device's head scratch is the narrower one");
    let (loss, _) = forward_backward(&run, &dev, &mut grads, &mut arena, &batch, scale, 1).unwrap();
    let rel = ((loss - cpu_loss) / cpu_loss).abs();
    eprintln!("vocabulary {v}, head chunk {chunk}: loss cpu {cpu_loss:.6}, gpu {loss:.6}, rel {rel:.2e}");
    assert!(rel <= crate::common::TOL as f64, "loss {loss} on the device, {cpu_loss} on the CPU");
    let flat = |a: &loft::lora::Adapter| {
        let mut out = Vec::new();
        a.for_each_tensor(|_, x| out.extend_from_slice(x));
        out
    };
    // Elementwise, f32 sums over 150,000 logits differ by ~1e-4 of the largest gradient between the devices (as
    // much with one chunk of 256 at a vocabulary of 100,000): the gradients are compared in relative L2.
    let (g, c) = (flat(&grads.download(gpu, &adapter).unwrap()), flat(&cpu_grads));
    let diff: f64 = g.iter().zip(&c).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let norm: f64 = c.iter().map(|b| (*b as f64).powi(2)).sum();
    let rel = (diff / norm).sqrt();
    eprintln!("LoRA gradients: relative L2 {rel:.2e}, worst element {:.2e}", crate::common::rel_err(&g, &c));
    assert!(rel <= 1e-5 && g.iter().all(|x| x.is_finite()), "LoRA gradients differ by {rel:.2e} in relative L2");
}
