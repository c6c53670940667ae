//! The batched LoRA path of layers that share an input (q/k/v_proj, gate/up_proj: `engine::lora`'s group kernels,
//! and the CPU's `Backend::lora_group_forward` / `lora_group_backward`) against the per-module path it replaced:
//! the kernels one group at a time (r 8 and 16, GQA widths, a group mixing batched, dropped-out and not adapted
//! layers), and a whole model's training losses and gradients through a backend that keeps the trait's per-module
//! default. Layers with dropout take `lora_forward` / `lora_backward` on both sides, so a group of them alone would
//! compare a path with itself: dropout is covered here only where it changes the order a group's dx accumulates in
//! (its kernels against finite differences: tests/engine_gradients.rs).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use common::adapter_with_nonzero_b as adapter;
use common::random_batch;
use common::tiny::{random_weights, write_gguf, TinyConfig};
use loft::data::Batch;
use loft::engine::cross_entropy::CrossEntropyScratch;
use loft::engine::lora::{lora_backward, lora_forward, LoraDropout, LoraWeights};
use loft::engine::matmul::{matmul_nn, matmul_nt, matmul_tn};
use loft::engine::optim::{Moments, OptimConfig, OptimKind};
use loft::engine::{Backend, Cpu, FrozenMatrix, GroupLinear, GroupLinearGrad, Vocab};
use loft::lora::{Adapter, DeviceAdapter, Gradients, LoraConfig, TargetModule};
use loft::model::{llama_from_gguf, Arch, Llama, Runner};
use loft::rng::SplitMix64;
use loft::train::forward_backward::{forward_backward, TrainArena};
use loft::Result;

const TOL: f64 = 1e-5;

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
}

/// ‖a − b‖ / ‖b‖ in f64.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    assert!(n > 0.0, "a zero reference proves nothing");
    (d / n).sqrt()
}

fn close(what: &str, a: &[f32], b: &[f32]) {
    let e = rel(a, b);
    assert!(e < TOL, "{what}: batched and per-module differ by {e:.2e} (relative)");
}

/// One layer of a group: its frozen weight, adapter (None: not adapted) and dropout.
struct Layer {
    w: FrozenMatrix,
    lora: Option<LoraWeights>,
    dropout: Option<LoraDropout>,
}

/// A group reading x [N, I], layers of output widths `outs` (GQA: k and v narrower than q), rank r; `adapted` and
/// `dropped` say which layers have an adapter and which a dropout.
fn group(i: usize, outs: &[usize], r: usize, adapted: &[bool], dropped: &[bool]) -> Vec<Layer> {
    (0..outs.len())
        .map(|k| {
            let o = outs[k];
            let lora = adapted[k].then(|| {
                let mut l = LoraWeights::zeros(r, i, o, 2.0 * r as f32, false);
                l.a = rand(r * i, 10 + k as u64);
                l.b = rand(o * r, 20 + k as u64);
                l
            });
            let dropout = dropped[k].then_some(LoraDropout { p: 0.1, seed: 30 + k as u64 });
            Layer { w: FrozenMatrix::from_f32(o, i, rand(o * i, 40 + k as u64)), lora, dropout }
        })
        .collect()
}

/// (y, xa, dx, dA, dB) of every layer, through the CPU backend's group calls (batched) or one layer at a time as
/// the model called them before (per-module: without dropout, the products `engine::lora` ran per layer).
type Results = (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<f32>, Vec<Vec<f32>>, Vec<Vec<f32>>);

