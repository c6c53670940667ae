//! The optimizers: AdamW against an f64 transcription of torch's formula (weight decay, two learning-rate groups);
//! bitsandbytes' dynamic maps and blockwise quantization; 8-bit AdamW tracking 32-bit AdamW on a quadratic bowl;
//! gradient clipping; checkpoint state round trips.

use loft::engine::dynamic_map::{create_dynamic_map, nearest_code};
use loft::engine::LoraWeights;
use loft::lora::{Adapter, LoraConfig, TargetModule, TensorName};
use loft::rng::SplitMix64;
use loft::train::optim::{
    clip_grad_norm, dequantize_blockwise, quantize_blockwise, OptimConfig, OptimKind, Optimizer, BLOCK_SIZE,
    MIN_8BIT_SIZE,
};

/// An adapter over `layers` layers with LoRA on the given modules (shape (out, in) each), rank `r`, and optionally
/// a trained embedding and head of `vocab_hidden` elements each.
fn adapter(layers: usize, r: usize, modules: &[(TargetModule, usize, usize)], vocab_hidden: Option<usize>) -> Adapter {
    let config = LoraConfig {
        r,
        target_modules: modules.iter().map(|m| m.0).collect(),
        train_embed_tokens: vocab_hidden.is_some(),
        train_lm_head: vocab_hidden.is_some(),
        ..LoraConfig::default()
    };
    let layers = (0..layers)
        .map(|_| {
            let mut mods: [Option<LoraWeights>; 7] = Default::default();
            for &(t, o, i) in modules {
                mods[t.index()] = Some(LoraWeights::zeros(r, i, o, 2.0 * r as f32, false));
            }
            mods
        })
        .collect();
    Adapter {
        config,
        layers,
        embed_tokens: vocab_hidden.map(|n| vec![0.0; n]),
        lm_head: vocab_hidden.map(|n| vec![0.0; n]),
    }
}

fn fill(a: &mut Adapter, rng: &mut SplitMix64, scale: f32) {
    a.for_each_tensor_mut(|_, t| t.iter_mut().for_each(|x| *x = scale * (rng.next_f64() as f32 * 2.0 - 1.0)));
}

fn flatten(a: &Adapter) -> Vec<f32> {
    let mut out = Vec::new();
    a.for_each_tensor(|_, t| out.extend_from_slice(t));
    out
}

/// Per element, whether it belongs to the embedding learning-rate group.
fn embedding_mask(a: &Adapter) -> Vec<bool> {
    let mut out = Vec::new();
    a.for_each_tensor(|n, t| out.extend(std::iter::repeat_n(n.is_embedding(), t.len())));
    out
}

fn config(kind: OptimKind, weight_decay: f32) -> OptimConfig {
    OptimConfig { kind, weight_decay, ..OptimConfig::default() }
}

/// torch.optim.AdamW (amsgrad=False, maximize=False) written out in f64 from its documented algorithm:
/// p ← p·(1 − lr·wd); m ← β1·m + (1 − β1)·g; v ← β2·v + (1 − β2)·g²;
/// p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps).
struct ReferenceAdamW {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    t: i32,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl ReferenceAdamW {
    fn new(n: usize, weight_decay: f64) -> Self {
        ReferenceAdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, t: 0, m: vec![0.0; n], v: vec![0.0; n] }
    }

    fn step(&mut self, p: &mut [f64], g: &[f64], lr: &[f64]) {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t);
        let bc2 = 1.0 - self.beta2.powi(self.t);
        for i in 0..p.len() {
            p[i] *= 1.0 - lr[i] * self.weight_decay;
            self.m[i] = self.beta1 * self.m[i] + (1.0 - self.beta1) * g[i];
            self.v[i] = self.beta2 * self.v[i] + (1.0 - self.beta2) * g[i] * g[i];
            p[i] -= lr[i] / bc1 * self.m[i] / (self.v[i].sqrt() / bc2.sqrt() + self.eps);
        }
    }
}

