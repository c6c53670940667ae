//! Against bitsandbytes: a tiny bf16 Llama and the same model as a bitsandbytes 4-bit (NF4, double quantization)
//! checkpoint written by transformers + bitsandbytes, produced by scripts/make_bnb_fixture.py (see
//! tests/fixtures/bnb_tiny/README.md). loft reads the checkpoint's packed weights as NF4 (no f16 detour), decodes
//! them to bitsandbytes' own values, reproduces the loss of the dequantized model, quantizes the bf16 model at
//! load to bitsandbytes' bytes, and rejects what it cannot read with one line naming the tensor.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use loft::engine::nf4::Absmax;
use loft::engine::FrozenMatrix;
use loft::model::safetensors_source::{MatrixStorage, SafetensorsSource};
use loft::model::weights::LlamaWeights;
use loft::model::{load_base, Llama, LlamaConfig};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

const LINEAR: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];
const PINNED: [&str; 2] = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"];

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bnb_tiny")
}

fn expected_bytes() -> Vec<u8> {
    std::fs::read(fixture().join("expected.safetensors")).unwrap()
}

/// An F32, BF16 or U8 tensor of expected.safetensors as f32 values.
fn values(st: &SafeTensors, key: &str) -> Vec<f32> {
    let t = st.tensor(key).unwrap_or_else(|_| panic!("expected.safetensors has no '{key}'"));
    match t.dtype() {
        Dtype::F32 => t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::BF16 => t.data().chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::U8 => t.data().iter().map(|&b| b as f32).collect(),
        other => panic!("{key}: dtype {other:?}"),
    }
}

fn linear_names(layers: usize) -> Vec<String> {
    (0..layers).flat_map(|i| LINEAR.iter().map(move |m| format!("model.layers.{i}.{m}.weight"))).collect()
}

fn matrix<'a>(model: &'a Llama, name: &str) -> &'a FrozenMatrix {
    let (layer, module) = name.strip_prefix("model.layers.").unwrap().split_once('.').unwrap();
    let l = &model.weights.layers[layer.parse::<usize>().unwrap()];
    match module.trim_end_matches(".weight") {
        "self_attn.q_proj" => &l.q_proj,
        "self_attn.k_proj" => &l.k_proj,
        "self_attn.v_proj" => &l.v_proj,
        "self_attn.o_proj" => &l.o_proj,
        "mlp.gate_proj" => &l.gate_proj,
        "mlp.up_proj" => &l.up_proj,
        "mlp.down_proj" => &l.down_proj,
        other => panic!("{other}"),
    }
}

fn mean_nll(model: &Llama, tokens: &[u32]) -> f64 {
    let nll = model.next_token_nll(tokens).unwrap();
    nll.iter().sum::<f64>() / nll.len() as f64
}

fn tokens(st: &SafeTensors) -> Vec<u32> {
    values(st, "tokens").iter().map(|&v| v as u32).collect()
}

