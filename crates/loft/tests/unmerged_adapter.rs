//! An adapter run unmerged (`Runner::forward_with`, one base serving several adapters) gives the logits of the
//! same adapter merged into the base (`lora::merge::merge_adapter`): on tiny models, tied and untied, with and
//! without a trained embedding and head, over a prompt and then token by token through the KV cache; and on the
//! default model (Q4_1 base), where greedy generation picks the same tokens. Sequences decoded together
//! (`model::batch::decode_step`, continuous batching) get the very logits each gets alone, bit for bit.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::path::Path;

use common::tiny::{random_weights, write_gguf, TinyConfig};
use common::{adapter_with_nonzero_b, default_model};
use loft::engine::Cpu;
use loft::infer::{generate, generate_with, GenerateOptions, SamplingParams};
use loft::lora::merge::merge_adapter;
use loft::lora::{Adapter, LoraConfig};
use loft::model::batch::{decode_step, Row};
use loft::model::Arch;
use loft::model::{llama_from_gguf, load_base, KvCache, Llama, Runner, UnmergedAdapter};

/// Logits of every position of `prompt`, then of `extra` fed one token at a time through the cache: the prompt
/// pass runs the tiled products, the decode steps the row-by-row ones.
/// With exact products: decoding's 8-bit activations would apply to a quantized base's matrices and not to those a
/// merge has made f32.
fn logits_unmerged(base: &Llama, adapter: Option<&Adapter>, prompt: &[u32], extra: &[u32]) -> Vec<Vec<f32>> {
    let host = adapter.map(|a| a.clone().into_unmerged(&base.config).unwrap());
    let runner = Runner::new(&Cpu, base).unwrap().with_exact_products();
    let device = host.as_ref().map(|h| runner.adapter(h).unwrap());
    let mut cache = runner.cache(prompt.len() + extra.len()).unwrap();
    let hidden = runner.forward_with(prompt, &mut cache, device.as_ref()).unwrap();
    let mut out = vec![runner.logits_with(&hidden, 0, prompt.len(), device.as_ref()).unwrap()];
    for &id in extra {
        let hidden = runner.forward_with(&[id], &mut cache, device.as_ref()).unwrap();
        out.push(runner.logits_with(&hidden, 0, 1, device.as_ref()).unwrap());
    }
    out
}

fn worst_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

fn tiny(dir: &Path, tied: bool) -> Llama {
    tiny_of(dir, tied, Arch::Llama)
}

fn tiny_of(dir: &Path, tied: bool, arch: Arch) -> Llama {
    tiny_from(dir, TinyConfig { tied, arch, ..Default::default() })
}

fn tiny_from(dir: &Path, cfg: TinyConfig) -> Llama {
    let path = dir.join(format!("tiny-{}-{:?}-{:?}.gguf", cfg.tied, cfg.arch, cfg.sliding_window));
    write_gguf(&path, &cfg, &random_weights(&cfg, 7));
    llama_from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap()
}

#[test]
fn unmerged_equals_merged_on_tiny_models() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = [1u32, 5, 9, 2, 40, 11, 3];
    let extra = [7u32, 30, 12];
    for tied in [true, false] {
        for (embed, head) in [(false, false), (true, false), (false, true), (true, true)] {
            let base = tiny(dir.path(), tied);
            let config = LoraConfig {
                r: 4,
                lora_alpha: 8.0,
                train_embed_tokens: embed,
                train_lm_head: head,
                ..Default::default()
            };
            let mut adapter = adapter_with_nonzero_b(&base, config);
            // Trained copies that differ from the base's, so replacing them shows.
            let mut shift = 0.0f32;
            for m in [&mut adapter.embed_tokens, &mut adapter.lm_head].into_iter().flatten() {
                m.iter_mut().enumerate().for_each(|(i, v)| *v += ((i as f32 + shift) * 0.37).sin() * 0.1);
                shift += 1.0;
            }
            let case = format!("tied {tied}, trained embedding {embed}, trained head {head}");
            let unmerged = logits_unmerged(&base, Some(&adapter), &prompt, &extra);
            let plain = logits_unmerged(&base, None, &prompt, &extra);
            let mut merged = tiny(dir.path(), tied);
            merge_adapter(&mut merged, &adapter).unwrap();
            let want = logits_unmerged(&merged, None, &prompt, &extra);
            let worst = worst_difference(&unmerged, &want);
            let moved = worst_difference(&plain, &want);
            eprintln!("{case}: unmerged vs merged {worst:.2e}; the adapter moves logits by {moved:.2e}");
            assert!(worst < 1e-4, "{case}: unmerged differs from merged by {worst}");
            assert!(moved > 1e-2, "{case}: the adapter changed nothing ({moved})");
        }
    }
}

