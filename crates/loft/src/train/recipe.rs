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
    pad_id, split_train_validation, Batch, Batcher, Packing, SourceOptions, TokenizeOptions, TokenizeStats, Tokenized,
};
use crate::engine::{Backend, Cpu};
use crate::error::{Error, Result};
use crate::lora::merge::merge_adapter;
use crate::lora::peft::{load_peft_adapter, save_peft_adapter};
use crate::lora::{Adapter, DeviceAdapter, Gradients, TensorName};
use crate::model::{Llama, LoadOptions, LoadedModel, Runner};
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::{self, TrainerState};
use crate::train::config::{InitAdapterMode, RunConfig};
use crate::train::forward_backward::{forward_backward, loss, TrainArena};
use crate::train::optim::{moment_bytes, non_finite_gradient, Optimizer};
use crate::train::schedule::Schedule;
use crate::train::steps::StepPlan;
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
    /// The device the run computes on, in the backend's words ("cpu", or the GPU's name and API).
    pub device: String,
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
    /// The rest of the process: the program and its libraries, the tokenizer, the tokenized data, and the host
    /// copies of the adapter and the optimizer's state made while a checkpoint or the final adapter is written.
    pub runtime: usize,
    /// Activations of the same shape with the other gradient_checkpointing choice.
    pub activations_other: usize,
    pub arena_rows: (usize, usize),
    /// The run computes on a GPU: the base (in its own blocks), adapter, gradients, optimizer state and
    /// activations live in the device's memory, and the host keeps its copy of the base and the runtime.
    pub on_device: bool,
}

impl MemoryPlan {
    pub fn total(&self) -> usize {
        self.base_weights + self.adapter + self.gradients + self.optimizer + self.activations + self.runtime
    }

    /// What the device holds when the run is on a GPU: base, adapter, gradients, optimizer state, activations.
    pub fn device_total(&self) -> usize {
        self.base_weights + self.adapter + self.gradients + self.optimizer + self.activations
    }

    /// What the host's memory must hold: everything on the CPU; the base and the runtime beside a GPU.
    pub fn host_total(&self) -> usize {
        if self.on_device {
            self.base_weights + self.runtime
        } else {
            self.total()
        }
    }

