//! The `loft` binary end to end: what users see on stdout and stderr, on the real default model and on broken
//! input. Text users see is compared with snapshots in tests/snapshots/ (rewrite them with UPDATE_SNAPSHOTS=1).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use common::{default_model, reference_dir, tiny_bpe_model};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn loft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loft")).args(args).output().expect("run loft")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("snapshot {name}: {e}; create it with UPDATE_SNAPSHOTS=1"));
    assert_eq!(actual, want, "snapshot {name} changed; rerun with UPDATE_SNAPSHOTS=1 if intended");
}

/// The subcommands `loft PATH… --help` lists under "Commands:" (clap's own `help` left out).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// `loft --help` and the help of every subcommand, nested ones included, found by walking the "Commands:" lists;
/// a command without a snapshot, or a snapshot without a command, fails.
#[test]
fn help_of_every_command() {
    let mut pending = vec![Vec::<String>::new()];
    let mut written = Vec::new();
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = loft(&args);
        assert!(out.status.success(), "loft {}: {}", args.join(" "), text(&out.stderr));
        let help = text(&out.stdout);
        let name = std::iter::once("loft").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join("-");
        snapshot(&format!("help/{name}.txt"), &help);
        written.push(format!("{name}.txt"));
        for sub in subcommands(&help) {
            pending.push(path.iter().cloned().chain([sub]).collect());
        }
    }
    assert!(written.len() >= 14, "only {written:?}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/help");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(written.contains(&file), "tests/snapshots/help/{file} belongs to no command; delete it");
    }
}

/// What a user sees when `loft ARGS…` fails in `dir`: the command, the exit code and stderr, with `dir` written
/// `<tmp>` and the default model's path `<model>`.
fn error_output(dir: &Path, args: &[&str], model: Option<&str>) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_loft")).args(args).current_dir(dir).output().expect("run loft");
    let stderr = text(&out.stderr);
    let shown = format!("$ loft {}\nexit code: {}\n{stderr}", args.join(" "), out.status.code().unwrap_or(-1));
    let shown = match model {
        Some(m) => shown.replace(m, "<model>"),
        None => shown,
    };
    let shown = shown.replace(dir.to_str().unwrap(), "<tmp>");
    assert!(!out.status.success(), "{shown}");
    assert!(!stderr.contains("panicked"), "{shown}");
    assert!(stderr.starts_with("error: "), "{shown}");
    shown
}

/// One case of the error snapshots: its name, the arguments, whether a hint is expected.
type ErrorCase<'a> = (&'a str, Vec<&'a str>, bool);

fn check_error_snapshots(dir: &Path, cases: &[ErrorCase<'_>], model: Option<&str>) {
    for (name, args, hinted) in cases {
        let shown = error_output(dir, args, model);
        assert_eq!(shown.contains("\nhint: "), *hinted, "{name}: {shown}");
        snapshot(&format!("errors/{name}.txt"), &shown);
    }
}

/// Errors on bad input that need no model: one `error:` line, a `Caused by:` line per cause, a `hint:`.
#[test]
fn error_output_on_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
    std::fs::create_dir(dir.join("empty")).unwrap();
    write("junk.gguf", b"GGUF\x03\x00\x00\x00trunc");
    write("magic.gguf", b"NOPE\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    write("exists.gguf", b"");
    std::fs::create_dir(dir.join("merged")).unwrap();
    let config = "[model]\npath = \"m.gguf\"\n[data]\ntrain_files = [\"train.jsonl\"]\n";
    write("run.toml", config.as_bytes());
    write("unknown-key.toml", format!("{config}[train]\nlerning_rate = 1e-4\n").as_bytes());
    write("target.toml", format!("{config}[lora]\ntarget_modules = [\"q_prj\"]\n").as_bytes());
    std::fs::create_dir(dir.join("cut-config")).unwrap();
    let cut = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64}"#;
    write("cut-config/config.json", cut.as_bytes());
    let cases: Vec<ErrorCase> = vec![
        ("model-missing", vec!["generate", "--model", "nope.gguf", "--prompt", "hi"], true),
        ("model-folder-without-config", vec!["generate", "--model", "empty", "--prompt", "hi"], true),
        ("model-config-missing-key", vec!["inspect", "cut-config"], true),
        ("gguf-cut-short", vec!["inspect", "junk.gguf"], true),
        ("gguf-wrong-magic", vec!["eval", "--model", "magic.gguf", "--text", "run.toml"], true),
        ("config-missing", vec!["train", "missing.toml"], false),
        ("config-unknown-key", vec!["train", "unknown-key.toml"], true),
        ("config-unknown-target-module", vec!["train", "target.toml"], true),
        ("set-without-value", vec!["train", "run.toml", "--set", "train.learning_rate"], true),
        ("set-unknown-key", vec!["train", "run.toml", "--set", "train.lerning_rate=1e-4"], true),
        ("export-output-exists", vec!["export", "gguf", "--model", "m.gguf", "--out", "exists.gguf"], true),
        ("merge-output-exists", vec!["merge", "--model", "m.gguf", "--adapter", "empty", "--out", "merged"], true),
        ("merge-unknown-dtype", vec!["merge", "--model", "m.gguf", "--out", "new", "--dtype", "f8"], true),
        ("plot-without-metrics", vec!["plot", "empty", "--out", "loss.png"], true),
        ("top-p-out-of-range", vec!["generate", "--model", "m.gguf", "--prompt", "hi", "--top-p", "0"], true),
        ("device-unknown", vec!["eval", "--model", "m.gguf", "--text", "run.toml", "--device", "cuda"], true),
    ];
    check_error_snapshots(dir, &cases, None);
}