#[test]
fn adamw_matches_torch_formula_in_f64() {
    let modules = [(TargetModule::QProj, 12, 16), (TargetModule::DownProj, 16, 24)];
    let mut params = adapter(2, 4, &modules, Some(10 * 16));
    let mut rng = SplitMix64::new(7);
    fill(&mut params, &mut rng, 0.5);
    let (lr, embedding_lr, wd) = (1e-2f32, 3e-3f32, 0.1f32);

    let mut opt = Optimizer::new(config(OptimKind::AdamW, wd), &params);
    let mask = embedding_mask(&params);
    let lrs: Vec<f64> = mask.iter().map(|&e| if e { embedding_lr as f64 } else { lr as f64 }).collect();
    let mut p_ref: Vec<f64> = flatten(&params).iter().map(|&x| x as f64).collect();
    let mut reference = ReferenceAdamW::new(p_ref.len(), wd as f64);

    let mut grads = params.zeros_like();
    for step in 0..6 {
        // Gradients of changing scale, with a sign flip part way, so that m and v both matter.
        fill(&mut grads, &mut rng, 0.1 * (step + 1) as f32);
        let g: Vec<f64> = flatten(&grads).iter().map(|&x| x as f64).collect();
        opt.step(&mut params, &grads, lr, embedding_lr);
        reference.step(&mut p_ref, &g, &lrs);
    }
    assert_eq!(opt.steps_taken(), 6);
    let p = flatten(&params);
    let mut worst = 0f64;
    for (i, (&a, &b)) in p.iter().zip(&p_ref).enumerate() {
        let err = (a as f64 - b).abs();
        assert!(err <= 1e-6 + 1e-6 * b.abs(), "element {i}: {a} vs reference {b}");
        worst = worst.max(err);
    }
    // The two groups really moved at their own rates: an embedding element moves about embedding_lr per step.
    let p0 = {
        let mut a = adapter(2, 4, &modules, Some(10 * 16));
        fill(&mut a, &mut SplitMix64::new(7), 0.5);
        flatten(&a)
    };
    let moved = |emb: bool| {
        let d: Vec<f32> =
            p.iter().zip(&p0).zip(&mask).filter(|(_, &e)| e == emb).map(|((a, b), _)| (a - b).abs()).collect();
        d.iter().sum::<f32>() / d.len() as f32
    };
    assert!(moved(false) > 2.0 * moved(true), "LoRA moved {} vs embedding {}", moved(false), moved(true));
    eprintln!("adamw vs f64 torch formula: max |Δ| = {worst:e}");
}

#[test]
fn dynamic_maps_are_bitsandbytes() {
    let signed = create_dynamic_map(true);
    let unsigned = create_dynamic_map(false);
    for map in [&signed, &unsigned] {
        assert!(map.windows(2).all(|w| w[0] < w[1]), "codes are strictly increasing");
        assert_eq!(map[255], 1.0);
    }
    let close = |a: f32, b: f64| ((a as f64) - b).abs() <= 1e-6 * b.abs();
    // Signed (create_dynamic_map(signed=True)): for decade i = 0..6, the 2^i midpoints of linspace(0.1, 1, 2^i + 1)
    // times 10^(i−6), and their negatives; then 0 and 1. Sorted: 127 negatives, 0 at 127, 127 positives, 1.
    assert_eq!(signed[127], 0.0);
    assert!(close(signed[128], 1e-6 * (0.1 + 1.0) / 2.0)); // 0.55e-6, the one code of decade 10^-6
    assert!(close(signed[126], -1e-6 * (0.1 + 1.0) / 2.0));
    assert!(close(signed[129], 1e-5 * (0.1 + 0.55) / 2.0)); // decade 10^-5: linspace(0.1, 1, 3) = 0.1, 0.55, 1
    assert!(close(signed[159], 0.1 * (0.1 + 0.128125) / 2.0)); // first of 32 in 10^-1: step 0.9/32 = 0.028125
    assert!(close(signed[191], (0.1 + 0.1140625) / 2.0)); // first of 64 in 10^0: step 0.9/64 = 0.0140625
    assert!(close(signed[254], (0.9859375 + 1.0) / 2.0)); // 0.99296875, the largest below 1
    assert!(close(signed[0], -(0.9859375 + 1.0) / 2.0)); // the most negative code is −0.99296875, not −1
    assert_eq!(signed.iter().filter(|&&c| (0.1..1.0).contains(&c)).count(), 64);
    // Unsigned (signed=False): 2^(i+1) midpoints per decade; 0 first, then 254 positives, then 1.
    assert_eq!(unsigned[0], 0.0);
    assert!(close(unsigned[1], 1e-6 * (0.1 + 0.55) / 2.0)); // 0.325e-6
    assert!(close(unsigned[2], 1e-6 * (0.55 + 1.0) / 2.0)); // 0.775e-6
    assert!(close(unsigned[63], 0.1 * (0.1 + 0.1140625) / 2.0)); // first of 64 in 10^-1
    assert!(close(unsigned[127], (0.1 + 0.10703125) / 2.0)); // first of 128 in 10^0: step 0.9/128
    assert!(close(unsigned[254], (0.99296875 + 1.0) / 2.0)); // 0.996484375
    assert_eq!(unsigned.iter().filter(|&&c| (0.1..1.0).contains(&c)).count(), 128);
}

