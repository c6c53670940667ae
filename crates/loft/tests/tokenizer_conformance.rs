//! The tokenizer against references: llama.cpp's vocabulary tests (`models/ggml-vocab-*.gguf` with `.inp`
//! strings and `.out` ids, produced by llama.cpp's `tests/test-tokenizer-0.cpp`, which tokenizes with
//! add_special = false, parse_special = false), and transformers' ids for the default model
//! (`reference/smollm2-135m.json`).

mod common;

use loft::tokenizer::{GgufVocab, StreamDecoder, Tokenizer};

/// The test strings and expected ids of one vocabulary, split as test-tokenizer-0.cpp splits them.
fn vocab_cases(dir: &std::path::Path, name: &str) -> Vec<(String, Vec<u32>)> {
    let base = dir.join(format!("ggml-vocab-{name}.gguf"));
    let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).expect("read .inp");
    let out = std::fs::read_to_string(base.with_extension("gguf.out")).expect("read .out");
    let mut texts: Vec<String> = inp.split("\n__ggml_vocab_test__\n").map(str::to_owned).collect();
    if texts.last().is_some_and(|t| t.is_empty()) {
        texts.pop();
    }
    let ids: Vec<Vec<u32>> =
        out.lines().map(|l| l.split_whitespace().map(|t| t.parse().expect("an id")).collect()).collect();
    assert_eq!(texts.len(), ids.len(), "{name}: .inp and .out disagree on the number of tests");
    texts.into_iter().zip(ids).collect()
}

fn load_vocab(dir: &std::path::Path, name: &str) -> Result<Tokenizer, String> {
    let file = gguf::GgufFile::open(dir.join(format!("ggml-vocab-{name}.gguf"))).map_err(|e| e.to_string())?;
    Tokenizer::from_gguf(&file).map_err(|e| e.to_string())
}

/// Failures of one vocabulary, as printable lines.
fn check_vocab(dir: &std::path::Path, name: &str) -> Result<Vec<String>, String> {
    let tok = load_vocab(dir, name)?;
    let mut failures = Vec::new();
    for (text, want) in vocab_cases(dir, name) {
        let got = tok.encode(&text, false, false);
        if got != want {
            failures.push(format!("{name}: {text:?}\n   want {want:?}\n   got  {got:?}"));
        }
    }
    Ok(failures)
}

#[test]
fn llama_cpp_vocab_tests_pass_for_the_required_vocabularies() {
    let dir = common::llama_cpp_models();
    let mut all = Vec::new();
    for name in ["llama-bpe", "llama-spm", "gpt-2", "qwen2"] {
        match check_vocab(&dir, name) {
            Ok(failures) => all.extend(failures),
            Err(e) => all.push(format!("{name}: does not load: {e}")),
        }
    }
    assert!(all.is_empty(), "{} failures:\n{}", all.len(), all.join("\n"));
}

/// The other vocabularies llama.cpp ships tests for that loft supports. Not supported: bert-bge (WordPiece),
/// gemma-4 (`gemma4` model), deepseek-llm (its pre-tokenizer is not in loft's table).
#[test]
fn llama_cpp_vocab_tests_pass_for_the_other_supported_vocabularies() {
    let dir = common::llama_cpp_models();
    let mut all = Vec::new();
    for name in PASSING_OTHERS {
        match check_vocab(&dir, name) {
            Ok(failures) => all.extend(failures),
            Err(e) => all.push(format!("{name}: does not load: {e}")),
        }
    }
    assert!(all.is_empty(), "{} failures:\n{}", all.len(), all.join("\n"));
}

const PASSING_OTHERS: &[&str] =
    &["command-r", "deepseek-coder", "falcon", "mpt", "phi-3", "qwen35", "refact", "starcoder"];

