//! Checks the reader and the codecs against llama.cpp's gguf-py, an independent implementation:
//! `scripts/gguf_py_dump.py` dumps metadata and gguf-py's dequantization of every tensor, and every value here
//! must match. Run on the real default model and on a file of every type this crate quantizes to.
//! Needs `scripts/fetch.sh gguf-py model` (the Makefile's `make test` runs it); fails, naming what is missing,
//! otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use gguf::{GgmlType, GgufFile, GgufWriter, Value, ValueType};
use serde_json::{json, Value as Json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The path in `env`, else `default` under the workspace; a missing one fails the test with one line naming it
/// and the `scripts/fetch.sh` target that fetches it.
fn fixture(env: &str, default: &str, what: &str, fetch_target: &str) -> PathBuf {
    let (p, from) = match std::env::var_os(env) {
        Some(p) => (PathBuf::from(p), format!(", {env} is set")),
        None => (workspace().join(default), String::new()),
    };
    if !p.exists() {
        panic!(
            "missing test fixture {} ({what}{from}): run `scripts/fetch.sh {fetch_target}` (`make test` does)",
            p.display()
        );
    }
    p
}

fn python() -> PathBuf {
    fixture("LOFT_GGUF_PY", ".cache/venv-gguf/bin/python", "a venv with llama.cpp's gguf package", "gguf-py")
}

fn model() -> PathBuf {
    fixture("LOFT_MODEL", ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf", "the default model", "model")
}

fn run_dump(py: &Path, args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new(py)
        .arg(workspace().join("scripts/gguf_py_dump.py"))
        .args(args)
        .output()
        .expect("run gguf_py_dump.py");
    assert!(out.status.success(), "gguf_py_dump.py failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Our value in the dump's JSON form (floats as bit patterns).
fn scalar_json(v: &Value) -> Json {
    match v {
        Value::F32(x) => json!(x.to_bits()),
        Value::F64(x) => json!(x.to_bits()),
        Value::Bool(b) => json!(b),
        Value::String(s) => json!(s),
        Value::Array(..) => panic!("nested arrays are not compared with gguf-py"),
        other => json!(other.as_i64().map_or_else(|| json!(other.as_u64()), |i| json!(i))),
    }
}

/// Distance in units of last place between two f32 (by their ordered bit patterns).
fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i64::from(i32::MIN) - i64::from(i)
        } else {
            i64::from(i)
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

/// Compares everything gguf-py reports about `path` with our reader; returns a summary line per type.
fn compare_with_gguf_py(py: &Path, path: &Path) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    run_dump(py, &[path.as_os_str(), dir.path().as_os_str()]);
    let index: Json =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).expect("index")).expect("json");
    let f = GgufFile::open(path).expect("open");

    assert_eq!(index["alignment"], json!(f.alignment));
    assert_eq!(index["data_offset"], json!(f.data_offset()));
    let theirs = index["metadata"].as_array().expect("metadata");
    assert_eq!(theirs.len(), f.metadata.len());
    for ((key, value), t) in f.metadata.iter().zip(theirs) {
        assert_eq!(t["key"], json!(key));
        assert_eq!(t["type"], json!(value.value_type() as u32), "{key}");
        match value {
            Value::Array(elem, items) => {
                if !items.is_empty() {
                    assert_eq!(t["elem"], json!(*elem as u32), "{key}");
                }
                let ours: Vec<Json> = items.iter().map(scalar_json).collect();
                assert_eq!(t["value"], Json::Array(ours), "{key}");
            }
            v => assert_eq!(t["value"], scalar_json(v), "{key}"),
        }
    }

    let theirs = index["tensors"].as_array().expect("tensors");
    assert_eq!(theirs.len(), f.tensors.len());
    // Per type: (tensors, elements, elements 1 ulp apart).
    let mut stats: std::collections::BTreeMap<&str, (usize, usize, usize)> = Default::default();
    for (info, t) in f.tensors.iter().zip(theirs) {
        let name = &info.name;
        assert_eq!(t["name"], json!(name));
        assert_eq!(t["shape"], json!(info.shape), "{name}");
        assert_eq!(t["type"], json!(info.dtype as u32), "{name}");
        assert_eq!(t["n_bytes"], json!(info.n_bytes()), "{name}");
        assert_eq!(t["data_offset"], json!(f.data_offset() + info.offset), "{name}");
        let Some(file) = t["file"].as_str() else {
            stats.entry(info.dtype.name()).or_default();
            eprintln!("gguf-py cannot dequantize {name} ({}); not compared", info.dtype);
            continue;
        };
        let bytes = std::fs::read(dir.path().join(file)).expect("f32 file");
        let reference: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let ours = f.dequantize(name).expect("dequantize");
        assert_eq!(ours.len(), reference.len(), "{name}");
        let entry = stats.entry(info.dtype.name()).or_default();
        entry.0 += 1;
        entry.1 += ours.len();
        for (i, (&a, &b)) in ours.iter().zip(&reference).enumerate() {
            if a.to_bits() != b.to_bits() {
                let d = ulps(a, b);
                assert!(
                    d <= 1,
                    "{name}[{i}]: ours {a:e} ({:#x}), gguf-py {b:e} ({:#x}): {d} ulps",
                    a.to_bits(),
                    b.to_bits()
                );
                entry.2 += 1;
            }
        }
    }
    stats
        .into_iter()
        .map(|(ty, (n, elems, off))| format!("{ty}: {n} tensors, {elems} values, {off} differ by 1 ulp"))
        .collect()
}

#[test]
fn default_model_matches_gguf_py() {
    let (py, model) = (python(), model());
    for line in compare_with_gguf_py(&py, &model) {
        eprintln!("{}: {line}", model.display());
    }
}

/// Random bytes for a block type, with its scale fields set to modest f16/f32 values (random scale bits would be
/// NaN or huge): every code, including ones a quantizer rarely writes, and the types we cannot quantize to.
fn random_blocks(dtype: GgmlType, n_blocks: usize, seed: &mut u64) -> Vec<u8> {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let ts = dtype.type_size();
    let mut out: Vec<u8> = (0..n_blocks * ts).map(|_| next() as u8).collect();
    // Byte offsets of the f16 scales within a block, as in ggml-common.h.
    let scales: &[usize] = match dtype {
        GgmlType::Q5_0 => &[0],
        GgmlType::Q5_1 => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        _ => &[],
    };
    for block in out.chunks_exact_mut(ts) {
        for &at in scales {
            let v = half::f16::from_f32((next() % 1000) as f32 / 16000.0);
            block[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        if dtype == GgmlType::Q8K {
            block[..4].copy_from_slice(&((next() % 1000) as f32 / 16000.0).to_le_bytes());
        }
    }
    out
}

#[test]
fn every_codec_matches_gguf_py() {
    let py = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("codecs.gguf");
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama".into());
    w.add("t.u8", Value::U8(255));
    w.add("t.i8", Value::I8(-128));
    w.add("t.u16", Value::U16(1234));
    w.add("t.i16", Value::I16(-1234));
    w.add("t.u32", Value::U32(u32::MAX));
    w.add("t.i32", Value::I32(i32::MIN));
    w.add("t.f32", Value::F32(-0.1));
    w.add("t.bool", Value::Bool(false));
    w.add("t.string", "ünïcødé ✓ 🦙".into());
    w.add("t.u64", Value::U64(u64::MAX));
    w.add("t.i64", Value::I64(i64::MIN));
    w.add("t.f64", Value::F64(1e-300));
    w.add("t.strings", Value::Array(ValueType::String, vec!["Ġa".into(), "".into(), "b c".into()]));
    w.add("t.f32s", Value::Array(ValueType::F32, vec![Value::F32(1e-6), Value::F32(f32::MAX)]));
    w.add("t.i32s", Value::Array(ValueType::I32, vec![Value::I32(-1), Value::I32(7)]));
    w.add("t.bools", Value::Array(ValueType::Bool, vec![Value::Bool(true), Value::Bool(false)]));
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    // 2 rows × 512 values; a few outliers so the block scales differ.
    let data: Vec<f32> = (0..1024).map(|i| next() * if i % 97 == 0 { 8.0 } else { 1.0 }).collect();
    for dtype in GgmlType::ALL.into_iter().filter(|t| t.can_quantize()) {
        let bytes = gguf::quantize(dtype, &data, 512).expect("quantize");
        w.add_tensor(format!("q.{}", dtype.name()), vec![512, 2], dtype, bytes).expect("add");
    }
    let mut seed = 7u64;
    for dtype in [GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q2K, GgmlType::Q3K, GgmlType::Q8K] {
        let bytes = random_blocks(dtype, 2 * 512 / dtype.block_size(), &mut seed);
        w.add_tensor(format!("r.{}", dtype.name()), vec![512, 2], dtype, bytes).expect("add");
    }
    w.write(&path).expect("write");
    for line in compare_with_gguf_py(&py, &path) {
        eprintln!("codecs.gguf: {line}");
    }
}

#[test]
fn quantizers_match_gguf_py() {
    let py = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let data: Vec<f32> = (0..4 * 512)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * if i % 61 == 0 { 5.0 } else { 1.0 }
        })
        .collect();
    let input = dir.path().join("in.f32");
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).expect("write input");
    // The types gguf-py can quantize (its K-quants only dequantize).
    for dtype in
        [GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1]
    {
        let out = dir.path().join(format!("{}.bin", dtype.name()));
        let id = (dtype as u32).to_string();
        run_dump(&py, &["--quantize".as_ref(), id.as_ref(), "512".as_ref(), input.as_os_str(), out.as_os_str()]);
        let theirs = std::fs::read(&out).expect("read");
        let ours = gguf::quantize(dtype, &data, 512).expect("quantize");
        let differing = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        assert_eq!(ours.len(), theirs.len(), "{dtype}");
        assert_eq!(differing, 0, "{dtype}: {differing} of {} bytes differ from gguf-py", ours.len());
    }
}

