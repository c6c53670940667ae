//! `loft generate`: one prompt in, the answer streamed out.

use std::io::Write;

use loft::chat_template::{ChatTemplate, Message};
use loft::engine::{Backend, Cpu};
use loft::infer::{generate, GenerateOptions, SamplingParams};
use loft::model::{KvCache, LoadedModel, Runner};
use loft::tokenizer::StreamDecoder;
use loft::tokenizer::Tokenizer;
use loft::Error;

use crate::model_args::{announce, Device, DeviceArgs, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The prompt. By default it is one user message rendered with the model's chat template.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Feed the prompt as it is, without the chat template (BOS is added if the model asks for it).
    #[arg(long)]
    pub raw: bool,
    /// A system message to put before the prompt (chat template only).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// Stop after this many new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample only among the most likely tokens whose probabilities sum to p (1: all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Penalise tokens already in the prompt or answer (transformers' repetition_penalty; 1.1–1.3 curbs the loops
    /// small models fall into; 1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// OpenAI's frequency_penalty: a token's logit drops by this for every time it was already chosen in the answer
    /// (-2 to 2; 0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// OpenAI's presence_penalty: a token's logit drops by this once it was chosen in the answer (-2 to 2; 0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
}

impl SamplingArgs {
    /// Refuses values out of range, before a model is loaded for nothing.
    pub fn check(&self) -> loft::Result<()> {
        if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(Error::hinted(format!("--top-p {} is out of range", self.top_p), "use a value in (0, 1]"));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::hinted(
                format!("--temperature {} is out of range", self.temperature),
                "use 0 for greedy, or a positive value",
            ));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return Err(Error::hinted(
                format!("--repetition-penalty {} is out of range", self.repetition_penalty),
                "use 1 for none, or a value such as 1.1",
            ));
        }
        for (flag, v) in
            [("--frequency-penalty", self.frequency_penalty), ("--presence-penalty", self.presence_penalty)]
        {
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::hinted(format!("{flag} {v} is out of range"), "use a value from -2 to 2 (0: off)"));
            }
        }
        Ok(())
    }

    /// The options of a checked `SamplingArgs` for `loaded`.
    pub fn options(&self, loaded: &LoadedModel) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
                repetition_penalty: self.repetition_penalty,
                frequency_penalty: self.frequency_penalty,
                presence_penalty: self.presence_penalty,
            },
            stop_ids: stop_ids(loaded),
        }
    }
}

/// EOS and the end-of-turn token, when the tokenizer has them.
pub fn stop_ids(loaded: &LoadedModel) -> Vec<u32> {
    let t = &loaded.tokenizer;
    let mut ids: Vec<u32> = [t.eos_id(), t.eot_id()].into_iter().flatten().collect();
    ids.dedup();
    ids
}

/// The model's chat template, or an error saying how to do without one.
pub fn chat_template(loaded: &LoadedModel) -> loft::Result<ChatTemplate> {
    let t = &loaded.tokenizer;
    let source = t.chat_template().ok_or_else(|| {
        Error::hinted(
            format!("{}: the model has no chat template", loaded.path.path().display()),
            "pass --raw to feed the prompt as plain text",
        )
    })?;
    Ok(ChatTemplate::new(source, t.bos_token(), t.eos_token())?)
}

pub fn run(args: Args) -> loft::Result<()> {
    args.sampling.check()?;
    let device = args.device.open()?;
    let loaded = args.model.load()?;
    let ids = if args.raw {
        loaded.tokenizer.encode(&args.prompt, true, true)
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message { role: "system".into(), content: s.clone() });
        }
        messages.push(Message { role: "user".into(), content: args.prompt.clone() });
        let text = chat_template(&loaded)?.render(&messages, true)?;
        loaded.tokenizer.encode(&text, false, true)
    };
    let opts = args.sampling.options(&loaded);
    let capacity = (ids.len() + opts.max_new_tokens).min(loaded.model.config.max_position_embeddings);
    if ids.len() >= capacity {
        return Err(Error::hinted(
            format!(
                "the prompt is {} tokens; the model's context is {}",
                ids.len(),
                loaded.model.config.max_position_embeddings
            ),
            "shorten the prompt",
        ));
    }
    match &device {
        Device::Cpu => answer(&Cpu, &loaded, &ids, &opts, capacity),
        Device::Gpu(gpu) => answer(gpu.as_ref(), &loaded, &ids, &opts, capacity),
    }
}

/// Streams the answer to `ids` on `backend`, then its counts and speed on stderr.
fn answer<B: Backend>(
    backend: &B,
    loaded: &LoadedModel,
    ids: &[u32],
    opts: &GenerateOptions,
    capacity: usize,
) -> loft::Result<()> {
    let runner = Runner::new(backend, &loaded.model)?;
    announce(backend);
    let mut cache = runner.cache(capacity)?;
    let (_, stats) = stream(&runner, &loaded.tokenizer, ids, opts, &mut cache)?;
    println!();
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s{}",
        stats.prompt_tokens,
        stats.prompt_tokens_per_second(),
        stats.generated_tokens,
        stats.decode_tokens_per_second(),
        if stats.stopped { "" } else { " (stopped at --max-new-tokens)" }
    );
    Ok(())
}

/// Generates and prints each piece of text to stdout as soon as it is complete UTF-8. Control tokens (EOS, end of
/// turn) are not printed.
pub fn stream<B: Backend>(
    runner: &Runner<'_, B>,
    tok: &Tokenizer,
    ids: &[u32],
    opts: &GenerateOptions,
    cache: &mut KvCache<B>,
) -> loft::Result<(Vec<u32>, loft::infer::GenerationStats)> {
    let mut decoder = StreamDecoder::new(tok);
    let mut stdout = std::io::stdout().lock();
    generate(runner, ids, opts, cache, |id| {
        if tok.is_control(id) {
            return Ok(());
        }
        let piece = decoder.push(id);
        if !piece.is_empty() {
            stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush()).map_err(|e| Error::io("<stdout>", e))?;
        }
        Ok(())
    })
}