#[test]
fn a_bnb_checkpoint_loads_as_nf4_and_decodes_to_bitsandbytes_values() {
    let bytes = expected_bytes();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let model = load_base(fixture().join("bnb").to_str().unwrap(), true).unwrap();
    for name in linear_names(2) {
        let m = matrix(&model, &name);
        assert_eq!(m.storage_name(), "nf4", "{name}");
        // 4 bits per weight, one u8 scale per 64, one f32 per 256 scales, the 256-entry map and the offset.
        let n = m.rows * m.cols;
        let blocks = n.div_ceil(64);
        assert_eq!(m.storage_bytes(), n / 2 + blocks + 4 * blocks.div_ceil(256) + 1024 + 4, "{name}");
    }
    // bitsandbytes leaves embeddings and head in the checkpoint's bf16; loft keeps them so.
    assert_eq!(model.weights.embed_tokens.storage_name(), "bf16");
    assert_eq!(model.weights.head().storage_name(), "bf16");
    let q = matrix(&model, PINNED[0]);
    eprintln!(
        "q_proj [{}, {}]: {} bytes in NF4 ({:.3} bytes/weight)",
        q.rows,
        q.cols,
        q.storage_bytes(),
        q.storage_bytes() as f64 / (q.rows * q.cols) as f64
    );

    for name in PINNED {
        let want = values(&expected, &format!("dequantized/{name}"));
        let got = matrix(&model, name).to_f32();
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1e-6)).fold(0.0, f32::max);
        eprintln!("{name}: worst relative difference to bitsandbytes' dequantize_4bit {worst:e}");
        assert!(worst <= 1e-7, "{name}: differs from bitsandbytes by {worst} (relative)");
    }

    // The loss of the model run on those weights, as transformers computes it in f32.
    let want = values(&expected, "loss")[0] as f64;
    let tokens = tokens(&expected);
    let loss = mean_nll(&model, &tokens);
    eprintln!("loss: loft NF4 {loss:.7} vs transformers on the dequantized weights {want:.7}");
    assert!((loss - want).abs() / want < 1e-5, "loss {loss} vs {want}");
    let mut cache = loft::model::KvCache::new(&model.config, tokens.len());
    let logits = model.logits(&model.forward(&tokens, &mut cache).unwrap());
    let want_logits = values(&expected, "logits");
    let worst = logits.iter().zip(&want_logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!("logits: worst absolute difference {worst:e}");
    assert!(worst < 1e-4, "logits differ by {worst}");

    // Without load_in_4bit the same folder is dequantized to f32 once, with the same numbers.
    let f32_model = load_base(fixture().join("bnb").to_str().unwrap(), false).unwrap();
    assert_eq!(matrix(&f32_model, PINNED[1]).storage_name(), "f32");
    assert_eq!(matrix(&f32_model, PINNED[1]).to_f32(), matrix(&model, PINNED[1]).to_f32());
    assert!((mean_nll(&f32_model, &tokens) - loss).abs() < 1e-6);
}

#[test]
fn a_bf16_folder_is_quantized_at_load_to_bitsandbytes_bytes() {
    let bytes = expected_bytes();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let base = fixture().join("base");
    let cfg = LlamaConfig::from_hf_json(&base.join("config.json")).unwrap();
    let load = |storage| {
        let src = SafetensorsSource::open(&base).unwrap().with_storage(storage);
        Llama::new(cfg.clone(), LlamaWeights::load(&src, &cfg).unwrap())
    };

    // Without double quantization: bitsandbytes' quantize_4bit bytes and scales, exactly.
    let plain = load(MatrixStorage::Nf4 { double_quant: false });
    for name in PINNED {
        let nf4 = matrix(&plain, name).nf4().unwrap();
        let packed: Vec<f32> = nf4.packed.iter().map(|&b| b as f32).collect();
        assert_eq!(packed, values(&expected, &format!("quant4/{name}/packed")), "{name}: packed codes");
        let Absmax::F32(absmax) = &nf4.absmax else { panic!("{name}: nested absmax") };
        assert_eq!(absmax, &values(&expected, &format!("quant4/{name}/absmax")), "{name}: absmax");
    }

    // With double quantization (load_in_4bit's default), against the checkpoint transformers wrote from this folder.
    let ours = load_base(base.to_str().unwrap(), true).unwrap();
    let theirs = load_base(fixture().join("bnb").to_str().unwrap(), true).unwrap();
    let (mut codes, mut moved, mut worst) = (0usize, 0usize, 0f32);
    for name in linear_names(2) {
        let (a, b) = (matrix(&ours, &name).nf4().unwrap(), matrix(&theirs, &name).nf4().unwrap());
        assert_eq!(a.packed, b.packed, "{name}: packed codes");
        assert_eq!((a.blocksize, a.dtype, a.quant_map), (b.blocksize, b.dtype, b.quant_map), "{name}");
        let (
            Absmax::Nested { codes: ca, absmax: sa, offset: oa, quant_map: ma, .. },
            Absmax::Nested { codes: cb, absmax: sb, offset: ob, quant_map: mb, .. },
        ) = (&a.absmax, &b.absmax)
        else {
            panic!("{name}: not double-quantized")
        };
        assert_eq!((oa, sa), (ob, sb), "{name}: offset and nested absmax");
        // bitsandbytes builds its dynamic map with torch's f32 linspace: a few entries differ in the last bit.
        let map_worst = ma.iter().zip(mb.iter()).map(|(x, y)| (x - y).abs() / y.abs().max(1e-30)).fold(0f32, f32::max);
        assert!(map_worst <= 2.5e-7, "{name}: dynamic map differs by {map_worst} (relative)");
        for (x, y) in ca.iter().zip(cb) {
            codes += 1;
            assert!(x.abs_diff(*y) <= 1, "{name}: absmax codes {x} vs {y}");
            moved += usize::from(x != y);
        }
        let (wa, wb) = (matrix(&ours, &name).to_f32(), matrix(&theirs, &name).to_f32());
        let scale = wb.iter().fold(0f32, |m, v| m.max(v.abs()));
        worst = wa.iter().zip(wb.iter()).map(|(x, y)| (x - y).abs() / scale).fold(worst, f32::max);
    }
    eprintln!(
        "double quantization: {moved} of {codes} absmax codes take the neighbouring code of bitsandbytes' CPU \
         table; weights differ by at most {worst:e} of the matrix's largest"
    );
    assert!(moved * 50 <= codes, "{moved} of {codes} absmax codes differ");
    assert!(worst <= 1e-3, "weights differ by {worst}");
    assert_eq!(ours.weights.embed_tokens.storage_name(), "bf16");
}

