//! `loft train` end to end: a run killed with SIGKILL and resumed ends with the same adapter as an uninterrupted
//! one and TensorBoard's own reader sees the logged loss (plumbing: on a tiny model with the default model's
//! tokenizer cut down), bad configs fail with one line and a hint, and the memory estimate holds on the real
//! default model.
#![allow(clippy::unwrap_used)]

mod common;

use common::{default_model, reference_dir, tensorboard_py, tiny_bpe_model, workspace};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn loft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loft"));
    c.args(["--threads", "2"]);
    c
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "loft failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Steps of the run that is killed and resumed: enough that it is still running when the test sees checkpoint-4
/// even when the other tests load both cores and this one is slow to look (a step of the tiny model takes
/// milliseconds).
const STEPS: u64 = 300;

/// A chat dataset and a config training on it for [`STEPS`] steps, checkpointing every 2.
fn setup(dir: &Path, model: &Path) -> PathBuf {
    let mut data = String::new();
    for i in 0..16 {
        let msg = serde_json::json!({"messages": [
            {"role": "user", "content": format!("Count to {}.", i % 5 + 1)},
            {"role": "assistant", "content": (1..=i % 5 + 1).map(|k| k.to_string()).collect::<Vec<_>>().join(", ")},
        ]});
        data.push_str(&format!("{msg}\n"));
    }
    std::fs::write(dir.join("chat.jsonl"), data).unwrap();
    let config = format!(
        "[model]\npath = {:?}\nmax_seq_length = 128\n\n[lora]\nr = 4\nlora_alpha = 8\nlora_dropout = 0.05\n\n\
         [data]\ntrain_files = [{:?}]\nformat = \"chat\"\ntrain_on_responses_only = true\n\n\
         [train]\nper_device_train_batch_size = 2\ngradient_accumulation_steps = 1\nmax_steps = {STEPS}\n\
         learning_rate = 5e-4\nsave_steps = 2\nsave_total_limit = 2\nreport_to = \"tensorboard\"\n",
        model.display().to_string(),
        dir.join("chat.jsonl").display().to_string()
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn adapter_floats(dir: &Path) -> Vec<f32> {
    let bytes = std::fs::read(dir.join("adapter/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            let v = st.tensor(n).unwrap();
            v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>()
        })
        .collect()
}

/// The newest complete checkpoint's step, and the checkpoint folders, in step order.
fn checkpoints(run: &Path) -> (Option<u64>, Vec<String>) {
    let mut steps: Vec<u64> = std::fs::read_dir(run)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("checkpoint-")?.parse().ok())
        .collect();
    steps.sort_unstable();
    let complete = steps.iter().rev().find(|s| run.join(format!("checkpoint-{s}/checkpoint_complete")).is_file());
    (complete.copied(), steps.iter().map(|s| format!("checkpoint-{s}")).collect())
}

/// Plumbing, the same whatever the weights: a tiny Llama with the default model's tokenizer cut down (its chat
/// template included), whose steps take milliseconds.
#[test]
fn killed_and_resumed_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_bpe_model(tmp.path());
    let config = setup(tmp.path(), &model);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let set_out = |d: &Path| format!("train.output_dir={:?}", d.display().to_string());

    ok(loft().arg("train").arg(&config).args(["--set", &set_out(&a)]).output().unwrap());

    // The same run, killed once checkpoint-4 is complete (by then it may have written later ones, the last perhaps
    // half).
    let mut child = loft()
        .arg("train")
        .arg(&config)
        .args(["--set", &set_out(&b)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !b.join("checkpoint-4/checkpoint_complete").is_file() {
        assert!(start.elapsed() < Duration::from_secs(300), "checkpoint-4 never appeared");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!b.join("adapter").exists(), "the killed run got to the end");
    let last = checkpoints(&b).0.unwrap();
    eprintln!("killed after checkpoint-{last} of {STEPS} steps");

    // Without --resume the folder is refused; with it the run continues from the last complete checkpoint.
    let out = loft().arg("train").arg(&config).args(["--set", &set_out(&b)]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds another run") && err.contains("hint: continue it with --resume"), "{err}");
    let out = ok(loft().arg("train").arg(&config).args(["--set", &set_out(&b), "--resume"]).output().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("checkpoint-{last} (step {last})")), "{err}");

    let (x, y) = (adapter_floats(&a), adapter_floats(&b));
    assert_eq!(x.len(), y.len());
    let diff: f64 = x.iter().zip(&y).map(|(p, q)| ((p - q) as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
    assert!(diff / norm <= 1e-6, "resumed adapter differs by {:e}", diff / norm);

    // save_total_limit = 2: the last two checkpoints remain in both runs.
    for run in [&a, &b] {
        let want = vec![format!("checkpoint-{}", STEPS - 2), format!("checkpoint-{STEPS}")];
        assert_eq!(checkpoints(run).1, want, "{}", run.display());
    }
    // metrics.jsonl of the resumed run has each step once.
    let steps: Vec<u64> = std::fs::read_to_string(b.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>());

    // TensorBoard's own reader sees the uninterrupted run's loss curve as metrics.jsonl has it.
    let out =
        Command::new(tensorboard_py()).arg(workspace().join("scripts/read_tensorboard.py")).arg(&a).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let metrics: Vec<(u64, f64)> = std::fs::read_to_string(a.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect();
    let curve = tb["train/loss"].as_array().unwrap();
    assert_eq!(curve.len(), metrics.len());
    for (p, (step, loss)) in curve.iter().zip(&metrics) {
        assert_eq!(p[0].as_u64(), Some(*step));
        assert_eq!(p[1].as_f64().unwrap() as f32, *loss as f32);
    }
}

#[test]
fn bad_configs_fail_with_one_line_and_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[model]\npath = \"m.gguf\"\n[data]\ntrain_files = [\"x.jsonl\"]\n[train]\nlerning_rate = 1\n",
    )
    .unwrap();
    let out = loft().arg("train").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "error: {}: unknown key in [train]: `lerning_rate`\nhint: did you mean `learning_rate`?",
            cfg.display()
        )
    );
    // A bad override names itself (the file's own errors come first, so this file has none).
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, "[model]\npath = \"m.gguf\"\n[data]\ntrain_files = [\"x.jsonl\"]\n").unwrap();
    let out = loft().arg("train").arg(&good).args(["--set", "train.learning_rate"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: --set train.learning_rate: expected section.key=value"), "{err}");
    let out = loft().arg("train").arg(tmp.path().join("missing.toml")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("missing.toml"), "{err}");
}

/// The "will it fit" estimate printed before training is within 15 % of the peak the run then measures, on the
/// default model kept 4-bit with a fully trained (tied) embedding, packed text, checkpoints saved; with and without
/// gradient checkpointing.
#[test]
fn the_memory_estimate_is_within_15_percent_of_the_measured_peak() {
    let model = default_model();
    let dir = tempfile::tempdir().unwrap();
    let text = reference_dir().join("apache-2.0.txt");
    for checkpointing in [false, true] {
        let out = dir.path().join(format!("run-{checkpointing}"));
        let config = format!(
            "[model]\npath = {model:?}\nmax_seq_length = 256\nload_in_4bit = true\n\n[lora]\nr = 16\n\
             lora_alpha = 16\ntarget_modules = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \
             \"up_proj\", \"down_proj\", \"embed_tokens\", \"lm_head\"]\n\n[data]\ntrain_files = [{:?}]\n\
             format = \"text\"\npacking = true\nsplit_paragraphs = true\nvalidation_split = 0.05\n\n[train]\n\
             output_dir = {:?}\nper_device_train_batch_size = 2\nper_device_eval_batch_size = 2\nmax_steps = 1\nsave_steps = 1\n\
             eval_steps = 1\noptim = \"adamw_8bit\"\ngradient_checkpointing = {checkpointing}\n",
            text.display().to_string(),
            out.display().to_string()
        );
        let path = dir.path().join(format!("run-{checkpointing}.toml"));
        std::fs::write(&path, config).unwrap();
        ok(loft().arg("train").arg(&path).output().unwrap());
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("train_summary.json")).unwrap()).unwrap();
        let estimate = summary["memory_estimate_bytes"].as_f64().unwrap();
        let peak = summary["peak_rss_bytes"].as_f64().unwrap();
        let off = (estimate - peak) / peak;
        eprintln!("checkpointing {checkpointing}: estimate {estimate:.0}, peak {peak:.0}, {:+.1} %", 100.0 * off);
        assert!(off.abs() <= 0.15, "checkpointing {checkpointing}: estimate {estimate} vs peak {peak} ({off:+.3})");
    }
}

