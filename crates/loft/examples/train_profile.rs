//! Where the CPU LoRA step's time goes, op by op (issue 15): `loft bench train`'s step (random SmolLM2-135M-shaped
//! weights, LoRA r16 on the seven modules, AdamW) run over a backend that times each call it passes to [`Cpu`].
//!
//! `cargo run --release -p loft --example train_profile [-- B T STEPS]` (default 4 256 3, after one warm-up step).
//! Each op's wall time per step and share are printed, largest first; a LoRA call is split into the frozen
//! product (named by its module) and the adapter's part, as [`loft::engine::lora`] computes them.
//!
//! Timing every call adds nothing to the work but a clock read; the figures are wall time, so on a busy machine
//! compare shares, not seconds. The group forward's A-side product is timed apart ("lora fwd xa").

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use loft::data::Batch;
use loft::engine::cross_entropy::CrossEntropyScratch;
use loft::engine::lora::{
    add_lora_group_grads, add_lora_group_terms, add_lora_term_from, lora_group_xa, LoraDropout, LoraGrad, LoraOut,
    LoraWeights,
};
use loft::engine::optim::{Moments, OptimConfig, OptimKind};
use loft::engine::{AdamWTensor, Backend, Cpu, FrozenMatrix, GroupLinear, GroupLinearGrad, Vocab};
use loft::lora::{Adapter, DeviceAdapter, Gradients, LoraConfig};
use loft::model::{Llama, LlamaConfig, Runner};
use loft::train::forward_backward::{forward_backward, TrainArena};
use loft::train::optim::Optimizer;
use loft::Result;

/// [`Cpu`], with each call's wall time added to its op's total.
#[derive(Default)]
struct Timed {
    totals: RefCell<BTreeMap<&'static str, (f64, usize)>>,
}

impl Timed {
    fn time<T>(&self, op: &'static str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        let mut totals = self.totals.borrow_mut();
        let e = totals.entry(op).or_default();
        e.0 += start.elapsed().as_secs_f64();
        e.1 += 1;
        out
    }
}

/// Names an op by the shape of its frozen matrix (the projection it is).
fn module(w: &FrozenMatrix, fwd: bool) -> &'static str {
    match ((w.rows, w.cols), fwd) {
        ((576, 576), true) => "q/o_proj fwd",
        ((192, 576), true) => "k/v_proj fwd",
        ((1536, 576), true) => "gate/up_proj fwd",
        ((576, 1536), true) => "down_proj fwd",
        ((576, 576), false) => "q/o_proj bwd",
        ((192, 576), false) => "k/v_proj bwd",
        ((1536, 576), false) => "gate/up_proj bwd",
        ((576, 1536), false) => "down_proj bwd",
        (_, true) => "other linear fwd",
        (_, false) => "other linear bwd",
    }
}

impl Backend for Timed {
    type Buf = Vec<f32>;
    type Matrix<'w> = &'w FrozenMatrix;
    type Vector<'w> = &'w [f32];
    type CrossEntropyScratch = CrossEntropyScratch;
    type Lora = LoraWeights;
    type Moments = Moments;

