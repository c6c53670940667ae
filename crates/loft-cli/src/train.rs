//! `loft train CONFIG.toml`: runs the recipe with a progress bar on stderr.

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use loft::memory::human;
use loft::train::status::{write_status, TrainStatus};
use loft::train::{Event, Observer, TrainConfig, TrainOptions};

use crate::model_args::announce;

#[derive(clap::Args)]
pub struct Args {
    /// The run's TOML config: [model], [lora], [data] and [train] sections (see configs/ for examples).
    pub config: PathBuf,
    /// Override a config key, e.g. --set train.max_steps=50 (repeatable; the value is read as TOML, a bare word as
    /// a string).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue from the newest complete checkpoint in output_dir (same config required).
    #[arg(long)]
    pub resume: bool,
    /// Replace the metrics, checkpoints and adapter an earlier run left in output_dir.
    #[arg(long)]
    pub overwrite: bool,
    /// Load the model and data, print the plan and the memory estimate, and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to train (overrides train.device): cpu; auto (a hardware GPU if there is one, else the CPU); gpu
    /// (the best hardware GPU); gpu:N or gpu:NAME (an adapter `loft inspect --devices` lists; a software one
    /// such as gpu:lavapipe only when named). A checkpoint resumes on any device.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
}

pub fn run(args: Args) -> loft::Result<()> {
    let started = std::time::Instant::now();
    let mut config = TrainConfig::load(&args.config, &args.set)?.resolve()?;
    if let Some(d) = &args.device {
        config.device = d.clone();
    }
    let choice = loft_gpu::DeviceChoice::parse(&config.device).map_err(|e| match &args.device {
        Some(_) => e,
        None => loft::Error::hinted(
            format!("{}: train.device = {:?} is not a device", args.config.display(), config.device),
            e.hint().unwrap_or_default().to_string(),
        ),
    })?;
    let gpu = loft_gpu::Wgpu::open(&choice)?.map(|g| g.with_f16_activations(config.f16_activations)).transpose()?;
    if gpu.is_none() && config.f16_activations {
        return Err(loft::Error::hinted(
            format!("{}: train.f16_activations applies on a GPU; this run is on the CPU", args.config.display()),
            "set train.device (or --device) to a GPU, or turn f16_activations off",
        ));
    }
    let options = TrainOptions { resume: args.resume, overwrite: args.overwrite, dry_run: args.dry_run };
    let mut bar = Bar::new();
    // train_status.json tells readers outside this process (loft serve's page) that the run is running, then how
    // it ended; it is written once the plan is made, so a run refused before that leaves the folder as it was.
    if !args.dry_run {
        bar.status_dir = Some(config.output_dir.clone());
    }
    let summary = match &gpu {
        Some(gpu) => {
            announce(gpu);
            loft::train::train_on(gpu, &config, &options, &mut bar)
        }
        None => loft::train::train_on(&loft::engine::Cpu, &config, &options, &mut bar),
    };
    bar.bar.finish_and_clear();
    if let (Some(dir), Some(status)) = (&bar.status_dir, &bar.status) {
        let ended = status.ended(summary.as_ref().err().map(|e| e.to_string()));
        if let Err(e) = write_status(dir, &ended) {
            eprintln!("warning: {e}");
        }
    }
    let summary = summary?;
    if summary.dry_run {
        if args.dry_run {
            println!("{}", config.toml);
        }
        return Ok(());
    }
    let eval = summary
        .eval
        .as_ref()
        .map(|e| format!(", validation loss {:.4} (perplexity {:.2})", e.eval_loss, e.eval_perplexity))
        .unwrap_or_default();
    let peak = loft::memory::peak_rss_bytes().map(|b| format!(", peak memory {}", human(b))).unwrap_or_default();
    eprintln!(
        "done: {} steps in {:.1}s{peak}, last loss {:.4}{eval}; adapter in {}",
        summary.steps,
        started.elapsed().as_secs_f64(),
        summary.final_loss,
        summary.adapter_dir.display()
    );
    Ok(())
}

struct Bar {
    bar: ProgressBar,
    /// The run's folder, when the run writes train_status.json.
    status_dir: Option<PathBuf>,
    /// What was written there.
    status: Option<TrainStatus>,
}

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps · {msg} · {elapsed} < {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(500));
        Bar { bar, status_dir: None, status: None }
    }

    /// A line above the bar (or a plain line when stderr is not a terminal and the bar is hidden).
    fn line(&self, text: String) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

impl Observer for Bar {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Plan(p) => {
                let s = &p.stats;
                self.line(format!(
                    "data: {} examples → {} train, {} validation; {} truncated to max_seq_length, {} dropped \
                     (nothing left to train); {} target tokens",
                    s.examples, p.train_examples, p.validation_examples, s.truncated, s.dropped, s.target_tokens
                ));
                self.line(format!(
                    "trainable params: {} || all params: {} || trainable%: {:.4}",
                    p.trainable_parameters,
                    p.all_parameters,
                    100.0 * p.trainable_parameters as f64 / p.all_parameters.max(1) as f64
                ));
                self.line(format!(
                    "steps: {} ({} per epoch, {} micro-batches per epoch, {} warmup)",
                    p.total_steps, p.steps_per_epoch, p.micro_batches_per_epoch, p.warmup_steps
                ));
                self.line(p.memory.describe());
                if let Some((step, dir)) = &p.resumed_from {
                    self.line(format!("resuming from {} (step {step})", dir.display()));
                }
                if let Some(dir) = &self.status_dir {
                    let status = TrainStatus::running(p.total_steps);
                    match write_status(dir, &status) {
                        Ok(()) => self.status = Some(status),
                        Err(e) => self.line(format!("warning: {e}")),
                    }
                }
                self.bar.set_length(p.total_steps as u64);
                self.bar.set_position(p.resumed_from.as_ref().map_or(0, |(s, _)| *s));
                self.bar.reset_eta();
            }
            Event::Progress { step, loss, learning_rate, tokens_per_second, .. } => {
                let rss = loft::memory::rss_bytes().map(human).unwrap_or_default();
                self.bar.set_position(step as u64);
                self.bar.set_message(format!(
                    "loss {loss:.4} · lr {learning_rate:.2e} · {tokens_per_second:.0} tok/s · {rss}"
                ));
            }
            Event::Logged(l) => self.line(format!(
                "step {}/{}: loss {:.4}, lr {:.3e}, grad norm {:.3}, {:.0} tok/s, epoch {:.2}",
                l.step, l.total_steps, l.loss, l.learning_rate, l.grad_norm, l.tokens_per_second, l.epoch
            )),
            Event::Evaluated(e) => self.line(format!(
                "step {}: validation loss {:.4}, perplexity {:.2} ({} tokens)",
                e.step, e.eval_loss, e.eval_perplexity, e.tokens
            )),
            Event::Saved(dir) => self.line(format!("saved {}", dir.display())),
            Event::Note(n) => self.line(n),
        }
    }
}
