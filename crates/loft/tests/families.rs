//! The model families beside Llama (issue 16), on tiny random models the tests build: Qwen2/2.5 (frozen q/k/v
//! biases) and Qwen3 (per-head q/k RMSNorm, head_dim apart from hidden / heads) load from a GGUF with llama.cpp's
//! `qwen2` / `qwen3` keys and from a Hugging Face folder, and run as the f64 reference written from transformers'
//! modeling_qwen2.py / modeling_qwen3.py (common::tiny::reference_logits); their LoRA gradients match finite
//! differences; an adapter survives PEFT's files, a merge into a Hugging Face folder with the family's config.json
//! and a GGUF export (read back by loft and by llama.cpp's gguf-py) with the same logits. Mistral is Llama plus its
//! sliding window, honoured in inference (full and cached), batched decoding and training, and kept through merge
//! and export; any other architecture is refused in one line.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use common::tiny::{self, random_weights, reference_logits, TinyConfig, Weights};
use common::{adapter_with_nonzero_b, mean_loss, random_batch};
use loft::data::Batch;
use loft::engine::Cpu;
use loft::export::{write_gguf_adapter, write_gguf_model, write_hf_folder, AdapterDtype, GgufQuant, WeightDtype};
use loft::lora::merge::merge_adapter;
use loft::lora::peft::{load_peft_adapter, save_peft_adapter};
use loft::lora::{Adapter, LoraConfig};
use loft::model::{llama_from_gguf, load_base, Arch, KvCache, Llama, LoadedModel, Runner};
use loft::rng::SplitMix64;
use loft::train::forward_backward::{forward_backward_host, TrainArena};

/// The tiny shapes of each family: tied and untied heads, GQA and MQA, and Qwen3's head_dim 12 ≠ 32 / 4.
fn shapes() -> Vec<TinyConfig> {
    let base = TinyConfig::default();
    vec![
        TinyConfig { arch: Arch::Qwen2, tied: true, kv_heads: 2, ..base.clone() },
        TinyConfig { arch: Arch::Qwen2, tied: false, kv_heads: 1, ..base.clone() },
        TinyConfig { arch: Arch::Qwen3, tied: true, kv_heads: 2, head_dim: Some(12), ..base.clone() },
        TinyConfig { arch: Arch::Qwen3, tied: false, kv_heads: 4, ..base.clone() },
        // Gemma 3: 6 layers so that the last is global (its own RoPE base), MQA as the 270M model, then GQA untied
        // with head_dim 12.
        TinyConfig { arch: Arch::Gemma3, tied: true, kv_heads: 1, layers: 6, rope_theta: 1e6, ..base.clone() },
        TinyConfig { arch: Arch::Gemma3, tied: false, layers: 6, head_dim: Some(12), rope_theta: 1e6, ..base },
    ]
}

fn tokens(cfg: &TinyConfig) -> Vec<u32> {
    (0..17).map(|i| (i * 7 + 3) % cfg.vocab as u32).collect()
}

/// max |a − b| / (1 + |b|) over the logits of `hidden` against the reference.
fn max_rel_diff(model: &Llama, want: &[Vec<f64>], hidden: &[f32]) -> f64 {
    let logits = model.logits(hidden);
    let mut worst = 0.0f64;
    for (row, w) in logits.chunks_exact(model.config.vocab_size).zip(want) {
        for (a, b) in row.iter().zip(w) {
            worst = worst.max((*a as f64 - b).abs() / (1.0 + b.abs()));
        }
    }
    worst
}

fn gguf_model(dir: &std::path::Path, cfg: &TinyConfig, w: &Weights) -> Llama {
    let path = dir.join("tiny.gguf");
    tiny::write_gguf(&path, cfg, w);
    llama_from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap()
}