    fn describe(&self) -> String {
        "cpu (timed)".into()
    }
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }
    fn hot_pool(&self) -> Option<loft::engine::HotPool> {
        Cpu.hot_pool()
    }
    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Cpu.zeros(len)
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn resize(&self, buf: &mut Vec<f32>, len: usize) -> Result<()> {
        Cpu.resize(buf, len)
    }
    fn write(&self, buf: &mut Vec<f32>, data: &[f32]) -> Result<()> {
        Cpu.write(buf, data)
    }
    fn fill_zero(&self, buf: &mut Vec<f32>) -> Result<()> {
        self.time("fill_zero", || Cpu.fill_zero(buf))
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Cpu.upload(data)
    }
    fn read(&self, buf: &Vec<f32>, at: usize, len: usize) -> Result<Vec<f32>> {
        Cpu.read(buf, at, len)
    }
    fn download(&self, buf: Vec<f32>) -> Result<Vec<f32>> {
        Cpu.download(buf)
    }
    fn copy(&self, src: &Vec<f32>, src_at: usize, dst: &mut Vec<f32>, dst_at: usize, len: usize) -> Result<()> {
        self.time("copy (residual)", || Cpu.copy(src, src_at, dst, dst_at, len))
    }
    fn matrix<'w>(&'w self, name: &str, m: &'w FrozenMatrix) -> Result<&'w FrozenMatrix> {
        Cpu.matrix(name, m)
    }
    fn vector<'w>(&'w self, v: &'w [f32]) -> Result<&'w [f32]> {
        Ok(v)
    }
    fn lora(&self, w: &LoraWeights) -> Result<LoraWeights> {
        Cpu.lora(w)
    }
    fn lora_weights(&self, l: &LoraWeights) -> Result<LoraWeights> {
        Cpu.lora_weights(l)
    }
    fn lora_parts_mut(lora: &mut LoraWeights) -> (&mut Vec<f32>, &mut Vec<f32>) {
        Cpu::lora_parts_mut(lora)
    }
    fn cross_entropy_scratch(&self, chunk: usize, c: usize, v: usize) -> Result<CrossEntropyScratch> {
        Cpu.cross_entropy_scratch(chunk, c, v)
    }
    fn linear_forward(&self, y: &mut Vec<f32>, x: &Vec<f32>, w: &&FrozenMatrix, n: usize, acc: bool) -> Result<()> {
        self.time(module(w, true), || Cpu.linear_forward(y, x, w, n, acc))
    }
    fn embedding_forward(
        &self,
        out: &mut Vec<f32>,
        ids: &[u32],
        table: Vocab<'_, &FrozenMatrix, Vec<f32>>,
        c: usize,
    ) -> Result<()> {
        self.time("embedding", || Cpu.embedding_forward(out, ids, table, c))
    }
    fn bias_forward(&self, y: &mut Vec<f32>, b: &&[f32], n: usize) -> Result<()> {
        self.time("bias", || Cpu.bias_forward(y, b, n))
    }
    fn rmsnorm_forward(&self, y: &mut Vec<f32>, x: &Vec<f32>, w: &&[f32], c: usize, eps: f32) -> Result<()> {
        self.time("rmsnorm fwd", || Cpu.rmsnorm_forward(y, x, w, c, eps))
    }
    fn rope_forward(
        &self,
        x: &mut Vec<f32>,
        t: usize,
        h: usize,
        d: usize,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
    ) -> Result<()> {
        self.time("rope fwd", || Cpu.rope_forward(x, t, h, d, cos, sin))
    }
    fn attention_forward_cached(
        &self,
        att: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        t: usize,
        p0: usize,
        window: Option<usize>,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()> {
        Cpu.attention_forward_cached(att, q, k, v, t, p0, window, nh, nkv, d)
    }
    fn swiglu_forward(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>) -> Result<()> {
        self.time("swiglu fwd", || Cpu.swiglu_forward(out, gate, up))
    }
    fn geglu_forward(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>) -> Result<()> {
        self.time("geglu fwd", || Cpu.geglu_forward(out, gate, up))
    }
    fn scale(&self, x: &mut Vec<f32>, s: f32) -> Result<()> {
        self.time("scale", || Cpu.scale(x, s))
    }
    fn add(&self, y: &mut Vec<f32>, x: &Vec<f32>) -> Result<()> {
        self.time("add (residual)", || Cpu.add(y, x))
    }
    fn linear_backward_input(
        &self,
        dx: &mut Vec<f32>,
        dy: &Vec<f32>,
        w: &&FrozenMatrix,
        n: usize,
        acc: bool,
    ) -> Result<()> {
        self.time(module(w, false), || Cpu.linear_backward_input(dx, dy, w, n, acc))
    }
    fn rmsnorm_forward_train(
        &self,
        y: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&[f32],
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        self.time("rmsnorm fwd", || Cpu.rmsnorm_forward_train(y, rstd, x, w, n, c, eps))
    }
    fn rmsnorm_forward_train_copy(
        &self,
        y: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        skip: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&[f32],
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        self.time("rmsnorm fwd + residual copy", || Cpu.rmsnorm_forward_train_copy(y, rstd, skip, x, w, n, c, eps))
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut Vec<f32>,
        dw: Option<&mut Vec<f32>>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        w: &&[f32],
        rstd: &Vec<f32>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        self.time("rmsnorm bwd", || Cpu.rmsnorm_backward(dx, dw, dy, x, w, rstd, n, c))
    }
    fn rope_backward(
        &self,
        dx: &mut Vec<f32>,
        t: usize,
        h: usize,
        d: usize,
        cos: &Vec<f32>,
        sin: &Vec<f32>,
    ) -> Result<()> {
        self.time("rope bwd", || Cpu.rope_backward(dx, t, h, d, cos, sin))
    }
    fn swiglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
    ) -> Result<()> {
        self.time("swiglu bwd", || Cpu.swiglu_backward(dgate, dup, dout, gate, up))
    }
    fn geglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
    ) -> Result<()> {
        self.time("geglu bwd", || Cpu.geglu_backward(dgate, dup, dout, gate, up))
    }
    fn embedding_backward(&self, dtable: &mut Vec<f32>, dout: &Vec<f32>, ids: &[u32], c: usize) -> Result<()> {
        self.time("embedding bwd", || Cpu.embedding_backward(dtable, dout, ids, c))
    }
    fn lora_forward(
        &self,
        y: &mut Vec<f32>,
        xa: &mut Vec<f32>,
        xd: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&FrozenMatrix,
        lora: &LoraWeights,
        dropout: Option<LoraDropout>,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        if dropout.is_some() {
            return self.time("lora fwd (dropout)", || Cpu.lora_forward(y, xa, xd, x, w, lora, dropout, n, accumulate));
        }
        // lora_forward's own steps without dropout, each timed: the frozen product, then the adapter's.
        self.time(module(w, true), || w.forward(y, x, n, accumulate));
        self.time("lora fwd (adapter part)", || add_lora_group_terms(x, &mut [LoraOut { y, xa, w, lora }], n));
        Ok(())
    }
    fn lora_group_forward(
        &self,
        mods: &mut [GroupLinear<'_, '_, Self>],
        xd: &mut Vec<f32>,
        x: &Vec<f32>,
        n: usize,
    ) -> Result<()> {
        if mods.iter().any(|m| m.lora.is_none() || m.dropout.is_some()) {
            let mut cpu: Vec<GroupLinear<'_, '_, Cpu>> = mods
                .iter_mut()
                .map(|m| GroupLinear { w: m.w, lora: m.lora, dropout: m.dropout, y: &mut *m.y, xa: &mut *m.xa })
                .collect();
            return self.time("lora group fwd (dropout)", || Cpu.lora_group_forward(&mut cpu, xd, x, n));
        }
        // lora_group_forward's own steps, each timed: the frozen products, then the adapters'.
        let mut outs: Vec<LoraOut<'_>> = mods
            .iter_mut()
            .filter_map(|m| Some(LoraOut { y: &mut *m.y, xa: &mut *m.xa, w: m.w, lora: m.lora? }))
            .collect();
        // (The step adds each term inside FrozenMatrix::forward_then; timed apart here, as a pass after it.)
        let (xa_all, offsets, total) = self.time("lora fwd xa", || lora_group_xa(x, &outs, n));
        for (o, &off) in outs.iter_mut().zip(&offsets) {
            self.time(module(o.w, true), || o.w.forward(o.y, x, n, false));
            self.time("lora fwd (adapter part)", || add_lora_term_from(o, &xa_all, total, off, n));
        }
        Ok(())
    }
    fn lora_backward(
        &self,
        dx: &mut Vec<f32>,
        da: &mut Vec<f32>,
        db: &mut Vec<f32>,
        dxa: &mut Vec<f32>,
        xd: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        xa: &Vec<f32>,
        w: &&FrozenMatrix,
        lora: &LoraWeights,
        dropout: Option<LoraDropout>,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        if dropout.is_some() {
            return self.time("lora bwd (dropout)", || {
                Cpu.lora_backward(dx, da, db, dxa, xd, dy, x, xa, w, lora, dropout, n, accumulate)
            });
        }
        // lora_backward's own steps without dropout, each timed.
        self.time(module(w, false), || w.backward_input(dx, dy, n, accumulate));
        self.time("lora bwd (adapter part)", || {
            add_lora_group_grads(dx, x, &mut [LoraGrad { dy, xa, w, lora, da, db }], n)
        });
        Ok(())
    }
    fn lora_group_backward(
        &self,
        dx: &mut Vec<f32>,
        dxa: &mut Vec<f32>,
        xd: &mut Vec<f32>,
        mods: &mut [GroupLinearGrad<'_, '_, Self>],
        x: &Vec<f32>,
        n: usize,
    ) -> Result<()> {
        if mods.iter().any(|m| m.lora.is_none() || m.dropout.is_some()) {
            let mut cpu: Vec<GroupLinearGrad<'_, '_, Cpu>> = mods
                .iter_mut()
                .map(|m| GroupLinearGrad {
                    w: m.w,
                    lora: m.lora.as_mut().map(|(l, da, db)| (*l, &mut **da, &mut **db)),
                    dropout: m.dropout,
                    dy: m.dy,
                    xa: m.xa,
                })
                .collect();
            return self.time("lora group bwd (dropout)", || Cpu.lora_group_backward(dx, dxa, xd, &mut cpu, x, n));
        }
        // lora_group_backward's own steps, each timed: the frozen products, then the adapters'.
        let mut grads: Vec<LoraGrad<'_>> = mods
            .iter_mut()
            .filter_map(|m| {
                let (lora, da, db) = m.lora.as_mut()?;
                Some(LoraGrad { dy: m.dy, xa: m.xa, w: m.w, lora, da, db })
            })
            .collect();
        for (j, g) in grads.iter().enumerate() {
            self.time(module(g.w, false), || g.w.backward_input(dx, g.dy, n, j > 0));
        }
        self.time("lora bwd (adapter part)", || add_lora_group_grads(dx, x, &mut grads, n));
        Ok(())
    }
    fn cross_entropy_forward(
        &self,
        scratch: &mut CrossEntropyScratch,
        h: &Vec<f32>,
        head: Vocab<'_, &FrozenMatrix, Vec<f32>>,
        targets: &[i32],
        c: usize,
    ) -> Result<(f64, usize)> {
        self.time("head + cross-entropy", || Cpu.cross_entropy_forward(scratch, h, head, targets, c))
    }
    fn cross_entropy_forward_backward(
        &self,
        dh: &mut Vec<f32>,
        dhead: Option<&mut Vec<f32>>,
        scratch: &mut CrossEntropyScratch,
        h: &Vec<f32>,
        head: Vocab<'_, &FrozenMatrix, Vec<f32>>,
        targets: &[i32],
        c: usize,
        grad_scale: f32,
    ) -> Result<(f64, usize)> {
        self.time("head + cross-entropy", || {
            Cpu.cross_entropy_forward_backward(dh, dhead, scratch, h, head, targets, c, grad_scale)
        })
    }
    fn attention_forward(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        doc_start: Option<&[u32]>,
        window: Option<usize>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()> {
        self.time("attention fwd", || Cpu.attention_forward(out, lse, q, k, v, doc_start, window, b, t, nh, nkv, d))
    }
    fn attention_backward(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dk_heads: &mut Vec<f32>,
        dv_heads: &mut Vec<f32>,
        dout: &Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        doc_start: Option<&[u32]>,
        window: Option<usize>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()> {
        self.time("attention bwd", || {
            let ds = doc_start;
            Cpu.attention_backward(
                dq, dk, dv, dk_heads, dv_heads, dout, q, k, v, out, lse, ds, window, b, t, nh, nkv, d,
            )
        })
    }
    fn moments(&self, kind: OptimKind, len: usize) -> Result<Moments> {
        Cpu.moments(kind, len)
    }
    fn adamw_update(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        moments: &mut Moments,
        config: &OptimConfig,
        lr: f32,
        t: u64,
    ) -> Result<()> {
        self.time("adamw", || Cpu.adamw_update(p, g, moments, config, lr, t))
    }
    fn adamw_update_all(&self, tensors: Vec<AdamWTensor<'_, Self>>, config: &OptimConfig, t: u64) -> Result<()> {
        self.time("adamw", || Cpu.adamw_update_all(tensors, config, t))
    }
    fn read_moments(&self, moments: &Moments) -> Result<Vec<Vec<u8>>> {
        Cpu.read_moments(moments)
    }
    fn write_moments(&self, moments: &mut Moments, parts: &[&[u8]]) -> Result<()> {
        Cpu.write_moments(moments, parts)
    }
    fn clip_grad_norm(&self, grads: &mut [&mut Vec<f32>], max_norm: f32) -> Result<f32> {
        self.time("clip_grad_norm", || Cpu.clip_grad_norm(grads, max_norm))
    }
}

fn main() -> Result<()> {
    // On a thread of the pool, as `loft` runs its commands.
    rayon::scope(|_| run())
}

fn run() -> Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (b, t, steps) =
        (args.first().copied().unwrap_or(4), args.get(1).copied().unwrap_or(256), args.get(2).copied().unwrap_or(3));
    let cfg = LlamaConfig::smollm2_135m();
    let model = Llama::new(cfg.clone(), loft::model::weights::LlamaWeights::random(&cfg, 1, None)?);
    let lora = LoraConfig { r: 16, lora_alpha: 32.0, ..Default::default() };
    let adapter = Adapter::new(lora, &model, 42)?;
    let be = Timed::default();
    let run = Runner::new(&be, &model)?;
    let mut arena = TrainArena::new(&be, &cfg, &adapter.config, b, t, false)?;
    let mut trained = DeviceAdapter::upload(&be, &adapter)?;
    let mut grads = Gradients::zeros(&be, &adapter)?;
    let mut list = Vec::new();
    adapter.for_each_tensor(|name, t| list.push((name, t.len())));
    let mut optimizer = Optimizer::on(&be, OptimConfig { kind: OptimKind::AdamW, ..Default::default() }, &list)?;
    let mut rng = loft::rng::SplitMix64::new(7);
    let rows: Vec<Vec<u32>> =
        (0..b).map(|_| (0..t).map(|_| (rng.next_u64() % cfg.vocab_size as u64) as u32).collect()).collect();
    let labels: Vec<Vec<i32>> = rows.iter().map(|r| r.iter().map(|&i| i as i32).collect()).collect();
    let batch = Batch::from_rows(&rows, &labels);
    let scale = 1.0 / batch.n_targets() as f32;

    let mut wall = 0.0;
    // As `loft bench train` runs the steps: the pool kept awake (COLD_POOL=1: not, to compare).
    let hot = if std::env::var_os("COLD_POOL").is_some() { None } else { be.hot_pool() };
    for step in 0..=steps {
        if step == 1 {
            be.totals.borrow_mut().clear();
        }
        let start = Instant::now();
        grads.zero(&be)?;
        forward_backward(&run, &trained, &mut grads, &mut arena, &batch, scale, step as u64)?;
        let mut gs: Vec<&mut Vec<f32>> = grads.tensors_mut().into_iter().map(|(_, g)| g).collect();
        be.clip_grad_norm(&mut gs, 1.0)?;
        let mut params: Vec<&mut Vec<f32>> = trained.tensors_mut().into_iter().map(|(_, t)| t).collect();
        let gs: Vec<&Vec<f32>> = grads.tensors().into_iter().map(|(_, g)| g).collect();
        optimizer.update(&be, &mut params, &gs, 1e-4, 1e-5)?;
        if step >= 1 {
            wall += start.elapsed().as_secs_f64();
        }
    }
    drop(hot);
    let per_step = wall / steps as f64;
    let totals = be.totals.borrow();
    let mut ops: Vec<_> = totals.iter().map(|(k, &(s, n))| (*k, s / steps as f64, n / steps)).collect();
    ops.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!(
        "LoRA step {b}×{t}, SmolLM2-135M shape, r16 × 7 modules, AdamW, {} threads: {per_step:.3} s/step, {:.1} tok/s",
        rayon::current_num_threads(),
        (b * t) as f64 / per_step
    );
    let timed: f64 = ops.iter().map(|o| o.1).sum();
    for (op, s, calls) in &ops {
        println!("{op:<26} {:>7.1} ms {:>5.1} %  ({calls} calls)", s * 1e3, 100.0 * s / per_step);
    }
    println!(
        "{:<26} {:>7.1} ms {:>5.1} %",
        "(between calls)",
        (per_step - timed) * 1e3,
        100.0 * (per_step - timed) / per_step
    );
    Ok(())
}
