//! Training on the GPU equals training on the CPU: the recipe (`loft::train::train_on`, written once against the
//! backend seam) runs 3 optimizer steps of a configs/cpt.toml-like run on both — a 4-bit base kept in its Q4_0
//! blocks, rsLoRA on every linear layer, embed_tokens and lm_head trained at the embedding learning rate, 8-bit
//! AdamW, batch 2 × accumulation 2, packed text — with and without gradient checkpointing. Per-step losses agree
//! within 1e-3 relative and the final adapters within 1e-3 relative L2; a run checkpointed on one device resumes
//! on the other and ends where the uninterrupted CPU run does.
//!
//! The model is a tiny Llama (2 layers, hidden 64) with the default model's tokenizer cut to 2000 merges: this
//! checks that the two backends compute the same step, which the shapes do not change (the kernels are checked at
//! the default model's shapes in the other files).

use std::path::{Path, PathBuf};

use loft::engine::Cpu;
use loft::export::gguf_model::write_gguf_model;
use loft::export::quant_plan::GgufQuant;
use loft::model::{LoadedModel, TargetModule};
use loft::train::{train_on, Quiet, RunConfig, TrainConfig, TrainOptions};

use crate::common::gpu;

use crate::lcommon;
use crate::lcommon::{adapter_tensors as adapter, l2_parts, relative_l2};

/// The tiny model, re-written with Q4_0 blocks (as a 4-bit GGUF holds them).
fn tiny_q4_model(dir: &Path) -> PathBuf {
    let f32_path = lcommon::tiny_bpe_model(dir);
    let loaded = LoadedModel::load(&f32_path.display().to_string()).expect("the tiny model loads");
    let path = dir.join("tiny-q4_0.gguf");
    write_gguf_model(&path, &loaded.model, &loaded.tokenizer, GgufQuant::Q4_0, "tiny").expect("Q4_0 export");
    path
}

fn write_text(dir: &Path) -> PathBuf {
    let sentences = [
        "The river runs past the old mill and under the stone bridge before it reaches the sea.",
        "In spring the orchard is white with blossom, and bees work from dawn until the light goes.",
        "A law is a rule that a community agrees to follow, written down so that it can be read by all.",
        "The baker starts before sunrise, and by seven the whole street smells of warm bread.",
        "Rain on a tin roof makes a sound that many people find restful on a long night.",
        "Numbers can be even or odd; seven is odd, and so are three, five and nine.",
    ];
    let text: String = (0..12).map(|i| sentences[i % sentences.len()]).collect::<Vec<_>>().join(" ");
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text).expect("write the corpus");
    p
}

fn config(model: &Path, data: &Path, out: &Path, checkpointing: bool) -> RunConfig {
    let toml = format!(
        "[model]\npath = {:?}\nmax_seq_length = 32\nload_in_4bit = true\n\
         [lora]\nr = 8\nlora_alpha = 8\nuse_rslora = true\n\
         target_modules = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \
         \"down_proj\", \"embed_tokens\", \"lm_head\"]\n\
         [data]\ntrain_files = [{:?}]\nformat = \"text\"\ntext_template = \"{{text}}\"\npacking = true\n\
         validation_split = 0.0\nshuffle = true\n\
         [train]\noutput_dir = {:?}\nper_device_train_batch_size = 2\ngradient_accumulation_steps = 2\n\
         max_steps = 3\nlearning_rate = 2e-3\nembedding_learning_rate = 2e-4\nwarmup_steps = 1\n\
         lr_scheduler_type = \"cosine\"\noptim = \"adamw_8bit\"\nweight_decay = 0.01\nmax_grad_norm = 1.0\n\
         gradient_checkpointing = {checkpointing}\nlogging_steps = 1\nsave_steps = 2\nsave_total_limit = 3\n\
         seed = 3407\n",
        model.display().to_string(),
        data.display().to_string(),
        out.display().to_string()
    );
    TrainConfig::parse(&toml, &[]).expect("config").resolve().expect("config resolves")
}

fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            Some((v["step"].as_u64()?, v.get("loss")?.as_f64()?))
        })
        .collect()
}

/// For the LoRA matrices and for the trained embedding/head apart: ‖gpu − cpu‖ against how far the last step
/// moved them (‖cpu − cpu at step 2‖), so that a bound on the whole adapter cannot hide a part that did not train
/// alike (the embedding copies dominate the adapter's norm).
fn assert_parts_track(
    label: &str,
    gpu: &[(String, Vec<f32>)],
    cpu: &[(String, Vec<f32>)],
    step2: &[(String, Vec<f32>)],
) {
    for (part, keep) in [
        ("LoRA", &(|n: &str| n.contains("lora_")) as &dyn Fn(&str) -> bool),
        ("embed/head", &|n: &str| !n.contains("lora_")),
    ] {
        let (diff, _) = l2_parts(gpu, cpu, keep);
        let (moved, _) = l2_parts(step2, cpu, keep);
        let ratio = (diff / moved).sqrt();
        eprintln!("train {label}: {part} differ by {ratio:.2e} of the last step's change");
        assert!(moved > 0.0 && ratio < 1e-2, "{label}: {part} differ by {ratio:.2e} of the last step's change");
    }
}

fn run(be: &impl loft::engine::Backend, cfg: &RunConfig, resume: bool) {
    let options = TrainOptions { resume, ..TrainOptions::default() };
    train_on(be, cfg, &options, &mut Quiet).unwrap_or_else(|e| panic!("{} ({}): {e}", be.describe(), resume));
}

fn assert_same_run(label: &str, gpu_out: &Path, cpu_out: &Path) {
    let (g, c) = (losses(gpu_out), losses(cpu_out));
    assert_eq!(g.len(), 3, "{label}: three logged steps");
    for ((sg, lg), (sc, lc)) in g.iter().zip(&c) {
        assert_eq!(sg, sc);
        let rel = (lg - lc).abs() / lc.abs();
        eprintln!("train {label} step {sg}: loss gpu {lg:.6} cpu {lc:.6} (rel {rel:.2e})");
        assert!(rel < 1e-3, "{label} step {sg}: loss {lg} on the GPU, {lc} on the CPU");
    }
    let rel = relative_l2(&adapter(&gpu_out.join("adapter")), &adapter(&cpu_out.join("adapter")));
    eprintln!("train {label}: final adapter relative L2 {rel:.2e}");
    assert!(rel < 1e-3, "{label}: final adapters differ by {rel:.2e} relative L2");
}

