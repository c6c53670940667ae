//! Autoregressive generation: one forward over the prompt, then one token at a time through the KV cache,
//! handing each new token to the caller as soon as it is chosen (for streaming).

use std::time::Instant;

use crate::engine::Backend;
use crate::error::Result;
use crate::infer::sample::{apply_openai_penalties, apply_repetition_penalty, Sampler, SamplingParams};
use crate::model::{KvCache, Runner, UnmergedOnDevice};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when one of these is produced (it is passed to the callback, then generation stops).
    pub stop_ids: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_seconds: f64,
    pub decode_seconds: f64,
    /// True when a stop token ended generation (rather than max_new_tokens or the context length).
    pub stopped: bool,
}

impl GenerationStats {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_seconds.max(1e-9)
    }

    /// Tokens per second after the first (which comes out of the prompt pass).
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_seconds.max(1e-9)
    }
}

/// Generates up to `max_new_tokens` after `prompt` (the cache must be empty or hold exactly the positions
/// before `prompt`). `on_token` receives each generated id in order.
pub fn generate<B: Backend>(
    model: &Runner<'_, B>,
    prompt: &[u32],
    opts: &GenerateOptions,
    cache: &mut KvCache<B>,
    on_token: impl FnMut(u32) -> Result<()>,
) -> Result<(Vec<u32>, GenerationStats)> {
    generate_with(model, None, prompt, opts, cache, on_token)
}

/// [`generate`] with `adapter` applied unmerged ([`Runner::forward_with`]).
pub fn generate_with<B: Backend>(
    model: &Runner<'_, B>,
    adapter: Option<&UnmergedOnDevice<'_, B>>,
    prompt: &[u32],
    opts: &GenerateOptions,
    cache: &mut KvCache<B>,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<(Vec<u32>, GenerationStats)> {
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    if opts.max_new_tokens == 0 || prompt.is_empty() {
        return Ok((Vec::new(), stats));
    }
    let start = Instant::now();
    let hidden = model.forward_with(prompt, cache, adapter)?;
    let mut logits = model.logits_with(&hidden, prompt.len() - 1, 1, adapter)?;
    stats.prompt_seconds = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let mut decoding = Decoding::new(opts, prompt, logits.len());
    loop {
        let (next, end) = decoding.choose(&mut logits, cache.len >= cache.capacity);
        stats.generated_tokens += 1;
        on_token(next)?;
        if let Some(end) = end {
            stats.stopped = end == End::Stop;
            break;
        }
        let hidden = model.forward_with(&[next], cache, adapter)?;
        logits = model.logits_with(&hidden, 0, 1, adapter)?;
    }
    stats.decode_seconds = decode_start.elapsed().as_secs_f64();
    Ok((decoding.out, stats))
}

/// Why a sequence ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// A stop token was chosen.
    Stop,
    /// max_new_tokens, or the cache's capacity, was reached.
    Length,
}

/// One sequence's choices, apart from the model that computes its logits: the sampler, the tokens the repetition
/// penalty remembers, and the answer so far. [`generate_with`] runs it one sequence at a time; `loft serve` runs
/// several in one batch, and both choose the same tokens from the same logits.
pub struct Decoding {
    sampler: Sampler,
    penalty: f32,
    /// seen[id]: the token is in the prompt or the answer (empty when the penalty is off).
    seen: Vec<bool>,
    /// counts[id]: how often the token was chosen in the answer (empty when OpenAI's penalties are off).
    counts: Vec<u32>,
    stop_ids: Vec<u32>,
    max_new_tokens: usize,
    /// The tokens chosen so far.
    pub out: Vec<u32>,
}

impl Decoding {
    /// A sequence after `prompt`, over a vocabulary of `vocab` tokens.
    pub fn new(opts: &GenerateOptions, prompt: &[u32], vocab: usize) -> Self {
        let penalty = opts.sampling.repetition_penalty;
        let mut seen = vec![false; if penalty == 1.0 { 0 } else { vocab }];
        for &id in prompt {
            if let Some(s) = seen.get_mut(id as usize) {
                *s = true;
            }
        }
        let (f, p) = (opts.sampling.frequency_penalty, opts.sampling.presence_penalty);
        Decoding {
            sampler: Sampler::new(opts.sampling.clone()),
            penalty,
            seen,
            counts: vec![0; if f == 0.0 && p == 0.0 { 0 } else { vocab }],
            stop_ids: opts.stop_ids.clone(),
            max_new_tokens: opts.max_new_tokens,
            out: Vec::new(),
        }
    }

    /// Chooses the next token from the logits after the last one (the penalty is applied to them in place), and
    /// says whether the sequence ends with it; `cache_full` when no position is left for another token.
    pub fn choose(&mut self, logits: &mut [f32], cache_full: bool) -> (u32, Option<End>) {
        apply_repetition_penalty(logits, &self.seen, self.penalty);
        let sp = &self.sampler.params;
        apply_openai_penalties(logits, &self.counts, sp.frequency_penalty, sp.presence_penalty);
        let next = self.sampler.sample(logits);
        if let Some(s) = self.seen.get_mut(next as usize) {
            *s = true;
        }
        if let Some(c) = self.counts.get_mut(next as usize) {
            *c += 1;
        }
        self.out.push(next);
        let end = if self.stop_ids.contains(&next) {
            Some(End::Stop)
        } else if self.out.len() >= self.max_new_tokens || cache_full {
            Some(End::Length)
        } else {
            None
        };
        (next, end)
    }
}