fn run(layers: &[Layer], x: &Vec<f32>, n: usize, batched: bool) -> Results {
    let i = x.len() / n;
    let r = |l: &Layer| l.lora.as_ref().map_or(0, |l| l.r);
    let mut ys: Vec<Vec<f32>> = layers.iter().map(|l| vec![7.0; n * l.w.rows]).collect();
    let mut xas: Vec<Vec<f32>> = layers.iter().map(|l| vec![7.0; n * r(l)]).collect();
    let mut xd = vec![0.0; n * i];
    let dys: Vec<Vec<f32>> = layers.iter().enumerate().map(|(k, l)| rand(n * l.w.rows, 50 + k as u64)).collect();
    let mut das: Vec<Vec<f32>> = layers.iter().map(|l| vec![0.5; r(l) * i]).collect();
    let mut dbs: Vec<Vec<f32>> = layers.iter().map(|l| vec![-0.5; r(l) * l.w.rows]).collect();
    let mut dx = vec![3.0; n * i];
    let mut dxa = vec![0.0; n * layers.iter().map(r).max().unwrap()];
    let ws: Vec<&FrozenMatrix> = layers.iter().map(|l| &l.w).collect();
    if batched {
        let mut mods: Vec<GroupLinear<'_, '_, Cpu>> = (layers.iter().zip(&ws))
            .zip(ys.iter_mut().zip(xas.iter_mut()))
            .map(|((l, w), (y, xa))| GroupLinear { w, lora: l.lora.as_ref(), dropout: l.dropout, y, xa })
            .collect();
        Cpu.lora_group_forward(&mut mods, &mut xd, x, n).unwrap();
        let mut mods: Vec<GroupLinearGrad<'_, '_, Cpu>> = (layers.iter().zip(&ws))
            .zip(dys.iter().zip(&xas))
            .zip(das.iter_mut().zip(dbs.iter_mut()))
            .map(|(((l, w), (dy, xa)), (da, db))| GroupLinearGrad {
                w,
                lora: l.lora.as_ref().map(|lora| (lora, da, db)),
                dropout: l.dropout,
                dy,
                xa,
            })
            .collect();
        Cpu.lora_group_backward(&mut dx, &mut dxa, &mut xd, &mut mods, x, n).unwrap();
    } else {
        for (l, (y, xa)) in layers.iter().zip(ys.iter_mut().zip(xas.iter_mut())) {
            match (&l.lora, l.dropout) {
                // The products engine::lora ran per layer before the group kernels.
                (Some(lora), None) => {
                    let (o, r) = (lora.out_features, lora.r);
                    l.w.forward(y, x, n, false);
                    matmul_nt(xa, x, &lora.a, n, i, r, 1.0, false);
                    matmul_nt(y, xa, &lora.b, n, r, o, lora.scale, true);
                }
                (Some(lora), dropout) => lora_forward(y, xa, &mut xd, x, &l.w, lora, dropout, n, false),
                (None, _) => l.w.forward(y, x, n, false),
            }
        }
        for (k, l) in layers.iter().enumerate() {
            let (dy, xa) = (&dys[k], &xas[k]);
            let (da, db) = (&mut das[k], &mut dbs[k]);
            match (&l.lora, l.dropout) {
                (Some(lora), None) => {
                    let (o, r) = (lora.out_features, lora.r);
                    let dxa = &mut dxa[..n * r];
                    matmul_tn(db, dy, xa, n, o, r, lora.scale, true);
                    matmul_nn(dxa, dy, &lora.b, n, o, r, lora.scale, false);
                    l.w.backward_input(&mut dx, dy, n, k > 0);
                    matmul_tn(da, dxa, x, n, r, i, 1.0, true);
                    matmul_nn(&mut dx, dxa, &lora.a, n, r, i, 1.0, true);
                }
                (Some(lora), dropout) => {
                    let dxa = &mut dxa[..n * lora.r];
                    lora_backward(&mut dx, da, db, dxa, &mut xd, dy, x, xa, &l.w, lora, dropout, n, k > 0)
                }
                (None, _) => l.w.backward_input(&mut dx, dy, n, k > 0),
            }
        }
    }
    (ys, xas, dx, das, dbs)
}

