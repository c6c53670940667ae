//! The `loft` binary end to end: what users see on stdout and stderr, on the real default model and on broken
//! input. Text users see is compared with snapshots in tests/snapshots/ (rewrite them with UPDATE_SNAPSHOTS=1).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use common::{default_model, workspace};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn loft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loft")).args(args).output().expect("run loft")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn reference_dir() -> PathBuf {
    workspace().join("../shared/reference")
}

fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("snapshot {name}: {e}; create it with UPDATE_SNAPSHOTS=1"));
    assert_eq!(actual, want, "snapshot {name} changed; rerun with UPDATE_SNAPSHOTS=1 if intended");
}

#[test]
fn help_lists_the_commands() {
    let out = loft(&["--help"]);
    assert!(out.status.success());
    snapshot("help.txt", &text(&out.stdout));
}

#[test]
fn eval_matches_pytorch_on_the_apache_license() {
    let Some(model) = default_model() else { return };
    let file = reference_dir().join("apache-2.0.txt");
    // transformers, which produced the reference, ignores the GGUF's `smollm` pre-tokenizer and splits text as
    // GPT-2 does; --tokenizer-pre gpt-2 reproduces its ids (the tokenizer tests check them one by one).
    let out = loft(&[
        "eval",
        "--model",
        &model,
        "--text",
        file.to_str().unwrap(),
        "--max-tokens",
        "2000",
        "--json",
        "--tokenizer-pre",
        "gpt-2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["tokens"], 2000);
    let loss = v["loss"].as_f64().unwrap();
    assert!((loss - 2.591814).abs() < 2e-4, "loss {loss}");
    assert!((v["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-9);
}

#[test]
fn generate_answers_the_reference_question_greedily() {
    let Some(model) = default_model() else { return };
    let out = loft(&["generate", "--model", &model, "--prompt", "What is the capital of France?"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "The capital of France is Paris.\n");
    let err = text(&out.stderr);
    assert!(err.contains("tok/s"), "{err}");
}

#[test]
fn inspect_shows_metadata_and_tensors() {
    let Some(model) = default_model() else { return };
    let out = loft(&["inspect", &model, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["metadata"]["general.architecture"], "llama");
    assert_eq!(v["tensors"].as_array().unwrap().len(), 272);
}

/// `inspect --devices` lists lavapipe (make test installs it) as a software adapter, which `--device auto` never
/// picks.
#[test]
fn inspect_devices_lists_lavapipe_as_software() {
    let out = loft(&["inspect", "--devices", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let adapters = v["adapters"].as_array().unwrap();
    let lavapipe = adapters.iter().find(|a| a["driver"] == "llvmpipe").unwrap_or_else(|| {
        panic!("no lavapipe among {adapters:?}\nhint: apt-get install mesa-vulkan-drivers libvulkan1 (scripts/fetch.sh vulkan)")
    });
    assert_eq!(lavapipe["software"], true);
    assert_eq!(lavapipe["backend"], "vulkan");
    if adapters.iter().all(|a| a["software"] == true) {
        assert_eq!(v["auto"], "cpu");
    }
    let out = loft(&["inspect", "--devices"]);
    let listing = text(&out.stdout);
    assert!(
        listing.contains("llvmpipe") && listing.contains("(software)") && listing.contains("--device auto"),
        "{listing}"
    );
}

/// Errors are `error: …` on one line, then `hint: …`; never a panic.
fn assert_clean_error(out: &Output, must_contain: &[&str]) {
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let first = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line: {err}"));
    for m in must_contain {
        assert!(first.contains(m), "'{m}' not in: {first}");
    }
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    let out = loft(&["generate", "--model", missing.to_str().unwrap(), "--prompt", "hi"]);
    assert_clean_error(&out, &["nope.gguf", "no such file"]);
    assert!(text(&out.stderr).contains("hint: "));

    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00trunc").unwrap();
    let out = loft(&["inspect", junk.to_str().unwrap()]);
    assert_clean_error(&out, &["junk.gguf"]);

    let wrong_magic = dir.path().join("magic.gguf");
    std::fs::write(&wrong_magic, b"NOPE\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00").unwrap();
    let out = loft(&["eval", "--model", wrong_magic.to_str().unwrap(), "--text", "Cargo.toml"]);
    assert_clean_error(&out, &["magic.gguf"]);

    if let Some(model) = default_model() {
        // A truncated copy of the real model: the tensor data runs past the end.
        let bytes = std::fs::read(&model).unwrap();
        let cut = dir.path().join("cut.gguf");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let out = loft(&["generate", "--model", cut.to_str().unwrap(), "--prompt", "hi"]);
        assert_clean_error(&out, &["cut.gguf"]);

        let long = "word ".repeat(9000);
        let out = loft(&["generate", "--model", &model, "--raw", "--prompt", &long]);
        assert_clean_error(&out, &["context"]);

        let out = loft(&["generate", "--model", &model, "--prompt", "hi", "--top-p", "0"]);
        assert_clean_error(&out, &["--top-p"]);
    }
}

#[test]
fn adapter_in_eval_equals_the_merged_folder() {
    let Some(model) = default_model() else { return };
    // An adapter for the default model with non-zero B, written in PEFT's format.
    let base = loft::model::load_base(&model, false).unwrap();
    let config = loft::lora::LoraConfig { r: 4, lora_alpha: 8.0, ..Default::default() };
    let mut adapter = loft::lora::Adapter::new(config, &base, 3).unwrap();
    let mut rng = loft::infer::sample::SplitMix64::new(4);
    adapter.for_each_tensor_mut(|name, t| {
        if matches!(name, loft::lora::TensorName::LoraB(..)) {
            t.iter_mut().for_each(|v| *v = (rng.next_f64() as f32 - 0.5) * 0.2);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = dir.path().join("adapter");
    loft::lora::peft::save_peft_adapter(&adapter, base.config.hidden_size, &adapter_dir, &model).unwrap();
    let a = adapter_dir.to_str().unwrap();
    let licence = reference_dir().join("apache-2.0.txt");
    let t = licence.to_str().unwrap();
    let eval = |m: &str, extra: &[&str]| -> f64 {
        let mut args = vec!["eval", "--model", m, "--text", t, "--max-tokens", "256", "--json"];
        args.extend_from_slice(extra);
        let out = loft(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let base_loss = eval(&model, &[]);
    let with_adapter = eval(&model, &["--adapter", a]);
    assert!((with_adapter - base_loss).abs() > 1e-3, "the adapter changed nothing ({base_loss} vs {with_adapter})");

    let merged = dir.path().join("merged");
    let out = loft(&["merge", "--model", &model, "--adapter", a, "--out", merged.to_str().unwrap(), "--dtype", "f32"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let merged_loss = eval(merged.to_str().unwrap(), &[]);
    eprintln!("base {base_loss:.6}, --adapter {with_adapter:.6}, merged folder {merged_loss:.6}");
    assert!((merged_loss - with_adapter).abs() < 1e-4, "merged {merged_loss} vs --adapter {with_adapter}");

    let again = loft(&["merge", "--model", &model, "--adapter", a, "--out", merged.to_str().unwrap()]);
    assert_clean_error(&again, &["already exists"]);
}

#[test]
fn inspect_shows_a_peft_adapter() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../loft/tests/fixtures/peft_tiny/adapter_rslora_embed");
    let out = loft(&["inspect", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["format"], "peft");
    assert_eq!(v["config"]["r"], 4);
    assert_eq!(v["tensors"].as_array().unwrap().len(), 30);
    // 2 layers × 7 modules × (A + B) at r = 4, plus the two 64×32 full copies.
    assert_eq!(v["trainable_parameters"], 7808);
}