#[test]
fn three_cpt_steps_on_the_gpu_equal_the_cpu_and_resume_across_devices() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let model = tiny_q4_model(dir.path());
    let data = write_text(dir.path());
    let loaded = loft::model::load_base(&model.display().to_string(), true).expect("the Q4_0 model loads");
    let storage = loaded.weights.layers[0].module(TargetModule::QProj).storage_name();
    assert_eq!(storage, "q4_0", "the base must stay in its 4-bit blocks");

    for checkpointing in [false, true] {
        let label = if checkpointing { "checkpointing" } else { "no checkpointing" };
        let (cpu_out, gpu_out) =
            (dir.path().join(format!("cpu-{checkpointing}")), dir.path().join(format!("gpu-{checkpointing}")));
        run(&Cpu, &config(&model, &data, &cpu_out, checkpointing), false);
        run(gpu(), &config(&model, &data, &gpu_out, checkpointing), false);
        assert_same_run(label, &gpu_out, &cpu_out);
        let step2 = adapter(&cpu_out.join("checkpoint-2"));
        assert_parts_track(label, &adapter(&gpu_out.join("adapter")), &adapter(&cpu_out.join("adapter")), &step2);
        if checkpointing {
            continue;
        }
        // checkpoint-2 of each device's run, resumed on the other: step 3 there ends at the CPU run's adapter.
        for (from, to_gpu) in [(&gpu_out, false), (&cpu_out, true)] {
            let out = dir.path().join(format!("resume-{to_gpu}"));
            std::fs::create_dir_all(&out).expect("mkdir");
            copy_dir(&from.join("checkpoint-2"), &out.join("checkpoint-2"));
            let cfg = config(&model, &data, &out, false);
            if to_gpu {
                run(gpu(), &cfg, true);
            } else {
                run(&Cpu, &cfg, true);
            }
            let rel = relative_l2(&adapter(&out.join("adapter")), &adapter(&cpu_out.join("adapter")));
            let way = if to_gpu { "CPU checkpoint resumed on the GPU" } else { "GPU checkpoint resumed on the CPU" };
            eprintln!("train {way}: final adapter relative L2 to the CPU run {rel:.2e}");
            assert!(rel < 1e-3, "{way}: final adapter differs from the CPU run's by {rel:.2e}");
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

/// The same run with the saved activations kept in f16 on the device (`Wgpu::with_f16_activations`): every kernel
/// still computes in f32, so the run follows the f32 CPU run closely: losses within 1e-3 relative (measured on
/// lavapipe: 8e-5), the whole adapter within 1e-3 relative L2, its LoRA matrices within 1e-2 (and within a tenth
/// of what the last step changed; Adam's normalised step amplifies the rounding of small gradients), and the
/// device holds what the plan, with activations at 2 bytes, says.
#[test]
fn f16_activations_train_like_the_f32_cpu_run() {
    let name = std::env::var("LOFT_GPU_ADAPTER").unwrap_or_else(|_| "lavapipe".into());
    let ctx = loft_gpu::Context::open_named(&name).expect("the test adapter");
    assert!(ctx.has_f16(), "{name} has no SHADER_F16; the f16 path cannot be tested on it");
    let gpu16 = loft_gpu::Wgpu::new(ctx).with_f16_activations(true).expect("f16 activations");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let model = tiny_q4_model(dir.path());
    let data = write_text(dir.path());
    let (cpu_out, gpu_out) = (dir.path().join("cpu"), dir.path().join("gpu-f16"));
    run(&Cpu, &config(&model, &data, &cpu_out, false), false);
    run(&gpu16, &config(&model, &data, &gpu_out, false), false);
    let (g, c) = (losses(&gpu_out), losses(&cpu_out));
    for ((s, lg), (_, lc)) in g.iter().zip(&c) {
        let rel = (lg - lc).abs() / lc.abs();
        eprintln!("train f16 activations step {s}: loss gpu {lg:.6} cpu {lc:.6} (rel {rel:.2e})");
        assert!(rel < 1e-3, "f16 activations step {s}: loss {lg} on the GPU, {lc} on the CPU");
    }
    let (gpu, cpu) = (adapter(&gpu_out.join("adapter")), adapter(&cpu_out.join("adapter")));
    let step2 = adapter(&cpu_out.join("checkpoint-2"));
    let lora = |n: &str| n.contains("lora_");
    let (diff, norm) = l2_parts(&gpu, &cpu, lora);
    let ratio = (diff / l2_parts(&step2, &cpu, lora).0).sqrt();
    let rel = (diff / norm).sqrt();
    let whole = relative_l2(&gpu, &cpu);
    eprintln!(
        "train f16 activations: adapter relative L2 {whole:.2e}, LoRA matrices {rel:.2e} ({ratio:.2e} of the last \
         step's change)"
    );
    assert!(whole < 1e-3 && rel < 1e-2 && ratio < 0.1, "f16 activations: LoRA differ by {rel:.2e} ({ratio:.2e})");
    let summary = |out: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("train_summary.json")).expect("summary")).expect("json")
    };
    let held16 = summary(&gpu_out)["device_bytes"].as_f64().expect("device bytes");
    let est16 = summary(&gpu_out)["device_estimate_bytes"].as_f64().expect("estimate");
    eprintln!("train f16 activations: device holds {held16:.0} bytes, estimate {est16:.0}");
    assert!((held16 - est16).abs() <= 0.05 * est16, "f16: device bytes {held16} vs estimate {est16}");
}