#[test]
fn qwen_forward_matches_the_reference_from_gguf_and_hf_folder() {
    for (seed, cfg) in shapes().into_iter().enumerate() {
        let what = format!("{:?} tied={} kv_heads={}", cfg.arch, cfg.tied, cfg.kv_heads);
        let w = random_weights(&cfg, 40 + seed as u64);
        let toks = tokens(&cfg);
        let want = reference_logits(&cfg, &w, &toks);
        let dir = tempfile::tempdir().unwrap();

        let from_gguf = gguf_model(dir.path(), &cfg, &w);
        assert_eq!(from_gguf.config.arch, cfg.arch, "{what}");
        assert_eq!(from_gguf.config.head_dim, cfg.head_dim(), "{what}");
        let hf_dir = dir.path().join("hf");
        tiny::write_hf_weights(&hf_dir, &cfg, &w, serde_json::json!({}));
        let from_hf = load_base(hf_dir.to_str().unwrap(), false).unwrap();
        assert_eq!(from_hf.config, from_gguf.config, "{what}: GGUF and config.json disagree");

        for (source, model) in [("GGUF", &from_gguf), ("HF folder", &from_hf)] {
            let mut cache = KvCache::new(&model.config, toks.len());
            let d = max_rel_diff(model, &want, &model.forward(&toks, &mut cache).unwrap());
            assert!(d < 1e-4, "{what} from {source}: forward differs from the reference by {d}");
        }
        // A prompt, then one token at a time through the KV cache.
        let mut cache = KvCache::new(&from_gguf.config, toks.len());
        let mut rows = from_gguf.forward(&toks[..5], &mut cache).unwrap();
        for &id in &toks[5..] {
            rows.extend(from_gguf.forward(&[id], &mut cache).unwrap());
        }
        let d = max_rel_diff(&from_gguf, &want, &rows);
        assert!(d < 1e-4, "{what}: cached forward differs from the reference by {d}");
    }
}

/// Gemma 3's query_pre_attn_scalar apart from head_dim (as in Gemma 3 27B; only config.json can say so) scales
/// the softmax as transformers does; local and global layers take their own RoPE bases, so swapping them changes
/// the logits.
#[test]
fn gemma3_query_pre_attn_scalar_and_local_rope_follow_the_config() {
    let cfg = TinyConfig { query_pre_attn_scalar: Some(32.0), ..shapes()[4].clone() };
    let w = random_weights(&cfg, 77);
    let toks = tokens(&cfg);
    let want = reference_logits(&cfg, &w, &toks);
    let dir = tempfile::tempdir().unwrap();
    tiny::write_hf_weights(dir.path(), &cfg, &w, serde_json::json!({}));
    let model = load_base(dir.path().to_str().unwrap(), false).unwrap();
    assert_eq!(model.config.query_pre_attn_scalar, Some(32.0));
    assert_eq!(model.config.query_scale(), Some(0.5));
    let local = model.config.local_layers.as_ref().unwrap();
    assert_eq!(local.is_local, [true, true, true, true, true, false]);
    let mut cache = KvCache::new(&model.config, toks.len());
    let d = max_rel_diff(&model, &want, &model.forward(&toks, &mut cache).unwrap());
    assert!(d < 1e-4, "query_pre_attn_scalar 32: forward differs from the reference by {d}");
    let swapped = TinyConfig { rope_theta: tiny::GEMMA3_LOCAL_THETA, ..cfg };
    let other = reference_logits(&swapped, &w, &toks);
    assert!(max_rel_diff(&model, &other, &model.forward(&toks, &mut KvCache::new(&model.config, 17)).unwrap()) > 1e-3);
}

