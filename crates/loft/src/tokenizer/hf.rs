//! Hugging Face `tokenizer.json` / `tokenizer_config.json`: read (into the GGUF view, with the `tokenizers`
//! library doing the encoding) and written (from the GGUF view), field names as `tokenizers` spells them.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::pretokenizer::PreTokenizerSpec;
use super::vocab::{token_type, GgufVocab, TokenizerError};
use super::{spm, Engine};

/// Pre-tokenizer names tried, in order, when recognising a `tokenizer.json`'s pre-tokenizer.
const KNOWN_PRE: &[&str] =
    &["smollm", "gpt-2", "llama-bpe", "qwen2", "qwen35", "default", "falcon", "deepseek-coder", "gpt-4o", "tekken"];

/// The contractions alternative as Hugging Face files spell it, and as loft's patterns spell it.
const HF_CONTRACTIONS: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";
const LOFT_CONTRACTIONS: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The hint for a tokenizer.json whose content is not what transformers writes.
const RESAVE: &str = "re-save the tokenizer with transformers' save_pretrained";

fn read_json(path: &Path) -> Result<(String, Value), TokenizerError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })?;
    let value =
        serde_json::from_str(&text).map_err(|source| TokenizerError::Json { path: path.to_path_buf(), source })?;
    Ok((text, value))
}

/// Whether a (possibly `Sequence`) component has a part of type `ty`.
fn has_type(v: &Value, ty: &str) -> bool {
    v["type"] == ty
        || ["pretokenizers", "decoders", "normalizers", "processors"]
            .iter()
            .any(|k| v[*k].as_array().is_some_and(|a| a.iter().any(|x| has_type(x, ty))))
}

/// The parts of a (possibly `Sequence`) component, in order.
fn parts(v: &Value) -> Vec<&Value> {
    for k in ["pretokenizers", "decoders", "normalizers", "processors"] {
        if let Some(a) = v[k].as_array() {
            return a.iter().flat_map(parts).collect();
        }
    }
    if v.is_null() {
        Vec::new()
    } else {
        vec![v]
    }
}

/// The llama.cpp name of a byte-level pre-tokenizer, found by comparing its regexes with loft's table.
fn guess_pre(pre_tokenizer: &Value) -> Option<String> {
    let mut patterns = Vec::new();
    for part in parts(pre_tokenizer) {
        match part["type"].as_str() {
            Some("Digits") if part["individual_digits"] == true => patterns.push(r"\p{N}".to_string()),
            Some("ByteLevel") if part["use_regex"] != false => patterns.push(GPT2_PATTERN.to_string()),
            Some("Split") => {
                let p = part["pattern"]["Regex"].as_str().or(part["pattern"]["String"].as_str())?;
                patterns.push(p.replace(HF_CONTRACTIONS, LOFT_CONTRACTIONS));
            }
            _ => {}
        }
    }
    KNOWN_PRE
        .iter()
        .find(|name| PreTokenizerSpec::for_name(Some(name)).is_some_and(|s| s.patterns == patterns))
        .map(|name| name.to_string())
}

/// A token field of `tokenizer_config.json`: a string, or an object with `content`.
fn token_field(config: &Value, key: &str) -> Option<String> {
    let v = &config[key];
    v.as_str().or_else(|| v["content"].as_str()).map(str::to_owned)
}