#[test]
fn names_match_gguf_py() {
    let py = python();
    let mut hf: Vec<String> =
        gguf::names::TENSOR_NAMES_HF.iter().map(|(_, hf)| format!("{}.weight", hf.replace("{bid}", "7"))).collect();
    // Qwen2's q/k/v biases.
    hf.extend(["q_proj", "k_proj", "v_proj"].map(|m| format!("model.layers.7.self_attn.{m}.bias")));
    // Gemma 3's own norms.
    hf.extend(gguf::names::TENSOR_NAMES_HF_GEMMA3.iter().map(|(_, hf)| format!("{}.weight", hf.replace("{bid}", "7"))));
    let mut args: Vec<&std::ffi::OsStr> = vec!["--names".as_ref()];
    args.extend(hf.iter().map(|s| std::ffi::OsStr::new(s.as_str())));
    let out: Json = serde_json::from_slice(&run_dump(&py, &args)).expect("json");
    for h in &hf {
        // Llama's map has no name for Gemma's pre/post-feedforward norms.
        if !h.contains("feedforward") {
            let ours = gguf::names::hf_to_gguf(h);
            assert_eq!(out["hf_to_gguf"][h], json!(ours), "{h}");
        }
        // Gemma 3's map (gguf-py's has no biases for it).
        if !h.ends_with(".bias") {
            let ours = gguf::names::hf_to_gguf_for(gguf::names::ARCH_GEMMA3, h);
            assert_eq!(out["hf_to_gguf_gemma3"][h], json!(ours), "gemma3: {h}");
        }
    }
    let keys: Vec<&str> = out["keys"].as_array().expect("keys").iter().filter_map(Json::as_str).collect();
    use gguf::names::*;
    for key in [
        GENERAL_ARCHITECTURE,
        GENERAL_NAME,
        GENERAL_ALIGNMENT,
        GENERAL_TYPE,
        GENERAL_FILE_TYPE,
        GENERAL_QUANTIZATION_VERSION,
        VOCAB_SIZE,
        CONTEXT_LENGTH,
        EMBEDDING_LENGTH,
        BLOCK_COUNT,
        FEED_FORWARD_LENGTH,
        ATTENTION_HEAD_COUNT,
        ATTENTION_HEAD_COUNT_KV,
        ATTENTION_KEY_LENGTH,
        ATTENTION_VALUE_LENGTH,
        ATTENTION_LAYERNORM_RMS_EPS,
        ATTENTION_SLIDING_WINDOW,
        ATTENTION_SLIDING_WINDOW_PATTERN,
        ROPE_DIMENSION_COUNT,
        ROPE_FREQ_BASE,
        ROPE_SCALING_TYPE,
        ROPE_SCALING_FACTOR,
        ROPE_SCALING_ORIG_CTX_LEN,
        TOKENIZER_MODEL,
        TOKENIZER_PRE,
        TOKENIZER_TOKENS,
        TOKENIZER_TOKEN_TYPE,
        TOKENIZER_SCORES,
        TOKENIZER_MERGES,
        TOKENIZER_BOS_ID,
        TOKENIZER_EOS_ID,
        TOKENIZER_UNK_ID,
        TOKENIZER_SEP_ID,
        TOKENIZER_PAD_ID,
        TOKENIZER_EOT_ID,
        TOKENIZER_EOM_ID,
        TOKENIZER_ADD_BOS,
        TOKENIZER_ADD_EOS,
        TOKENIZER_ADD_PREFIX,
        TOKENIZER_CHAT_TEMPLATE,
        ADAPTER_TYPE,
        ADAPTER_LORA_ALPHA,
    ] {
        assert!(keys.contains(&key), "gguf-py has no key {key}");
    }
}