#[test]
fn a_missing_family_tensor_is_named() {
    for (arch, hf, stored) in [
        (Arch::Qwen2, "model.layers.1.self_attn.k_proj.bias", "blk.1.attn_k.bias"),
        (Arch::Qwen3, "model.layers.0.self_attn.q_norm.weight", "blk.0.attn_q_norm.weight"),
        (Arch::Gemma3, "model.layers.1.pre_feedforward_layernorm.weight", "blk.1.ffn_norm.weight"),
        (Arch::Gemma3, "model.layers.0.post_attention_layernorm.weight", "blk.0.post_attention_norm.weight"),
    ] {
        let cfg = TinyConfig { arch, ..TinyConfig::default() };
        let mut w = random_weights(&cfg, 3);
        w.remove(hf);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.gguf");
        tiny::write_gguf(&path, &cfg, &w);
        let err = llama_from_gguf(&gguf::GgufFile::open(&path).unwrap()).err().unwrap().to_string();
        assert!(err.contains(stored) && err.contains("missing") && !err.contains('\n'), "{err}");
        let hf_dir = dir.path().join("hf");
        tiny::write_hf_weights(&hf_dir, &cfg, &w, serde_json::json!({}));
        let err = load_base(hf_dir.to_str().unwrap(), false).err().unwrap().to_string();
        assert!(err.contains(hf) && err.contains("missing") && !err.contains('\n'), "{err}");
    }
}

fn gradients(model: &Llama, a: &Adapter, batch: &Batch, checkpointing: bool) -> (f64, Vec<f32>) {
    let mut arena = TrainArena::new(&Cpu, &model.config, &a.config, batch.b, batch.t, checkpointing).unwrap();
    let mut grads = a.zeros_like();
    let n = batch.n_targets();
    forward_backward_host(model, a, &mut grads, &mut arena, batch, 1.0 / n as f32, 5).unwrap();
    let mut flat = Vec::new();
    grads.for_each_tensor(|_, t| flat.extend_from_slice(t));
    (mean_loss(model, a, batch), flat)
}

/// The training forward (biases, per-head norms, Mistral's window) gives the inference forward's loss; the
/// backward through Qwen2's biases (nothing to train, dy passes), Qwen3's per-head norms and the window matches
/// central differences on a sample of every tensor of an adapter on all seven modules plus the embedding.
#[test]
fn qwen_lora_training_loss_and_gradients_are_right() {
    for cfg in [shapes()[1].clone(), shapes()[2].clone(), shapes()[4].clone(), shapes()[5].clone(), mistral()] {
        let dir = tempfile::tempdir().unwrap();
        let model = gguf_model(dir.path(), &cfg, &random_weights(&cfg, 9));
        let config = LoraConfig { r: 4, lora_alpha: 8.0, train_embed_tokens: true, ..Default::default() };
        let a = adapter_with_nonzero_b(&model, config);

        let toks = tokens(&cfg);
        let one = Batch::from_rows(std::slice::from_ref(&toks), &[toks.iter().map(|&t| t as i32).collect()]);
        let v = model.config.vocab_size;
        let inference = logits(&model, &toks, Some(&a));
        let nll: Vec<f64> = (0..toks.len() - 1)
            .map(|i| {
                let row = &inference[i * v..(i + 1) * v];
                loft::model::llama::log_sum_exp(row) - row[toks[i + 1] as usize] as f64
            })
            .collect();
        let want = nll.iter().sum::<f64>() / nll.len() as f64;
        let got = mean_loss(&model, &a, &one);
        assert!((got - want).abs() < 1e-5, "{:?}: training loss {got}, inference {want}", cfg.arch);
        let batch = random_batch(cfg.vocab as u32, 2, 9, 1);
        assert_eq!(model.config.sliding_window, cfg.sliding_window);
        let (l0, grads) = gradients(&model, &a, &batch, false);
        let (l1, grads_ckpt) = gradients(&model, &a, &batch, true);
        assert_eq!(l0, l1);
        assert_eq!(grads, grads_ckpt, "{:?}: checkpointing changed the gradients", cfg.arch);

        let eps = 1e-2f32;
        let mut rng = SplitMix64::new(8);
        let mut sizes = Vec::new();
        a.for_each_tensor(|name, t| sizes.push((name, t.len())));
        let (mut num, mut ana) = (Vec::new(), Vec::new());
        let mut offset = 0;
        for (name, len) in sizes {
            for _ in 0..3 {
                let i = (rng.next_u64() % len as u64) as usize;
                let probe = |delta: f32| {
                    let mut p = a.clone();
                    p.for_each_tensor_mut(|n, t| {
                        if n == name {
                            t[i] += delta;
                        }
                    });
                    mean_loss(&model, &p, &batch)
                };
                num.push(((probe(eps) - probe(-eps)) / (2.0 * eps as f64)) as f32);
                ana.push(grads[offset + i]);
            }
            offset += len;
        }
        let diff: f32 = num.iter().zip(&ana).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
        let norm: f32 = num.iter().map(|a| a * a).sum::<f32>().sqrt();
        let what = format!("{:?}, window {:?}", cfg.arch, cfg.sliding_window);
        eprintln!("{what}: relative error {:.2e} over {} entries (|g| = {norm:.3})", diff / norm, num.len());
        assert!(norm > 1e-3, "gradients vanished");
        assert!(diff / norm < 1e-2, "{:?}: analytic vs numeric gradient: relative error {}", cfg.arch, diff / norm);
    }
}

