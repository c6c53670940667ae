//! Arguments shared by the subcommands that run a model.

use std::io::Write;
use std::time::Instant;

use loft::model::{LoadOptions, LoadedModel};

#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face folder (config.json, tokenizer.json, *.safetensors) or a hub id.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Split text with this pre-tokenizer instead of the GGUF's own (`tokenizer.ggml.pre`); `gpt-2` reproduces
    /// the ids transformers gets when it loads a GGUF, which ignores that name.
    #[arg(long, value_name = "NAME")]
    pub tokenizer_pre: Option<String>,
    /// A LoRA adapter folder in PEFT's format (adapter_config.json + adapter_model.safetensors), merged into the
    /// model in memory. Repeat it to stack adapters in training order (e.g. a CPT adapter, then the IFT adapter
    /// trained on top of it).
    #[arg(long, value_name = "DIR")]
    pub adapter: Vec<std::path::PathBuf>,
}

impl ModelArgs {
    /// Loads the model, reporting the time taken on stderr.
    pub fn load(&self) -> loft::Result<LoadedModel> {
        let start = Instant::now();
        let options = LoadOptions { tokenizer_pre: self.tokenizer_pre.clone(), dequantize: false, load_in_4bit: false };
        let loaded = loft::lora::load_merged(&self.model, &options, &self.adapter)?;
        let cfg = &loaded.model.config;
        eprintln!(
            "loaded {} ({} layers, {:.1}M parameters) in {:.2}s",
            loaded.path.path().display(),
            cfg.num_hidden_layers,
            cfg.num_parameters() as f64 / 1e6,
            start.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
        Ok(loaded)
    }
}

/// `--device`, shared by the commands that run a model (eval, generate, chat, bench decode).
#[derive(clap::Args, Clone)]
pub struct DeviceArgs {
    /// Where the model runs: cpu; auto (a hardware GPU if there is one, else the CPU); gpu (the best hardware
    /// GPU); gpu:N or gpu:NAME (an adapter `loft inspect --devices` lists; a software one such as gpu:lavapipe
    /// only when named). GPUs run through wgpu: Vulkan, Metal or DX12.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: String,
}

/// The device a command runs its model on.
pub enum Device {
    Cpu,
    Gpu(Box<loft_gpu::Wgpu>),
}

impl DeviceArgs {
    /// Parses --device and opens the adapter it picks, before a model is loaded for nothing.
    pub fn open(&self) -> loft::Result<Device> {
        let choice = loft_gpu::DeviceChoice::parse(&self.device)?;
        Ok(match loft_gpu::Wgpu::open(&choice)? {
            Some(gpu) => Device::Gpu(Box::new(gpu)),
            None => Device::Cpu,
        })
    }
}

/// Names the device on stderr, in the commands' common words.
pub fn announce(backend: &impl loft::engine::Backend) {
    eprintln!("device: {}", backend.describe());
}