pub(super) fn load(tokenizer_json: &Path, config_json: Option<&Path>) -> Result<(GgufVocab, Engine), TokenizerError> {
    let path = tokenizer_json;
    let (text, json) = read_json(path)?;
    let lib = <tokenizers::Tokenizer as std::str::FromStr>::from_str(&text)
        .map_err(|source| TokenizerError::Hf { path: path.to_path_buf(), source })?;
    let mut literal = lib.clone();
    literal.set_encode_special_tokens(true);

    let model = &json["model"];
    let model_type = model["type"].as_str().unwrap_or(if model["merges"].is_array() { "BPE" } else { "?" });
    if model_type != "BPE" {
        return Err(TokenizerError::invalid(
            path,
            format!("model.type = {model_type:?} is not supported"),
            "loft reads BPE tokenizers (byte-level as GPT-2, Llama 3, SmolLM; or SentencePiece-style as Llama 2)",
        ));
    }
    let Some(vocab_map) = model["vocab"].as_object() else {
        return Err(TokenizerError::invalid(path, "model.vocab is not an object", "is this a tokenizer.json?"));
    };
    let added = json["added_tokens"].as_array().cloned().unwrap_or_default();
    let mut entries: Vec<(u32, String, i32)> = Vec::with_capacity(vocab_map.len() + added.len());
    for (token, id) in vocab_map {
        let id = id.as_u64().and_then(|i| u32::try_from(i).ok());
        let id =
            id.ok_or_else(|| TokenizerError::invalid(path, format!("model.vocab[{token:?}] is not an id"), RESAVE))?;
        entries.push((id, token.clone(), token_type::NORMAL));
    }
    for a in &added {
        let (Some(id), Some(content)) = (a["id"].as_u64().and_then(|i| u32::try_from(i).ok()), a["content"].as_str())
        else {
            return Err(TokenizerError::invalid(path, format!("added_tokens entry {a} lacks id or content"), RESAVE));
        };
        let ty = if a["special"] == true { token_type::CONTROL } else { token_type::USER_DEFINED };
        entries.push((id, content.to_owned(), ty));
    }
    let n = entries.iter().map(|e| e.0 as usize + 1).max().unwrap_or(0);
    if n > 4 * entries.len() + 1024 {
        return Err(TokenizerError::invalid(path, format!("token ids reach {n} for {} tokens", entries.len()), RESAVE));
    }
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut types = vec![token_type::UNUSED; n];
    for (id, token, ty) in entries {
        tokens[id as usize] = token;
        types[id as usize] = ty;
    }

    let byte_level = has_type(&json["pre_tokenizer"], "ByteLevel") || has_type(&json["decoder"], "ByteLevel");
    let metaspace = model["byte_fallback"] == true
        || has_type(&json["decoder"], "ByteFallback")
        || has_type(&json["decoder"], "Metaspace")
        || has_type(&json["pre_tokenizer"], "Metaspace");
    let (model_name, pre) = if byte_level {
        ("gpt2", guess_pre(&json["pre_tokenizer"]))
    } else if metaspace {
        ("llama", None)
    } else {
        return Err(TokenizerError::invalid(
            path,
            "neither a byte-level nor a SentencePiece-style BPE tokenizer",
            "loft decodes tokenizers with a ByteLevel or ByteFallback/Metaspace decoder",
        ));
    };
    let unk = model["unk_token"].as_str().and_then(|u| tokens.iter().position(|t| t == u)).map(|i| i as u32);
    let mut scores = Vec::new();
    let mut add_space_prefix = None;
    if model_name == "llama" {
        for (id, t) in tokens.iter().enumerate() {
            if types[id] == token_type::NORMAL && t.len() == 6 && super::parse_byte_token(t).is_some() {
                types[id] = token_type::BYTE;
            }
        }
        if let Some(u) = unk {
            types[u as usize] = token_type::UNKNOWN;
        }
        scores = (0..n).map(|i| -(i as f32)).collect();
        let prepends = parts(&json["normalizer"]).iter().any(|p| p["type"] == "Prepend")
            || parts(&json["pre_tokenizer"]).iter().any(|p| {
                p["type"] == "Metaspace"
                    && (p["add_prefix_space"] == true || p["prepend_scheme"].as_str().is_some_and(|s| s != "never"))
            });
        add_space_prefix = Some(prepends);
    }
    let merges = model["merges"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| match m {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(pair) => Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();

    let config = match config_json {
        Some(p) => read_json(p)?.1,
        None => Value::Null,
    };
    let id_of = |t: Option<String>| t.and_then(|t| tokens.iter().position(|x| *x == t)).map(|i| i as u32);
    // BOS as the post-processor adds it, when the config does not say.
    let template_bos = parts(&json["post_processor"])
        .iter()
        .find(|p| p["type"] == "TemplateProcessing")
        .and_then(|p| p["single"].as_array()?.first()?["SpecialToken"]["id"].as_str().map(str::to_owned));
    let bos = id_of(token_field(&config, "bos_token")).or_else(|| id_of(template_bos.clone()));
    let (eos, pad) = (id_of(token_field(&config, "eos_token")), id_of(token_field(&config, "pad_token")));
    let chat_template = match &config["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .or(list.first())
            .and_then(|t| t["template"].as_str().map(str::to_owned)),
        _ => None,
    };
    let vocab = GgufVocab {
        model: model_name.to_string(),
        pre,
        tokens,
        token_types: types,
        scores,
        merges,
        bos,
        eos,
        eot: None,
        pad,
        unk,
        add_bos: Some(config["add_bos_token"].as_bool().unwrap_or(template_bos.is_some())),
        add_eos: config["add_eos_token"].as_bool(),
        add_space_prefix,
        chat_template,
    };
    vocab.validate(path)?;
    Ok((vocab, Engine::Hf { parse_special: Box::new(lib), literal: Box::new(literal), json }))
}

/// A `tokenizer.json` for a GGUF vocabulary.
pub(super) fn tokenizer_json(v: &GgufVocab, add_bos: bool, add_eos: bool, add_space_prefix: bool) -> Value {
    let is_spm = v.model == "llama";
    let added: Vec<Value> = (0..v.tokens.len() as u32)
        .filter_map(|id| {
            let ty = v.token_type(id);
            let special = matches!(ty, token_type::CONTROL | token_type::UNKNOWN);
            (special || ty == token_type::USER_DEFINED).then(|| {
                json!({
                    "id": id, "content": v.tokens[id as usize], "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": !special, "special": special,
                })
            })
        })
        .collect();
    let mut vocab = Map::with_capacity(v.tokens.len());
    for (id, t) in v.tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(json!(id));
    }
    let post_processor = if add_bos || add_eos {
        let bos = v.bos.filter(|_| add_bos).map(|id| (id, v.tokens[id as usize].clone()));
        let eos = v.eos.filter(|_| add_eos).map(|id| (id, v.tokens[id as usize].clone()));
        let side = |seq: &str, type_id: u32| {
            let mut items = Vec::new();
            if let Some((_, t)) = &bos {
                items.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
            }
            items.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
            if let Some((_, t)) = &eos {
                items.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
            }
            items
        };
        let mut pair = side("A", 0);
        pair.extend(side("B", 1));
        let special: Map<String, Value> = bos
            .iter()
            .chain(eos.iter())
            .map(|(id, t)| (t.clone(), json!({"id": t, "ids": [id], "tokens": [t]})))
            .collect();
        json!({"type": "TemplateProcessing", "single": side("A", 0), "pair": pair, "special_tokens": special})
    } else {
        Value::Null
    };

    let (normalizer, pre_tokenizer, decoder, model) = if is_spm {
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": spm::SPACE});
        let normalizer = if add_space_prefix {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": spm::SPACE}, replace]})
        } else {
            replace
        };
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": spm::SPACE}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if add_space_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        let unk = v.unk.map(|id| v.tokens[id as usize].clone());
        let model = json!({
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": spm_merges(v),
        });
        (normalizer, Value::Null, json!({"type": "Sequence", "decoders": decoders}), model)
    } else {
        let spec = PreTokenizerSpec::for_name(v.pre.as_deref());
        let patterns = spec.as_ref().map(|s| s.patterns.clone()).unwrap_or_default();
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        // Hugging Face's own spelling where it has one; otherwise each regex as an isolating Split.
        let pre_tokenizer = match patterns.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            [GPT2_PATTERN] => byte_level(true),
            [r"\p{N}", GPT2_PATTERN] => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            _ => {
                let mut list: Vec<Value> = patterns
                    .iter()
                    .map(|p| json!({"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": false}))
                    .collect();
                list.push(byte_level(false));
                json!({"type": "Sequence", "pretokenizers": list})
            }
        };
        let merges: Vec<Value> = v
            .merges
            .iter()
            .filter_map(|m| {
                let pos = super::bpe::split_merge(m)?;
                Some(json!([&m[..pos], &m[pos + 1..]]))
            })
            .collect();
        let model = json!({
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": spec.is_some_and(|s| s.ignore_merges), "vocab": vocab, "merges": merges,
        });
        let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
        (Value::Null, pre_tokenizer, decoder, model)
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": model,
    })
}

/// BPE merges equivalent to SentencePiece scores (as transformers' `SentencePieceExtractor` derives them):
/// every split of a normal token into two tokens, the merged token's score first.
fn spm_merges(v: &GgufVocab) -> Vec<Value> {
    let index: HashMap<&str, u32> = v.tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
    let score = |id: u32| v.scores.get(id as usize).copied().unwrap_or(0.0);
    let mut merges: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, t) in v.tokens.iter().enumerate() {
        let id = id as u32;
        if v.token_type(id) != token_type::NORMAL {
            continue;
        }
        for (pos, _) in t.char_indices().skip(1) {
            let (Some(&l), Some(&r)) = (index.get(&t[..pos]), index.get(&t[pos..])) else { continue };
            if v.token_type(l) == token_type::NORMAL && v.token_type(r) == token_type::NORMAL {
                merges.push((score(id), id, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges.into_iter().map(|(_, _, l, r)| json!([v.tokens[l as usize], v.tokens[r as usize]])).collect()
}
