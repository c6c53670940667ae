//! The training recipe, top to bottom: load the base (and fold in an earlier adapter), read and tokenize the
//! data, attach LoRA, plan the steps and memory, then for each optimizer step run the micro-batches forward and
//! backward (loss = Σ target-token NLL of all micro-batches ÷ their target count), clip, step the optimizer at the
//! scheduled learning rate, log, evaluate and checkpoint. The final adapter goes to `<output_dir>/adapter/`.
//!
//! Everything random derives from `train.seed` and the step (data order per epoch, LoRA init, dropout masks),
//! so a run resumed from a checkpoint continues exactly as the uninterrupted run would have.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::data::{
    pad_id, read_records, split_train_validation, tokenize_all, Batcher, Formatter, SourceOptions, SpecialTokens,
    TokenizeOptions, TokenizeStats, Tokenized,
};
use crate::error::{Error, Result};
use crate::lora::merge::merge_adapter;
use crate::lora::peft::{load_peft_adapter, save_peft_adapter};
use crate::lora::Adapter;
use crate::model::llama_lora::{forward_backward, loss, Batch, TrainArena};
use crate::model::{LoadOptions, LoadedModel, ModelPath};
use crate::train::checkpoint::{self, TrainerState};
use crate::train::config::TrainConfig;
use crate::train::optim::{clip_grad_norm, Optimizer};
use crate::train::schedule::Schedule;
use crate::train::tensorboard::TensorBoardWriter;

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const ADAPTER_DIR: &str = "adapter";
/// Written at the end of a run: steps, time, peak memory, data counts, final losses.
pub const SUMMARY_FILE: &str = "train_summary.json";

#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Continue from the newest complete checkpoint in output_dir.
    pub resume: bool,
    /// Replace what an earlier run left in output_dir.
    pub overwrite: bool,
    /// Load everything, print the plan and the memory estimate, and stop before the first step.
    pub dry_run: bool,
}

/// What the run will do, reported before the first step.
#[derive(Clone, Debug)]
pub struct Plan {
    pub train_examples: usize,
    pub validation_examples: usize,
    pub stats: TokenizeStats,
    pub micro_batches_per_epoch: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    pub warmup_steps: usize,
    pub trainable_parameters: usize,
    pub all_parameters: usize,
    pub memory: MemoryPlan,
    /// (step, folder) when resuming.
    pub resumed_from: Option<(u64, PathBuf)>,
}

/// What the process holds besides the parts the plan counts (measured: ~26 MiB resident after loading the
/// default model, beyond its weights: program, libraries, tokenizer, thread stacks).
const RUNTIME_BYTES: usize = 32 << 20;

/// The "will it fit" estimate: bytes of each part.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryPlan {
    pub base_weights: usize,
    pub adapter: usize,
    pub gradients: usize,
    pub optimizer: usize,
    pub activations: usize,
    /// The rest of the process: the program and its libraries, the tokenizer, the tokenized data, and the copy
    /// of the optimizer's state made while a checkpoint is written.
    pub runtime: usize,
    /// Activations of the same shape with the other gradient_checkpointing choice.
    pub activations_other: usize,
    pub arena_rows: (usize, usize),
}

impl MemoryPlan {
    pub fn total(&self) -> usize {
        self.base_weights + self.adapter + self.gradients + self.optimizer + self.activations + self.runtime
    }

    /// One line: "memory estimate: 1.15 GiB = base 92 MiB + …".
    pub fn describe(&self) -> String {
        use crate::memory::human;
        format!(
            "memory estimate: {} = base {} + adapter {} + gradients {} + optimizer {} + activations {} + runtime {} \
             (batch {}×{}; activations {} with the other gradient_checkpointing setting)",
            human(self.total()),
            human(self.base_weights),
            human(self.adapter),
            human(self.gradients),
            human(self.optimizer),
            human(self.activations),
            human(self.runtime),
            self.arena_rows.0,
            self.arena_rows.1,
            human(self.activations_other)
        )
    }
}