/// Logits [T, V] of `tokens` with `adapter` applied unmerged (or none).
fn logits(model: &Llama, tokens: &[u32], adapter: Option<&Adapter>) -> Vec<f32> {
    let run = Runner::new(&Cpu, model).unwrap();
    let host = adapter.map(|a| a.clone().into_unmerged(&model.config).unwrap());
    let dev = host.as_ref().map(|h| run.adapter(h).unwrap());
    let mut cache = run.cache(tokens.len()).unwrap();
    let hidden = run.forward_with(tokens, &mut cache, dev.as_ref()).unwrap();
    run.logits_with(&hidden, 0, tokens.len(), dev.as_ref()).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A tiny model of `cfg`'s family and shape with the default model's tokenizer cut small, as a GGUF loft loads
/// whole.
fn tiny_with_tokenizer(dir: &std::path::Path, cfg: TinyConfig) -> std::path::PathBuf {
    let source = gguf::GgufFile::open(common::default_model()).unwrap();
    let vocab = tiny::bpe_cut(&loft::tokenizer::GgufVocab::from_gguf(&source).unwrap(), 300);
    let cfg = TinyConfig { vocab: vocab.tokens.len(), ..cfg };
    let path = dir.join(format!("tiny-{}.gguf", cfg.arch.gguf_name()));
    tiny::write_gguf_with_vocab(&path, &cfg, &random_weights(&cfg, 12), &vocab);
    path
}

/// gguf-py's reading of `file`: (metadata keys, tensor name → values).
fn read_with_gguf_py(file: &std::path::Path) -> (Vec<String>, Vec<(String, Vec<f32>)>) {
    let out_dir = tempfile::tempdir().unwrap();
    let script = common::workspace().join("scripts/gguf_py_dump.py");
    let out =
        std::process::Command::new(common::gguf_py()).arg(&script).arg(file).arg(out_dir.path()).output().unwrap();
    assert!(out.status.success(), "gguf_py_dump failed: {}", String::from_utf8_lossy(&out.stderr));
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("index.json")).unwrap()).unwrap();
    let keys = index["metadata"].as_array().unwrap().iter().map(|m| m["key"].as_str().unwrap().to_string()).collect();
    let tensors = index["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let raw = std::fs::read(out_dir.path().join(t["file"].as_str().unwrap())).unwrap();
            let v = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (t["name"].as_str().unwrap().to_string(), v)
        })
        .collect();
    (keys, tensors)
}

