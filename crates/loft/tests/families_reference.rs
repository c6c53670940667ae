//! The families against transformers and PEFT themselves (issue 16): per family, a tiny random model saved by
//! transformers and the same weights converted by llama.cpp's convert_hf_to_gguf.py, with transformers' loss,
//! logits and greedy tokens and two PEFT adapters with PEFT's loss and gradients, all written by
//! scripts/make_family_fixtures.py (tests/fixtures/families/<family>/README.md). From the Hugging Face folder and
//! from the GGUF, loft gives transformers' loss (the `loft eval` computation) and greedy tokens; it reads PEFT's
//! adapters with PEFT's loss and logits, and its LoRA gradients are PEFT's.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::PathBuf;

use loft::data::Batch;
use loft::engine::Cpu;
use loft::infer::generate::{generate, GenerateOptions};
use loft::infer::sample::SamplingParams;
use loft::lora::peft::load_peft_adapter;
use loft::lora::Adapter;
use loft::model::{load_base, Llama, Runner};
use loft::train::forward_backward::{forward_backward_host, TrainArena};
use safetensors::SafeTensors;

/// The families with a fixture: `mistral_window` is Mistral v0.1's layout, sliding_window 4 < T 12; `gemma3` has
/// 6 layers, the first 5 local with sliding_window 4 < T 12, and query_pre_attn_scalar 32 apart from head_dim 8.
const FAMILIES: [&str; 6] = ["qwen2", "qwen2_tied", "qwen3", "mistral", "mistral_window", "gemma3"];

/// The two places a base is read from: the folder transformers saved and llama.cpp's converter's GGUF of it.
const SOURCES: [&str; 2] = ["hf", "model.gguf"];

fn fixture(family: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families").join(family);
    assert!(
        dir.join("expected.safetensors").is_file(),
        "{}: no fixture; make it with `bench/peers/venv.sh && .cache/venv-peft/bin/python \
         scripts/make_family_fixtures.py {family}`",
        dir.display()
    );
    dir
}

struct Expected {
    bytes: Vec<u8>,
    json: serde_json::Value,
}

impl Expected {
    fn load(family: &str) -> Self {
        let dir = fixture(family);
        let json = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        Expected { bytes: std::fs::read(dir.join("expected.safetensors")).unwrap(), json }
    }