#[test]
fn blockwise_quantization_picks_the_nearest_code() {
    let mut rng = SplitMix64::new(5);
    let n = 3 * BLOCK_SIZE + 77; // a partial last block
                                 // Blocks of very different scales, and values spread over decades within each block.
    let values: Vec<f32> = (0..n)
        .map(|i| {
            let block_scale = 10f32.powi((i / BLOCK_SIZE) as i32 * 2 - 3);
            let decade = 10f32.powf(-4.0 * rng.next_f64() as f32);
            block_scale * decade * (rng.next_f64() as f32 * 2.0 - 1.0)
        })
        .collect();
    for (signed, half_gap) in [(true, 0.0141 / 2.0), (false, 0.00704 / 2.0)] {
        let map = create_dynamic_map(signed);
        let x: Vec<f32> = if signed { values.clone() } else { values.iter().map(|v| v.abs()).collect() };
        let mut codes = vec![0u8; n];
        let mut absmax = vec![0f32; n.div_ceil(BLOCK_SIZE)];
        quantize_blockwise(&x, &map, &mut codes, &mut absmax);
        let mut back = vec![0f32; n];
        dequantize_blockwise(&codes, &absmax, &map, &mut back);
        for i in 0..n {
            let a = absmax[i / BLOCK_SIZE];
            let u = x[i] / a;
            let best = map.iter().map(|c| (c - u).abs()).fold(f32::INFINITY, f32::min);
            assert!((map[codes[i] as usize] - u).abs() <= best + 1e-7, "element {i}: not the nearest code");
            // The largest gap between neighbouring codes is in the top decade: 0.9/64 (signed), 0.9/128 (unsigned).
            assert!((back[i] - x[i]).abs() <= half_gap * a, "element {i}: {} vs {}", back[i], x[i]);
        }
    }
    let map = create_dynamic_map(true);
    assert_eq!(nearest_code(&map, 0.0), 127);
    assert_eq!(nearest_code(&map, 1.5), 255);
    assert_eq!(nearest_code(&map, -1.5), 0);
}

/// 0.5 Σ h·(p − target)² over all elements, with curvatures h spread over a decade.
struct Bowl {
    h: Vec<f32>,
    target: Vec<f32>,
}

impl Bowl {
    fn loss(&self, p: &[f32]) -> f64 {
        p.iter().zip(&self.target).zip(&self.h).map(|((p, t), h)| 0.5 * (*h as f64) * ((p - t) as f64).powi(2)).sum()
    }

    fn gradient(&self, params: &Adapter, grads: &mut Adapter) {
        let p = flatten(params);
        let mut i = 0;
        grads.for_each_tensor_mut(|_, g| {
            for g in g.iter_mut() {
                *g = self.h[i] * (p[i] - self.target[i]);
                i += 1;
            }
        });
    }
}