/// An adapter on a Qwen model: PEFT files round-trip it; merged and written as a Hugging Face folder (the family's
/// config.json, the biases / q-k norms among the weights) and as an F32 GGUF (llama.cpp's `qwen2.*` / `qwen3.*`
/// keys, rows unpermuted, gguf-py reads every tensor as loft does), it gives the unmerged adapter's logits; its
/// llama.cpp LoRA GGUF names the family and keeps B's rows as PEFT has them.
#[test]
fn qwen_adapters_merge_and_export_with_the_familys_names() {
    for (arch, tied) in [(Arch::Qwen2, true), (Arch::Qwen3, false), (Arch::Gemma3, true)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TinyConfig { arch, tied, head_dim: Some(16), ..TinyConfig::default() };
        let path = tiny_with_tokenizer(dir.path(), cfg);
        let spec = path.to_str().unwrap();
        let loaded = LoadedModel::load(spec).unwrap();
        let model = &loaded.model;
        let config = LoraConfig { r: 4, lora_alpha: 8.0, ..Default::default() };
        let adapter = adapter_with_nonzero_b(model, config);
        let toks: Vec<u32> = loaded.tokenizer.encode("The quick brown fox jumps over the lazy dog.", false, false);
        let want = logits(model, &toks, Some(&adapter));
        assert!(max_abs_diff(&want, &logits(model, &toks, None)) > 1e-3, "the adapter changes nothing");

        // PEFT's files.
        let peft_dir = dir.path().join("peft");
        save_peft_adapter(&adapter, model.config.hidden_size, &peft_dir, "tiny").unwrap();
        let back = load_peft_adapter(&peft_dir, model).unwrap();
        assert_eq!(max_abs_diff(&logits(model, &toks, Some(&back)), &want), 0.0, "{arch:?}: PEFT round trip");

        // Merged, as a Hugging Face folder.
        let mut merged = LoadedModel::load(spec).unwrap();
        merge_adapter(&mut merged.model, &adapter).unwrap();
        let d = max_abs_diff(&logits(&merged.model, &toks, None), &want);
        assert!(d < 1e-4, "{arch:?}: merged in memory differs by {d}");
        let hf = dir.path().join("merged-hf");
        write_hf_folder(&hf, &merged.model, &merged.tokenizer, WeightDtype::F32, usize::MAX).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["model_type"], arch.model_type());
        assert_eq!(config["architectures"][0], arch.hf_class());
        assert_eq!(config["head_dim"], 16);
        let from_hf = LoadedModel::load(hf.to_str().unwrap()).unwrap();
        assert_eq!(from_hf.model.config, merged.model.config);
        let d = max_abs_diff(&logits(&from_hf.model, &toks, None), &want);
        assert!(d < 1e-4, "{arch:?}: merged HF folder differs by {d}");

        // Merged, as a GGUF.
        let out = dir.path().join("merged.gguf");
        write_gguf_model(&out, &merged.model, &merged.tokenizer, GgufQuant::F32, "tiny").unwrap();
        let file = gguf::GgufFile::open(&out).unwrap();
        assert_eq!(file.get_str("general.architecture").unwrap(), arch.gguf_name());
        let family_tensor = match arch {
            Arch::Qwen2 => "blk.1.attn_v.bias",
            Arch::Gemma3 => "blk.1.post_ffw_norm.weight",
            _ => "blk.1.attn_k_norm.weight",
        };
        assert!(file.tensor_info(family_tensor).is_some(), "{arch:?}: no {family_tensor}");
        let from_gguf = llama_from_gguf(&file).unwrap();
        let d = max_abs_diff(&logits(&from_gguf, &toks, None), &want);
        assert!(d < 1e-4, "{arch:?}: merged GGUF differs by {d}");
        let (keys, tensors) = read_with_gguf_py(&out);
        let a = arch.gguf_name();
        for k in ["block_count", "embedding_length", "attention.head_count_kv", "attention.key_length"] {
            assert!(keys.contains(&format!("{a}.{k}")), "gguf-py does not see {a}.{k}");
        }
        assert_eq!(tensors.len(), file.tensors.len());
        for (name, theirs) in &tensors {
            assert!(gguf::names::gguf_to_hf_for(a, name).is_some(), "'{name}' is not a llama.cpp tensor name");
            assert!(file.dequantize(name).unwrap() == *theirs, "{name}: gguf-py reads other values");
        }

        // llama.cpp's LoRA GGUF: the family's architecture, and (no permutation for Qwen) B as PEFT has it.
        let lora_out = dir.path().join("adapter.gguf");
        write_gguf_adapter(&lora_out, &adapter, model, AdapterDtype::F32, "tiny").unwrap();
        let lora = gguf::GgufFile::open(&lora_out).unwrap();
        assert_eq!(lora.get_str("general.architecture").unwrap(), arch.gguf_name());
        let b = &adapter.layers[0][0].as_ref().unwrap().b;
        assert_eq!(&lora.dequantize("blk.0.attn_q.weight.lora_b").unwrap(), b);
    }
}

