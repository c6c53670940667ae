//! Requests waiting for the model, and the loop that answers them: continuous batching. One thread holds the base
//! model and runs every request that fits, each with its own KV cache and adapter (applied unmerged), one token per
//! step for all of them at once ([`decode_step`]: each frozen weight is read once per step for several requests,
//! not once per request). Between steps, finished requests leave and waiting ones join: a joining request's prompt
//! runs on its own (its prefill), then it decodes with the others. At most `max_concurrent` requests run, and their
//! KV caches (allocated for prompt + max_tokens) stay within the KV budget; the rest wait in a bounded queue, and
//! one that waits longer than the timeout is answered 503. A request's tokens are the ones it gets alone.
//!
//! A request hears of its progress through its sink, on the batch's thread: text as soon as it is complete UTF-8
//! and no `stop` string could be starting, then the end. A sink that returns false (the client went away) ends the
//! request after that step and frees its place.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Cpu;
use crate::error::{Error, Result};
use crate::infer::{Decoding, End, GenerateOptions};
use crate::model::batch::{decode_step, Row};
use crate::model::{KvCache, LoadedModel, Runner, UnmergedAdapter};
use crate::serve::openai::{FinishReason, Usage};
use crate::serve::stop::{Pushed, StopText};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// What a request hears, in order: any number of `Text`, then one `Done` or `Failed`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Text(String),
    Done(Finished),
    /// Generation could not run; `busy` when it waited in the queue past the timeout (a 503, not a 500).
    Failed {
        message: String,
        busy: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Finished {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub queued_seconds: f64,
    pub seconds: f64,
}

/// Receives a request's events on the batch's thread; false means nobody listens any more.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

pub struct Job {
    /// For the log line: the name the request used.
    pub label: String,
    pub adapter: Option<Arc<UnmergedAdapter>>,
    /// The prompt's ids; prompt + max_new_tokens must fit the model's context (the caller checks).
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    pub stop: Vec<String>,
    pub sink: Sink,
}

struct Queued {
    job: Job,
    at: Instant,
}

/// Every place is taken and the queue holds as many requests as it may.
#[derive(Debug)]
pub struct QueueFull;

/// How much runs at once, and how long the rest may wait.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests decoded together.
    pub max_concurrent: usize,
    /// Bytes the running requests' KV caches may take together (a request alone may take more: it runs by itself).
    pub kv_budget: usize,
    /// Requests that may wait.
    pub queue: usize,
    /// How long a request may wait before it is answered 503.
    pub timeout: Duration,
}

pub struct Scheduler {
    queue: SyncSender<Queued>,
}

impl Scheduler {
    /// Starts the batch's thread over `loaded`.
    pub fn start(loaded: Arc<LoadedModel>, limits: Limits) -> Result<Self> {
        let (sender, receiver) = sync_channel::<Queued>(limits.queue);
        std::thread::Builder::new()
            .name("loft-serve-batch".into())
            .spawn(move || run_batches(&loaded, &receiver, limits))
            .map_err(|e| Error::caused("cannot start the batch thread", e))?;
        Ok(Scheduler { queue: sender })
    }

    /// Queues `job`; refuses it when the queue is full.
    pub fn submit(&self, job: Job) -> std::result::Result<(), QueueFull> {
        self.queue.try_send(Queued { job, at: Instant::now() }).map_err(|_| QueueFull)
    }
}

/// A request in the running batch.
struct Running<'t> {
    job: Job,
    cache: KvCache<Cpu>,
    decoding: Decoding,
    decoder: StreamDecoder<'t>,
    stop: StopText,
    /// The token chosen last, which the next step runs.
    next: u32,
    queued: Duration,
    started: Instant,
}

/// What choosing a token did to a request.
enum Outcome {
    Continues,
    Finished(FinishReason),
    /// The client went away: the request ends without a `Done`.
    Left,
}

/// The batch's loop: admit what fits, run one step for everyone, hand each its token; until the server stops.
fn run_batches(loaded: &LoadedModel, queue: &Receiver<Queued>, limits: Limits) {
    let runner = match Runner::new(&Cpu, &loaded.model) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: the serve batch cannot start: {e}");
            return;
        }
    };
    let cfg = &loaded.model.config;
    let mut running: Vec<Running<'_>> = Vec::new();
    // A request taken off the queue that does not fit yet: it joins first when places free up.
    let mut waiting: Option<Queued> = None;
    loop {
        // Join: while a place and KV budget are free.
        loop {
            let next = match waiting.take() {
                Some(q) => q,
                None if running.is_empty() => match queue.recv() {
                    Ok(q) => q,
                    Err(_) => return,
                },
                None => match queue.try_recv() {
                    Ok(q) => q,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                },
            };
            let queued = next.at.elapsed();
            if queued > limits.timeout {
                let message = format!(
                    "the request waited {:.0} s for a place in the batch (--queue-timeout)",
                    queued.as_secs_f64()
                );
                let mut job = next.job;
                (job.sink)(Event::Failed { message, busy: true });
                continue;
            }
            let used: usize = running.iter().map(|r| KvCache::<Cpu>::bytes(cfg, r.cache.capacity)).sum();
            let wanted = KvCache::<Cpu>::bytes(cfg, capacity(&next.job));
            let full = running.len() >= limits.max_concurrent.max(1) || used + wanted > limits.kv_budget;
            if full && !running.is_empty() {
                waiting = Some(next);
                break;
            }
            if let Some(r) = join(&runner, &loaded.tokenizer, next.job, queued) {
                running.push(r);
            }
        }
        if running.is_empty() {
            continue;
        }
        // One step for every running request; a failure (or a bug) fails the requests of this step only.
        let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut rows: Vec<Row<'_>> = running
                .iter_mut()
                .map(|r| Row { token: r.next, cache: &mut r.cache, adapter: r.job.adapter.as_deref() })
                .collect();
            decode_step(&runner, &mut rows)
        }));
        let logits = match stepped {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                fail_all(&mut running, &e.to_string());
                continue;
            }
            Err(_) => {
                fail_all(&mut running, "the batched step panicked (a bug in loft: please report it)");
                continue;
            }
        };
        let v = cfg.vocab_size;
        let mut k = 0;
        running.retain_mut(|r| {
            let mut row = logits[k * v..(k + 1) * v].to_vec();
            k += 1;
            match choose(&loaded.tokenizer, r, &mut row) {
                Outcome::Continues => true,
                Outcome::Finished(reason) => {
                    finish(r, reason);
                    false
                }
                Outcome::Left => false,
            }
        });
    }
}

