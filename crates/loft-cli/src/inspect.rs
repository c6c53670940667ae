//! `loft inspect`: what a model file or folder holds.

use std::path::{Path, PathBuf};

use loft::model::safetensors_source::SafetensorsSource;
use loft::model::LlamaConfig;
use loft::Error;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model folder, a PEFT adapter or checkpoint folder, or (with --data) a
    /// training config.
    #[arg(required_unless_present = "devices")]
    pub path: Option<PathBuf>,
    /// List the GPU adapters wgpu sees (Vulkan, Metal, DX12) instead: name, backend, type, driver, features,
    /// limits, and the N of `--device gpu:N`.
    #[arg(long, conflicts_with_all = ["data", "path"])]
    pub devices: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// PATH is a `loft train` config: show its dataset's counts and the first --samples examples as the model
    /// will see them, trained tokens between ⟦ and ⟧.
    #[arg(long)]
    pub data: bool,
    /// With --data: how many examples to show.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    /// With --data: override a config key (as `loft train --set`).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

impl Args {
    /// PATH (clap requires it unless --devices, which returns before any use).
    fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }
}

pub fn run(args: Args) -> loft::Result<()> {
    if args.devices {
        inspect_devices(&args)
    } else if args.data {
        inspect_data(&args)
    } else if args.path().is_dir() && args.path().join(loft::lora::peft::CONFIG_FILE).is_file() {
        inspect_adapter(&args)
    } else if args.path().is_dir() {
        inspect_hf_folder(&args)
    } else if args.path().is_file() {
        inspect_gguf(&args)
    } else {
        Err(Error::hinted(
            format!("{}: no such file or folder", args.path().display()),
            "pass a .gguf file or a model folder",
        ))
    }
}

