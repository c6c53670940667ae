//! `loft export`: files for other tools.

use std::path::PathBuf;

use loft::export::{write_gguf_model, GgufQuant};
use loft::Error;

use crate::model_args::ModelArgs;

#[derive(clap::Subcommand)]
pub enum Command {
    /// A llama.cpp / Ollama GGUF of the model (with --adapter: merged first, in f32), tokenizer and chat template
    /// inside.
    Gguf(GgufArgs),
}

#[derive(clap::Args)]
pub struct GgufArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weight type: f32, f16, q8_0 or q4_0 (norms stay f32; rows a block type cannot hold fall back to f16).
    #[arg(long, default_value = "q8_0")]
    pub quant: String,
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
    }
}

fn gguf(args: GgufArgs) -> loft::Result<()> {
    let quant = GgufQuant::parse(&args.quant)
        .ok_or_else(|| Error::hinted(format!("unknown --quant '{}'", args.quant), "use f32, f16, q8_0 or q4_0"))?;
    if args.out.exists() && !args.force {
        return Err(Error::hinted(
            format!("{}: already exists", args.out.display()),
            "choose another file name, or pass --force to replace it",
        ));
    }
    let loaded = args.model.load()?;
    let name = loaded.path.path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let fallbacks = write_gguf_model(&args.out, &loaded.model, &loaded.tokenizer, quant, &name)?;
    for f in &fallbacks {
        eprintln!("note: {f}");
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