    fn f32s(&self, key: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("expected.safetensors has no '{key}'"));
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

/// input_ids and labels [B][T] of batch.json.
fn batch_rows(family: &str) -> (Vec<Vec<u32>>, Vec<Vec<i32>>) {
    let text = std::fs::read_to_string(fixture(family).join("batch.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = |k: &str| -> Vec<Vec<i64>> {
        json[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect())
            .collect()
    };
    let ids = rows("input_ids").iter().map(|r| r.iter().map(|&v| v as u32).collect()).collect();
    let labels = rows("labels").iter().map(|r| r.iter().map(|&v| v as i32).collect()).collect();
    (ids, labels)
}

/// The base as loft reads it from `source`. A GGUF cannot say Gemma 3's query_pre_attn_scalar: llama.cpp (and loft)
/// take head_dim there (C / NH for the 62-layer 27B), so a GGUF of the `gemma3` fixture, whose config.json says 32,
/// is read with head_dim 8; this checks that, then gives the model config.json's scalar, so that the GGUF's
/// weights are compared with transformers'.
fn base(family: &str, source: &str) -> Llama {
    let mut model = load_base(fixture(family).join(source).to_str().unwrap(), false)
        .unwrap_or_else(|e| panic!("{family}/{source}: {e}"));
    if family == "gemma3" && source == "model.gguf" {
        let head_dim = model.config.head_dim as f32;
        assert_eq!(model.config.query_pre_attn_scalar, Some(head_dim), "gemma3 GGUF: llama.cpp's scalar");
        model.config.query_pre_attn_scalar = Some(32.0);
    }
    model
}

/// Each layer's window as the fixture's config.json sets it.
fn windows(family: &str) -> Vec<Option<usize>> {
    match family {
        "mistral_window" => vec![Some(4); 2],
        "gemma3" => [vec![Some(4); 5], vec![None]].concat(),
        _ => vec![None; 2],
    }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    d / n.max(1e-12)
}

/// Logits [B·T, V] of every row (adapter applied unmerged, or none) and HF's mean loss over the labels that are
/// not -100: nll of token t+1 after t, as `loft eval` computes it.
fn logits_and_loss(model: &Llama, adapter: Option<&Adapter>, ids: &[Vec<u32>], labels: &[Vec<i32>]) -> (Vec<f32>, f64) {
    let run = Runner::new(&Cpu, model).unwrap();
    let host = adapter.map(|a| a.clone().into_unmerged(&model.config).unwrap());
    let dev = host.as_ref().map(|h| run.adapter(h).unwrap());
    let v = model.config.vocab_size;
    let (mut all, mut sum, mut n) = (Vec::new(), 0.0f64, 0usize);
    for (row, lab) in ids.iter().zip(labels) {
        let mut cache = run.cache(row.len()).unwrap();
        let hidden = run.forward_with(row, &mut cache, dev.as_ref()).unwrap();
        let logits = run.logits_with(&hidden, 0, row.len(), dev.as_ref()).unwrap();
        for (t, l) in logits.chunks_exact(v).enumerate().take(row.len() - 1) {
            if lab[t + 1] >= 0 {
                sum += loft::model::llama::log_sum_exp(l) - l[lab[t + 1] as usize] as f64;
                n += 1;
            }
        }
        all.extend(logits);
    }
    (all, sum / n as f64)
}

#[test]
fn base_loss_logits_and_greedy_tokens_equal_transformers_from_hf_folder_and_gguf() {
    for family in FAMILIES {
        let want = Expected::load(family);
        let (ids, labels) = batch_rows(family);
        let want_loss = want.f32s("base/loss")[0] as f64;
        let want_logits = want.f32s("base/logits");
        let from_hf = base(family, "hf");
        let layers = 0..from_hf.config.num_hidden_layers;
        let got: Vec<Option<usize>> = layers.map(|l| from_hf.config.layer_window(l)).collect();
        assert_eq!(got, windows(family), "{family}: each layer's sliding window read from hf/config.json");
        for source in SOURCES {
            let model = base(family, source);
            assert_eq!(model.config, from_hf.config, "{family}: {source} and hf/config.json disagree");
            let (logits, loss) = logits_and_loss(&model, None, &ids, &labels);
            let (e, rel) = (rel_l2(&logits, &want_logits), (loss - want_loss).abs() / want_loss);
            eprintln!("{family} {source}: loss {loss:.7} vs transformers {want_loss:.7} (rel {rel:.1e}), logits rel L2 {e:.1e}");
            assert!(rel < 1e-4, "{family} from {source}: loss {loss} vs transformers {want_loss}");
            assert!(e < 1e-5, "{family} from {source}: logits differ from transformers' by {e} (relative L2)");

            // The eval path itself (Runner::next_token_nll), on the positions the labels keep.
            let nll = model.next_token_nll(&ids[0]).unwrap();
            let kept: Vec<f64> = (0..nll.len()).filter(|&t| labels[0][t + 1] >= 0).map(|t| nll[t]).collect();
            let row0 = kept.iter().sum::<f64>() / kept.len() as f64;
            let (_, want_row0) = logits_and_loss(&model, None, &ids[..1], &labels[..1]);
            assert!((row0 - want_row0).abs() < 1e-9, "{family} {source}: next_token_nll {row0} vs {want_row0}");

            let run = Runner::new(&Cpu, &model).unwrap();
            for c in want.json["greedy"]["continuations"].as_array().unwrap() {
                let as_ids = |k: &str| -> Vec<u32> {
                    c[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
                };
                let (prompt, tokens) = (as_ids("prompt"), as_ids("tokens"));
                let opts = GenerateOptions {
                    max_new_tokens: tokens.len(),
                    sampling: SamplingParams::default(),
                    stop_ids: Vec::new(),
                };
                let mut cache = run.cache(prompt.len() + tokens.len()).unwrap();
                let (got, _) = generate(&run, &prompt, &opts, &mut cache, |_| Ok(())).unwrap();
                assert_eq!(got, tokens, "{family} from {source}: greedy tokens after {prompt:?}");
            }
        }
    }
}

#[test]
fn peft_adapters_give_pefts_loss_logits_and_gradients() {
    for family in FAMILIES {
        let want = Expected::load(family);
        let (ids, labels) = batch_rows(family);
        let batch = Batch::from_rows(&ids, &labels);
        let n = batch.n_targets();
        for source in SOURCES {
            let model = base(family, source);
            for dir in ["adapter", "adapter_rslora_embed"] {
                let what = format!("{family} {source} {dir}");
                let adapter =
                    load_peft_adapter(&fixture(family).join(dir), &model).unwrap_or_else(|e| panic!("{what}: {e}"));
                let want_loss = want.f32s(&format!("{dir}/loss"))[0] as f64;

                // Inference with the adapter (what `loft eval --adapter` runs).
                let (logits, loss) = logits_and_loss(&model, Some(&adapter), &ids, &labels);
                let e = rel_l2(&logits, &want.f32s(&format!("{dir}/logits")));
                assert!((loss - want_loss).abs() / want_loss < 1e-5, "{what}: eval loss {loss} vs PEFT {want_loss}");
                assert!(e < 1e-5, "{what}: logits differ from PEFT's by {e} (relative L2)");

                // Training: the loss and the gradient of every trained tensor.
                let mut grads = adapter.zeros_like();
                let mut arena = TrainArena::new(&Cpu, &model.config, &adapter.config, batch.b, batch.t, false).unwrap();
                let (sum, count) =
                    forward_backward_host(&model, &adapter, &mut grads, &mut arena, &batch, 1.0 / n as f32, 0).unwrap();
                let train_loss = sum / count as f64;
                assert!(
                    (train_loss - want_loss).abs() / want_loss < 1e-5,
                    "{what}: training loss {train_loss} vs PEFT {want_loss}"
                );
                let mut worst = (0.0f64, String::new());
                let mut checked = 0;
                grads.for_each_tensor(|name, g| {
                    let key = name.peft_key();
                    let e = rel_l2(g, &want.f32s(&format!("{dir}/grad/{key}")));
                    if e > worst.0 {
                        worst = (e, key);
                    }
                    checked += 1;
                });
                eprintln!(
                    "{what}: loss {loss:.7} (training {train_loss:.7}) vs PEFT {want_loss:.7}, logits rel L2 {e:.1e}, \
                     {checked} gradients, worst rel L2 {:.1e} ({})",
                    worst.0, worst.1
                );
                let saved = want.json["adapters"][dir]["saved_keys"].as_object().unwrap().len();
                assert_eq!(checked, saved, "{what}: loft trains {checked} tensors, PEFT saved {saved}");
                assert!(
                    worst.0 < 1e-4,
                    "{what}: gradient of {} differs from PEFT's by {} (relative L2)",
                    worst.1,
                    worst.0
                );
            }
        }
    }
}

/// The config.json `loft merge` writes for each family says what transformers' own says, key for key, with the
/// same JSON types: transformers 5's configs are strict (Gemma 3's query_pre_attn_scalar is an int; 256.0 is refused
/// when the folder is loaded).
#[test]
fn merged_config_json_agrees_with_transformers_own() {
    let mut differ = Vec::new();
    for family in FAMILIES {
        let dir = fixture(family).join("hf");
        let theirs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let ours = base(family, "hf").config.to_hf_json(None, None, "float32");
        let mut compared = 0;
        for (key, value) in ours.as_object().unwrap() {
            let Some(want) = theirs.get(key) else { continue };
            // Differences by design: Qwen's max_window_layers does nothing with use_sliding_window false (written
            // and checked); a Mistral without a window is Llama's block, and loft writes it as Llama.
            let inert =
                key == "max_window_layers" || (family == "mistral" && (key == "architectures" || key == "model_type"));
            if inert {
                continue;
            }
            let same = match (value, want) {
                (serde_json::Value::Number(a), serde_json::Value::Number(b)) => {
                    a.is_f64() == b.is_f64() && (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9
                }
                // rope_parameters and the like: numbers inside compared by value and type as serde_json does
                (a, b) => a == b,
            };
            if !same {
                differ.push(format!("{family}: config.json '{key}': loft writes {value}, transformers {want}"));
            }
            compared += 1;
        }
        assert!(compared >= 12, "{family}: only {compared} keys in common with transformers' config.json");
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// The GGUF carries what llama.cpp's converter writes for the family: its architecture name and, for Llama's
/// layout (Mistral), Q/K rows in llama.cpp's RoPE order, which loft undoes on load (the logits above would differ
/// otherwise); here the names and the raw rows are checked against the folder's.
#[test]
fn the_gguf_is_llama_cpps_layout_of_the_folders_weights() {
    for (family, arch, permuted) in [
        ("qwen2", "qwen2", false),
        ("qwen2_tied", "qwen2", false),
        ("qwen3", "qwen3", false),
        ("mistral", "llama", true),
        ("mistral_window", "llama", true),
        ("gemma3", "gemma3", false),
    ] {
        let dir = fixture(family);
        let file = gguf::GgufFile::open(dir.join("model.gguf")).unwrap();
        assert_eq!(file.get_str(gguf::names::GENERAL_ARCHITECTURE).unwrap(), arch, "{family}");
        let hf_bytes = std::fs::read(dir.join("hf/model.safetensors")).unwrap();
        let hf = SafeTensors::deserialize(&hf_bytes).unwrap();
        let hf_q: Vec<f32> = hf
            .tensor("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let gguf_q = file.dequantize("blk.0.attn_q.weight").unwrap();
        assert_eq!(gguf_q.len(), hf_q.len(), "{family}");
        assert_eq!(gguf_q == hf_q, !permuted, "{family}: attn_q rows permuted: expected {permuted}");
        let mut sorted = (gguf_q.clone(), hf_q.clone());
        sorted.0.sort_by(f32::total_cmp);
        sorted.1.sort_by(f32::total_cmp);
        assert_eq!(sorted.0, sorted.1, "{family}: attn_q holds other values than q_proj");
    }
}