/// A copy of the bnb fixture folder with its tensors passed through `edit` (name → (dtype, shape, bytes)).
fn edited_copy(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) -> PathBuf {
    let src = fixture().join("bnb");
    let out = dir.join("bnb");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(src.join("config.json"), out.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(out.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    out
}

fn load_error(folder: &Path) -> String {
    match load_base(folder.to_str().unwrap(), true) {
        Ok(_) => panic!("loaded {}", folder.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unreadable_4bit_weights_are_one_line_errors_naming_the_tensor() {
    let name = "model.layers.1.self_attn.v_proj.weight";
    let tmp = tempfile::tempdir().unwrap();

    // An fp4 weight.
    let fp4 = edited_copy(&tmp.path().join("fp4"), |t| {
        let state = t.remove(&format!("{name}.quant_state.bitsandbytes__nf4")).unwrap();
        let json = String::from_utf8(state.2).unwrap().replace("\"nf4\"", "\"fp4\"");
        t.insert(format!("{name}.quant_state.bitsandbytes__fp4"), (Dtype::U8, vec![json.len()], json.into_bytes()));
    });
    let err = load_error(&fp4);
    assert!(err.contains(name) && err.contains("fp4") && !err.contains('\n'), "{err}");

    // A weight without its absmax.
    let no_absmax = edited_copy(&tmp.path().join("absmax"), |t| {
        t.remove(&format!("{name}.absmax")).unwrap();
    });
    let err = load_error(&no_absmax);
    assert!(err.contains(&format!("{name}.absmax")) && !err.contains('\n'), "{err}");

    // A quant_state whose shape disagrees with the packed bytes.
    let bad_shape = edited_copy(&tmp.path().join("shape"), |t| {
        let key = format!("{name}.quant_state.bitsandbytes__nf4");
        let state = t.get_mut(&key).unwrap();
        let json = String::from_utf8(state.2.clone()).unwrap().replace("[32, 64]", "[64, 64]");
        state.1 = vec![json.len()];
        state.2 = json.into_bytes();
    });
    let err = load_error(&bad_shape);
    assert!(err.contains(name) && err.contains("packed bytes") && !err.contains('\n'), "{err}");

    // A config that names fp4 for the whole checkpoint.
    let fp4_config = edited_copy(&tmp.path().join("config"), |_| {});
    let config = std::fs::read_to_string(fp4_config.join("config.json")).unwrap();
    std::fs::write(fp4_config.join("config.json"), config.replace("\"nf4\"", "\"fp4\"")).unwrap();
    let err = load_error(&fp4_config);
    assert!(err.contains("bnb_4bit_quant_type") && err.contains("fp4") && !err.contains('\n'), "{err}");
}