/// One logged training step (averages over the logging window).
#[derive(Clone, Debug)]
pub struct StepLog {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub tokens_per_second: f64,
}

#[derive(Clone, Debug)]
pub struct EvalLog {
    pub step: usize,
    pub eval_loss: f64,
    pub eval_perplexity: f64,
    pub tokens: usize,
}

/// What the recipe reports as it goes; the CLI draws a progress bar from it.
pub enum Event<'a> {
    Plan(&'a Plan),
    /// After every optimizer step (the bar), not only logged ones.
    Progress {
        step: usize,
        total_steps: usize,
        loss: f64,
        learning_rate: f64,
        tokens_per_second: f64,
    },
    Logged(&'a StepLog),
    Evaluated(&'a EvalLog),
    Saved(&'a Path),
    Note(String),
}

pub trait Observer {
    fn event(&mut self, event: Event<'_>);
}

/// Ignores every event (tests, library use).
pub struct Quiet;

impl Observer for Quiet {
    fn event(&mut self, _: Event<'_>) {}
}

#[derive(Clone, Debug)]
pub struct Summary {
    pub steps: usize,
    /// The last step's loss.
    pub final_loss: f64,
    pub eval: Option<EvalLog>,
    pub adapter_dir: PathBuf,
    pub dry_run: bool,
}

/// Runs the recipe `config` describes.
pub fn train(config: &TrainConfig, options: &TrainOptions, observer: &mut dyn Observer) -> Result<Summary> {
    let run_started = Instant::now();
    let out = config.output_dir();
    prepare_output_dir(&out, options)?;

    // The frozen base, with an earlier adapter merged in when asked.
    let load = LoadOptions {
        tokenizer_pre: (!config.model.tokenizer_pre.is_empty()).then(|| config.model.tokenizer_pre.clone()),
        adapters: Vec::new(),
        dequantize: !config.model.load_in_4bit,
        // A GGUF keeps its own blocks, a bitsandbytes checkpoint its NF4 ones; a 16-bit folder becomes NF4.
        load_in_4bit: config.model.load_in_4bit,
    };
    let LoadedModel { model: mut base, tokenizer, .. } = LoadedModel::load_with(&config.model.path, &load)?;
    let lora = config.lora_config()?;
    let mut continued: Option<Adapter> = None;
    if !config.lora.init_adapter.is_empty() {
        let dir = PathBuf::from(&config.lora.init_adapter);
        let init = load_peft_adapter(&dir, &base)?;
        if config.lora.init_adapter_mode == "continue" {
            continued = Some(init);
        } else {
            merge_adapter(&mut base, &init)?;
            observer.event(Event::Note(format!("merged {} into the frozen base", dir.display())));
        }
    }
    let model = base;

    // Data.
    let (train_set, val_set, stats) = load_data(config, &tokenizer)?;
    let batcher = Batcher {
        batch_size: config.train.per_device_train_batch_size,
        max_seq_length: config.model.max_seq_length,
        packing: config.packing(),
        pad_id: pad_id(&tokenizer),
        seed: config.train.seed,
        shuffle: config.data.shuffle,
    };
    let eval_batcher = Batcher { batch_size: config.eval_batch_size(), shuffle: false, ..batcher.clone() };

    // Steps.
    let accumulation = config.train.gradient_accumulation_steps;
    let micro_per_epoch = batcher.epoch(&train_set, 0).len();
    let steps_per_epoch = micro_per_epoch.div_ceil(accumulation).max(1);
    let total_steps = if config.train.max_steps > 0 {
        config.train.max_steps as usize
    } else {
        ((config.train.num_train_epochs * steps_per_epoch as f64).ceil() as usize).max(1)
    };
    let schedule =
        Schedule::new(config.scheduler()?, total_steps, config.train.warmup_steps, config.train.warmup_ratio);

    // The adapter and optimizer, fresh or from the newest checkpoint.
    let mut adapter = match continued {
        Some(a) => a,
        None => Adapter::new(lora, &model, config.train.seed)?,
    };
    let mut optimizer = Optimizer::new(config.optim_config()?, &adapter);
    let fingerprint = fingerprint(config, &model, &adapter);
    let mut start_step = 0usize;
    let mut tokens_seen = 0u64;
    let mut resumed_from = None;
    if options.resume {
        let (step, dir) = checkpoint::list_checkpoints(&out)?.pop().ok_or_else(|| {
            Error::hinted(
                format!("--resume: no complete checkpoint in {}", out.display()),
                "start the run without --resume (add --overwrite to replace what is there)",
            )
        })?;
        let restored = checkpoint::load_checkpoint(&dir, &model)?;
        if restored.state.fingerprint != fingerprint {
            return Err(Error::hinted(
                format!(
                    "{}: this checkpoint belongs to another run ({}), not this config ({fingerprint})",
                    dir.display(),
                    restored.state.fingerprint
                ),
                "resume with the config the run was started with (it is saved as config.toml in the checkpoint)",
            ));
        }
        adapter = restored.adapter;
        optimizer.load_state_tensors(&restored.optimizer_tensors, restored.optimizer_steps)?;
        start_step = restored.state.global_step as usize;
        tokens_seen = restored.state.tokens_seen;
        truncate_metrics(&out.join(METRICS_FILE), start_step)?;
        resumed_from = Some((step, dir));
    }

    // Memory: one arena for the longest micro-batch, checked against what the machine has before allocating.
    let checkpointing = config.train.gradient_checkpointing;
    let longest = train_set.iter().chain(&val_set).map(|t| t.ids.len()).max().unwrap_or(2);
    let rows_t =
        if config.data.packing { config.model.max_seq_length } else { longest.min(config.model.max_seq_length) };
    let rows_b =
        config.train.per_device_train_batch_size.max(if val_set.is_empty() { 0 } else { eval_batcher.batch_size });
    let n_params = adapter.num_parameters();
    let memory = MemoryPlan {
        base_weights: model.weights.storage_bytes(),
        adapter: 4 * n_params,
        gradients: 4 * n_params,
        optimizer: optimizer.state_bytes(),
        activations: TrainArena::estimate_bytes(&model, &adapter, rows_b, rows_t, checkpointing),
        activations_other: TrainArena::estimate_bytes(&model, &adapter, rows_b, rows_t, !checkpointing),
        runtime: RUNTIME_BYTES
            + train_set.iter().chain(&val_set).map(|t| 8 * t.ids.len()).sum::<usize>()
            + if config.train.save_steps > 0 { optimizer.state_bytes() } else { 0 },
        arena_rows: (rows_b, rows_t),
    };
    let plan = Plan {
        train_examples: train_set.len(),
        validation_examples: val_set.len(),
        stats,
        micro_batches_per_epoch: micro_per_epoch,
        steps_per_epoch,
        total_steps,
        warmup_steps: schedule.warmup_steps,
        trainable_parameters: n_params,
        all_parameters: model.config.num_parameters() + adapter_lora_parameters(&adapter),
        memory,
        resumed_from,
    };
    observer.event(Event::Plan(&plan));
    check_fits(&memory, config)?;
    let adapter_dir = out.join(ADAPTER_DIR);
    if options.dry_run {
        return Ok(Summary { steps: 0, final_loss: f64::NAN, eval: None, adapter_dir, dry_run: true });
    }
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let config_toml = config.to_toml();
    std::fs::write(out.join(checkpoint::CONFIG_FILE), &config_toml).map_err(|e| Error::io(&out, e))?;

    let mut arena = TrainArena::new(&model, &adapter, rows_b, rows_t, checkpointing);
    let mut grads = adapter.zeros_like();
    let mut metrics = MetricsFile::open(&out.join(METRICS_FILE))?;
    let mut tensorboard = if config.tensorboard() { Some(TensorBoardWriter::create(&out)?) } else { None };
    let base_lr = config.train.learning_rate;
    let embedding_lr =
        if config.train.embedding_learning_rate > 0.0 { config.train.embedding_learning_rate } else { base_lr };
    let mut epoch_batches: (u64, Vec<Batch>) = (u64::MAX, Vec::new());
    let mut window = LogWindow::default();
    let mut last_loss = f64::NAN;
    let mut last_eval = None;
    let mut last_saved: Option<u64> = plan.resumed_from.as_ref().map(|(s, _)| *s);
    let hidden = model.config.hidden_size;

    // The starting point of the validation curve (the model before this run's first update).
    if start_step == 0 && !val_set.is_empty() && config.train.eval_steps > 0 {
        let e = evaluate(&model, &adapter, &mut arena, &eval_batcher, &val_set, 0)?;
        metrics.eval(&e)?;
        if let Some(tb) = &mut tensorboard {
            tb.add_scalar("eval/loss", 0, e.eval_loss)?;
            tb.flush()?;
        }
        observer.event(Event::Evaluated(&e));
    }

    for step in start_step..total_steps {
        let started = Instant::now();
        let epoch = (step / steps_per_epoch) as u64;
        if epoch_batches.0 != epoch {
            epoch_batches = (epoch, batcher.epoch(&train_set, epoch));
        }
        let k = step % steps_per_epoch;
        let micro = &epoch_batches.1[k * accumulation..((k + 1) * accumulation).min(epoch_batches.1.len())];
        let count: usize = micro.iter().map(Batch::n_targets).sum();
        let at_step = |e: Error| step_error(e, step + 1, last_saved);
        grads.for_each_tensor_mut(|_, t| t.fill(0.0));
        let mut loss_sum = 0.0;
        let mut tokens = 0usize;
        for (i, batch) in micro.iter().enumerate() {
            arena.fit(batch.b, batch.t)?;
            let seed = dropout_seed(config.train.seed, step, i);
            let (l, _) =
                forward_backward(&model, &adapter, &mut grads, &mut arena, batch, 1.0 / count.max(1) as f32, seed)
                    .map_err(at_step)?;
            loss_sum += l;
            tokens += batch.b * batch.t;
        }
        let step_loss = loss_sum / count.max(1) as f64;
        let grad_norm = clip_grad_norm(&mut grads, config.train.max_grad_norm as f32).map_err(at_step)?;
        let factor = schedule.factor(step);
        let lr = base_lr * factor;
        optimizer.step(&mut adapter, &grads, lr as f32, (embedding_lr * factor) as f32);
        tokens_seen += tokens as u64;
        last_loss = step_loss;
        let secs = started.elapsed().as_secs_f64();
        let done = step + 1;
        observer.event(Event::Progress {
            step: done,
            total_steps,
            loss: step_loss,
            learning_rate: lr,
            tokens_per_second: tokens as f64 / secs.max(1e-9),
        });
        window.add(step_loss, grad_norm as f64, tokens, secs);
        if done % config.train.logging_steps.max(1) == 0 || done == total_steps {
            let log = StepLog {
                step: done,
                total_steps,
                epoch: done as f64 / steps_per_epoch as f64,
                loss: window.loss(),
                learning_rate: lr,
                grad_norm: window.grad_norm(),
                tokens_per_second: window.tokens_per_second(),
            };
            window = LogWindow::default();
            metrics.train(&log)?;
            if let Some(tb) = &mut tensorboard {
                tb.add_scalar("train/loss", done as u64, log.loss)?;
                tb.add_scalar("train/learning_rate", done as u64, log.learning_rate)?;
                tb.add_scalar("train/grad_norm", done as u64, log.grad_norm)?;
                tb.flush()?;
            }
            observer.event(Event::Logged(&log));
        }
        let eval_now = config.train.eval_steps > 0 && done % config.train.eval_steps == 0;
        if !val_set.is_empty() && (eval_now || done == total_steps) {
            let e = evaluate(&model, &adapter, &mut arena, &eval_batcher, &val_set, done)?;
            metrics.eval(&e)?;
            if let Some(tb) = &mut tensorboard {
                tb.add_scalar("eval/loss", done as u64, e.eval_loss)?;
                tb.flush()?;
            }
            observer.event(Event::Evaluated(&e));
            last_eval = Some(e);
        }
        if config.train.save_steps > 0 && done % config.train.save_steps == 0 {
            let state = TrainerState {
                global_step: done as u64,
                total_steps: total_steps as u64,
                epoch: done as f64 / steps_per_epoch as f64,
                fingerprint: fingerprint.clone(),
                tokens_seen,
            };
            let dir = checkpoint::save_checkpoint(
                &out,
                &adapter,
                hidden,
                &config.model.path,
                &optimizer,
                &state,
                &config_toml,
            )?;
            checkpoint::prune_checkpoints(&out, config.train.save_total_limit)?;
            last_saved = Some(done as u64);
            observer.event(Event::Saved(&dir));
        }
    }

    // The final adapter, written beside and then swapped in, so an old one is replaced only by a complete one.
    let tmp = out.join(format!("{ADAPTER_DIR}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    save_peft_adapter(&adapter, hidden, &tmp, &config.model.path)?;
    if adapter_dir.exists() {
        std::fs::remove_dir_all(&adapter_dir).map_err(|e| Error::io(&adapter_dir, e))?;
    }
    std::fs::rename(&tmp, &adapter_dir).map_err(|e| Error::io(&adapter_dir, e))?;
    observer.event(Event::Saved(&adapter_dir));
    let summary = serde_json::json!({
        "steps": total_steps,
        "resumed_from_step": plan.resumed_from.as_ref().map(|(s, _)| *s),
        "seconds": run_started.elapsed().as_secs_f64(),
        "peak_rss_bytes": crate::memory::peak_rss_bytes(),
        "memory_estimate_bytes": plan.memory.total(),
        "tokens_seen": tokens_seen,
        "train_examples": plan.train_examples,
        "validation_examples": plan.validation_examples,
        "target_tokens": plan.stats.target_tokens,
        "truncated_examples": plan.stats.truncated,
        "trainable_parameters": plan.trainable_parameters,
        "final_loss": last_loss,
        "eval_loss": last_eval.as_ref().map(|e| e.eval_loss),
        "eval_perplexity": last_eval.as_ref().map(|e| e.eval_perplexity),
    });
    let path = out.join(SUMMARY_FILE);
    std::fs::write(&path, format!("{summary:#}\n")).map_err(|e| Error::io(&path, e))?;
    Ok(Summary { steps: total_steps, final_loss: last_loss, eval: last_eval, adapter_dir, dry_run: false })
}

/// The tokenizer of the config's model, without loading its weights (`loft inspect --data`).
pub fn load_tokenizer(config: &TrainConfig) -> Result<crate::tokenizer::Tokenizer> {
    use crate::tokenizer::{GgufVocab, Tokenizer};
    match ModelPath::resolve(&config.model.path)? {
        ModelPath::Gguf(p) => {
            let file = gguf::GgufFile::open(&p)?;
            let mut vocab = GgufVocab::from_gguf(&file)?;
            if !config.model.tokenizer_pre.is_empty() {
                vocab.pre = Some(config.model.tokenizer_pre.clone());
            }
            Ok(Tokenizer::from_vocab(vocab)?)
        }
        ModelPath::HfFolder(p) => {
            let cfg = p.join("tokenizer_config.json");
            Ok(Tokenizer::from_hf_files(&p.join("tokenizer.json"), cfg.is_file().then_some(cfg.as_path()))?)
        }
    }
}

/// Reads, formats, tokenizes and splits the data: (train, validation, stats of the training files).
pub fn load_data(
    config: &TrainConfig,
    tokenizer: &crate::tokenizer::Tokenizer,
) -> Result<(Vec<Tokenized>, Vec<Tokenized>, TokenizeStats)> {
    let d = &config.data;
    let source = SourceOptions { format: None, split_paragraphs: d.split_paragraphs };
    let formatter = Formatter::new(config.format()?, &SpecialTokens::from_tokenizer(tokenizer), d.add_eos)?;
    let options = TokenizeOptions {
        max_seq_length: config.model.max_seq_length,
        train_on_responses_only: d.train_on_responses_only,
        split_long: d.packing,
    };
    let read = |files: &[String], limit: usize| -> Result<(Vec<Tokenized>, TokenizeStats)> {
        let paths: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        let mut records = read_records(&paths, &source)?;
        if limit > 0 {
            records.truncate(limit);
        }
        if let Some(first) = records.first() {
            formatter.check(first)?;
        }
        let examples = records.iter().map(|r| formatter.format(r)).collect::<Result<Vec<_>>>()?;
        tokenize_all(tokenizer, &examples, &options)
    };
    let (all, stats) = read(&d.train_files, d.max_samples)?;
    if !d.validation_files.is_empty() {
        let (val, _) = read(&d.validation_files, 0)?;
        return Ok((all, val, stats));
    }
    let (train, val) = split_train_validation(all, d.validation_split, config.train.seed)?;
    Ok((train, val, stats))
}

/// Mean loss over the validation set, one micro-batch at a time in the training arena (memory stays bounded).
fn evaluate(
    model: &crate::model::Llama,
    adapter: &Adapter,
    arena: &mut TrainArena,
    batcher: &Batcher,
    examples: &[Tokenized],
    step: usize,
) -> Result<EvalLog> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for batch in batcher.epoch(examples, 0) {
        arena.fit(batch.b, batch.t)?;
        let (s, n) = loss(model, adapter, arena, &batch)?;
        sum += s;
        count += n;
    }
    let eval_loss = sum / count.max(1) as f64;
    Ok(EvalLog { step, eval_loss, eval_perplexity: eval_loss.exp(), tokens: count })
}

/// Refuses to mix a new run into an old one's folder.
fn prepare_output_dir(out: &Path, options: &TrainOptions) -> Result<()> {
    let leftovers: Vec<PathBuf> = match std::fs::read_dir(out) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name == METRICS_FILE
                    || name == SUMMARY_FILE
                    || name == ADAPTER_DIR
                    || name == checkpoint::CONFIG_FILE
                    || name.starts_with("checkpoint-")
                    || name.starts_with("events.out.tfevents")
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(out, e)),
    };
    if leftovers.is_empty() || options.resume || options.dry_run {
        return Ok(());
    }
    if !options.overwrite {
        return Err(Error::hinted(
            format!("{}: holds another run (metrics, checkpoints or an adapter)", out.display()),
            "continue it with --resume, replace it with --overwrite, or set train.output_dir to a new folder",
        ));
    }
    for p in leftovers {
        let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// What must stay the same for a checkpoint to continue this run.
fn fingerprint(config: &TrainConfig, model: &crate::model::Llama, adapter: &Adapter) -> String {
    let c = &model.config;
    let a = &adapter.config;
    let targets: Vec<&str> = a.target_modules.iter().map(|t| t.name()).collect();
    format!(
        "model {} (layers {}, hidden {}, vocab {}, 4-bit {}); lora r {} targets {} embed {} head {}; \
         batch {}×{} max_seq_length {} packing {} seed {}",
        config.model.path,
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size,
        config.model.load_in_4bit,
        a.r,
        targets.join(","),
        a.train_embed_tokens,
        a.train_lm_head,
        config.train.per_device_train_batch_size,
        config.train.gradient_accumulation_steps,
        config.model.max_seq_length,
        config.data.packing,
        config.train.seed,
    )
}

/// The base's LoRA-free parameter count is the model's; LoRA pairs add theirs (PEFT counts them in "all").
fn adapter_lora_parameters(adapter: &Adapter) -> usize {
    let mut n = 0;
    adapter.for_each_tensor(|name, t| {
        if !name.is_embedding() {
            n += t.len();
        }
    });
    n
}

/// The dropout masks of micro-batch `i` of step `step`.
fn dropout_seed(seed: u64, step: usize, i: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((step as u64) << 16 | i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// A failed step names itself and the checkpoint that is still good.
fn step_error(e: Error, step: usize, last_saved: Option<u64>) -> Error {
    let kept = match last_saved {
        Some(s) => format!("checkpoint-{s} is the last good checkpoint; the weights were not updated"),
        None => "no checkpoint was saved yet; the weights were not updated".into(),
    };
    let hint = format!("{kept}. {}", e.hint().unwrap_or("")).trim().to_string();
    e.at(format!("step {step}")).with_hint(hint)
}

/// Errors before allocating when the plan cannot fit in the memory the machine has free.
fn check_fits(memory: &MemoryPlan, config: &TrainConfig) -> Result<()> {
    let Some(available) = crate::memory::available_bytes() else { return Ok(()) };
    if memory.total() <= available {
        return Ok(());
    }
    let (b, t) = memory.arena_rows;
    let fixed = memory.total() - memory.activations;
    let per_row = memory.activations / (b * t).max(1);
    let rows = available.saturating_sub(fixed) / per_row.max(1);
    let hint = if rows >= t {
        format!("per_device_train_batch_size = {} fits (or turn on gradient_checkpointing)", rows / t)
    } else if rows >= 2 {
        format!("max_seq_length = {rows} fits at batch size 1 (or turn on gradient_checkpointing)")
    } else {
        "turn on gradient_checkpointing or load_in_4bit".to_string()
    };
    Err(Error::hinted(
        format!(
            "training needs about {} ({}×{} rows{}) but {} is free",
            crate::memory::human(memory.total()),
            b,
            t,
            if config.train.gradient_checkpointing { ", with checkpointing" } else { "" },
            crate::memory::human(available)
        ),
        hint,
    ))
}

/// Averages over the steps since the last log line.
#[derive(Default)]
struct LogWindow {
    steps: usize,
    loss: f64,
    grad_norm: f64,
    tokens: usize,
    secs: f64,
}

impl LogWindow {
    fn add(&mut self, loss: f64, grad_norm: f64, tokens: usize, secs: f64) {
        self.steps += 1;
        self.loss += loss;
        self.grad_norm += grad_norm;
        self.tokens += tokens;
        self.secs += secs;
    }
    fn loss(&self) -> f64 {
        self.loss / self.steps.max(1) as f64
    }
    fn grad_norm(&self) -> f64 {
        self.grad_norm / self.steps.max(1) as f64
    }
    fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.secs.max(1e-9)
    }
}

/// `metrics.jsonl`: one JSON object per line, flushed as written.
struct MetricsFile {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsFile {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(MetricsFile { path: path.to_path_buf(), file })
    }

    fn line(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    fn train(&mut self, l: &StepLog) -> Result<()> {
        self.line(serde_json::json!({
            "step": l.step,
            "epoch": l.epoch,
            "loss": l.loss,
            "learning_rate": l.learning_rate,
            "grad_norm": l.grad_norm,
            "tokens_per_second": l.tokens_per_second,
        }))
    }

    fn eval(&mut self, e: &EvalLog) -> Result<()> {
        self.line(serde_json::json!({
            "step": e.step,
            "eval_loss": e.eval_loss,
            "eval_perplexity": e.eval_perplexity,
            "eval_tokens": e.tokens,
        }))
    }
}

/// On resume: drops the lines logged after the checkpoint's step (they will be logged again).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).map_err(|e| Error::io(path, e))
}
