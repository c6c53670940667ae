//! `loft export`: files for other tools.

use std::path::{Path, PathBuf};

use loft::export::{write_gguf_adapter, write_gguf_model, AdapterDtype, GgufQuant};
use loft::lora::peft::load_peft_adapter;
use loft::model::{load_base, ModelPath};
use loft::Error;

use crate::model_args::ModelArgs;

#[derive(clap::Subcommand)]
pub enum Command {
    /// A llama.cpp / Ollama GGUF of the model (with --adapter: merged first, in f32), tokenizer and chat template
    /// inside.
    Gguf(GgufArgs),
    /// A LoRA adapter as a llama.cpp GGUF adapter (for `llama-cli --lora`), used on top of the base model's GGUF.
    GgufAdapter(GgufAdapterArgs),
}

#[derive(clap::Args)]
pub struct GgufArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weight type: f32, f16, q8_0, q4_0, or q4_k_m (llama.cpp's mix: Q4_K, Q6_K for the head and for attn_v and
    /// ffn_down of some layers). Norms stay f32; rows a block type cannot hold fall back as llama.cpp's quantizer
    /// does (Q4_K → Q5_0, Q6_K → Q8_0, else f16), each reported.
    #[arg(long, default_value = "q8_0")]
    pub quant: String,
    /// The .gguf file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args)]
pub struct GgufAdapterArgs {
    /// The base model the adapter was trained on (.gguf, Hugging Face folder or hub id): its shapes and heads.
    #[arg(long, short = 'm')]
    pub model: String,
    /// The LoRA adapter folder in PEFT's format (adapter_config.json + adapter_model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// Tensor type of lora_a / lora_b: f32 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// The .gguf file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: Command) -> loft::Result<()> {
    match cmd {
        Command::Gguf(a) => gguf(a),
        Command::GgufAdapter(a) => gguf_adapter(a),
    }
}

fn refuse_existing(out: &Path, force: bool) -> loft::Result<()> {
    if out.exists() && !force {
        return Err(Error::hinted(
            format!("{}: already exists", out.display()),
            "choose another file name, or pass --force to replace it",
        ));
    }
    Ok(())
}

fn gguf(args: GgufArgs) -> loft::Result<()> {
    let quant = GgufQuant::parse(&args.quant).ok_or_else(|| {
        Error::hinted(format!("unknown --quant '{}'", args.quant), format!("use {}", GgufQuant::NAMES))
    })?;
    refuse_existing(&args.out, args.force)?;
    let loaded = args.model.load()?;
    let name = loaded.path.path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let fallbacks = write_gguf_model(&args.out, &loaded.model, &loaded.tokenizer, quant, &name)?;
    for f in &fallbacks {
        eprintln!("note: {f}");
    }
    if !fallbacks.is_empty() {
        eprintln!("note: {} tensors fell back to another type, as llama.cpp's quantizer does", fallbacks.len());
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn gguf_adapter(args: GgufAdapterArgs) -> loft::Result<()> {
    let dtype = AdapterDtype::parse(&args.dtype)
        .ok_or_else(|| Error::hinted(format!("unknown --dtype '{}'", args.dtype), "use f32 or f16"))?;
    refuse_existing(&args.out, args.force)?;
    // Only the base's shapes and head counts are needed: a GGUF keeps its blocks, no tokenizer is read.
    let keep_quantized = matches!(ModelPath::resolve(&args.model)?, ModelPath::Gguf(_));
    let base = load_base(&args.model, keep_quantized)?;
    let adapter = load_peft_adapter(&args.adapter, &base)?;
    let name = args.adapter.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let s = write_gguf_adapter(&args.out, &adapter, &base, dtype, &name)?;
    if adapter.config.use_rslora {
        eprintln!(
            "note: rsLoRA: adapter.lora.alpha = {} = lora_alpha·√r, so that llama.cpp's alpha/r is PEFT's scale {}",
            s.alpha, s.scale
        );
    }
    eprintln!(
        "wrote {} ({} LoRA pairs, r = {}, alpha = {}, scale {}); use it with the base GGUF: llama-cli -m BASE.gguf \
         --lora {}",
        args.out.display(),
        s.pairs,
        s.r,
        s.alpha,
        s.scale,
        args.out.display()
    );
    Ok(())
}
