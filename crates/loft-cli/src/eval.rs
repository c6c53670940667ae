//! `loft eval`: mean next-token loss of a text file.

use std::path::PathBuf;
use std::time::Instant;

use loft::engine::{Backend, Cpu};
use loft::model::{Llama, Runner};
use loft::Error;

use crate::model_args::{announce, Device, DeviceArgs, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// A UTF-8 text file; its first --max-tokens tokens are scored (no BOS is added).
    #[arg(long)]
    pub text: PathBuf,
    /// How many tokens of the file to use (default: all of them; more than the model's context is an error).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Print one JSON object: {"tokens": N, "loss": x, "perplexity": y}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> loft::Result<()> {
    let text = std::fs::read_to_string(&args.text).map_err(|e| Error::io(&args.text, e))?;
    let device = args.device.open()?;
    let loaded = args.model.load()?;
    let mut ids = loaded.tokenizer.encode(&text, false, false);
    let context = loaded.model.config.max_position_embeddings;
    let n = args.max_tokens.unwrap_or(ids.len()).min(ids.len());
    if n > context {
        return Err(Error::hinted(
            format!("{}: {n} tokens exceed the model's context of {context}", args.text.display()),
            format!("pass --max-tokens {context} or less"),
        ));
    }
    if n < 2 {
        return Err(Error::Invalid(format!("{}: needs at least 2 tokens, has {n}", args.text.display())));
    }
    ids.truncate(n);
    let (nll, seconds) = match &device {
        Device::Cpu => score(&Cpu, &loaded.model, &ids)?,
        Device::Gpu(gpu) => score(gpu.as_ref(), &loaded.model, &ids)?,
    };
    let loss = nll.iter().sum::<f64>() / nll.len() as f64;
    if args.json {
        println!("{}", serde_json::json!({ "tokens": n, "loss": loss, "perplexity": loss.exp() }));
    } else {
        println!("tokens: {n}\nloss: {loss:.6}\nperplexity: {:.4}", loss.exp());
    }
    eprintln!("{n} tokens in {seconds:.2}s ({:.0} tok/s)", n as f64 / seconds);
    Ok(())
}

/// The next-token losses of `ids` on `backend`, and the seconds they took (the weights' upload not counted).
fn score<B: Backend>(backend: &B, model: &Llama, ids: &[u32]) -> loft::Result<(Vec<f64>, f64)> {
    let runner = Runner::new(backend, model)?;
    announce(backend);
    let start = Instant::now();
    let nll = runner.next_token_nll(ids)?;
    Ok((nll, start.elapsed().as_secs_f64()))
}
