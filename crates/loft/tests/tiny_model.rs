//! The forward pass on tiny random models against a plain f64 implementation of the transformers definition;
//! loading from GGUF (with llama.cpp's Q/K permutation), the errors for broken files, and the KV cache grown in use.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use common::tiny::{random_weights, reference_logits, write_gguf, TinyConfig};
use loft::model::{llama_from_gguf, KvCache};

fn max_rel_diff(model: &loft::model::Llama, want: &[Vec<f64>], got_hidden: &[f32]) -> f64 {
    let logits = model.logits(got_hidden);
    let v = model.config.vocab_size;
    let mut worst = 0.0f64;
    for (row, w) in logits.chunks_exact(v).zip(want) {
        for (a, b) in row.iter().zip(w) {
            worst = worst.max((*a as f64 - b).abs() / (1.0 + b.abs()));
        }
    }
    worst
}

#[test]
fn forward_matches_f64_reference_for_gqa_tied_and_untied() {
    for (seed, tied, kv_heads) in [(1, true, 2), (2, false, 4), (3, true, 1)] {
        let cfg = TinyConfig { tied, kv_heads, ..Default::default() };
        let w = random_weights(&cfg, seed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_gguf(&path, &cfg, &w);
        let file = gguf::GgufFile::open(&path).unwrap();
        let model = llama_from_gguf(&file).unwrap();
        assert_eq!(model.config.tie_word_embeddings, tied);
        let tokens: Vec<u32> = (0..19).map(|i| (i * 7 + 3) % cfg.vocab as u32).collect();
        let want = reference_logits(&cfg, &w, &tokens);

        let mut cache = KvCache::new(&model.config, tokens.len());
        let hidden = model.forward(&tokens, &mut cache).unwrap();
        let d = max_rel_diff(&model, &want, &hidden);
        assert!(d < 1e-4, "seed {seed}: full forward differs by {d}");

        // Prompt then one token at a time through the cache gives the same rows.
        let mut cache = KvCache::new(&model.config, tokens.len());
        let mut rows = model.forward(&tokens[..5], &mut cache).unwrap();
        for &id in &tokens[5..] {
            rows.extend(model.forward(&[id], &mut cache).unwrap());
        }
        let d = max_rel_diff(&model, &want, &rows);
        assert!(d < 1e-4, "seed {seed}: cached forward differs by {d}");
    }
}

fn load_error(edit: impl FnOnce(&mut common::tiny::Weights), arch: &str) -> String {
    let cfg = TinyConfig::default();
    let mut w = random_weights(&cfg, 7);
    edit(&mut w);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    write_gguf(&path, &cfg, &w);
    if arch != "llama" {
        // Rewrite with another architecture name.
        let file = gguf::GgufFile::open(&path).unwrap();
        let mut g = gguf::GgufWriter::new();
        for (k, v) in &file.metadata {
            let v = if k == "general.architecture" { gguf::Value::String(arch.into()) } else { v.clone() };
            g.add(k.clone(), v);
        }
        for t in &file.tensors {
            g.add_tensor(t.name.clone(), t.shape.clone(), t.dtype, file.tensor_bytes(t).to_vec()).unwrap();
        }
        g.write(&path).unwrap();
    }
    let file = gguf::GgufFile::open(&path).unwrap();
    match llama_from_gguf(&file) {
        Ok(_) => panic!("loaded a broken model"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_models_give_one_line_errors_naming_the_tensor() {
    let missing = load_error(
        |w| {
            w.remove("model.layers.1.mlp.up_proj.weight");
        },
        "llama",
    );
    assert!(missing.contains("blk.1.ffn_up.weight") && missing.contains("missing"), "{missing}");
    let misshaped = load_error(
        |w| {
            let e = w.get_mut("model.layers.0.self_attn.v_proj.weight").unwrap();
            e.0 = vec![8, 40];
            e.1 = vec![0.0; 320];
        },
        "llama",
    );
    assert!(misshaped.contains("blk.0.attn_v.weight") && misshaped.contains("[8, 40]"), "{misshaped}");
    let arch = load_error(|_| {}, "gpt2");
    assert!(arch.contains("general.architecture") && arch.contains("gpt2"), "{arch}");
    for msg in [missing, misshaped, arch] {
        assert!(!msg.contains('\n'), "multi-line error: {msg}");
    }
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let cfg = TinyConfig::default();
    let w = random_weights(&cfg, 9);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &cfg, &w);
    let model = llama_from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap();
    let mut cache = KvCache::new(&model.config, 4);
    let err = model.forward(&[1, 2, 3, 4, 5], &mut cache).unwrap_err().to_string();
    assert!(err.contains("do not fit the context"), "{err}");
    let err = model.forward(&[999], &mut cache).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

/// A cache grown while in use (`loft chat` starts small and doubles it) keeps its positions: decoding after
/// `reserve` gives exactly the logits of a cache that was large from the start.
#[test]
fn a_grown_cache_decodes_as_a_large_one() {
    let cfg = TinyConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &cfg, &random_weights(&cfg, 11));
    let model = llama_from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap();
    let runner = loft::model::Runner::new(&loft::engine::Cpu, &model).unwrap();
    let (prompt, next) = ([3u32, 1, 4, 1], [5u32, 9, 2]);
    let mut small = runner.cache(4).unwrap();
    let mut large = runner.cache(16).unwrap();
    runner.forward(&prompt, &mut small).unwrap();
    runner.forward(&prompt, &mut large).unwrap();
    assert!(runner.forward(&next[..1], &mut small).is_err(), "a full cache refuses another token");
    runner.reserve(&mut small, 16).unwrap();
    assert_eq!((small.len, small.capacity), (4, 16));
    for &t in &next {
        let (a, b) = (runner.forward(&[t], &mut small).unwrap(), runner.forward(&[t], &mut large).unwrap());
        assert_eq!(runner.logits(&a, 0, 1).unwrap(), runner.logits(&b, 0, 1).unwrap());
    }
}

/// The tokenizer of the tiny models that tests of plumbing train (common::tiny_bpe_model) is a real byte-level BPE:
/// the default model's specials, byte tokens and first merges, with its pre-tokenizer, special ids and chat
/// template. Text round-trips, splits more finely than with the full vocabulary but far from into bytes, and words
/// whose pieces the cut holds split as the full tokenizer splits them.
#[test]
fn the_tiny_bpe_model_carries_a_cut_of_the_default_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = loft::model::LoadedModel::load(common::tiny_bpe_model(dir.path()).to_str().unwrap()).unwrap();
    let full = loft::tokenizer::Tokenizer::from_gguf(&gguf::GgufFile::open(common::default_model()).unwrap()).unwrap();
    let (tok, cfg) = (&tiny.tokenizer, &tiny.model.config);
    assert_eq!(cfg.vocab_size, tok.vocab_size());
    assert!(tok.vocab_size() < full.vocab_size() / 10, "{} tokens", tok.vocab_size());
    let shape = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads);
    assert_eq!(shape, (2, 64, 4, 2));
    assert!(cfg.tie_word_embeddings);

    let (vocab, full_vocab) = (tok.to_vocab().unwrap(), full.to_vocab().unwrap());
    assert_eq!((&vocab.model, &vocab.pre), (&full_vocab.model, &full_vocab.pre));
    assert_eq!(vocab.merges[..], full_vocab.merges[..vocab.merges.len()], "the cut keeps a prefix of the merges");
    assert_eq!((tok.bos_token(), tok.eos_token()), (full.bos_token(), full.eos_token()));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert!(tok.chat_template().is_some() && tok.chat_template() == full.chat_template());
    assert_eq!(tok.encode("<|im_start|>user", false, true)[0], tok.bos_id().unwrap());

    let text = std::fs::read_to_string(common::reference_dir().join("apache-2.0.txt")).unwrap();
    let ids = tok.encode(&text, false, false);
    assert_eq!(tok.decode(&ids, false), text);
    let full_len = full.encode(&text, false, false).len();
    assert!(ids.len() > full_len && ids.len() < text.len() / 2, "{} tokens ({full_len} in full)", ids.len());

    let pieces = |t: &loft::tokenizer::Tokenizer, s: &str| -> Vec<String> {
        t.encode(s, false, false).iter().map(|&id| t.id_to_token(id).unwrap().to_string()).collect()
    };
    let mut alike = 0;
    for word in text.split_whitespace().filter(|w| w.chars().all(char::is_alphabetic)) {
        let word = format!(" {word}");
        let want = pieces(&full, &word);
        if want.iter().all(|p| tok.token_to_id(p).is_some()) {
            assert_eq!(pieces(tok, &word), want, "{word:?}");
            alike += 1;
        }
    }
    assert!(alike > 500, "only {alike} words of the Apache licence have all their pieces in the cut");
}