#[test]
fn an_adapter_for_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path(), true);
    let other = {
        let cfg = TinyConfig { layers: 3, ..Default::default() };
        let path = dir.path().join("three-layers.gguf");
        write_gguf(&path, &cfg, &random_weights(&cfg, 7));
        llama_from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap()
    };
    let adapter = adapter_with_nonzero_b(&other, LoraConfig { r: 4, ..Default::default() });
    let err = adapter.into_unmerged(&base.config).err().unwrap().to_string();
    assert!(err.contains("3 layers") && err.contains("model 2"), "{err}");

    let adapter = adapter_with_nonzero_b(&other, LoraConfig { r: 4, ..Default::default() });
    let host = adapter.into_unmerged(&other.config).unwrap();
    let runner = Runner::new(&Cpu, &base).unwrap();
    let err = runner.adapter(&host).err().unwrap().to_string();
    assert!(err.contains("3 layers"), "{err}");
    let other_runner = Runner::new(&Cpu, &other).unwrap();
    let device = other_runner.adapter(&host).unwrap();
    let mut cache = runner.cache(4).unwrap();
    let err = runner.forward_with(&[1, 2], &mut cache, Some(&device)).err().unwrap().to_string();
    assert!(err.contains("loaded for a model of 3 layers"), "{err}");
}

/// On the default model, 30 layers of f32 sums taken in another order move logits of up to ~30 by ~1e-4 (the base
/// alone, Q4_1 blocks against the same weights dequantized, differs by 1.2e-4), so the bound is relative: 2e-5 of
/// the largest logit, for the Q4_1 base (merging dequantizes the adapted matrices) and for the f32 base. Greedy
/// generation then picks the same tokens.
#[test]
fn unmerged_equals_merged_on_the_default_model() {
    let spec = default_model().display().to_string();
    let config = LoraConfig { r: 8, lora_alpha: 16.0, ..Default::default() };
    let quantized = load_base(&spec, true).unwrap();
    let mut adapter = Adapter::new(config, &quantized, 5).unwrap();
    let mut rng = loft::rng::SplitMix64::new(9);
    adapter.for_each_tensor_mut(|name, t| {
        if matches!(name, loft::lora::TensorName::LoraB(..)) {
            t.iter_mut().for_each(|v| *v = (rng.next_f64() as f32 - 0.5) * 0.02);
        }
    });
    let prompt = [1u32, 504, 3458, 282, 4649, 314, 216, 30, 2];
    let extra = [198u32, 504, 3458];
    for keep_quantized in [true, false] {
        let base = load_base(&spec, keep_quantized).unwrap();
        let unmerged = logits_unmerged(&base, Some(&adapter), &prompt, &extra);
        let plain = logits_unmerged(&base, None, &prompt, &extra);
        let mut merged = load_base(&spec, keep_quantized).unwrap();
        merge_adapter(&mut merged, &adapter).unwrap();
        let want = logits_unmerged(&merged, None, &prompt, &extra);
        let largest = want.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = worst_difference(&unmerged, &want);
        let moved = worst_difference(&plain, &want);
        let case = if keep_quantized { "Q4_1 base" } else { "f32 base" };
        eprintln!("{case}: unmerged vs merged {worst:.2e} (largest logit {largest:.1}); the adapter moves {moved:.2e}");
        assert!(worst <= 2e-5 * largest, "{case}: unmerged differs from merged by {worst}");
        assert!(moved > 0.1, "{case}: the adapter changed nothing ({moved})");
    }

    // Greedy generation: the same tokens.
    let opts = GenerateOptions { max_new_tokens: 12, sampling: SamplingParams::default(), stop_ids: vec![] };
    let mut merged = load_base(&spec, true).unwrap();
    merge_adapter(&mut merged, &adapter).unwrap();
    let host = adapter.into_unmerged(&quantized.config).unwrap();
    let runner = Runner::new(&Cpu, &quantized).unwrap();
    let device = runner.adapter(&host).unwrap();
    let mut cache = runner.cache(64).unwrap();
    let (tokens, _) = generate_with(&runner, Some(&device), &prompt, &opts, &mut cache, |_| Ok(())).unwrap();
    let merged_runner = Runner::new(&Cpu, &merged).unwrap();
    let mut cache = merged_runner.cache(64).unwrap();
    let (want_tokens, _) = generate(&merged_runner, &prompt, &opts, &mut cache, |_| Ok(())).unwrap();
    assert_eq!(tokens, want_tokens);
}