/// The KV cache's positions a job needs: its prompt and its longest answer.
fn capacity(job: &Job) -> usize {
    job.prompt.len() + job.options.max_new_tokens
}

/// Runs a joining job's prompt (alone) and hands it its first token; None when it is already over.
fn join<'t>(runner: &Runner<'_, Cpu>, tok: &'t Tokenizer, mut job: Job, queued: Duration) -> Option<Running<'t>> {
    let started = Instant::now();
    let prefill = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<(KvCache<Cpu>, Vec<f32>)> {
        let device = job.adapter.as_deref().map(|a| runner.adapter(a)).transpose()?;
        let mut cache = runner.cache(capacity(&job))?;
        let hidden = runner.forward_with(&job.prompt, &mut cache, device.as_ref())?;
        let logits = runner.logits_with(&hidden, job.prompt.len() - 1, 1, device.as_ref())?;
        Ok((cache, logits))
    }));
    let failure = match prefill {
        Ok(Ok((cache, mut logits))) => {
            let stop = StopText::new(std::mem::take(&mut job.stop));
            let decoding = Decoding::new(&job.options, &job.prompt, logits.len());
            let decoder = StreamDecoder::new(tok);
            let mut r = Running { job, cache, decoding, decoder, stop, next: 0, queued, started };
            return match choose(tok, &mut r, &mut logits) {
                Outcome::Continues => Some(r),
                Outcome::Finished(reason) => {
                    finish(&mut r, reason);
                    None
                }
                Outcome::Left => None,
            };
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "generation panicked (a bug in loft: please report it)".to_string(),
    };
    eprintln!("{}: {failure}", job.label);
    (job.sink)(Event::Failed { message: failure, busy: false });
    None
}

/// Chooses a request's next token from its logits and tells its sink the text that is ready.
fn choose(tok: &Tokenizer, r: &mut Running<'_>, logits: &mut [f32]) -> Outcome {
    let full = r.cache.len >= r.cache.capacity;
    let (id, end) = r.decoding.choose(logits, full);
    r.next = id;
    // Control tokens (end of sequence, end of turn) are not text, as in `loft generate`.
    if !tok.is_control(id) {
        let (text, stopped) = match r.stop.push(&r.decoder.push(id)) {
            Pushed::Text(t) => (t, false),
            Pushed::Stopped(t) => (t, true),
        };
        if !text.is_empty() && !(r.job.sink)(Event::Text(text)) {
            eprintln!("{}: the client went away after {} tokens", r.job.label, r.decoding.out.len());
            return Outcome::Left;
        }
        if stopped {
            return Outcome::Finished(FinishReason::Stop);
        }
    }
    match end {
        None => Outcome::Continues,
        Some(End::Stop) => Outcome::Finished(FinishReason::Stop),
        Some(End::Length) => Outcome::Finished(FinishReason::Length),
    }
}

/// Sends what the stop strings held back, then the end, and logs the request.
fn finish(r: &mut Running<'_>, finish_reason: FinishReason) {
    let rest = r.stop.finish();
    if !rest.is_empty() && !(r.job.sink)(Event::Text(rest)) {
        return;
    }
    let completion_tokens = r.decoding.out.len();
    let finished = Finished {
        finish_reason,
        usage: Usage { prompt_tokens: r.job.prompt.len(), completion_tokens },
        queued_seconds: r.queued.as_secs_f64(),
        seconds: r.started.elapsed().as_secs_f64(),
    };
    eprintln!(
        "{}: prompt {} tokens, completion {} tokens ({}) in {:.2} s, {:.1} tok/s, queued {:.2} s",
        r.job.label,
        finished.usage.prompt_tokens,
        completion_tokens,
        finish_reason.as_str(),
        finished.seconds,
        completion_tokens as f64 / finished.seconds.max(1e-9),
        finished.queued_seconds
    );
    (r.job.sink)(Event::Done(finished));
}

fn fail_all(running: &mut Vec<Running<'_>>, message: &str) {
    for mut r in running.drain(..) {
        eprintln!("{}: {message}", r.job.label);
        (r.job.sink)(Event::Failed { message: message.to_string(), busy: false });
    }
}