#[test]
fn a_batched_group_equals_its_layers_one_by_one() {
    let (n, i) = (37, 48);
    let x = rand(n * i, 1);
    let all = [true; 3];
    let none = [false; 3];
    for r in [8, 16] {
        for (outs, adapted, dropped) in [
            (&[64, 16, 16][..], &all[..], &none[..]), // q/k/v with GQA
            (&[80, 80][..], &all[..2], &none[..2]),   // gate/up
            (&[64][..], &all[..1], &none[..1]),       // a layer alone (o_proj, down_proj)
            (&[1100, 16][..], &all[..2], &none[..2]), // dB in blocks of output rows, the last partial
            (&[64, 16, 16][..], &[true, false, true][..], &[false, false, true][..]), // mixed
        ] {
            let layers = group(i, outs, r, adapted, dropped);
            let tag = format!("r{r} outs {outs:?} adapted {adapted:?} dropout {dropped:?}");
            let (ys, xas, dx, das, dbs) = run(&layers, &x, n, true);
            let (ys0, xas0, dx0, das0, dbs0) = run(&layers, &x, n, false);
            close(&format!("{tag}: dx"), &dx, &dx0);
            for k in 0..layers.len() {
                close(&format!("{tag}: y[{k}]"), &ys[k], &ys0[k]);
                if adapted[k] {
                    close(&format!("{tag}: xa[{k}]"), &xas[k], &xas0[k]);
                    close(&format!("{tag}: dA[{k}]"), &das[k], &das0[k]);
                    close(&format!("{tag}: dB[{k}]"), &dbs[k], &dbs0[k]);
                }
            }
        }
    }
}

