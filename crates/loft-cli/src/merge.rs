//! `loft merge`: a base model and a LoRA adapter folded into one Hugging Face folder.

use std::path::PathBuf;

use loft::export::{write_hf_folder, WeightDtype, DEFAULT_MAX_SHARD_BYTES};
use loft::Error;

use crate::model_args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The folder to write (config.json, safetensors, tokenizer files, generation_config.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Element type of the written weights: f16, bf16 or f32. The merge itself is done in f32, on dequantized
    /// weights when the base is quantized.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> loft::Result<()> {
    let dtype = WeightDtype::parse(&args.dtype)
        .ok_or_else(|| Error::hinted(format!("unknown --dtype '{}'", args.dtype), "use f16, bf16 or f32"))?;
    if args.out.exists() {
        if !args.force {
            return Err(Error::hinted(
                format!("{}: already exists", args.out.display()),
                "choose a new folder, or pass --force to replace it",
            ));
        }
        std::fs::remove_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    }
    if args.model.adapter.is_empty() {
        eprintln!("no --adapter given: writing the base model as a Hugging Face folder");
    }
    let loaded = args.model.load()?;
    write_hf_folder(&args.out, &loaded.model, &loaded.tokenizer, dtype, DEFAULT_MAX_SHARD_BYTES)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