/// A tiny Mistral: Llama's block, MQA, and a sliding window of 4 positions, narrower than the 17 tokens it runs.
fn mistral() -> TinyConfig {
    TinyConfig { kv_heads: 1, sliding_window: Some(4), ..TinyConfig::default() }
}

/// Mistral's window, from its config.json (`MistralForCausalLM`, `sliding_window`) and from a GGUF
/// (`llama.attention.sliding_window`): the forward over the whole sequence, and a prompt then one token at a time
/// through the KV cache, run as the f64 reference masked as modeling_mistral.py masks (which differs from the
/// unmasked one by far more than the tolerance); a window as long as the sequence gives the unwindowed bits.
#[test]
fn mistral_honours_its_sliding_window() {
    let cfg = mistral();
    let w = random_weights(&cfg, 21);
    let toks = tokens(&cfg);
    let want = reference_logits(&cfg, &w, &toks);
    let unmasked = reference_logits(&TinyConfig { sliding_window: None, ..cfg.clone() }, &w, &toks);
    let masked_away = want.iter().flatten().zip(unmasked.iter().flatten()).map(|(a, b)| (a - b).abs());
    assert!(masked_away.fold(0.0, f64::max) > 1e-1, "the window changes nothing on these weights");

    let dir = tempfile::tempdir().unwrap();
    let from_gguf = gguf_model(dir.path(), &cfg, &w);
    let hf_dir = dir.path().join("hf");
    tiny::write_hf_weights(&hf_dir, &cfg, &w, serde_json::json!({}));
    let from_hf = load_base(hf_dir.to_str().unwrap(), false).unwrap();
    assert_eq!((from_hf.config.arch, from_hf.config.sliding_window), (Arch::Llama, Some(4)));
    assert_eq!(from_hf.config, from_gguf.config, "GGUF and config.json disagree");
    for (source, model) in [("GGUF", &from_gguf), ("HF folder", &from_hf)] {
        let mut cache = KvCache::new(&model.config, toks.len());
        let d = max_rel_diff(model, &want, &model.forward(&toks, &mut cache).unwrap());
        assert!(d < 1e-4, "mistral from {source}: forward differs from the reference by {d}");
    }
    let mut cache = KvCache::new(&from_gguf.config, toks.len());
    let full = from_gguf.forward(&toks, &mut cache).unwrap();
    for prompt in [1, 3, 5] {
        let mut cache = KvCache::new(&from_gguf.config, toks.len());
        let mut rows = from_gguf.forward(&toks[..prompt], &mut cache).unwrap();
        for &id in &toks[prompt..] {
            rows.extend(from_gguf.forward(&[id], &mut cache).unwrap());
        }
        let d = max_rel_diff(&from_gguf, &want, &rows);
        assert!(d < 1e-4, "prompt of {prompt}: cached forward differs from the reference by {d}");
        let worst = rows.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "prompt of {prompt}: cached forward differs from the full one by {worst}");
    }

    let mut wide = gguf_model(dir.path(), &cfg, &w);
    let run = |model: &Llama| model.forward(&toks, &mut KvCache::new(&model.config, toks.len())).unwrap();
    wide.config.sliding_window = None;
    let none = run(&wide);
    for window in [toks.len(), toks.len() + 1, 1 << 20] {
        wide.config.sliding_window = Some(window);
        assert!(run(&wide) == none, "window {window}: not the same bits as no window");
    }
}