#[test]
fn adamw_8bit_tracks_adamw_on_a_quadratic_bowl() {
    // lora_A [8, 1024] and the embedding/head [8192] take the 8-bit path; lora_B [64, 8] stays 32-bit.
    let mut init = adapter(1, 8, &[(TargetModule::QProj, 64, 1024)], Some(64 * 128));
    let mut rng = SplitMix64::new(11);
    fill(&mut init, &mut rng, 1.0);
    let n = init.num_parameters();
    let bowl = Bowl {
        h: (0..n).map(|_| 10f32.powf(rng.next_f64() as f32 - 0.5)).collect(),
        target: (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect(),
    };
    let loss0 = bowl.loss(&flatten(&init));

    let run = |kind: OptimKind| {
        let mut p = init.clone();
        let mut g = p.zeros_like();
        let mut opt = Optimizer::new(config(kind, 0.01), &p);
        for _ in 0..300 {
            bowl.gradient(&p, &mut g);
            opt.step(&mut p, &g, 2e-2, 1e-2);
        }
        (p, opt)
    };
    let (p32, opt32) = run(OptimKind::AdamW);
    let (p8, opt8) = run(OptimKind::AdamW8bit);
    let (f32v, f8v, p0) = (flatten(&p32), flatten(&p8), flatten(&init));
    let (loss32, loss8) = (bowl.loss(&f32v), bowl.loss(&f8v));
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let rel = dist(&f8v, &f32v) / dist(&f32v, &p0);
    eprintln!("bowl loss {loss0:.3} → adamw {loss32:.4}, adamw_8bit {loss8:.4}; ‖p8 − p32‖/‖p32 − p0‖ = {rel:.4}");
    assert!(loss32 < 1e-3 * loss0 && loss8 < 1e-3 * loss0, "both descend: {loss0} → {loss32}, {loss8}");
    assert!(rel < 0.03, "8-bit drifts from 32-bit by {rel}");
    assert!((loss8 - loss32).abs() < 0.2 * loss32, "final losses {loss8} vs {loss32}");

    // The small lora_B tensor kept f32 state; the big ones are u8 codes with one f32 scale per block.
    let dtypes: Vec<(String, &str)> = opt8.state_tensors().into_iter().map(|(n, _, d)| (n, d)).collect();
    let key = |t: TensorName, s: &str| format!("{}.{s}", t.peft_key());
    let q = TargetModule::QProj;
    assert!(dtypes.contains(&(key(TensorName::LoraB(0, q), "exp_avg"), "F32")));
    assert!(dtypes.contains(&(key(TensorName::LoraA(0, q), "state1"), "U8")));
    assert!(dtypes.contains(&(key(TensorName::LoraA(0, q), "absmax2"), "F32")));
    assert!(dtypes.contains(&(key(TensorName::EmbedTokens, "state2"), "U8")));
    let big = 8 * 1024 + 2 * 64 * 128;
    assert_eq!(opt8.state_bytes(), 8 * 64 * 8 + 2 * big + 8 * (big / BLOCK_SIZE));
    assert_eq!(opt32.state_bytes(), 8 * n);
}

#[test]
fn small_tensors_take_the_32_bit_path_in_adamw_8bit() {
    // [MIN_8BIT_SIZE − 1] elements: 32-bit state, so one step equals AdamW's up to f32 rounding of the
    // rearranged formula (weight decay 0, where bitsandbytes' and torch's orders agree).
    let mut p = adapter(1, 1, &[(TargetModule::VProj, 1, MIN_8BIT_SIZE - 2)], None);
    let mut rng = SplitMix64::new(2);
    fill(&mut p, &mut rng, 1.0);
    let mut g = p.zeros_like();
    fill(&mut g, &mut rng, 1e-3);
    let (mut a, mut b) = (p.clone(), p.clone());
    let mut opt_a = Optimizer::new(config(OptimKind::AdamW, 0.0), &a);
    let mut opt_b = Optimizer::new(config(OptimKind::AdamW8bit, 0.0), &b);
    assert_eq!(opt_b.state_bytes(), 8 * (MIN_8BIT_SIZE - 1));
    for _ in 0..3 {
        opt_a.step(&mut a, &g, 1e-3, 1e-3);
        opt_b.step(&mut b, &g, 1e-3, 1e-3);
    }
    for (x, y) in flatten(&a).iter().zip(&flatten(&b)) {
        assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
    }
    assert!(opt_b.state_tensors().iter().all(|(_, _, d)| *d == "F32"));
}

#[test]
fn clip_grad_norm_as_torch() {
    let modules = [(TargetModule::KProj, 6, 10), (TargetModule::DownProj, 10, 14)];
    let mut grads = adapter(2, 3, &modules, Some(40));
    fill(&mut grads, &mut SplitMix64::new(9), 2.0);
    let before = grads.clone();
    let norm = flatten(&grads).iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt() as f32;

    // Under the limit, or no limit: the norm, and nothing changes.
    for max_norm in [2.0 * norm, 0.0] {
        let got = clip_grad_norm(&mut grads, max_norm).unwrap();
        assert!((got - norm).abs() <= 1e-6 * norm, "{got} vs {norm}");
        assert_eq!(flatten(&grads), flatten(&before));
    }
    // Over the limit: every gradient scaled by max_norm / (norm + 1e-6).
    let max_norm = norm / 4.0;
    let got = clip_grad_norm(&mut grads, max_norm).unwrap();
    assert!((got - norm).abs() <= 1e-6 * norm);
    let coef = max_norm / (norm + 1e-6);
    for (a, b) in flatten(&grads).iter().zip(&flatten(&before)) {
        assert!((a - b * coef).abs() <= 1e-7 * b.abs().max(1.0), "{a} vs {}", b * coef);
    }
    let after = clip_grad_norm(&mut grads, 0.0).unwrap();
    assert!((after - max_norm).abs() <= 1e-5 * max_norm, "clipped norm {after} vs {max_norm}");

    // A NaN: an error naming the first tensor holding one (in adapter order), gradients untouched.
    let mut grads = before.clone();
    grads.layers[1][TargetModule::DownProj.index()].as_mut().unwrap().b[3] = f32::NAN;
    grads.lm_head.as_mut().unwrap()[0] = f32::INFINITY;
    let bits = |a: &Adapter| flatten(a).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let snapshot = bits(&grads);
    let err = clip_grad_norm(&mut grads, 1.0).unwrap_err().to_string();
    assert!(err.contains("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"), "{err}");
    assert!(err.contains("NaN") && err.contains("element 3"), "{err}");
    assert_eq!(bits(&grads), snapshot);
}

#[test]
fn state_round_trip_gives_identical_next_steps() {
    for kind in [OptimKind::AdamW, OptimKind::AdamW8bit] {
        let mut p = adapter(2, 8, &[(TargetModule::GateProj, 40, 600), (TargetModule::OProj, 24, 24)], Some(4096));
        let mut rng = SplitMix64::new(4);
        fill(&mut p, &mut rng, 1.0);
        let mut g = p.zeros_like();
        let mut opt = Optimizer::new(config(kind, 0.05), &p);
        for _ in 0..3 {
            fill(&mut g, &mut rng, 0.1);
            opt.step(&mut p, &g, 1e-3, 1e-4);
        }
        let saved: Vec<(String, Vec<u8>)> = opt.state_tensors().into_iter().map(|(n, b, _)| (n, b)).collect();
        let mut resumed = Optimizer::new(config(kind, 0.05), &p);
        resumed.load_state_tensors(&saved, opt.steps_taken()).unwrap();
        assert_eq!(resumed.steps_taken(), 3);
        let mut q = p.clone();
        for _ in 0..2 {
            fill(&mut g, &mut rng, 0.1);
            opt.step(&mut p, &g, 1e-3, 1e-4);
            resumed.step(&mut q, &g, 1e-3, 1e-4);
        }
        let bits = |a: &Adapter| flatten(a).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p), bits(&q), "{kind:?}: parameters after resuming");
        assert_eq!(opt.state_tensors(), resumed.state_tensors(), "{kind:?}: state after resuming");

        // A tensor of the wrong size: an error naming it and both sizes; the state is left as it was.
        let mut bad = saved.clone();
        let i = bad.len() - 1;
        let want = bad[i].1.len();
        bad[i].1.truncate(want - 4);
        let before = resumed.state_tensors();
        let err = resumed.load_state_tensors(&bad, 9).unwrap_err().to_string();
        assert!(err.contains(&bad[i].0), "{err}");
        assert!(err.contains(&format!("{} bytes, expected {want}", want - 4)), "{err}");
        assert_eq!(resumed.state_tensors(), before);
        assert_eq!(resumed.steps_taken(), 5);
        // A missing tensor, and another optimizer's state.
        let err = resumed.load_state_tensors(&saved[1..], 3).unwrap_err().to_string();
        assert!(err.contains(&saved[0].0) && err.contains("missing"), "{err}");
        let other = if kind == OptimKind::AdamW { OptimKind::AdamW8bit } else { OptimKind::AdamW };
        let mut wrong = Optimizer::new(config(other, 0.05), &p);
        assert!(wrong.load_state_tensors(&saved, 3).is_err());
    }
}

#[test]
fn optimizer_names() {
    for (name, kind) in [
        ("adamw", OptimKind::AdamW),
        ("adamw_torch", OptimKind::AdamW),
        ("adamw_8bit", OptimKind::AdamW8bit),
        ("paged_adamw_8bit", OptimKind::AdamW8bit),
    ] {
        assert_eq!(OptimKind::parse(name), Some(kind));
    }
    for kind in [OptimKind::AdamW, OptimKind::AdamW8bit] {
        assert_eq!(OptimKind::parse(kind.name()), Some(kind));
    }
    assert!(OptimKind::NAMES.iter().all(|n| OptimKind::parse(n).is_some()));
    assert_eq!(OptimKind::parse("sgd"), None);
}
