//! `loft bench`: throughput figures measured the same way every time.

use std::time::Instant;

use loft::infer::{generate, GenerateOptions, SamplingParams};
use loft::model::KvCache;

use crate::model_args::ModelArgs;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Prompt processing and decode speed of a model (greedy, no early stop). Set threads with --threads.
    Decode(DecodeArgs),
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Print one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: Command) -> loft::Result<()> {
    match cmd {
        Command::Decode(a) => decode(a),
    }
}

fn decode(args: DecodeArgs) -> loft::Result<()> {
    let loaded = args.model.load()?;
    let cfg = &loaded.model.config;
    // A deterministic prompt of ordinary token ids (no control tokens), the same on every run.
    let vocab = cfg.vocab_size as u64;
    let mut rng = loft::infer::sample::SplitMix64::new(1234);
    let prompt: Vec<u32> = (0..args.prompt_tokens.max(1))
        .map(|_| loop {
            let id = (rng.next_u64() % vocab) as u32;
            if !loaded.tokenizer.is_control(id) {
                break id;
            }
        })
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: args.gen_tokens.max(2),
        sampling: SamplingParams::default(),
        stop_ids: vec![],
    };
    let capacity = prompt.len() + opts.max_new_tokens;
    let mut cache = KvCache::new(cfg, capacity);
    let (mut best_prompt, mut best_decode) = (0.0f64, 0.0f64);
    let total = Instant::now();
    for _ in 0..args.repeat.max(1) {
        cache.clear();
        let (_, stats) = generate(&loaded.model, &prompt, &opts, &mut cache, |_| Ok(()))?;
        best_prompt = best_prompt.max(stats.prompt_tokens_per_second());
        best_decode = best_decode.max(stats.decode_tokens_per_second());
    }
    let threads = rayon::current_num_threads();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": loaded.path.path().display().to_string(),
                "threads": threads,
                "prompt_tokens": prompt.len(),
                "gen_tokens": opts.max_new_tokens,
                "prompt_tokens_per_second": best_prompt,
                "decode_tokens_per_second": best_decode,
                "seconds": total.elapsed().as_secs_f64(),
            })
        );
    } else {
        println!("threads: {threads}");
        println!("prompt ({} tokens): {best_prompt:.1} tok/s", prompt.len());
        println!("decode ({} tokens): {best_decode:.1} tok/s", opts.max_new_tokens);
    }
    Ok(())
}