/// Errors that show once the default model loads: adapters, tokenizer, data files.
#[test]
fn error_output_with_the_default_model() {
    let model = default_model();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
    std::fs::create_dir(dir.join("empty")).unwrap();
    write("bad.jsonl", b"{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n");
    write("data.xml", b"<text>hi</text>\n");
    write("data.parquet", b"PAR1 not really\n");
    let data_config = |name: &str, file: &str| {
        let text = format!("[model]\npath = {model:?}\n[data]\ntrain_files = [{file:?}]\nformat = \"text\"\n");
        write(name, text.as_bytes());
    };
    data_config("bad-json.toml", "bad.jsonl");
    data_config("xml.toml", "data.xml");
    data_config("parquet.toml", "data.parquet");
    let m = model.as_str();
    let cases: Vec<ErrorCase> = vec![
        ("adapter-without-config", vec!["generate", "--model", m, "--adapter", "empty", "--prompt", "hi"], true),
        ("tokenizer-unknown-pre", vec!["generate", "--model", m, "--tokenizer-pre", "klingon", "--prompt", "hi"], true),
        ("data-bad-json-line", vec!["inspect", "--data", "bad-json.toml"], true),
        ("data-unknown-format", vec!["inspect", "--data", "xml.toml"], true),
        ("data-unreadable-parquet", vec!["inspect", "--data", "parquet.toml"], false),
    ];
    check_error_snapshots(dir, &cases, Some(m));
}

