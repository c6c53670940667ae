//! AdamW, 8-bit AdamW and gradient-norm clipping against `loft::train::optim` on the same adapter.

use loft::engine::{Backend, LoraWeights};
use loft::lora::{Adapter, LoraConfig, TargetModule, TensorName};
use loft::train::optim::{self as cpu, non_finite_gradient, OptimConfig, OptimKind};
use loft_gpu::GpuBuffer;

use crate::common::{assert_parity, gpu, rand, read, up};

/// An adapter with an 8-bit-sized tensor pair (q_proj, r 8 over 576: 4608 values each), a small odd pair that
/// keeps 32-bit state, and a trained embedding of 5003 values (a partial last block and a partial last word).
fn adapter(seed: u64) -> Adapter {
    let mut layers: Vec<[Option<LoraWeights>; 7]> = vec![Default::default()];
    let mut q = LoraWeights::zeros(8, 576, 576, 16.0, true);
    q.a = rand(8 * 576, seed);
    q.b = rand(576 * 8, seed + 1).iter().map(|x| x * 0.1).collect();
    layers[0][TargetModule::QProj.index()] = Some(q);
    let mut k = LoraWeights::zeros(2, 37, 19, 4.0, false);
    k.a = rand(2 * 37, seed + 2);
    k.b = rand(19 * 2, seed + 3);
    layers[0][TargetModule::KProj.index()] = Some(k);
    Adapter { config: LoraConfig::default(), layers, embed_tokens: Some(rand(5003, seed + 4)), lm_head: None }
}

fn tensors(a: &Adapter) -> Vec<(TensorName, Vec<f32>)> {
    let mut out = Vec::new();
    a.for_each_tensor(|n, t| out.push((n, t.to_vec())));
    out
}

#[test]
fn adamw_and_adamw_8bit_steps_equal_the_cpu() {
    let be = gpu();
    for kind in [OptimKind::AdamW, OptimKind::AdamW8bit] {
        let config = OptimConfig { kind, weight_decay: 0.01, ..Default::default() };
        let mut params = adapter(1);
        let mut cpu_opt = cpu::Optimizer::new(config, &params);
        let names: Vec<(TensorName, usize)> = tensors(&params).iter().map(|(n, t)| (*n, t.len())).collect();
        let mut gpu_opt = cpu::Optimizer::on(be, config, &names).unwrap();
        let mut gparams: Vec<GpuBuffer> = tensors(&params).iter().map(|(_, t)| up(t)).collect();
        for step in 0..3u64 {
            let mut grads = adapter(100 + 10 * step);
            grads.for_each_tensor_mut(|_, t| t.iter_mut().for_each(|x| *x *= 0.01));
            cpu_opt.step(&mut params, &grads, 1e-3, 1e-4);
            let ggrads: Vec<GpuBuffer> = tensors(&grads).iter().map(|(_, t)| up(t)).collect();
            let mut pref: Vec<&mut GpuBuffer> = gparams.iter_mut().collect();
            gpu_opt.update(be, &mut pref, &ggrads.iter().collect::<Vec<_>>(), 1e-3, 1e-4).unwrap();
        }
        for ((name, want), got) in tensors(&params).iter().zip(&gparams) {
            assert_parity(&format!("{} 3 steps {}", kind.name(), name.peft_key()), &read(got), want);
        }
        // The state tensors carry the CPU's names and sizes; 32-bit moments and block scales agree, and 8-bit
        // codes agree but for the rare value on a rounding boundary.
        let (want, got) = (cpu_opt.state_tensors(), gpu_opt.read_state(be).unwrap().tensors);
        // A state read back from the device restores onto the CPU (and back) unchanged.
        let saved: Vec<(String, Vec<u8>)> = got.iter().map(|(n, b, _)| (n.clone(), b.clone())).collect();
        let mut on_cpu = cpu::Optimizer::new(config, &params);
        on_cpu.load_state_tensors(&saved, 3).unwrap();
        assert_eq!(on_cpu.state_tensors(), got);
        let mut again = cpu::Optimizer::on(be, config, &names).unwrap();
        again.restore(be, &saved, 3).unwrap();
        assert_eq!(again.read_state(be).unwrap().tensors, got);
        assert_eq!(again.steps_taken(), 3);
        assert_eq!(want.len(), got.len());
        for ((wn, wb, wt), (gn, gb, gt)) in want.iter().zip(&got) {
            assert_eq!((wn, wb.len(), wt), (gn, gb.len(), gt));
            if *wt == "F32" {
                let f = |b: &[u8]| {
                    b.chunks_exact(4).map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]])).collect::<Vec<f32>>()
                };
                assert_parity(&format!("{} state {wn}", kind.name()), &f(gb), &f(wb));
            } else {
                let differ = wb.iter().zip(gb).filter(|(a, b)| a != b).count();
                eprintln!("parity {} state {wn}: {differ} of {} codes differ", kind.name(), wb.len());
                assert!(differ * 1000 <= wb.len(), "{wn}: {differ} of {} 8-bit codes differ", wb.len());
            }
        }
    }
}

#[test]
fn gradient_norm_clipping_equals_the_cpu() {
    let be = gpu();
    for max_norm in [1.0f32, 1e6, 0.0] {
        let mut grads = adapter(7);
        let mut gbufs: Vec<(TensorName, GpuBuffer)> = tensors(&grads).into_iter().map(|(n, t)| (n, up(&t))).collect();
        let norm = cpu::clip_grad_norm(&mut grads, max_norm).unwrap();
        let mut refs: Vec<&mut GpuBuffer> = gbufs.iter_mut().map(|(_, b)| b).collect();
        let gnorm = be.clip_grad_norm(&mut refs, max_norm).unwrap();
        assert_parity(&format!("grad norm (max_norm {max_norm})"), &[gnorm], &[norm]);
        for ((name, want), (_, got)) in tensors(&grads).iter().zip(&gbufs) {
            assert_parity(&format!("clipped to {max_norm}: {}", name.peft_key()), &read(got), want);
        }
    }
    // A NaN gives a non-finite norm and leaves the gradients as they were; read back, it names its tensor.
    let mut bad = rand(5003, 9);
    bad[4321] = f32::NAN;
    let mut g = up(&bad);
    let mut ok = up(&rand(100, 10));
    let before = read(&ok);
    let norm = be.clip_grad_norm(&mut [&mut ok, &mut g], 1.0).unwrap();
    assert!(!norm.is_finite());
    assert_eq!(read(&ok), before);
    let host = [(TensorName::LoraA(0, TargetModule::QProj), read(&ok)), (TensorName::EmbedTokens, read(&g))];
    let e = non_finite_gradient(host.iter().map(|(n, t)| (*n, t.as_slice())));
    assert!(e.to_string().contains("embed_tokens") && e.to_string().contains("element 4321"), "{e}");
}