fn inspect_gguf(args: &Args) -> loft::Result<()> {
    let file = gguf::GgufFile::open(args.path())?;
    let total: u64 = file.tensors.iter().map(|t| t.n_elements()).sum();
    if args.json {
        let metadata: serde_json::Map<String, serde_json::Value> =
            file.metadata.iter().map(|(k, v)| (k.clone(), value_json(v))).collect();
        let tensors: Vec<serde_json::Value> = file
            .tensors
            .iter()
            .map(|t| json!({"name": t.name, "type": t.dtype.name(), "shape": t.shape, "bytes": t.n_bytes()}))
            .collect();
        let out = json!({
            "path": args.path().display().to_string(), "format": "gguf", "version": file.version,
            "alignment": file.alignment, "parameters": total, "metadata": metadata, "tensors": tensors,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "{}: GGUF v{}, {} tensors, {:.1}M parameters",
        args.path().display(),
        file.version,
        file.tensors.len(),
        total as f64 / 1e6
    );
    println!("\nmetadata ({} keys):", file.metadata.len());
    for (k, v) in &file.metadata {
        println!("  {k:<44} {}", v.summary());
    }
    let mut by_type: std::collections::BTreeMap<&str, (usize, u64)> = Default::default();
    for t in &file.tensors {
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes();
    }
    println!("\ntensor types:");
    for (name, (n, bytes)) in by_type {
        println!("  {name:<6} {n:>5} tensors {:>10.1} MiB", bytes as f64 / (1 << 20) as f64);
    }
    println!("\ntensors:");
    for t in &file.tensors {
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        println!("  {:<36} {:<6} [{}]", t.name, t.dtype.name(), shape.join(", "));
    }
    Ok(())
}

fn inspect_hf_folder(args: &Args) -> loft::Result<()> {
    let config = LlamaConfig::from_hf_json(&args.path().join("config.json"))?;
    let source = SafetensorsSource::open(args.path())?;
    let mut names: Vec<&String> = source.names().collect();
    names.sort();
    if args.json {
        let out = json!({
            "path": args.path().display().to_string(), "format": "huggingface",
            "parameters": config.num_parameters(), "config": config.to_hf_json(None, None, "float32"),
            "tensors": names,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "{}: Hugging Face folder, {} ({}), {:.1}M parameters",
        args.path().display(),
        config.arch.hf_class(),
        config.arch.model_type(),
        config.num_parameters() as f64 / 1e6
    );
    println!(
        "  layers {}, hidden {}, ffn {}, heads {} (kv {}), head_dim {}, vocab {}, tied head: {}",
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config.vocab_size,
        config.tie_word_embeddings
    );
    println!("\ntensors ({}):", names.len());
    for n in names {
        println!("  {n}");
    }
    Ok(())
}

/// A PEFT adapter folder: its config and tensors, as PEFT wrote them (no base model needed).
fn inspect_adapter(args: &Args) -> loft::Result<()> {
    let config_path = args.path().join(loft::lora::peft::CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&config_path, format!("invalid JSON: {e}")))?;
    let weights = args.path().join(loft::lora::peft::WEIGHTS_FILE);
    let bytes = std::fs::read(&weights).map_err(|e| Error::io(&weights, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(&weights, format!("not a valid safetensors file: {e}")))?;
    let mut tensors: Vec<(String, Vec<usize>, String)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), format!("{:?}", v.dtype()))).collect();
    tensors.sort();
    let params: usize = tensors.iter().map(|t| t.1.iter().product::<usize>()).sum();
    if args.json {
        let list: Vec<serde_json::Value> =
            tensors.iter().map(|(n, s, d)| json!({"name": n, "shape": s, "dtype": d})).collect();
        println!(
            "{}",
            json!({"path": args.path().display().to_string(), "format": "peft", "config": config,
                   "trainable_parameters": params, "tensors": list})
        );
        return Ok(());
    }
    println!("{}: PEFT adapter, {} tensors, {} trainable parameters", args.path().display(), tensors.len(), params);
    for key in [
        "peft_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "use_rslora",
        "target_modules",
        "modules_to_save",
        "base_model_name_or_path",
    ] {
        println!("  {key:<24} {}", config[key]);
    }
    println!("\ntensors:");
    for (n, s, d) in &tensors {
        println!("  {n:<72} {d:<5} {s:?}");
    }
    Ok(())
}

/// Metadata as JSON; token-sized arrays are summarised so the output stays readable.
fn value_json(v: &gguf::Value) -> serde_json::Value {
    use gguf::Value as V;
    match v {
        V::Array(_, items) if items.len() > 64 => json!(v.summary()),
        V::Array(_, items) => serde_json::Value::Array(items.iter().map(value_json).collect()),
        V::String(s) => json!(s),
        V::Bool(b) => json!(b),
        V::F32(x) => json!(x),
        V::F64(x) => json!(x),
        other => other
            .as_i64()
            .map(|i| json!(i))
            .or_else(|| other.as_u64().map(|u| json!(u)))
            .unwrap_or(json!(other.summary())),
    }
}

/// What `loft train --dry-run` estimates for this config on its `train.device` (the model and adapter are built;
/// nothing is written or allocated on a GPU).
fn memory_plan(config: &loft::train::RunConfig) -> loft::Result<loft::train::recipe::MemoryPlan> {
    struct Capture(Option<loft::train::recipe::MemoryPlan>);
    impl loft::train::Observer for Capture {
        fn event(&mut self, event: loft::train::Event<'_>) {
            if let loft::train::Event::Plan(p) = event {
                self.0 = Some(p.memory);
            }
        }
    }
    let mut capture = Capture(None);
    let options = loft::train::TrainOptions { resume: false, overwrite: false, dry_run: true };
    // A plan that does not fit still has its estimate (reported before the refusal): show it.
    let choice = loft_gpu::DeviceChoice::parse(&config.device)?;
    let result = match loft_gpu::Wgpu::open(&choice)? {
        Some(gpu) => {
            let gpu = gpu.with_f16_activations(config.f16_activations)?;
            loft::train::train_on(&gpu, config, &options, &mut capture)
        }
        None => loft::train::train(config, &options, &mut capture),
    };
    match capture.0 {
        Some(plan) => Ok(plan),
        None => result.map(|_| loft::train::recipe::MemoryPlan::default()),
    }
}

/// `--data`: the dataset of a training config, formatted and tokenized exactly as `loft train` does.
fn inspect_data(args: &Args) -> loft::Result<()> {
    let config = loft::train::TrainConfig::load(args.path(), &args.set)?.resolve()?;
    let tokenizer = loft::model::load_tokenizer(&config.model, config.tokenizer_pre.as_deref())?;
    let (train, validation, stats) = loft::train::recipe::prepare_data(&config, &tokenizer)?;
    let memory = memory_plan(&config)?;
    let marked = |t: &loft::data::Tokenized| -> String {
        // Runs of tokens with the same trained/untrained state, decoded together so characters stay whole.
        let mut out = String::new();
        let mut start = 0;
        let trained = |i: usize| t.labels[i] >= 0;
        for i in 1..=t.ids.len() {
            if i == t.ids.len() || trained(i) != trained(start) {
                let text = tokenizer.decode(&t.ids[start..i], false);
                if trained(start) {
                    out.push_str(&format!("⟦{text}⟧"));
                } else {
                    out.push_str(&text);
                }
                start = i;
            }
        }
        out
    };
    if args.json {
        let samples: Vec<serde_json::Value> = train
            .iter()
            .take(args.samples)
            .map(|t| json!({"tokens": t.ids.len(), "trained_tokens": t.n_targets(), "text": marked(t)}))
            .collect();
        let out = json!({
            "config": args.path().display().to_string(),
            "examples": stats.examples, "truncated": stats.truncated, "dropped": stats.dropped,
            "train": train.len(), "validation": validation.len(), "target_tokens": stats.target_tokens,
            "memory_estimate": {
                "total_bytes": memory.total(), "base_weights_bytes": memory.base_weights,
                "adapter_bytes": memory.adapter, "gradients_bytes": memory.gradients,
                "optimizer_bytes": memory.optimizer, "activations_bytes": memory.activations,
                "runtime_bytes": memory.runtime, "activations_other_checkpointing_bytes": memory.activations_other,
                "batch": memory.arena_rows.0, "seq": memory.arena_rows.1, "on_device": memory.on_device,
                "device_total_bytes": memory.on_device.then(|| memory.device_total()),
            },
            "samples": samples,
        });
        println!("{out}");
        return Ok(());
    }
    let tokens: usize = train.iter().map(|t| t.ids.len()).sum();
    let trained: usize = train.iter().map(|t| t.n_targets()).sum();
    println!(
        "{}: {} examples → {} train ({} tokens, {} trained), {} validation; {} truncated to max_seq_length = {}, {} \
         dropped (no trained token left)",
        args.path().display(),
        stats.examples,
        train.len(),
        tokens,
        trained,
        validation.len(),
        stats.truncated,
        config.max_seq_length,
        stats.dropped
    );
    println!("{}", memory.describe());
    for (i, t) in train.iter().take(args.samples).enumerate() {
        println!(
            "\n── sample {} of the training split: {} tokens, {} trained (⟦…⟧) ──",
            i + 1,
            t.ids.len(),
            t.n_targets()
        );
        println!("{}", marked(t));
    }
    Ok(())
}

/// `loft inspect --devices`: every adapter wgpu sees, in the order `--device gpu:N` counts them.
fn inspect_devices(args: &Args) -> loft::Result<()> {
    let adapters = loft_gpu::list_adapters();
    if args.json {
        let list: Vec<serde_json::Value> = adapters
            .iter()
            .map(|a| {
                json!({
                    "index": a.index, "name": a.name, "backend": a.backend, "device_type": a.device_type,
                    "driver": a.driver, "driver_info": a.driver_info, "software": a.is_software,
                    "features": a.features, "max_buffer_size": a.max_buffer_size,
                    "max_storage_buffer_binding_size": a.max_storage_buffer_binding_size,
                    "max_storage_buffers_per_shader_stage": a.max_storage_buffers_per_shader_stage,
                    "max_compute_workgroup_storage_size": a.max_compute_workgroup_storage_size,
                })
            })
            .collect();
        let auto = loft_gpu::device::choose(&loft_gpu::DeviceChoice::Auto, &adapters)?;
        println!("{}", json!({"adapters": list, "auto": auto.map_or(json!("cpu"), |i| json!(format!("gpu:{i}")))}));
        return Ok(());
    }
    if adapters.is_empty() {
        println!("no GPU adapters (wgpu looked for Vulkan, Metal and DX12 drivers)");
        println!("hint: {}", loft_gpu::device::NO_ADAPTER_HINT);
        println!("--device auto runs on the CPU");
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    for a in &adapters {
        println!("{}", a.one_line());
        println!("    driver       {} {}", a.driver, a.driver_info);
        let features = if a.features.is_empty() {
            "none of SHADER_F16, SUBGROUP, SHADER_F64".to_string()
        } else {
            a.features.join(", ")
        };
        println!("    features     {features}");
        println!(
            "    limits       buffer {:.0} MiB, storage binding {:.0} MiB, {} storage buffers per kernel, {} KiB workgroup memory",
            mib(a.max_buffer_size),
            mib(a.max_storage_buffer_binding_size),
            a.max_storage_buffers_per_shader_stage,
            a.max_compute_workgroup_storage_size / 1024
        );
    }
    match loft_gpu::device::choose(&loft_gpu::DeviceChoice::Auto, &adapters)? {
        Some(i) => println!("--device auto picks gpu:{i}"),
        None => println!(
            "--device auto runs on the CPU (software adapters are used only when named, e.g. --device gpu:lavapipe)"
        ),
    }
    Ok(())
}
