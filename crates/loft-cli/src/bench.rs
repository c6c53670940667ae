//! `loft bench`: throughput figures measured the same way every time.

use std::time::Instant;

use loft::engine::{Backend, Cpu};
use loft::infer::{generate, GenerateOptions, SamplingParams};
use loft::model::{Llama, Runner};

use crate::model_args::{announce, Device, DeviceArgs, ModelArgs};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Prompt processing and decode speed of a model (greedy, no early stop). Set threads with --threads.
    Decode(DecodeArgs),
    /// LoRA training step speed and peak memory: forward, backward, clipping and AdamW on random tokens.
    /// Without --model, random weights of the --shape (SmolLM2-135M's unless told; no file needed).
    Train(TrainArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A .gguf file or Hugging Face folder (default: random weights of the --shape).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// The shape of the random model when no --model is given: smollm2-135m, or llama-1b (Llama-3.2-1B's).
    #[arg(long, default_value = "smollm2-135m", conflicts_with = "model")]
    pub shape: String,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// LoRA rank (alpha = 2·rank), on q, k, v, o, gate, up, down.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Keep only each block's input and recompute the block in the backward.
    #[arg(long)]
    pub checkpointing: bool,
    /// Keep the frozen base 4-bit: a GGUF's own blocks, a bitsandbytes checkpoint's NF4, a 16-bit Hugging Face folder
    /// quantized to NF4 at load (Q4_0 for the random default model).
    #[arg(long)]
    pub load_in_4bit: bool,
    /// Optimizer: adamw or adamw_8bit.
    #[arg(long, default_value = "adamw")]
    pub optim: String,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// On a GPU with f16 support, keep the saved activations in f16 (half their memory; f32 arithmetic).
    #[arg(long)]
    pub f16_activations: bool,
    /// Also time gemm alone on the step's frozen products (CPU), a few rounds after each timed step, and print the
    /// step's FLOP rate (the steps' mean, and the fastest step) as a share of gemm's best on those shapes (and of
    /// loft's own calls on them).
    #[arg(long)]
    pub vs_gemm: bool,
    /// Print one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
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
        Command::Train(a) => train(a),
    }
}

fn decode(args: DecodeArgs) -> loft::Result<()> {
    let device = args.device.open()?;
    let loaded = args.model.load()?;
    let cfg = &loaded.model.config;
    // A deterministic prompt of ordinary token ids (no control tokens), the same on every run.
    let vocab = cfg.vocab_size as u64;
    let mut rng = loft::rng::SplitMix64::new(1234);
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
    let total = Instant::now();
    let (described, best_prompt, best_decode) = match &device {
        Device::Cpu => decode_on(&Cpu, &loaded.model, &prompt, &opts, args.repeat)?,
        Device::Gpu(gpu) => decode_on(gpu.as_ref(), &loaded.model, &prompt, &opts, args.repeat)?,
    };
    let threads = rayon::current_num_threads();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": loaded.path.path().display().to_string(),
                "device": described,
                "threads": threads,
                "prompt_tokens": prompt.len(),
                "gen_tokens": opts.max_new_tokens,
                "prompt_tokens_per_second": best_prompt,
                "decode_tokens_per_second": best_decode,
                "seconds": total.elapsed().as_secs_f64(),
            })
        );
    } else {
        println!("device: {described}");
        println!("threads: {threads}");
        println!("prompt ({} tokens): {best_prompt:.1} tok/s", prompt.len());
        println!("decode ({} tokens): {best_decode:.1} tok/s", opts.max_new_tokens);
    }
    Ok(())
}

/// The device's name (printed with the figures) and the best prompt and decode speeds (tok/s) of `repeat` greedy runs on `backend`.
fn decode_on<B: Backend>(
    backend: &B,
    model: &Llama,
    prompt: &[u32],
    opts: &GenerateOptions,
    repeat: usize,
) -> loft::Result<(String, f64, f64)> {
    let runner = Runner::new(backend, model)?;
    let mut cache = runner.cache(prompt.len() + opts.max_new_tokens)?;
    let (mut best_prompt, mut best_decode) = (0.0f64, 0.0f64);
    for _ in 0..repeat.max(1) {
        cache.clear();
        let (_, stats) = generate(&runner, prompt, opts, &mut cache, |_| Ok(()))?;
        best_prompt = best_prompt.max(stats.prompt_tokens_per_second());
        best_decode = best_decode.max(stats.decode_tokens_per_second());
    }
    Ok((backend.describe(), best_prompt, best_decode))
}