/// Every vocabulary llama.cpp ships tests for either passes all of them or is one loft refuses, at load, with a
/// one-line error (never a wrong split): the unsupported ones are exactly those named here.
#[test]
fn every_llama_cpp_vocabulary_passes_or_is_refused_at_load() {
    const UNSUPPORTED: [&str; 3] = ["bert-bge", "deepseek-llm", "gemma-4"];
    let dir = common::llama_cpp_models();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list models")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|f| f.strip_prefix("ggml-vocab-")?.strip_suffix(".gguf.inp").map(str::to_owned))
        .collect();
    names.sort();
    assert!(names.len() >= 15, "expected llama.cpp's test vocabularies in {}, found {names:?}", dir.display());
    let mut problems = Vec::new();
    for name in names {
        let total = vocab_cases(&dir, &name).len();
        match (check_vocab(&dir, &name), UNSUPPORTED.contains(&name.as_str())) {
            (Ok(f), false) if f.is_empty() => eprintln!("vocab {name}: {total}/{total} pass"),
            (Ok(f), false) => {
                problems.push(format!("{name}: {}/{total} pass; first failure: {}", total - f.len(), f[0]))
            }
            (Ok(_), true) => problems.push(format!("{name}: now loads; move it out of UNSUPPORTED")),
            (Err(e), true) if !e.contains('\n') => eprintln!("vocab {name}: refused: {e}"),
            (Err(e), _) => problems.push(format!("{name}: {e}")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn default_tokenizer() -> Tokenizer {
    let file = gguf::GgufFile::open(common::default_model()).expect("open the default model");
    Tokenizer::from_gguf(&file).expect("tokenizer of the default model")
}

/// The default model's tokenizer as transformers builds it from the GGUF, which produced the reference ids:
/// transformers ignores `tokenizer.ggml.pre` and pre-tokenizes every `gpt2` vocabulary with GPT-2's regex,
/// where llama.cpp (and SmolLM2's own tokenizer.json) first isolate each digit (`smollm`).
fn transformers_gguf_tokenizer() -> Tokenizer {
    let file = gguf::GgufFile::open(common::default_model()).expect("open the default model");
    let mut vocab = GgufVocab::from_gguf(&file).expect("vocab of the default model");
    assert_eq!(vocab.pre.as_deref(), Some("smollm"));
    vocab.pre = Some("gpt-2".into());
    Tokenizer::from_vocab(vocab).expect("tokenizer")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn apache_text() -> String {
    std::fs::read_to_string(common::reference_dir().join("apache-2.0.txt")).expect("apache text")
}

/// The reference texts of the default model with their transformers ids (special tokens parsed, no BOS);
/// for the Apache text, the ids of its first 2000 tokens.
fn reference_texts() -> Vec<(String, Vec<u32>)> {
    let reference = common::reference();
    let mut cases: Vec<(String, Vec<u32>)> = reference["tokenizer_examples"]
        .as_object()
        .expect("tokenizer_examples")
        .iter()
        .map(|(text, v)| (text.clone(), ids(v)))
        .collect();
    cases.push((apache_text(), ids(&reference["apache_2_0_text"]["token_ids"])));
    cases
}

fn first_2000(ids: &[u32]) -> &[u32] {
    &ids[..ids.len().min(2000)]
}

#[test]
fn default_model_matches_transformers_ids() {
    let tok = transformers_gguf_tokenizer();
    for (text, want) in reference_texts() {
        let got = tok.encode(&text, false, true);
        let got = if want.len() == 2000 { first_2000(&got) } else { &got[..] };
        assert_eq!(got, want, "{:?}…", text.chars().take(40).collect::<String>());
        assert_eq!(tok.decode(&tok.encode(&text, false, true), false), text);
    }
    let n = tok.encode(&apache_text(), false, false).len();
    assert_eq!(n as u64, common::reference()["apache_2_0_text"]["tokens_in_file"].as_u64().expect("count"));
}

/// With its own pre-tokenizer (`smollm`, as llama.cpp runs it) the default model differs from the
/// transformers reference only where whitespace runs into a digit: "\n\n   1." is `"\n\n   "`, `"1"` there
/// and `"\n\n  "`, `" 1"` in the reference.
#[test]
fn default_model_differs_from_transformers_only_before_digits() {
    let tok = default_tokenizer();
    for (text, want) in reference_texts() {
        let got = tok.encode(&text, false, true);
        assert_eq!(tok.decode(&got, false), text);
        let got = if want.len() == 2000 { first_2000(&got) } else { &got[..] };
        // Walk both sequences, resynchronising at equal decoded prefixes.
        let (mut i, mut j) = (0, 0);
        while i < got.len() && j < want.len() {
            if got[i] == want[j] {
                (i, j) = (i + 1, j + 1);
                continue;
            }
            let (mut a, mut b) = (tok.decode(&got[i..=i], false), tok.decode(&want[j..=j], false));
            let (start_i, start_j) = (i, j);
            (i, j) = (i + 1, j + 1);
            while a != b && i < got.len() && j < want.len() {
                if a.len() < b.len() {
                    a += &tok.decode(&got[i..=i], false);
                    i += 1;
                } else {
                    b += &tok.decode(&want[j..=j], false);
                    j += 1;
                }
            }
            let trimmed = a.trim_start();
            assert!(
                a.len() > trimmed.len() && trimmed.chars().all(|c| c.is_ascii_digit()),
                "ids {start_i}/{start_j}: {a:?} is not whitespace then digits"
            );
        }
    }
}

#[test]
fn default_model_chat_prompt_round_trips_with_special_tokens() {
    let tok = default_tokenizer();
    let want = ids(&common::reference()["chat_greedy"]["prompt_ids"]);
    let text = tok.decode(&want, false);
    assert!(text.starts_with("<|im_start|>system\n"), "{text:?}");
    assert_eq!(tok.encode(&text, false, true), want);
    // Without parse_special the markers are plain text.
    assert!(!tok.encode(&text, false, false).contains(&1));
    // Skipping special tokens drops the markers only.
    assert!(!tok.decode(&want, true).contains("<|im_start|>"));
}

#[test]
fn default_model_special_tokens() {
    let tok = default_tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.eot_id(), tok.pad_id()), (Some(1), Some(2), Some(2), Some(2)));
    assert_eq!((tok.bos_token(), tok.eos_token()), (Some("<|im_start|>"), Some("<|im_end|>")));
    assert!(!tok.add_bos());
    assert_eq!(tok.encode("Hi", true, false), tok.encode("Hi", false, false));
    assert!(tok.is_control(1) && tok.is_control(0) && !tok.is_control(100));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.id_to_token(2), Some("<|im_end|>"));
    assert!(tok.chat_template().is_some_and(|t| t.contains("<|im_start|>")));
    assert_eq!(tok.token_bytes(2), b"<|im_end|>");
}

#[test]
fn stream_decoder_holds_back_partial_characters() {
    let tok = default_tokenizer();
    let text = "Grüße, 東京 🦙 and ✅ done.";
    let ids = tok.encode(text, false, false);
    let mut decoder = StreamDecoder::new(&tok);
    let mut out = String::new();
    for &id in &ids {
        let piece = decoder.push(id);
        out.push_str(&piece);
    }
    out.push_str(&decoder.finish());
    assert_eq!(out, text);
    // The llama emoji is four bytes split over byte tokens: nothing comes out until it is complete.
    let llama = tok.encode("🦙", false, false);
    assert!(llama.len() > 1, "{llama:?}");
    let mut decoder = StreamDecoder::new(&tok);
    let (last, first) = llama.split_last().expect("ids");
    for &id in first {
        assert_eq!(decoder.push(id), "");
    }
    assert_eq!(decoder.push(*last), "🦙");
}

#[test]
fn hf_tokenizer_json_round_trip_gives_the_same_ids() {
    let tok = default_tokenizer();
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("tokenizer.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&tok.hf_tokenizer_json()).expect("json")).expect("write");
    let config = serde_json::json!({
        "bos_token": tok.bos_token(), "eos_token": tok.eos_token(), "add_bos_token": tok.add_bos(),
        "pad_token": tok.pad_id().and_then(|id| tok.id_to_token(id)), "chat_template": tok.chat_template(),
    });
    let config_path = dir.path().join("tokenizer_config.json");
    std::fs::write(&config_path, config.to_string()).expect("write");

    let hf = Tokenizer::from_hf_files(&json_path, Some(&config_path)).expect("load the written tokenizer.json");
    for (text, _) in reference_texts() {
        assert_eq!(hf.encode(&text, false, true), tok.encode(&text, false, true));
        assert_eq!(hf.encode(&text, false, false), tok.encode(&text, false, false));
        assert_eq!(hf.decode(&hf.encode(&text, false, true), false), text);
    }
    let chat = ids(&common::reference()["chat_greedy"]["prompt_ids"]);
    assert_eq!(hf.encode(&tok.decode(&chat, false), false, true), chat);
    assert_eq!((hf.bos_id(), hf.eos_id(), hf.pad_id(), hf.add_bos()), (Some(1), Some(2), Some(2), false));
    assert_eq!(hf.chat_template(), tok.chat_template());
    // The GGUF view read back from tokenizer.json is the one it was written from.
    let (a, b) = (tok.to_vocab().expect("vocab"), hf.to_vocab().expect("vocab"));
    assert_eq!((&a.model, &a.pre, &a.tokens, &a.merges), (&b.model, &b.pre, &b.tokens, &b.merges));
    assert_eq!(a.token_types, b.token_types);
}

#[test]
fn hf_tokenizer_json_round_trip_for_llama_cpp_vocabularies() {
    let dir = common::llama_cpp_models();
    for name in ["llama-bpe", "qwen2", "gpt-2"] {
        let tok = load_vocab(&dir, name).expect("load");
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("tokenizer.json");
        std::fs::write(&path, tok.hf_tokenizer_json().to_string()).expect("write");
        let hf = Tokenizer::from_hf_files(&path, None).expect("load the written tokenizer.json");
        assert_eq!(hf.to_vocab().and_then(|v| v.pre.clone()), tok.to_vocab().and_then(|v| v.pre.clone()), "{name}");
        for (text, want) in vocab_cases(&dir, name) {
            assert_eq!(hf.encode(&text, false, false), want, "{name}: {text:?}");
        }
    }
}

#[test]
fn decode_inverts_encode_on_llama_cpp_test_strings() {
    let dir = common::llama_cpp_models();
    for name in ["llama-bpe", "llama-spm", "gpt-2", "qwen2", "phi-3"] {
        let tok = load_vocab(&dir, name).expect("load");
        for (text, want) in vocab_cases(&dir, name) {
            assert_eq!(tok.decode(&want, false), text, "{name}");
            let mut stream = StreamDecoder::new(&tok);
            let mut streamed: String = want.iter().map(|&id| stream.push(id)).collect();
            streamed += &stream.finish();
            // Streaming keeps SentencePiece's prefix space (it cannot know which token is first).
            let streamed = if tok.to_vocab().is_some_and(|v| v.model == "llama") {
                streamed.strip_prefix(' ').map(str::to_owned).unwrap_or(streamed)
            } else {
                streamed
            };
            assert_eq!(streamed, text, "{name}");
        }
    }
}

#[test]
fn sentencepiece_adds_bos_and_prefix_space() {
    let dir = common::llama_cpp_models();
    let tok = load_vocab(&dir, "llama-spm").expect("load");
    assert!(tok.add_bos());
    let ids = tok.encode("Hello world", true, false);
    assert_eq!(ids[0], tok.bos_id().expect("bos"));
    assert_eq!(&ids[1..], tok.encode("Hello world", false, false));
    // Special tokens in the text: a space is prefixed again after each.
    let with_special = tok.encode("<s>Hello", false, true);
    assert_eq!(with_special, [&[1][..], &tok.encode("Hello", false, false)].concat());
    assert_eq!(tok.decode(&tok.encode("Hello world", true, false), true), "Hello world");
    assert_eq!(tok.decode(&tok.encode("Hello world", true, false), false), "<s> Hello world");
}

/// SentencePiece has scores, not merges; the written tokenizer.json derives merges from them, as
/// transformers does for Llama; the `tokenizers` library must then encode llama.cpp's test strings the same.
#[test]
fn sentencepiece_tokenizer_json_round_trip() {
    let dir = common::llama_cpp_models();
    let tok = load_vocab(&dir, "llama-spm").expect("load");
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("tokenizer.json");
    std::fs::write(&path, tok.hf_tokenizer_json().to_string()).expect("write");
    let hf = Tokenizer::from_hf_files(&path, None).expect("load the written tokenizer.json");
    let cases = vocab_cases(&dir, "llama-spm");
    for (text, want) in &cases {
        assert_eq!(hf.encode(text, false, false), *want, "{text:?}");
        assert_eq!(hf.decode(want, false), *text);
    }
    // No tokenizer_config.json: BOS is found in the post-processor, which adds it.
    assert_eq!((hf.bos_id(), hf.add_bos()), (Some(1), true));
    assert_eq!(hf.encode("Hello", true, false), tok.encode("Hello", true, false));
}

#[test]
fn bad_vocabularies_are_refused_with_the_key_named() {
    let tiny = || GgufVocab {
        model: "gpt2".into(),
        pre: Some("gpt-2".into()),
        tokens: ["a", "b", "ab"].map(String::from).to_vec(),
        merges: vec!["a b".into()],
        ..GgufVocab::default()
    };
    assert_eq!(Tokenizer::from_vocab(tiny()).expect("valid").encode("abba", false, false), [2, 1, 0]);
    let err = |v: GgufVocab| Tokenizer::from_vocab(v).err().map(|e| e.to_string()).unwrap_or_default();
    let hint = |v: GgufVocab| Tokenizer::from_vocab(v).err().and_then(|e| e.hint().map(str::to_string));
    assert_eq!(
        err(GgufVocab { model: "bert".into(), ..tiny() }),
        "<vocab>: tokenizer.ggml.model = \"bert\" is not supported"
    );
    assert_eq!(
        hint(GgufVocab { model: "bert".into(), ..tiny() }).as_deref(),
        Some("loft reads \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece) tokenizers")
    );
    assert!(err(GgufVocab { pre: Some("klingon".into()), ..tiny() })
        .starts_with("<vocab>: tokenizer.ggml.pre = \"klingon\" is not a pre-tokenizer loft knows"));
    assert_eq!(
        err(GgufVocab { bos: Some(7), ..tiny() }),
        "<vocab>: tokenizer.ggml.bos_token_id = 7 is outside the vocabulary of 3 tokens"
    );
    assert_eq!(
        hint(GgufVocab { bos: Some(7), ..tiny() }).as_deref(),
        Some("fix the id with gguf-py's gguf-set-metadata")
    );
    assert!(err(GgufVocab { token_types: vec![1], ..tiny() })
        .starts_with("<vocab>: tokenizer.ggml.token_type has 1 entries but tokenizer.ggml.tokens has 3"));
    assert!(err(GgufVocab { merges: vec![], ..tiny() }).contains("tokenizer.ggml.merges is missing or empty"));
    let missing = Tokenizer::from_hf_files(std::path::Path::new("/nonexistent/tokenizer.json"), None);
    assert!(missing.err().is_some_and(|e| e.to_string().starts_with("/nonexistent/tokenizer.json: ")));
}