/// One sequence of the batching test: its adapter, its prompt, the tokens it is fed after it, and the step at which
/// it joins the batch (sequences join and leave at different steps, as requests do).
struct Sequence<'a> {
    adapter: Option<&'a UnmergedAdapter>,
    prompt: Vec<u32>,
    fed: Vec<u32>,
    joins: usize,
}

/// The logits after each fed token, from `Runner::forward_with` one sequence at a time.
fn logits_alone(base: &Llama, s: &Sequence<'_>) -> Vec<Vec<f32>> {
    let runner = Runner::new(&Cpu, base).unwrap();
    let device = s.adapter.map(|a| runner.adapter(a).unwrap());
    let mut cache = runner.cache(s.prompt.len() + s.fed.len()).unwrap();
    runner.forward_with(&s.prompt, &mut cache, device.as_ref()).unwrap();
    s.fed
        .iter()
        .map(|&id| {
            let hidden = runner.forward_with(&[id], &mut cache, device.as_ref()).unwrap();
            runner.logits_with(&hidden, 0, 1, device.as_ref()).unwrap()
        })
        .collect()
}

/// The same logits from `decode_step` over every sequence running at each step.
fn logits_batched(base: &Llama, seqs: &[Sequence<'_>]) -> Vec<Vec<Vec<f32>>> {
    let runner = Runner::new(&Cpu, base).unwrap();
    let v = base.config.vocab_size;
    let mut caches: Vec<KvCache> = seqs.iter().map(|s| runner.cache(s.prompt.len() + s.fed.len()).unwrap()).collect();
    for (s, cache) in seqs.iter().zip(&mut caches) {
        let device = s.adapter.map(|a| runner.adapter(a).unwrap());
        runner.forward_with(&s.prompt, cache, device.as_ref()).unwrap();
    }
    let mut out: Vec<Vec<Vec<f32>>> = seqs.iter().map(|_| Vec::new()).collect();
    for step in 0.. {
        let running: Vec<usize> =
            (0..seqs.len()).filter(|&i| step >= seqs[i].joins && step - seqs[i].joins < seqs[i].fed.len()).collect();
        if running.is_empty() && seqs.iter().all(|s| step >= s.joins + s.fed.len()) {
            break;
        }
        let mut rows: Vec<Row<'_>> = Vec::new();
        for (i, cache) in caches.iter_mut().enumerate().filter(|(i, _)| running.contains(i)) {
            let s = &seqs[i];
            rows.push(Row { token: s.fed[step - s.joins], cache, adapter: s.adapter });
        }
        let logits = decode_step(&runner, &mut rows).unwrap();
        for (k, &i) in running.iter().enumerate() {
            out[i].push(logits[k * v..(k + 1) * v].to_vec());
        }
    }
    out
}

fn batched_equals_alone(base: &Llama, seqs: &[Sequence<'_>], case: &str) {
    let batched = logits_batched(base, seqs);
    for (i, s) in seqs.iter().enumerate() {
        let alone = logits_alone(base, s);
        assert_eq!(batched[i].len(), alone.len(), "{case}: sequence {i}");
        for (step, (b, a)) in batched[i].iter().zip(&alone).enumerate() {
            let same = b.iter().zip(a).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{case}: sequence {i}, step {step}: batched logits differ by {}",
                worst_difference(std::slice::from_ref(b), std::slice::from_ref(a))
            );
        }
    }
}

/// Six sequences of different lengths, for the base and two adapters, joining and leaving at different steps.
fn six<'a>(a: &'a UnmergedAdapter, b: &'a UnmergedAdapter, vocab: u32) -> Vec<Sequence<'a>> {
    let adapters = [None, Some(a), Some(b), Some(a), None, Some(b)];
    adapters
        .into_iter()
        .enumerate()
        .map(|(i, adapter)| {
            let id = |k: usize| ((i * 7 + k * 13 + 1) % vocab as usize) as u32;
            Sequence {
                adapter,
                prompt: (0..2 + i * 3).map(id).collect(),
                fed: (0..3 + i % 3).map(|k| id(k + 50)).collect(),
                joins: [0, 0, 1, 0, 2, 4][i],
            }
        })
        .collect()
}

/// Llama, the families whose block adds a q/k/v bias (Qwen2) or a per-head q/k norm (Qwen3), and Mistral's
/// sliding window of 4 (the six sequences hold 2 to 22 positions, so some rows attend to all of theirs and others
/// to their last 4).
#[test]
fn batched_decoding_equals_each_sequence_alone_on_tiny_models() {
    let dir = tempfile::tempdir().unwrap();
    for cfg in [
        TinyConfig { tied: true, ..Default::default() },
        TinyConfig { tied: false, ..Default::default() },
        TinyConfig { tied: true, arch: Arch::Qwen2, ..Default::default() },
        TinyConfig { tied: false, arch: Arch::Qwen3, ..Default::default() },
        TinyConfig { kv_heads: 1, sliding_window: Some(4), ..Default::default() },
        TinyConfig { tied: true, arch: Arch::Gemma3, layers: 6, ..Default::default() },
    ] {
        let base = tiny_from(dir.path(), cfg.clone());
        let plain = LoraConfig { r: 4, lora_alpha: 8.0, ..Default::default() };
        let trained = LoraConfig { train_embed_tokens: true, train_lm_head: true, ..plain.clone() };
        let a = adapter_with_nonzero_b(&base, plain).into_unmerged(&base.config).unwrap();
        let mut b = adapter_with_nonzero_b(&base, trained);
        for m in [&mut b.embed_tokens, &mut b.lm_head].into_iter().flatten() {
            m.iter_mut().enumerate().for_each(|(i, v)| *v += (i as f32 * 0.37).sin() * 0.1);
        }
        let b = b.into_unmerged(&base.config).unwrap();
        let case = format!("tiny {:?}, tied {}, window {:?}", cfg.arch, cfg.tied, cfg.sliding_window);
        batched_equals_alone(&base, &six(&a, &b, base.config.vocab_size as u32), &case);
    }
}

/// On the default model's Q4_1 blocks, up to four rows share each pass over a weight (the dot kernel), and the
/// answers stay those of each sequence alone.
#[test]
fn batched_decoding_equals_each_sequence_alone_on_the_default_model() {
    let base = load_base(&default_model().display().to_string(), true).unwrap();
    let config = LoraConfig { r: 8, lora_alpha: 16.0, ..Default::default() };
    let a = adapter_with_nonzero_b(&base, config.clone()).into_unmerged(&base.config).unwrap();
    let mut b = adapter_with_nonzero_b(&base, config);
    b.for_each_tensor_mut(|_, t| t.iter_mut().for_each(|v| *v *= -0.5));
    let b = b.into_unmerged(&base.config).unwrap();
    batched_equals_alone(&base, &six(&a, &b, 49152), "default model, Q4_1");
}