fn train(args: TrainArgs) -> loft::Result<()> {
    match args.device.open()? {
        Device::Cpu if args.f16_activations => Err(loft::Error::hinted(
            "--f16-activations applies on a GPU; this bench runs on the CPU",
            "add --device gpu (or gpu:NAME)",
        )),
        Device::Cpu => train_on(&Cpu, args),
        Device::Gpu(_) if args.vs_gemm => Err(loft::Error::hinted(
            "--vs-gemm times the CPU's gemm; this bench runs on a GPU",
            "drop --vs-gemm, or use --device cpu",
        )),
        Device::Gpu(gpu) => {
            let f16 = args.f16_activations;
            train_on(&gpu.with_f16_activations(f16)?, args)
        }
    }
}

/// gemm's rounds over the step's frozen products after each timed step (--vs-gemm), and as many of loft's own calls
/// on them: one round is ~1/15 of a step.
const GEMM_ROUNDS_PER_STEP: usize = 4;

/// The LoRA step (forward, backward, clip, AdamW) on `be`, timed over `--steps` after `--warmup`.
fn train_on<B: Backend>(be: &B, args: TrainArgs) -> loft::Result<()> {
    use loft::data::Batch;
    use loft::lora::{Adapter, DeviceAdapter, Gradients, LoraConfig};
    use loft::memory;
    use loft::model::{load_base, LlamaConfig, Runner};
    use loft::train::forward_backward::{forward_backward, TrainArena};
    use loft::train::optim::{moment_bytes, OptimConfig, OptimKind, Optimizer};
    use loft::train::products::{median, step_products, Caller, ProductTimer};
    use loft::Error;

    let kind = OptimKind::parse(&args.optim)
        .ok_or_else(|| Error::hinted(format!("unknown optimizer '{}'", args.optim), "use adamw or adamw_8bit"))?;
    if args.batch == 0 || args.seq < 2 || args.steps == 0 {
        return Err(Error::hinted(
            "--batch, --seq and --steps must be positive (--seq at least 2)",
            "e.g. --batch 4 --seq 256",
        ));
    }
    let load_start = Instant::now();
    let model = match &args.model {
        Some(spec) => load_base(spec, args.load_in_4bit)?,
        None => {
            let cfg = match args.shape.as_str() {
                "smollm2-135m" => LlamaConfig::smollm2_135m(),
                "llama-1b" => LlamaConfig::llama32_1b(),
                other => {
                    return Err(Error::hinted(
                        format!("--shape {other}: no such shape"),
                        "use smollm2-135m or llama-1b",
                    ))
                }
            };
            let quant = args.load_in_4bit.then_some(gguf::GgmlType::Q4_0);
            let weights = loft::model::weights::LlamaWeights::random(&cfg, 1, quant)?;
            Llama::new(cfg, weights)
        }
    };
    let load_seconds = load_start.elapsed().as_secs_f64();
    let cfg = model.config.clone();
    if args.seq > cfg.max_position_embeddings {
        return Err(Error::hinted(
            format!("--seq {} exceeds the model's context of {}", args.seq, cfg.max_position_embeddings),
            format!("use --seq {} or less", cfg.max_position_embeddings),
        ));
    }
    let lora = LoraConfig { r: args.rank, lora_alpha: 2.0 * args.rank as f32, ..Default::default() };
    let adapter = Adapter::new(lora, &model, 42)?;

    // Say so before allocating when the arena cannot fit, with the largest batch that does.
    let fixed = model.weights.storage_bytes() + adapter.num_parameters() * 4 * 4;
    let estimate = |b| TrainArena::<B>::estimate_bytes(be, &cfg, &adapter.config, b, args.seq, args.checkpointing);
    let need = estimate(args.batch);
    if let Some(avail) = memory::available_bytes() {
        if fixed + need > avail {
            let per_row = estimate(1);
            let fits = avail.saturating_sub(fixed) / per_row.max(1);
            return Err(Error::hinted(
                format!(
                    "batch {}×{} needs about {} of activations; {} are available",
                    args.batch,
                    args.seq,
                    memory::human(need),
                    memory::human(avail.saturating_sub(fixed))
                ),
                if fits > 0 {
                    format!("use --batch {fits} or less, or --checkpointing")
                } else {
                    "shorten --seq or use --checkpointing".to_string()
                },
            ));
        }
    }
    announce(be);
    let run = Runner::new(be, &model)?;
    let mut arena = TrainArena::new(be, &cfg, &adapter.config, args.batch, args.seq, args.checkpointing)?;
    let mut trained = DeviceAdapter::upload(be, &adapter)?;
    let mut grads = Gradients::zeros(be, &adapter)?;
    let mut list = Vec::new();
    adapter.for_each_tensor(|name, t| list.push((name, t.len())));
    let mut optimizer = Optimizer::on(be, OptimConfig { kind, ..Default::default() }, &list)?;
    let n_params = adapter.num_parameters();
    // What the step holds on the device, by the same parts as the training plan: the frozen weights in their own
    // blocks, the adapter and its gradients, the optimizer's moments, the activations.
    let device_estimate = model.weights.storage_bytes()
        + 8 * n_params
        + list.iter().map(|&(_, n)| moment_bytes(kind, n)).sum::<usize>()
        + need;

    let mut rng = loft::rng::SplitMix64::new(7);
    let rows: Vec<Vec<u32>> = (0..args.batch)
        .map(|_| (0..args.seq).map(|_| (rng.next_u64() % cfg.vocab_size as u64) as u32).collect())
        .collect();
    let labels: Vec<Vec<i32>> = rows.iter().map(|r| r.iter().map(|&i| i as i32).collect()).collect();
    let batch = Batch::from_rows(&rows, &labels);
    let n_targets = batch.n_targets();

    // Every timed step's seconds: their sum gives tokens/s; the fastest and the median are printed beside it.
    let mut step_seconds = Vec::with_capacity(args.steps);
    let mut last_loss = 0.0;
    // --vs-gemm: rounds of gemm alone (the ceiling) and of loft's own calls on the same products run after each timed
    // step; the step's peak memory is read before their operands exist.
    let mut timers: Option<(ProductTimer, ProductTimer)> = None;
    let mut peak_of_steps = None;
    // The pool kept awake for the steps and gemm's rounds alike.
    let hot = be.hot_pool();
    for step in 0..args.warmup + args.steps {
        let start = Instant::now();
        grads.zero(be)?;
        let (sum, n) =
            forward_backward(&run, &trained, &mut grads, &mut arena, &batch, 1.0 / n_targets as f32, step as u64)?;
        let mut gs: Vec<&mut B::Buf> = grads.tensors_mut().into_iter().map(|(_, g)| g).collect();
        be.clip_grad_norm(&mut gs, 1.0)?; // the norm comes back: the step's work is done when it does
        let mut params: Vec<&mut B::Buf> = trained.tensors_mut().into_iter().map(|(_, t)| t).collect();
        let gs: Vec<&B::Buf> = grads.tensors().into_iter().map(|(_, g)| g).collect();
        optimizer.update(be, &mut params, &gs, 1e-4, 1e-5)?;
        if let Some(p) = params.last() {
            be.read(p, 0, 1)?; // on a GPU, waits for the update: the step is timed to its end
        }
        last_loss = sum / n as f64;
        if step >= args.warmup {
            step_seconds.push(start.elapsed().as_secs_f64());
            if args.vs_gemm {
                if timers.is_none() {
                    peak_of_steps = memory::peak_rss_bytes();
                }
                let (alone, own) = timers.get_or_insert_with(|| {
                    let products = step_products(&cfg, args.batch * args.seq);
                    (ProductTimer::new(products.clone(), Caller::Gemm), ProductTimer::new(products, Caller::Loft))
                });
                for _ in 0..GEMM_ROUNDS_PER_STEP {
                    alone.round();
                    own.round();
                }
            }
        }
    }
    drop(hot);
    let timed: f64 = step_seconds.iter().sum();
    let mean_step = timed / args.steps as f64;
    let fastest = step_seconds.iter().copied().fold(f64::INFINITY, f64::min);
    let median_step = median(&step_seconds);
    let tokens = (args.batch * args.seq * args.steps) as f64;
    let tps = tokens / timed;
    // Matrix FLOPs per token: forward and input gradient through every linear layer and the head (no weight
    // gradients for the frozen base), plus causal attention (forward 2·T·D·NH, backward about 2.5× that), plus a
    // second forward with checkpointing.
    let p_linear = (cfg.num_parameters() - cfg.vocab_size * cfg.hidden_size) as f64;
    let head = (cfg.vocab_size * cfg.hidden_size) as f64;
    let attn_fwd = 2.0 * args.seq as f64 * cfg.q_dim() as f64 * cfg.num_hidden_layers as f64;
    let fwd = 2.0 * (p_linear + head) + attn_fwd;
    let flops_per_token =
        fwd + 2.0 * (p_linear + head) + 2.5 * attn_fwd + if args.checkpointing { fwd - 2.0 * head } else { 0.0 };
    let peak = peak_of_steps.or_else(memory::peak_rss_bytes).unwrap_or(0);
    let step_gflops = tps * flops_per_token / 1e9;
    // gemm's best and median on the step's shapes, GFLOP/s.
    let figures = |t: &ProductTimer| (t.best_flops_per_second() / 1e9, t.median_flops_per_second() / 1e9);
    let gemm_figures = timers.as_ref().map(|(alone, _)| figures(alone));
    let own_figures = timers.as_ref().map(|(_, own)| figures(own));
    let device_bytes = be.allocated_bytes();
    let threads = rayon::current_num_threads();
    if !args.json {
        match &args.model {
            Some(m) => println!("model: {m}"),
            None => println!("model: {} shape, random weights", args.shape),
        }
        println!(
            "batch {}×{}, LoRA r{} on 7 modules ({} parameters), {}, checkpointing {}, 4-bit base {}",
            args.batch,
            args.seq,
            args.rank,
            n_params,
            kind.name(),
            args.checkpointing,
            args.load_in_4bit
        );
        println!("threads: {threads}");
        println!("tokens/s: {tps:.1} ({mean_step:.3} s/step, {step_gflops:.1} GFLOP/s)");
        println!("steps: fastest {fastest:.3} s, median {median_step:.3} s ({} timed)", args.steps);
        if let (Some((alone, _)), Some((best, median)), Some((own_best, own_median))) =
            (&timers, gemm_figures, own_figures)
        {
            println!(
                "gemm alone on the step's frozen products ({} rounds between the steps): {best:.1} GFLOP/s at each \
                 shape's best, {median:.1} at its median",
                alone.rounds()
            );
            // The headline is the steps' mean against each shape's best; the fastest step against the same best
            // compares peak with peak (the machine's speed moves between the steps as between gemm's rounds).
            let fastest_gflops = step_gflops * mean_step / fastest;
            println!(
                "the step: {:.1} % of gemm's best ({:.1} % of its median); its fastest step {:.1} % of gemm's best",
                100.0 * step_gflops / best,
                100.0 * step_gflops / median,
                100.0 * fastest_gflops / best
            );
            println!(
                "loft's own calls on the same products (output columns split across the threads where that measured \
                 faster): {own_best:.1} GFLOP/s at each shape's best, {own_median:.1} at its median; the step is \
                 {:.1} % of their best",
                100.0 * step_gflops / own_best
            );
        }
        println!(
            "memory: peak RSS {}, base weights {}, activations {} (estimate {})",
            memory::human(peak),
            memory::human(model.weights.storage_bytes()),
            memory::human(arena.bytes(be)),
            memory::human(need)
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "tool": "loft",
                "model": args.model.clone().unwrap_or_else(|| format!("random {}", args.shape)),
                "batch": args.batch,
                "seq": args.seq,
                "rank": args.rank,
                "steps": args.steps,
                "threads": threads,
                "checkpointing": args.checkpointing,
                "f16_activations": args.f16_activations,
                "load_in_4bit": args.load_in_4bit,
                "optim": kind.name(),
                "tokens_per_second": tps,
                "seconds_per_step": mean_step,
                "seconds_per_step_fastest": fastest,
                "seconds_per_step_median": median_step,
                "gflops_per_second": step_gflops,
                "gemm_best_gflops_per_second": gemm_figures.map(|g| g.0),
                "gemm_median_gflops_per_second": gemm_figures.map(|g| g.1),
                "loft_products_best_gflops_per_second": own_figures.map(|g| g.0),
                "loft_products_median_gflops_per_second": own_figures.map(|g| g.1),
                "peak_rss_bytes": peak,
                "base_weight_bytes": model.weights.storage_bytes(),
                "activation_bytes": arena.bytes(be),
                "activation_estimate_bytes": need,
                "optimizer_state_bytes": optimizer.state_bytes(),
                "adapter_parameters": n_params,
                "device": be.describe(),
                "device_bytes": device_bytes,
                "device_estimate_bytes": device_bytes.map(|_| device_estimate),
                "load_seconds": load_seconds,
                "loss": last_loss,
            })
        );
    }
    Ok(())
}
