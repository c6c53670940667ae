//! Requests waiting for the model, and the workers that answer them. A fixed pool of worker threads shares one
//! base model in memory; each request runs on one worker with its own KV cache and its own adapter (applied
//! unmerged), so requests for different adapters run at the same time. The rest wait in a bounded queue; one that
//! waits longer than the timeout is answered 503. The math of concurrent requests shares rayon's one thread pool.
//!
//! A request hears of its progress through its sink, on the worker's thread: text as soon as it is complete
//! UTF-8 and no `stop` string could be starting, then the end. A sink that returns false (the client went away)
//! ends the request at the next token and frees the worker.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::engine::Cpu;
use crate::error::{Error, Result};
use crate::infer::{generate_with, GenerateOptions};
use crate::model::{LoadedModel, Runner, UnmergedAdapter};
use crate::serve::openai::{FinishReason, Usage};
use crate::serve::stop::{Pushed, StopText};
use crate::tokenizer::StreamDecoder;

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

/// Receives a request's events on a worker thread; false means nobody listens any more.
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

/// Every worker is busy and the queue holds as many requests as it may.
#[derive(Debug)]
pub struct QueueFull;

pub struct Scheduler {
    queue: SyncSender<Queued>,
}

impl Scheduler {
    /// Starts `workers` threads over `loaded`, with room for `queue` waiting requests.
    pub fn start(loaded: Arc<LoadedModel>, workers: usize, queue: usize, timeout: Duration) -> Result<Self> {
        let (sender, receiver) = sync_channel::<Queued>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..workers.max(1) {
            let (loaded, receiver) = (loaded.clone(), receiver.clone());
            std::thread::Builder::new()
                .name(format!("loft-serve-{i}"))
                .spawn(move || work(&loaded, &receiver, timeout))
                .map_err(|e| Error::caused("cannot start a worker thread", e))?;
        }
        Ok(Scheduler { queue: sender })
    }

    /// Queues `job`; refuses it when the queue is full.
    pub fn submit(&self, job: Job) -> std::result::Result<(), QueueFull> {
        self.queue.try_send(Queued { job, at: Instant::now() }).map_err(|_| QueueFull)
    }
}

/// One worker: takes requests off the queue until the scheduler is dropped.
fn work(loaded: &LoadedModel, queue: &Mutex<Receiver<Queued>>, timeout: Duration) {
    let runner = match Runner::new(&Cpu, &loaded.model) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: a serve worker cannot start: {e}");
            return;
        }
    };
    loop {
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Queued { mut job, at }) = next else { return };
        let queued = at.elapsed();
        if queued > timeout {
            let message =
                format!("the request waited {:.0} s for a free worker (--queue-timeout)", queued.as_secs_f64());
            (job.sink)(Event::Failed { message, busy: true });
            continue;
        }
        // A bug in generation fails its request, not the worker.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| answer(&runner, loaded, &mut job, queued)));
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "generation panicked (a bug in loft: please report it)".to_string(),
        };
        eprintln!("{}: {failure}", job.label);
        (job.sink)(Event::Failed { message: failure, busy: false });
    }
}

/// Why the token callback ended generation early.
#[derive(Clone, Copy, PartialEq)]
enum Ended {
    Running,
    StopString,
    Disconnected,
}

/// Runs one job to the end, telling its sink.
fn answer(runner: &Runner<'_, Cpu>, loaded: &LoadedModel, job: &mut Job, queued: Duration) -> Result<()> {
    let start = Instant::now();
    let device = job.adapter.as_deref().map(|a| runner.adapter(a)).transpose()?;
    let tok = &loaded.tokenizer;
    let mut cache = runner.cache(job.prompt.len() + job.options.max_new_tokens)?;
    let mut decoder = StreamDecoder::new(tok);
    let mut stop = StopText::new(std::mem::take(&mut job.stop));
    let mut ended = Ended::Running;
    let mut completion_tokens = 0;
    let sink = &mut job.sink;
    let result = generate_with(runner, device.as_ref(), &job.prompt, &job.options, &mut cache, |id| {
        completion_tokens += 1;
        // Control tokens (end of sequence, end of turn) are not text, as in `loft generate`.
        if tok.is_control(id) {
            return Ok(());
        }
        let (text, stopped) = match stop.push(&decoder.push(id)) {
            Pushed::Text(t) => (t, false),
            Pushed::Stopped(t) => (t, true),
        };
        if !text.is_empty() && !sink(Event::Text(text)) {
            ended = Ended::Disconnected;
        } else if stopped {
            ended = Ended::StopString;
        }
        match ended {
            Ended::Running => Ok(()),
            // Not an error: ends generation; told apart from real errors by `ended`.
            _ => Err(Error::Invalid("generation ended early".into())),
        }
    });
    let stopped_by_token = match (result, ended) {
        (_, Ended::Disconnected) => {
            eprintln!("{}: the client went away after {completion_tokens} tokens", job.label);
            return Ok(());
        }
        (_, Ended::StopString) => true,
        (Ok((_, stats)), Ended::Running) => stats.stopped,
        (Err(e), Ended::Running) => return Err(e),
    };
    let rest = stop.finish();
    if !rest.is_empty() && !sink(Event::Text(rest)) {
        return Ok(());
    }
    let finished = Finished {
        finish_reason: if stopped_by_token { FinishReason::Stop } else { FinishReason::Length },
        usage: Usage { prompt_tokens: job.prompt.len(), completion_tokens },
        queued_seconds: queued.as_secs_f64(),
        seconds: start.elapsed().as_secs_f64(),
    };
    eprintln!(
        "{}: prompt {} tokens, completion {} tokens ({}) in {:.2} s, {:.1} tok/s, queued {:.2} s",
        job.label,
        finished.usage.prompt_tokens,
        completion_tokens,
        finished.finish_reason.as_str(),
        finished.seconds,
        completion_tokens as f64 / finished.seconds.max(1e-9),
        finished.queued_seconds
    );
    sink(Event::Done(finished));
    Ok(())
}