#[test]
fn eval_matches_pytorch_on_the_apache_license() {
    let model = default_model();
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
    let model = default_model();
    let out = loft(&["generate", "--model", &model, "--prompt", "What is the capital of France?"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "The capital of France is Paris.\n");
    let err = text(&out.stderr);
    assert!(err.contains("tok/s"), "{err}");
}

/// The default model through the wgpu backend on lavapipe (the WGSL kernels a GPU runs, on a software Vulkan
/// device) scores the reference text as the CPU does. 256 tokens, not 2000: lavapipe on two cores takes about 30 s
/// for these and 15 minutes for 2000 (where the difference was 1.3e-7; README).
#[test]
fn eval_on_the_gpu_equals_the_cpu() {
    let model = default_model();
    let file = reference_dir().join("apache-2.0.txt");
    let eval = |device: &str| -> (f64, String) {
        let out = loft(&[
            "eval",
            "--model",
            &model,
            "--text",
            file.to_str().unwrap(),
            "--max-tokens",
            "256",
            "--json",
            "--tokenizer-pre",
            "gpt-2",
            "--device",
            device,
        ]);
        assert!(out.status.success(), "--device {device}: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        assert_eq!(v["tokens"], 256);
        (v["loss"].as_f64().unwrap(), text(&out.stderr))
    };
    let (cpu, cpu_err) = eval("cpu");
    let (gpu, gpu_err) = eval("gpu:lavapipe");
    eprintln!("eval of 256 tokens: cpu {cpu:.9}, lavapipe {gpu:.9}, difference {:.1e}", (gpu - cpu).abs());
    assert!((gpu - cpu).abs() < 1e-4, "loss {gpu} on lavapipe, {cpu} on the CPU");
    assert!(cpu_err.contains("\ndevice: cpu\n"), "{cpu_err}");
    assert!(gpu_err.contains("\ndevice: GPU #") && gpu_err.contains("llvmpipe"), "{gpu_err}");
}

#[test]
fn generate_on_the_gpu_answers_the_reference_question() {
    let model = default_model();
    let prompt = "What is the capital of France?";
    let out = loft(&["generate", "--model", &model, "--prompt", prompt, "--device", "gpu:lavapipe"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "The capital of France is Paris.\n");
    let err = text(&out.stderr);
    assert!(err.contains("\ndevice: GPU #") && err.contains("llvmpipe") && err.contains("tok/s"), "{err}");
}

/// `bench train --device gpu:lavapipe --json` at the default model's shape with a 4-bit base: the device holds what
/// the plan's parts add up to (base in its Q4_0 blocks, adapter, gradients, optimizer state, activations) and far
/// less than an f32 copy of the base would take — the frozen matrices stay in their blocks on the device. With
/// `--f16-activations` the saved activations take half as much, and the device holds that much less.
#[test]
fn bench_train_on_the_gpu_holds_the_base_in_its_blocks() {
    let run = |f16: bool| -> serde_json::Value {
        let mut args = vec![
            "bench",
            "train",
            "--device",
            "gpu:lavapipe",
            "--batch",
            "1",
            "--seq",
            "8",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--load-in-4bit",
            "--json",
        ];
        if f16 {
            args.push("--f16-activations");
        }
        let out = loft(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap()
    };
    let (v, h) = (run(false), run(true));
    let held = v["device_bytes"].as_f64().unwrap();
    let estimate = v["device_estimate_bytes"].as_f64().unwrap();
    let base = v["base_weight_bytes"].as_f64().unwrap();
    // SmolLM2-135M's shape: 134.5M parameters; as f32 they alone would take 538 MB.
    let f32_base = 4.0 * 134_515_008.0;
    eprintln!("bench train on lavapipe: device {held:.0} bytes, estimate {estimate:.0}, base in blocks {base:.0}");
    assert!((held - estimate).abs() <= 0.01 * estimate, "device bytes {held} vs the estimate {estimate}");
    assert!(held < f32_base / 2.0, "the device holds {held} bytes: an f32 copy of the base is {f32_base}");
    assert!(v["device"].as_str().unwrap().contains("llvmpipe"), "{v}");
    assert!(v["loss"].as_f64().unwrap().is_finite());

    let (held16, est16) = (h["device_bytes"].as_f64().unwrap(), h["device_estimate_bytes"].as_f64().unwrap());
    let (acts, acts16) = (v["activation_bytes"].as_f64().unwrap(), h["activation_bytes"].as_f64().unwrap());
    eprintln!(
        "with f16 activations: device {held16:.0} bytes (estimate {est16:.0}), activations {acts16:.0} of {acts:.0}"
    );
    assert!((held16 - est16).abs() <= 0.01 * est16, "f16: device bytes {held16} vs the estimate {est16}");
    assert!(acts16 < 0.75 * acts && (held - held16 - (acts - acts16)).abs() < 1e4, "{acts16} vs {acts}");
    let (l, l16) = (v["loss"].as_f64().unwrap(), h["loss"].as_f64().unwrap());
    assert!((l - l16).abs() < 1e-3 * l, "loss {l16} with f16 activations, {l} without");
}

/// `--device gpu:NAME` naming no adapter lists what wgpu sees; with no Vulkan driver at all (the loader pointed at
/// a file that is not there) every GPU choice says what was looked for and how to get a driver. Both before the
/// model is read.
#[cfg(target_os = "linux")] // elsewhere Metal or DX12 adapters show whatever Vulkan has
#[test]
fn device_errors_say_what_was_looked_for() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("text.txt"), "Some text to score.").unwrap();
    let args = ["eval", "--model", "nope.gguf", "--text", "text.txt", "--device", "gpu:no-such-adapter"];
    let out = Command::new(env!("CARGO_BIN_EXE_loft")).args(args).current_dir(tmp.path()).output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    // Mesa's device-select layer may print its own lines first (e.g. without XDG_RUNTIME_DIR).
    let line = err.lines().find(|l| l.starts_with("error: --device")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("no adapter's name or driver contains 'no-such-adapter'") && line.contains("llvmpipe"));
    assert!(err.contains("\nhint: pick a name or number that `loft inspect --devices` lists"), "{err}");

    let none = tmp.path().join("no-driver.json");
    for device in ["gpu", "gpu:0", "gpu:lavapipe"] {
        let out = Command::new(env!("CARGO_BIN_EXE_loft"))
            .args(["eval", "--model", "nope.gguf", "--text", "text.txt", "--device", device])
            .current_dir(tmp.path())
            .env("VK_DRIVER_FILES", &none)
            .env("VK_ICD_FILENAMES", &none)
            .output()
            .unwrap();
        let shown = format!(
            "$ loft eval --model nope.gguf --text text.txt --device {device}\nexit code: {}\n{}",
            out.status.code().unwrap_or(-1),
            text(&out.stderr)
        );
        assert!(!out.status.success() && text(&out.stderr).starts_with("error: "), "{shown}");
        if device == "gpu" {
            snapshot("errors/device-no-adapter.txt", &shown);
        } else {
            assert!(shown.contains("wgpu found no GPU adapter (looked for Vulkan, Metal and DX12 drivers)"), "{shown}");
        }
    }
}

#[test]
fn inspect_shows_metadata_and_tensors() {
    let model = default_model();
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

    let model = default_model();
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

/// Plumbing, the same whatever the weights: runs on a tiny Llama with the default model's tokenizer cut down
/// (F32, Q/K permuted and embeddings tied as in the default model; the dequantizing merge of the real model is
/// checked in crates/loft/tests/hf_folder.rs).
#[test]
fn adapter_in_eval_equals_the_merged_folder() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_bpe_model(dir.path()).display().to_string();
    // An adapter with non-zero B, written in PEFT's format.
    let base = loft::model::load_base(&model, false).unwrap();
    let config = loft::lora::LoraConfig { r: 4, lora_alpha: 8.0, ..Default::default() };
    let mut adapter = loft::lora::Adapter::new(config, &base, 3).unwrap();
    let mut rng = loft::rng::SplitMix64::new(4);
    adapter.for_each_tensor_mut(|name, t| {
        if matches!(name, loft::lora::TensorName::LoraB(..)) {
            t.iter_mut().for_each(|v| *v = (rng.next_f64() as f32 - 0.5) * 0.2);
        }
    });
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

/// `bench train --vs-gemm` times gemm on the step's frozen products between the steps and reports both rates; on a
/// GPU it is refused in one line.
#[test]
fn bench_train_vs_gemm_reports_gemms_rate_beside_the_steps() {
    let args = ["bench", "train", "--batch", "1", "--seq", "16", "--steps", "2", "--warmup", "0", "--vs-gemm"];
    let out = loft(&[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    let (best, median) =
        (v["gemm_best_gflops_per_second"].as_f64().unwrap(), v["gemm_median_gflops_per_second"].as_f64().unwrap());
    assert!(best >= median && median > 0.0, "{v}");
    let (mean, fastest, median_step) = (
        v["seconds_per_step"].as_f64().unwrap(),
        v["seconds_per_step_fastest"].as_f64().unwrap(),
        v["seconds_per_step_median"].as_f64().unwrap(),
    );
    assert!(fastest > 0.0 && fastest <= mean && fastest <= median_step, "{v}");
    let out = loft(&args);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("gemm alone on the step's frozen products (8 rounds")
            && stdout.contains("% of gemm's best")
            && stdout.contains("its fastest step")
            && stdout.contains("steps: fastest"),
        "{stdout}"
    );
    let out = loft(&[&args[..], &["--device", "gpu:lavapipe"]].concat());
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--vs-gemm times the CPU's gemm"), "{}", text(&out.stderr));
}