    /// One line: "memory estimate: 1.15 GiB = base 92 MiB + …".
    pub fn describe(&self) -> String {
        use crate::memory::human;
        if self.on_device {
            return format!(
                "device memory estimate: {} = base {} (in its own blocks) + adapter {} + gradients {} + optimizer {} \
                 + activations {} (batch {}×{}; activations {} with the other gradient_checkpointing setting); \
                 host memory: {} (the base's host copy and the runtime)",
                human(self.device_total()),
                human(self.base_weights),
                human(self.adapter),
                human(self.gradients),
                human(self.optimizer),
                human(self.activations),
                self.arena_rows.0,
                self.arena_rows.1,
                human(self.activations_other),
                human(self.host_total())
            );
        }
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

/// Runs the recipe `config` describes on the CPU.
pub fn train(config: &RunConfig, options: &TrainOptions, observer: &mut dyn Observer) -> Result<Summary> {
    train_on(&Cpu, config, options, observer)
}

/// Runs the recipe on backend `be`: the frozen weights go up once, and the adapter, its gradients, the optimizer's
/// state and the activations stay there for the whole run; per step the loss and the gradient norm come back, and
/// the adapter and optimizer state only when a checkpoint or the final adapter is written.
pub fn train_on<B: Backend>(
    be: &B,
    config: &RunConfig,
    options: &TrainOptions,
    observer: &mut dyn Observer,
) -> Result<Summary> {
    let run_started = Instant::now();
    let out = &config.output_dir;
    prepare_output_dir(out, options)?;
    let Setup { model, train_set, val_set, batcher, eval_batcher, steps, schedule, adapter, mut plan, resumed } =
        setup(config, options, observer)?;
    let fingerprint = fingerprint(config, &model, &adapter);
    plan_on(be, &mut plan, &model, &adapter, config);
    observer.event(Event::Plan(&plan));
    check_fits(&plan.memory, config)?;
    let adapter_dir = out.join(ADAPTER_DIR);
    if options.dry_run {
        return Ok(Summary { steps: 0, final_loss: f64::NAN, eval: None, adapter_dir, dry_run: true });
    }
    let mut report = Reporter::create(config, observer)?;
    let held_before = be.allocated_bytes().unwrap_or(0);
    let on_device = |e: Error| device_memory_error(e, &plan, config);
    let run = Runner::new(be, &model).map_err(on_device)?;
    let (mut arena, mut trained, mut grads, mut optimizer) =
        upload(be, &model, &adapter, &plan.memory, config).map_err(on_device)?;
    let device_bytes = be.allocated_bytes().map(|b| b.saturating_sub(held_before));
    if let Some(held) = device_bytes {
        report.note(format!(
            "{}: holds {} for the run (estimate {})",
            plan.device,
            crate::memory::human(held as usize),
            crate::memory::human(plan.memory.device_total())
        ));
    }
    if let Some(r) = &resumed {
        optimizer.restore(be, &r.optimizer_tensors, r.optimizer_steps)?;
    }
    drop(adapter);
    let (start_step, mut tokens_seen) = resumed.as_ref().map_or((0, 0), |r| (r.step as usize, r.tokens_seen));
    let mut last_saved = resumed.as_ref().map(|r| r.step);
    let mut epoch_batches: (u64, Vec<Batch>) = (u64::MAX, Vec::new());
    let (total_steps, mut last_loss, mut last_eval) = (steps.total(), f64::NAN, None);
    let has_eval = !val_set.is_empty();

    // The pool's threads spin between the steps' parallel regions until the last step is done.
    let hot = be.hot_pool();
    // The starting point of the validation curve (the model before this run's first update).
    if start_step == 0 && has_eval && config.eval_steps > 0 {
        report.evaluated(&evaluate(&run, &trained, &mut arena, &eval_batcher, &val_set, 0)?)?;
    }
    for step in start_step..total_steps {
        let started = Instant::now();
        let (epoch, range) = steps.step(step);
        if epoch_batches.0 != epoch {
            epoch_batches = (epoch, batcher.epoch(&train_set, epoch));
        }
        let micro = &epoch_batches.1[range];
        let at_step = |e: Error| step_error(e, step + 1, last_saved);
        let (step_loss, tokens) =
            accumulate(&run, &trained, &mut grads, &mut arena, micro, dropout_seeds(config.seed, step))
                .map_err(at_step)?;
        let grad_norm = clip(be, &mut grads, config.max_grad_norm as f32).map_err(at_step)?;
        let factor = schedule.factor(step);
        let lr = config.learning_rate * factor;
        let embedding_lr = (config.embedding_learning_rate * factor) as f32;
        update(be, &mut optimizer, &mut trained, &grads, lr as f32, embedding_lr).map_err(at_step)?;
        tokens_seen += tokens as u64;
        last_loss = step_loss;
        let done = step + 1;
        let secs = started.elapsed().as_secs_f64();
        report.stepped(done, total_steps, steps.epochs_done(done), step_loss, lr, grad_norm as f64, tokens, secs)?;
        let eval_due = config.eval_steps > 0 && done % config.eval_steps == 0;
        if has_eval && (eval_due || done == total_steps) {
            let e = evaluate(&run, &trained, &mut arena, &eval_batcher, &val_set, done)?;
            report.evaluated(&e)?;
            last_eval = Some(e);
        }
        if config.save_steps > 0 && done % config.save_steps == 0 {
            let state = TrainerState {
                global_step: done as u64,
                total_steps: total_steps as u64,
                epoch: steps.epochs_done(done),
                fingerprint: fingerprint.clone(),
                tokens_seen,
            };
            let (host, saved) = (trained.download(be)?, optimizer.read_state(be)?);
            let hidden = model.config.hidden_size;
            let dir = checkpoint::save_checkpoint(out, &host, hidden, &config.model, &saved, &state, &config.toml)?;
            checkpoint::prune_checkpoints(out, config.save_total_limit)?;
            last_saved = Some(done as u64);
            report.saved(&dir);
        }
    }
    drop(hot);

    save_final_adapter(&trained.download(be)?, model.config.hidden_size, &config.model, &adapter_dir)?;
    report.saved(&adapter_dir);
    let resumed_from = resumed.as_ref().map(|r| r.step);
    let seconds = run_started.elapsed().as_secs_f64();
    let summary = RunSummary { plan: &plan, resumed_from, seconds, tokens_seen, device_bytes };
    write_summary(out, &summary, last_loss, last_eval.as_ref())?;
    Ok(Summary { steps: total_steps, final_loss: last_loss, eval: last_eval, adapter_dir, dry_run: false })
}

/// The plan as the backend holds it: its name, whether its memory is the device's, and the activations as it
/// keeps them (half the bytes with f16 activations; a narrower head chunk where the device binds less).
fn plan_on<B: Backend>(be: &B, plan: &mut Plan, model: &Llama, adapter: &Adapter, config: &RunConfig) {
    plan.device = be.describe();
    plan.memory.on_device = be.allocated_bytes().is_some();
    let (cfg, lora, ckpt) = (&model.config, &adapter.config, config.gradient_checkpointing);
    let (b, t) = plan.memory.arena_rows;
    plan.memory.activations = TrainArena::<B>::estimate_bytes(be, cfg, lora, b, t, ckpt);
    plan.memory.activations_other = TrainArena::<B>::estimate_bytes(be, cfg, lora, b, t, !ckpt);
}

/// What a run keeps on the backend beside the frozen weights: the activation arena for the plan's rows, the adapter,
/// its gradients and the optimizer's (zero) moments.
type OnDevice<B> = (TrainArena<B>, DeviceAdapter<B>, Gradients<B>, Optimizer<B>);

fn upload<B: Backend>(
    be: &B,
    model: &Llama,
    adapter: &Adapter,
    memory: &MemoryPlan,
    config: &RunConfig,
) -> Result<OnDevice<B>> {
    let (b, t) = memory.arena_rows;
    let arena = TrainArena::new(be, &model.config, &adapter.config, b, t, config.gradient_checkpointing)?;
    let trained = DeviceAdapter::upload(be, adapter)?;
    let grads = Gradients::zeros(be, adapter)?;
    let optimizer = Optimizer::on(be, config.optim, &tensor_list(adapter))?;
    Ok((arena, trained, grads, optimizer))
}

/// One optimizer update of the trained tensors by their gradients, on the backend.
fn update<B: Backend>(
    be: &B,
    optimizer: &mut Optimizer<B>,
    trained: &mut DeviceAdapter<B>,
    grads: &Gradients<B>,
    lr: f32,
    embedding_lr: f32,
) -> Result<()> {
    let mut params: Vec<&mut B::Buf> = trained.tensors_mut().into_iter().map(|(_, t)| t).collect();
    let gs: Vec<&B::Buf> = grads.tensors().into_iter().map(|(_, g)| g).collect();
    optimizer.update(be, &mut params, &gs, lr, embedding_lr)
}

/// Name and length of each trained tensor, in the optimizer's order.
fn tensor_list(adapter: &Adapter) -> Vec<(TensorName, usize)> {
    let mut list = Vec::new();
    adapter.for_each_tensor(|name, t| list.push((name, t.len())));
    list
}

/// The global gradient-norm clip on the backend; a non-finite norm reads the gradients back to name the tensor.
fn clip<B: Backend>(be: &B, grads: &mut Gradients<B>, max_norm: f32) -> Result<f32> {
    let norm = {
        let mut gs: Vec<&mut B::Buf> = grads.tensors_mut().into_iter().map(|(_, g)| g).collect();
        be.clip_grad_norm(&mut gs, max_norm)?
    };
    if norm.is_finite() {
        return Ok(norm);
    }
    let mut host = Vec::new();
    for (name, g) in grads.tensors() {
        host.push((name, be.read(g, 0, be.len(g))?));
    }
    Err(non_finite_gradient(host.iter().map(|(n, t)| (*n, t.as_slice()))))
}

/// What a run did, for `train_summary.json`.
struct RunSummary<'a> {
    plan: &'a Plan,
    resumed_from: Option<u64>,
    seconds: f64,
    tokens_seen: u64,
    /// Device memory the run allocated (None on the CPU).
    device_bytes: Option<u64>,
}

/// `train_summary.json`: steps, time, peak memory against the estimate (and the device's, on a GPU), data counts,
/// final losses.
fn write_summary(out: &Path, run: &RunSummary<'_>, final_loss: f64, eval: Option<&EvalLog>) -> Result<()> {
    let plan = run.plan;
    let summary = serde_json::json!({
        "steps": plan.total_steps,
        "resumed_from_step": run.resumed_from,
        "seconds": run.seconds,
        "device": plan.device,
        "peak_rss_bytes": crate::memory::peak_rss_bytes(),
        "memory_estimate_bytes": plan.memory.host_total(),
        "device_bytes": run.device_bytes,
        "device_estimate_bytes": plan.memory.on_device.then(|| plan.memory.device_total()),
        "tokens_seen": run.tokens_seen,
        "train_examples": plan.train_examples,
        "validation_examples": plan.validation_examples,
        "target_tokens": plan.stats.target_tokens,
        "truncated_examples": plan.stats.truncated,
        "trainable_parameters": plan.trainable_parameters,
        "final_loss": final_loss,
        "eval_loss": eval.map(|e| e.eval_loss),
        "eval_perplexity": eval.map(|e| e.eval_perplexity),
    });
    let path = out.join(SUMMARY_FILE);
    std::fs::write(&path, format!("{summary:#}\n")).map_err(|e| Error::io(&path, e))
}

/// Everything the loop needs, built before its first step.
struct Setup {
    model: Llama,
    train_set: Vec<Tokenized>,
    val_set: Vec<Tokenized>,
    batcher: Batcher,
    eval_batcher: Batcher,
    steps: StepPlan,
    schedule: Schedule,
    adapter: Adapter,
    plan: Plan,
    resumed: Option<Resumed>,
}

/// Loads the base (folding in an earlier adapter when asked), prepares the data, plans the steps, attaches LoRA
/// (fresh or from the newest checkpoint) and estimates the memory.
fn setup(config: &RunConfig, options: &TrainOptions, observer: &mut dyn Observer) -> Result<Setup> {
    let load = LoadOptions {
        tokenizer_pre: config.tokenizer_pre.clone(),
        dequantize: !config.load_in_4bit,
        // A GGUF keeps its own blocks, a bitsandbytes checkpoint its NF4 ones; a 16-bit folder becomes NF4.
        load_in_4bit: config.load_in_4bit,
    };
    let LoadedModel { model: mut base, tokenizer, .. } = LoadedModel::load_with(&config.model, &load)?;
    let mut continued = None;
    if let Some(init) = &config.init_adapter {
        let adapter = load_peft_adapter(&init.dir, &base)?;
        match init.mode {
            InitAdapterMode::Continue => continued = Some(adapter),
            InitAdapterMode::Merge => {
                merge_adapter(&mut base, &adapter)?;
                observer.event(Event::Note(format!("merged {} into the frozen base", init.dir.display())));
            }
        }
    }
    let model = base;

    let (train_set, val_set, stats) = prepare_data(config, &tokenizer)?;
    let batcher = Batcher {
        batch_size: config.batch_size,
        max_seq_length: config.max_seq_length,
        packing: config.data.packing,
        pad_id: pad_id(&tokenizer),
        seed: config.seed,
        shuffle: config.data.shuffle,
    };
    let eval_batcher = Batcher { batch_size: config.eval_batch_size, shuffle: false, ..batcher.clone() };
    let steps = StepPlan::new(&batcher, &train_set, config.accumulation, config.length)?;
    let schedule = Schedule::new(config.scheduler, steps.total(), config.warmup_steps, config.warmup_ratio);

    let mut adapter = match continued {
        Some(a) => a,
        None => Adapter::new(config.lora.clone(), &model, config.seed)?,
    };
    let resumed = if options.resume { Some(resume(config, &model, &mut adapter)?) } else { None };
    let optimizer_bytes: usize = tensor_list(&adapter).iter().map(|&(_, n)| moment_bytes(config.optim.kind, n)).sum();

    // One arena for the longest micro-batch (training or evaluation).
    let longest = train_set.iter().chain(&val_set).map(|t| t.ids.len()).max().unwrap_or(2);
    let rows_t =
        if config.data.packing == Packing::Packed { config.max_seq_length } else { longest.min(config.max_seq_length) };
    let rows_b = config.batch_size.max(if val_set.is_empty() { 0 } else { config.eval_batch_size });
    let n_params = adapter.num_parameters();
    let checkpointing = config.gradient_checkpointing;
    let memory = MemoryPlan {
        base_weights: model.weights.storage_bytes(),
        adapter: 4 * n_params,
        gradients: 4 * n_params,
        optimizer: optimizer_bytes,
        activations: TrainArena::<Cpu>::estimate_bytes(
            &Cpu,
            &model.config,
            &adapter.config,
            rows_b,
            rows_t,
            checkpointing,
        ),
        activations_other: TrainArena::<Cpu>::estimate_bytes(
            &Cpu,
            &model.config,
            &adapter.config,
            rows_b,
            rows_t,
            !checkpointing,
        ),
        runtime: RUNTIME_BYTES
            + train_set.iter().chain(&val_set).map(|t| 8 * t.ids.len()).sum::<usize>()
            + 4 * n_params // the adapter read back for the final save (and each checkpoint)
            + if config.save_steps > 0 { optimizer_bytes } else { 0 },
        arena_rows: (rows_b, rows_t),
        on_device: false,
    };
    let (steps_per_epoch, micro_batches_per_epoch) = steps.first_epoch();
    let plan = Plan {
        train_examples: train_set.len(),
        validation_examples: val_set.len(),
        stats,
        micro_batches_per_epoch,
        steps_per_epoch,
        total_steps: steps.total(),
        warmup_steps: schedule.warmup_steps,
        trainable_parameters: n_params,
        all_parameters: model.config.num_parameters() + adapter_lora_parameters(&adapter),
        memory,
        resumed_from: resumed.as_ref().map(|r| (r.step, r.dir.clone())),
        device: "cpu".into(),
    };
    Ok(Setup { model, train_set, val_set, batcher, eval_batcher, steps, schedule, adapter, plan, resumed })
}

/// Where a resumed run picks up.
#[derive(Clone, Debug)]
pub struct Resumed {
    pub step: u64,
    pub dir: PathBuf,
    pub tokens_seen: u64,
    /// The checkpoint's optimizer state, restored once the optimizer exists on its backend.
    pub optimizer_tensors: Vec<(String, Vec<u8>)>,
    pub optimizer_steps: u64,
}

/// Loads the newest complete checkpoint into the adapter (its optimizer state comes with it), refusing one from
/// another run. The optimizer state is checked against the adapter here, before anything is allocated.
fn resume(config: &RunConfig, model: &Llama, adapter: &mut Adapter) -> Result<Resumed> {
    let out = &config.output_dir;
    let (step, dir) = checkpoint::list_checkpoints(out)?.pop().ok_or_else(|| {
        Error::hinted(
            format!("--resume: no complete checkpoint in {}", out.display()),
            "start the run without --resume (add --overwrite to replace what is there)",
        )
    })?;
    let restored = checkpoint::load_checkpoint(&dir, model)?;
    let fingerprint = fingerprint(config, model, adapter);
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
    let mut restored_adapter = restored.adapter;
    // A tied model trained through one shared matrix: the checkpoint stores the head as its own copy (PEFT's
    // layout); the run goes on training the one matrix.
    if adapter.lm_head.is_none()
        && restored_adapter.lm_head.is_some()
        && restored_adapter.lm_head == restored_adapter.embed_tokens
    {
        restored_adapter.lm_head = None;
    }
    *adapter = restored_adapter;
    Optimizer::new(config.optim, adapter).load_state_tensors(&restored.optimizer_tensors, restored.optimizer_steps)?;
    truncate_metrics(&out.join(METRICS_FILE), restored.state.global_step as usize)?;
    Ok(Resumed {
        step,
        dir,
        tokens_seen: restored.state.tokens_seen,
        optimizer_tensors: restored.optimizer_tensors,
        optimizer_steps: restored.optimizer_steps,
    })
}

/// One optimizer step's micro-batches, forward and backward, gradients summed into `grads` (zeroed first) and
/// scaled so that they add up to the gradient of the mean loss over the step's target tokens. Returns that mean
/// loss and the tokens processed.
fn accumulate<B: Backend>(
    run: &Runner<'_, B>,
    adapter: &DeviceAdapter<B>,
    grads: &mut Gradients<B>,
    arena: &mut TrainArena<B>,
    micro: &[Batch],
    seeds: impl Fn(usize) -> u64,
) -> Result<(f64, usize)> {
    let be = run.backend();
    let count: usize = micro.iter().map(Batch::n_targets).sum();
    grads.zero(be)?;
    let (mut loss_sum, mut tokens) = (0.0, 0);
    for (i, batch) in micro.iter().enumerate() {
        arena.fit(be, batch.b, batch.t)?;
        let (l, _) = forward_backward(run, adapter, grads, arena, batch, 1.0 / count.max(1) as f32, seeds(i))?;
        loss_sum += l;
        tokens += batch.b * batch.t;
    }
    Ok((loss_sum / count.max(1) as f64, tokens))
}

/// Writes the final adapter beside the old one, then swaps it in: an old adapter is replaced only by a complete one.
fn save_final_adapter(adapter: &Adapter, hidden: usize, base: &str, dir: &Path) -> Result<()> {
    let tmp = dir.with_file_name(format!("{ADAPTER_DIR}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    save_peft_adapter(adapter, hidden, &tmp, base)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
}

/// Reads, formats, tokenizes and splits the data: (train, validation, stats of the training files).
pub fn prepare_data(
    config: &RunConfig,
    tokenizer: &Tokenizer,
) -> Result<(Vec<Tokenized>, Vec<Tokenized>, TokenizeStats)> {
    let d = &config.data;
    let options = TokenizeOptions {
        max_seq_length: config.max_seq_length,
        train_on_responses_only: d.train_on_responses_only,
        split_long: d.packing == Packing::Packed,
    };
    let read = |files: &[PathBuf], max_records: Option<usize>| {
        let source = SourceOptions { format: None, split_paragraphs: d.split_paragraphs, max_records };
        crate::data::prepare(files, &source, d.format.clone(), d.add_eos, tokenizer, &options)
    };
    let (all, stats) = read(&d.train_files, d.max_samples)?;
    if !d.validation_files.is_empty() {
        let (val, _) = read(&d.validation_files, None)?;
        return Ok((all, val, stats));
    }
    let (train, val) = split_train_validation(all, d.validation_split, config.seed)?;
    Ok((train, val, stats))
}

/// Mean loss over the validation set, one micro-batch at a time in the training arena (memory stays bounded).
fn evaluate<B: Backend>(
    run: &Runner<'_, B>,
    adapter: &DeviceAdapter<B>,
    arena: &mut TrainArena<B>,
    batcher: &Batcher,
    examples: &[Tokenized],
    step: usize,
) -> Result<EvalLog> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for batch in batcher.epoch(examples, 0) {
        arena.fit(run.backend(), batch.b, batch.t)?;
        let (s, n) = loss(run, adapter, arena, &batch)?;
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
fn fingerprint(config: &RunConfig, model: &Llama, adapter: &Adapter) -> String {
    let c = &model.config;
    let a = &adapter.config;
    let targets: Vec<&str> = a.target_modules.iter().map(|t| t.name()).collect();
    format!(
        "model {} (layers {}, hidden {}, vocab {}, 4-bit {}); lora r {} targets {} embed {} head {}; \
         batch {}×{} max_seq_length {} packing {} seed {}",
        config.model,
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size,
        config.load_in_4bit,
        a.r,
        targets.join(","),
        a.train_embed_tokens,
        a.train_lm_head,
        config.batch_size,
        config.accumulation,
        config.max_seq_length,
        config.data.packing == Packing::Packed,
        config.seed,
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

/// The dropout masks of each micro-batch `i` of step `step`.
fn dropout_seeds(seed: u64, step: usize) -> impl Fn(usize) -> u64 {
    move |i| {
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((step as u64) << 16 | i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)
    }
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
fn check_fits(memory: &MemoryPlan, config: &RunConfig) -> Result<()> {
    let Some(available) = crate::memory::available_bytes() else { return Ok(()) };
    if memory.host_total() <= available {
        return Ok(());
    }
    if memory.on_device {
        return Err(Error::hinted(
            format!(
                "the base model and the runtime need about {} of host memory beside the GPU, but {} is free",
                crate::memory::human(memory.host_total()),
                crate::memory::human(available)
            ),
            "close other programs, or use a smaller model",
        ));
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
            if config.gradient_checkpointing { ", with checkpointing" } else { "" },
            crate::memory::human(available)
        ),
        hint,
    ))
}

/// A failure while the run's buffers go up to the device (out of memory, a buffer above the device's limit): the
/// error, with the plan's device estimate and what would lower it.
fn device_memory_error(e: Error, plan: &Plan, config: &RunConfig) -> Error {
    if !plan.memory.on_device {
        return e;
    }
    let m = &plan.memory;
    let (b, t) = m.arena_rows;
    let smaller = if b > 1 {
        format!("per_device_train_batch_size = {} halves the activations", b.div_ceil(2))
    } else {
        format!("max_seq_length = {} halves the activations", t.div_ceil(2))
    };
    let checkpointing = if config.gradient_checkpointing || m.activations_other >= m.activations {
        String::new()
    } else {
        format!(", gradient_checkpointing = true needs {} of activations", crate::memory::human(m.activations_other))
    };
    let hint = format!(
        "the plan needs about {} on {} ({} of it activations): {smaller}{checkpointing}; or use --device cpu",
        crate::memory::human(m.device_total()),
        plan.device,
        crate::memory::human(m.activations)
    );
    let hint = match e.hint() {
        Some(h) => format!("{h}; {hint}"),
        None => hint,
    };
    e.with_hint(hint)
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

/// The one place a run reports: metrics.jsonl (one JSON object per line, flushed as written), TensorBoard event
/// files when asked, and the observer (the CLI's progress bar). Train lines average the steps since the last one.
struct Reporter<'a> {
    metrics_path: PathBuf,
    metrics: std::fs::File,
    tensorboard: Option<TensorBoardWriter>,
    observer: &'a mut dyn Observer,
    logging_steps: usize,
    window: LogWindow,
}

impl<'a> Reporter<'a> {
    /// Saves the config beside the run and opens its logs (appending, so a resumed run continues them).
    fn create(config: &RunConfig, observer: &'a mut dyn Observer) -> Result<Self> {
        let out = &config.output_dir;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let config_path = out.join(checkpoint::CONFIG_FILE);
        std::fs::write(&config_path, &config.toml).map_err(|e| Error::io(&config_path, e))?;
        let metrics_path = out.join(METRICS_FILE);
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| Error::io(&metrics_path, e))?;
        let tensorboard = if config.tensorboard { Some(TensorBoardWriter::create(out)?) } else { None };
        Ok(Reporter {
            metrics_path,
            metrics,
            tensorboard,
            observer,
            logging_steps: config.logging_steps,
            window: LogWindow::default(),
        })
    }

    fn write(&mut self, line: serde_json::Value, scalars: &[(&str, f64)], step: usize) -> Result<()> {
        writeln!(self.metrics, "{line}").map_err(|e| Error::io(&self.metrics_path, e))?;
        self.metrics.flush().map_err(|e| Error::io(&self.metrics_path, e))?;
        if let Some(tb) = &mut self.tensorboard {
            for (tag, value) in scalars {
                tb.add_scalar(tag, step as u64, *value)?;
            }
            tb.flush()?;
        }
        Ok(())
    }

    /// After every optimizer step: the progress bar, and a train line every `logging_steps` and at the end.
    #[allow(clippy::too_many_arguments)]
    fn stepped(
        &mut self,
        step: usize,
        total_steps: usize,
        epoch: f64,
        loss: f64,
        learning_rate: f64,
        grad_norm: f64,
        tokens: usize,
        secs: f64,
    ) -> Result<()> {
        let tokens_per_second = tokens as f64 / secs.max(1e-9);
        self.observer.event(Event::Progress { step, total_steps, loss, learning_rate, tokens_per_second });
        self.window.add(loss, grad_norm, tokens, secs);
        if !step.is_multiple_of(self.logging_steps) && step != total_steps {
            return Ok(());
        }
        let w = std::mem::take(&mut self.window);
        let log = StepLog {
            step,
            total_steps,
            epoch,
            loss: w.loss(),
            learning_rate,
            grad_norm: w.grad_norm(),
            tokens_per_second: w.tokens_per_second(),
        };
        let line = serde_json::json!({
            "step": log.step,
            "epoch": log.epoch,
            "loss": log.loss,
            "learning_rate": log.learning_rate,
            "grad_norm": log.grad_norm,
            "tokens_per_second": log.tokens_per_second,
        });
        let scalars =
            [("train/loss", log.loss), ("train/learning_rate", learning_rate), ("train/grad_norm", log.grad_norm)];
        self.write(line, &scalars, step)?;
        self.observer.event(Event::Logged(&log));
        Ok(())
    }

    fn evaluated(&mut self, e: &EvalLog) -> Result<()> {
        let line = serde_json::json!({
            "step": e.step,
            "eval_loss": e.eval_loss,
            "eval_perplexity": e.eval_perplexity,
            "eval_tokens": e.tokens,
        });
        self.write(line, &[("eval/loss", e.eval_loss)], e.step)?;
        self.observer.event(Event::Evaluated(e));
        Ok(())
    }

    fn saved(&mut self, dir: &Path) {
        self.observer.event(Event::Saved(dir));
    }

    fn note(&mut self, text: String) {
        self.observer.event(Event::Note(text));
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