/// Mistral's config.json: a window below the context is kept, null or one as wide as the context is none, 0 is an
/// error; Llama's ignores the key (transformers' Llama does); Qwen2 with its window switched on is refused (its
/// window covers only the layers from max_window_layers on). A GGUF's window of 0 is none (llama.cpp's reading), and
/// a per-layer pattern is refused. Errors are one line naming the file and key.
#[test]
fn the_window_is_read_from_config_json_and_gguf() {
    let cfg = TinyConfig { kv_heads: 1, ..TinyConfig::default() };
    let w = random_weights(&cfg, 21);
    let hf = |extra: serde_json::Value| {
        let dir = tempfile::tempdir().unwrap();
        tiny::write_hf_weights(dir.path(), &cfg, &w, extra);
        load_base(dir.path().to_str().unwrap(), false).map(|m| m.config.sliding_window)
    };
    let mistral = |window: serde_json::Value, context: usize| {
        serde_json::json!({
            "model_type": "mistral", "architectures": ["MistralForCausalLM"],
            "sliding_window": window, "max_position_embeddings": context,
        })
    };
    assert_eq!(hf(mistral(serde_json::Value::Null, 32768)).unwrap(), None);
    assert_eq!(hf(mistral(256.into(), 256)).unwrap(), None);
    assert_eq!(hf(mistral(4096.into(), 32768)).unwrap(), Some(4096));
    assert_eq!(hf(serde_json::json!({ "sliding_window": 4, "max_position_embeddings": 32768 })).unwrap(), None);
    let err = hf(mistral(0.into(), 32768)).err().unwrap().to_string();
    assert!(err.contains("sliding_window = 0") && err.contains("config.json") && !err.contains('\n'), "{err}");
    let qwen = TinyConfig { arch: Arch::Qwen2, ..TinyConfig::default() };
    let dir = tempfile::tempdir().unwrap();
    let window_on = serde_json::json!({ "use_sliding_window": true, "max_position_embeddings": 32768 });
    tiny::write_hf_weights(dir.path(), &qwen, &random_weights(&qwen, 2), window_on);
    let err = load_base(dir.path().to_str().unwrap(), false).err().unwrap().to_string();
    assert!(err.contains("sliding_window = 4096") && err.contains("qwen2") && !err.contains('\n'), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let with_key = |key: &str, value: gguf::Value| {
        tiny::write_gguf(&path, &cfg, &w);
        let file = gguf::GgufFile::open(&path).unwrap();
        let mut g = gguf::GgufWriter::new();
        for (k, v) in &file.metadata {
            g.add(k.clone(), v.clone());
        }
        g.add(key, value);
        for t in &file.tensors {
            g.add_tensor(t.name.clone(), t.shape.clone(), t.dtype, file.tensor_bytes(t).to_vec()).unwrap();
        }
        let out = dir.path().join("keyed.gguf");
        g.write(&out).unwrap();
        llama_from_gguf(&gguf::GgufFile::open(&out).unwrap()).map(|m| m.config.sliding_window)
    };
    let window = gguf::names::attention_sliding_window("llama");
    assert_eq!(with_key(&window, gguf::Value::U32(0)).unwrap(), None);
    assert_eq!(with_key(&window, gguf::Value::U32(256)).unwrap(), None);
    assert_eq!(with_key(&window, gguf::Value::U32(5)).unwrap(), Some(5));
    let pattern = gguf::names::attention_sliding_window_pattern("llama");
    let err = with_key(&pattern, gguf::Value::U32(6)).err().unwrap().to_string();
    assert!(err.contains("llama.attention.sliding_window_pattern") && !err.contains('\n'), "{err}");
}

/// An adapter on a Mistral with a window: merged into a Hugging Face folder, its config.json is transformers'
/// Mistral's with the window (Llama's class would drop it); exported to GGUF, `llama.attention.sliding_window`
/// carries it (gguf-py reads the key); both read back to the same config and the unmerged adapter's logits.
#[test]
fn mistral_keeps_its_window_through_merge_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_with_tokenizer(dir.path(), TinyConfig { head_dim: Some(16), ..mistral() });
    let spec = path.to_str().unwrap();
    let loaded = LoadedModel::load(spec).unwrap();
    let model = &loaded.model;
    assert_eq!(model.config.sliding_window, Some(4));
    let adapter = adapter_with_nonzero_b(model, LoraConfig { r: 4, lora_alpha: 8.0, ..Default::default() });
    let toks: Vec<u32> = loaded.tokenizer.encode("The quick brown fox jumps over the lazy dog.", false, false);
    assert!(toks.len() > 8, "{} tokens do not reach past the window", toks.len());
    let want = logits(model, &toks, Some(&adapter));

    let mut merged = LoadedModel::load(spec).unwrap();
    merge_adapter(&mut merged.model, &adapter).unwrap();
    let hf = dir.path().join("merged-hf");
    write_hf_folder(&hf, &merged.model, &merged.tokenizer, WeightDtype::F32, usize::MAX).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "MistralForCausalLM");
    assert_eq!((&config["model_type"], &config["sliding_window"]), (&"mistral".into(), &4.into()));
    let from_hf = LoadedModel::load(hf.to_str().unwrap()).unwrap();
    assert_eq!(from_hf.model.config, merged.model.config);
    let d = max_abs_diff(&logits(&from_hf.model, &toks, None), &want);
    assert!(d < 1e-4, "merged HF folder differs by {d}");

    let out = dir.path().join("merged.gguf");
    write_gguf_model(&out, &merged.model, &merged.tokenizer, GgufQuant::F32, "tiny").unwrap();
    let file = gguf::GgufFile::open(&out).unwrap();
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_u64("llama.attention.sliding_window").unwrap(), 4);
    let from_gguf = llama_from_gguf(&file).unwrap();
    assert_eq!(from_gguf.config, merged.model.config);
    let d = max_abs_diff(&logits(&from_gguf, &toks, None), &want);
    assert!(d < 1e-4, "merged GGUF differs by {d}");
    let (keys, _) = read_with_gguf_py(&out);
    assert!(keys.contains(&"llama.attention.sliding_window".to_string()), "gguf-py does not see the window");
}