/// The same over a quantized base (Q8_0), whose forward adds each adapter's term to the frozen product's tiles of
/// output columns (FrozenMatrix::forward_then): widths of several tiles, the last partial, and of less than one.
#[test]
fn a_batched_group_over_a_quantized_base_equals_its_layers_one_by_one() {
    let (n, i) = (37, 64);
    let x = rand(n * i, 1);
    for (outs, adapted) in [(&[150, 40, 40][..], &[true; 3][..]), (&[150, 40][..], &[false, true][..])] {
        let mut layers = group(i, outs, 16, adapted, &vec![false; outs.len()]);
        for l in layers.iter_mut() {
            let (o, w) = (l.w.rows, l.w.to_f32().into_owned());
            let q = gguf::quantize(gguf::GgmlType::Q8_0, &w, i).unwrap();
            l.w = FrozenMatrix::from_quantized(o, i, gguf::GgmlType::Q8_0, q).unwrap();
        }
        let tag = format!("Q8_0 base, outs {outs:?} adapted {adapted:?}");
        let (ys, xas, dx, das, dbs) = run(&layers, &x, n, true);
        let (ys0, xas0, dx0, das0, dbs0) = run(&layers, &x, n, false);
        close(&format!("{tag}: dx"), &dx, &dx0);
        for k in 0..layers.len() {
            close(&format!("{tag}: y[{k}]"), &ys[k], &ys0[k]);
            if adapted[k] {
                close(&format!("{tag}: xa[{k}]"), &xas[k], &xas0[k]);
                close(&format!("{tag}: dA[{k}]"), &das[k], &das0[k]);
                close(&format!("{tag}: dB[{k}]"), &dbs[k], &dbs0[k]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A whole model

/// The CPU with the trait's default group calls: each layer of a group through `Cpu`'s `lora_forward` /
/// `lora_backward` (the group kernels on a group of one) or the frozen product alone, in turn; what differs from the
/// CPU's group calls is the batching across a group's layers.
struct PerModule;

impl Backend for PerModule {
    type Buf = Vec<f32>;
    type Matrix<'w> = &'w FrozenMatrix;
    type Vector<'w> = &'w [f32];
    type CrossEntropyScratch = CrossEntropyScratch;
    type Lora = LoraWeights;
    type Moments = Moments;

    fn describe(&self) -> String {
        Cpu.describe()
    }
    fn allocated_bytes(&self) -> Option<u64> {
        Cpu.allocated_bytes()
    }
    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Cpu.zeros(len)
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        Cpu.len(buf)
    }
    fn resize(&self, buf: &mut Vec<f32>, len: usize) -> Result<()> {
        Cpu.resize(buf, len)
    }
    fn write(&self, buf: &mut Vec<f32>, data: &[f32]) -> Result<()> {
        Cpu.write(buf, data)
    }
    fn fill_zero(&self, buf: &mut Vec<f32>) -> Result<()> {
        Cpu.fill_zero(buf)
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
        Cpu.copy(src, src_at, dst, dst_at, len)
    }
    fn matrix<'w>(&'w self, _name: &str, m: &'w FrozenMatrix) -> Result<&'w FrozenMatrix> {
        Ok(m)
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
    fn linear_forward(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&FrozenMatrix,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        Cpu.linear_forward(y, x, w, n, accumulate)
    }
    fn embedding_forward(
        &self,
        out: &mut Vec<f32>,
        ids: &[u32],
        table: Vocab<'_, &FrozenMatrix, Vec<f32>>,
        c: usize,
    ) -> Result<()> {
        Cpu.embedding_forward(out, ids, table, c)
    }
    fn bias_forward(&self, y: &mut Vec<f32>, b: &&[f32], n: usize) -> Result<()> {
        Cpu.bias_forward(y, b, n)
    }
    fn rmsnorm_forward(&self, y: &mut Vec<f32>, x: &Vec<f32>, w: &&[f32], c: usize, eps: f32) -> Result<()> {
        Cpu.rmsnorm_forward(y, x, w, c, eps)
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
        Cpu.rope_forward(x, t, h, d, cos, sin)
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
        Cpu.swiglu_forward(out, gate, up)
    }
    fn geglu_forward(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>) -> Result<()> {
        Cpu.geglu_forward(out, gate, up)
    }
    fn scale(&self, x: &mut Vec<f32>, s: f32) -> Result<()> {
        Cpu.scale(x, s)
    }
    fn add(&self, y: &mut Vec<f32>, x: &Vec<f32>) -> Result<()> {
        Cpu.add(y, x)
    }
    fn decode_linear_forward(
        &self,
        y: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&FrozenMatrix,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        Cpu.decode_linear_forward(y, x, w, n, accumulate)
    }
    fn decode_lora_forward(
        &self,
        y: &mut Vec<f32>,
        xa: &mut Vec<f32>,
        _xd: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &&FrozenMatrix,
        lora: &LoraWeights,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        Cpu.decode_lora_forward(y, xa, _xd, x, w, lora, n, accumulate)
    }
    fn linear_backward_input(
        &self,
        dx: &mut Vec<f32>,
        dy: &Vec<f32>,
        w: &&FrozenMatrix,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        Cpu.linear_backward_input(dx, dy, w, n, accumulate)
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
        Cpu.rmsnorm_forward_train(y, rstd, x, w, n, c, eps)
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
        Cpu.rmsnorm_backward(dx, dw, dy, x, w, rstd, n, c)
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
        Cpu.rope_backward(dx, t, h, d, cos, sin)
    }
    fn swiglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
    ) -> Result<()> {
        Cpu.swiglu_backward(dgate, dup, dout, gate, up)
    }
    fn geglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
    ) -> Result<()> {
        Cpu.geglu_backward(dgate, dup, dout, gate, up)
    }
    fn embedding_backward(&self, dtable: &mut Vec<f32>, dout: &Vec<f32>, ids: &[u32], c: usize) -> Result<()> {
        Cpu.embedding_backward(dtable, dout, ids, c)
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
        Cpu.lora_forward(y, xa, xd, x, w, lora, dropout, n, accumulate)
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
        Cpu.lora_backward(dx, da, db, dxa, xd, dy, x, xa, w, lora, dropout, n, accumulate)
    }
    fn cross_entropy_forward(
        &self,
        scratch: &mut CrossEntropyScratch,
        h: &Vec<f32>,
        head: Vocab<'_, &FrozenMatrix, Vec<f32>>,
        targets: &[i32],
        c: usize,
    ) -> Result<(f64, usize)> {
        Cpu.cross_entropy_forward(scratch, h, head, targets, c)
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
        Cpu.cross_entropy_forward_backward(dh, dhead, scratch, h, head, targets, c, grad_scale)
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
        Cpu.attention_forward(out, lse, q, k, v, doc_start, window, b, t, nh, nkv, d)
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
        Cpu.attention_backward(
            dq, dk, dv, dk_heads, dv_heads, dout, q, k, v, out, lse, doc_start, window, b, t, nh, nkv, d,
        )
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
        Cpu.adamw_update(p, g, moments, config, lr, t)
    }
    fn read_moments(&self, moments: &Moments) -> Result<Vec<Vec<u8>>> {
        Cpu.read_moments(moments)
    }
    fn write_moments(&self, moments: &mut Moments, parts: &[&[u8]]) -> Result<()> {
        Cpu.write_moments(moments, parts)
    }
    fn clip_grad_norm(&self, grads: &mut [&mut Vec<f32>], max_norm: f32) -> Result<f32> {
        Cpu.clip_grad_norm(grads, max_norm)
    }
}

fn tiny_model(arch: Arch) -> Llama {
    let cfg = TinyConfig { arch, ..TinyConfig::default() };
    let w = random_weights(&cfg, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &cfg, &w);
    llama_from_gguf(&gguf::GgufFile::open(&path).unwrap()).unwrap()
}

/// (loss sum, gradients) of one micro-batch on backend `be`.
fn step<B: Backend<Buf = Vec<f32>>>(be: &B, model: &Llama, a: &Adapter, batch: &Batch) -> (f64, Vec<Vec<f32>>) {
    let run = Runner::new(be, model).unwrap();
    let device = DeviceAdapter::upload(be, a).unwrap();
    let mut grads = Gradients::zeros(be, a).unwrap();
    let mut arena = TrainArena::new(be, &model.config, &a.config, batch.b, batch.t, false).unwrap();
    let (sum, _) = forward_backward(&run, &device, &mut grads, &mut arena, batch, 0.01, 17).unwrap();
    (sum, grads.tensors().into_iter().map(|(_, g)| g.clone()).collect())
}

#[test]
fn training_losses_and_gradients_equal_the_per_module_path() {
    use TargetModule::{DownProj, QProj, UpProj, VProj};
    let batch = random_batch(48, 2, 11, 3);
    for arch in [Arch::Llama, Arch::Qwen3] {
        let model = tiny_model(arch);
        assert!(model.config.num_key_value_heads < model.config.num_attention_heads, "the tiny model has GQA");
        for r in [8, 16] {
            // Without dropout: with it every layer takes lora_forward / lora_backward on both sides, in the same order.
            let dropout = 0.0;
            for targets in [TargetModule::ALL.to_vec(), vec![QProj, VProj, UpProj, DownProj]] {
                let config = LoraConfig {
                    r,
                    lora_alpha: 2.0 * r as f32,
                    lora_dropout: dropout,
                    target_modules: targets.clone(),
                    ..Default::default()
                };
                let a = adapter(&model, config);
                let (loss, grads) = step(&Cpu, &model, &a, &batch);
                let (loss0, grads0) = step(&PerModule, &model, &a, &batch);
                let tag = format!("{arch:?} r{r} dropout {dropout} targets {targets:?}");
                assert!(((loss - loss0) / loss0).abs() < TOL, "{tag}: loss {loss} vs {loss0}");
                assert_eq!(grads.len(), grads0.len());
                for (k, (g, g0)) in grads.iter().zip(&grads0).enumerate() {
                    close(&format!("{tag}: gradient {k}"), g, g0);
                }
            }
        }
    }
}