/// `loft train --device gpu:lavapipe`: the run computes on the wgpu backend (lavapipe, Mesa's software Vulkan
/// device), prints the device-memory plan, and reports in train_summary.json the device memory it held against that
/// estimate; the adapter it writes loads back. (That the GPU's steps equal the CPU's is loft-gpu's parity test.) A
/// `train.device` that names no device, and f16 activations asked for on the CPU, are one-line errors naming the
/// file and key.
#[test]
fn a_run_on_the_gpu_reports_its_device_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_bpe_model(tmp.path());
    let config = setup(tmp.path(), &model);
    let out = tmp.path().join("gpu-run");
    let run = ok(loft()
        .arg("train")
        .arg(&config)
        .args(["--device", "gpu:lavapipe", "--set", "train.max_steps=2"])
        .arg("--set")
        .arg(format!("train.output_dir={:?}", out.display().to_string()))
        .output()
        .unwrap());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("device: GPU #") && err.contains("llvmpipe"), "{err}");
    assert!(err.contains("device memory estimate: ") && err.contains("(in its own blocks)"), "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train_summary.json")).unwrap()).unwrap();
    let held = summary["device_bytes"].as_f64().unwrap();
    let estimate = summary["device_estimate_bytes"].as_f64().unwrap();
    eprintln!("tiny run on lavapipe: device holds {held:.0} bytes, estimate {estimate:.0}");
    // Beyond the plan's parts the device holds only the head's per-call scratch and the 8-bit code maps.
    assert!(held >= estimate * 0.9 && held <= estimate * 1.05, "device bytes {held} vs estimate {estimate}");
    assert!(summary["device"].as_str().unwrap().contains("llvmpipe"), "{summary}");
    assert!(!adapter_floats(&out).is_empty());

    // `inspect --data` shows the plan on the config's device: the device's memory, the estimate the run held.
    let shown = ok(loft()
        .args(["inspect", "--data"])
        .arg(&config)
        .args(["--samples", "0", "--json", "--set", "train.device=\"gpu:lavapipe\""])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let m = &v["memory_estimate"];
    assert_eq!(m["on_device"], true, "{v}");
    assert_eq!(m["device_total_bytes"].as_f64().unwrap(), estimate, "{v}");

    let out = loft().arg("train").arg(&config).args(["--set", "train.device=\"tpu\""]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(line, format!("error: {}: train.device = \"tpu\" is not a device", config.display()), "{err}");
    assert!(err.contains("hint: use auto, cpu, gpu, gpu:N"), "{err}");

    // f16 activations are a GPU setting: asked for on the CPU, the run stops before loading anything.
    let out = loft().arg("train").arg(&config).args(["--set", "train.f16_activations=true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.ends_with("train.f16_activations applies on a GPU; this run is on the CPU"), "{err}");
}