#[test]
fn an_unknown_architecture_is_one_line_naming_the_known_ones() {
    let cfg = TinyConfig::default();
    let w = random_weights(&cfg, 5);
    let dir = tempfile::tempdir().unwrap();
    tiny::write_hf_weights(dir.path(), &cfg, &w, serde_json::json!({ "model_type": "gemma2" }));
    let err = load_base(dir.path().to_str().unwrap(), false).err().unwrap();
    let line = err.to_string();
    assert!(line.contains("model_type is 'gemma2'"), "{line}");
    assert!(line.contains("'llama', 'qwen2', 'qwen3', 'gemma3_text', 'mistral'") && !line.contains('\n'), "{line}");

    let path = dir.path().join("gemma.gguf");
    tiny::write_gguf(&path, &cfg, &w);
    let file = gguf::GgufFile::open(&path).unwrap();
    let mut g = gguf::GgufWriter::new();
    for (k, v) in &file.metadata {
        let v = if k == "general.architecture" { gguf::Value::String("gemma2".into()) } else { v.clone() };
        g.add(k.clone(), v);
    }
    let renamed = dir.path().join("renamed.gguf");
    g.write(&renamed).unwrap();
    let err = llama_from_gguf(&gguf::GgufFile::open(&renamed).unwrap()).err().unwrap().to_string();
    assert!(
        err.contains("general.architecture is 'gemma2'") && err.contains("'llama', 'qwen2', 'qwen3', 'gemma3'"),
        "{err}"
    );
}
