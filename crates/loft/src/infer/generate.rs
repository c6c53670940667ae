//! Autoregressive generation: one forward over the prompt, then one token at a time through the KV cache,
//! handing each new token to the caller as soon as it is chosen (for streaming).

use std::time::Instant;

use crate::engine::Backend;
use crate::error::Result;
use crate::infer::sample::{apply_repetition_penalty, Sampler, SamplingParams};
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
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut out = Vec::new();
    if opts.max_new_tokens == 0 || prompt.is_empty() {
        return Ok((out, stats));
    }
    let start = Instant::now();
    let hidden = model.forward_with(prompt, cache, adapter)?;
    let mut logits = model.logits_with(&hidden, prompt.len() - 1, 1, adapter)?;
    stats.prompt_seconds = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let penalty = opts.sampling.repetition_penalty;
    let mut seen = vec![false; if penalty == 1.0 { 0 } else { logits.len() }];
    for &id in prompt {
        if let Some(s) = seen.get_mut(id as usize) {
            *s = true;
        }
    }
    loop {
        apply_repetition_penalty(&mut logits, &seen, penalty);
        let next = sampler.sample(&logits);
        if let Some(s) = seen.get_mut(next as usize) {
            *s = true;
        }
        out.push(next);
        stats.generated_tokens += 1;
        on_token(next)?;
        if opts.stop_ids.contains(&next) {
            stats.stopped = true;
            break;
        }
        if out.len() >= opts.max_new_tokens || cache.len >= cache.capacity {
            break;
        }
        let hidden = model.forward_with(&[next], cache, adapter)?;
        logits = model.logits_with(&hidden, 0, 1, adapter)?;
    }
    stats.decode_seconds = decode_start.elapsed().as_secs_f64();
    Ok((out, stats))
}
