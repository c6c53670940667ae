//! Every backward kernel of the engine against central finite differences of its own forward, and the training
//! attention against the inference one.
//!
//! Each check builds a scalar L = Σ g ⊙ y with a fixed random g, so ∂L/∂y = g is what the backward receives, and
//! compares the analytic gradient with (L(x + h) − L(x − h)) / 2h, norm-wise: ‖analytic − numeric‖ / ‖numeric‖.
//! The forward runs in f32 (L summed in f64); h = 1e-2 on inputs of order one keeps both truncation and rounding
//! error near 1e-4 (measured: at most 1.2e-4), under the tolerance of 1e-3.

use loft::engine::attention::{attention_backward, attention_forward, attention_forward_cached, KEY_TILE, TILE};
use loft::engine::cross_entropy::{
    cross_entropy_forward, cross_entropy_forward_backward, CrossEntropyScratch, IGNORE_INDEX,
};
use loft::engine::embedding::{embedding_backward, embedding_forward};
use loft::engine::lora::{
    lora_backward, lora_forward, lora_group_backward, lora_group_forward, lora_scale, LoraGrad, LoraOut,
};
use loft::engine::rmsnorm::{inv_rms, rmsnorm_backward, rmsnorm_forward, rmsnorm_forward_train};
use loft::engine::swiglu::{swiglu_backward, swiglu_forward};
use loft::engine::{FrozenMatrix, LoraDropout, LoraWeights, VocabMatrix};
use loft::rng::SplitMix64;

const STEP: f32 = 1e-2;
const TOL: f64 = 1e-3;

/// Uniform in [−scale, scale).
fn rand(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32 * scale).collect()
}

/// Σ g ⊙ y in f64.
fn dot_loss(g: &[f32], y: &[f32]) -> f64 {
    assert_eq!(g.len(), y.len());
    g.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Up to `k` coordinates of an n-vector: all of them when n ≤ k, else a fixed random sample.
fn coords(n: usize, k: usize, seed: u64) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    let mut r = SplitMix64::new(seed);
    (0..k).map(|_| (r.next_u64() % n as u64) as usize).collect()
}

/// Central differences of `loss` at `x` over `at`, compared norm-wise with `analytic`; panics above TOL.
fn check(name: &str, x: &[f32], analytic: &[f32], at: &[usize], mut loss: impl FnMut(&[f32]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let mut xp = x.to_vec();
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for &i in at {
        xp[i] = x[i] + STEP;
        let up = loss(&xp);
        xp[i] = x[i] - STEP;
        let down = loss(&xp);
        xp[i] = x[i];
        // The step actually taken, as rounded in f32.
        let h = ((x[i] + STEP) as f64 - (x[i] - STEP) as f64) / 2.0;
        let numeric = (up - down) / (2.0 * h);
        diff += (analytic[i] as f64 - numeric).powi(2);
        norm += numeric.powi(2);
    }
    let rel = (diff / norm).sqrt();
    eprintln!("{name}: relative error {rel:.2e} over {} coordinates (|numeric| = {:.3e})", at.len(), norm.sqrt());
    assert!(norm > 1e-8, "{name}: numeric gradient is zero, the check proves nothing");
    assert!(rel < TOL, "{name}: analytic and numeric gradients differ by {rel:.3e} (relative)");
}

// ---------------------------------------------------------------------------------------------------------------
// RMSNorm

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let (n, c, eps) = (5, 24, 1e-5);
    let x = rand(n * c, 1.0, 1);
    let w: Vec<f32> = rand(c, 0.3, 2).iter().map(|v| 1.0 + v).collect();
    let g = rand(n * c, 1.0, 3);
    let forward = |x: &[f32], w: &[f32]| {
        let (mut y, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
        rmsnorm_forward_train(&mut y, &mut rstd, x, w, n, c, eps);
        (y, rstd)
    };
    let (y, rstd) = forward(&x, &w);
    // The training forward agrees with the inference one and keeps 1/rms.
    let mut y_inf = vec![0.0; n * c];
    rmsnorm_forward(&mut y_inf, &x, &w, c, eps);
    assert_eq!(y, y_inf);
    for (row, &r) in x.chunks(c).zip(&rstd) {
        assert_eq!(r, inv_rms(row, eps));
    }
    // dx and dw accumulate: start from known values and subtract them.
    let (mut dx, mut dw) = (vec![0.25; n * c], vec![0.5; c]);
    rmsnorm_backward(&mut dx, Some(&mut dw), &g, &x, &w, &rstd, n, c);
    dx.iter_mut().for_each(|v| *v -= 0.25);
    dw.iter_mut().for_each(|v| *v -= 0.5);
    check("rmsnorm dx", &x, &dx, &coords(n * c, 1000, 0), |x| dot_loss(&g, &forward(x, &w).0));
    check("rmsnorm dw", &w, &dw, &coords(c, 1000, 0), |w| dot_loss(&g, &forward(&x, w).0));
    // Without dw, dx is the same.
    let mut dx2 = vec![0.25; n * c];
    rmsnorm_backward(&mut dx2, None, &g, &x, &w, &rstd, n, c);
    dx2.iter_mut().for_each(|v| *v -= 0.25);
    assert_eq!(dx, dx2);
}

// ---------------------------------------------------------------------------------------------------------------
// SwiGLU

#[test]
fn swiglu_backward_matches_finite_differences() {
    let len = 7 * 13;
    let gate = rand(len, 3.0, 4);
    let up = rand(len, 1.5, 5);
    let g = rand(len, 1.0, 6);
    let forward = |gate: &[f32], up: &[f32]| {
        let mut out = vec![0.0; len];
        swiglu_forward(&mut out, gate, up);
        out
    };
    let out = forward(&gate, &up);
    for i in 0..len {
        let want = gate[i] as f64 / (1.0 + (-gate[i] as f64).exp()) * up[i] as f64;
        assert!((out[i] as f64 - want).abs() < 1e-6, "silu(gate)·up at {i}: {} vs {want}", out[i]);
    }
    let (mut dgate, mut dup) = (vec![9.0; len], vec![9.0; len]);
    swiglu_backward(&mut dgate, &mut dup, &g, &gate, &up);
    let all: Vec<usize> = (0..len).collect();
    check("swiglu dgate", &gate, &dgate, &all, |x| dot_loss(&g, &forward(x, &up)));
    check("swiglu dup", &up, &dup, &all, |x| dot_loss(&g, &forward(&gate, x)));
}

// ---------------------------------------------------------------------------------------------------------------
// Embedding

#[test]
fn embedding_backward_matches_finite_differences() {
    let (v, c) = (11, 6);
    let table = rand(v * c, 1.0, 7);
    let ids = [3u32, 0, 10, 3, 7, 3, 0];
    let n = ids.len();
    let g = rand(n * c, 1.0, 8);
    let forward = |table: &[f32]| {
        let mut out = vec![0.0; n * c];
        embedding_forward(&mut out, &ids, VocabMatrix::Trained(table), c);
        out
    };
    let out = forward(&table);
    let frozen = FrozenMatrix::from_f32(v, c, table.clone());
    let mut out_frozen = vec![0.0; n * c];
    embedding_forward(&mut out_frozen, &ids, VocabMatrix::Frozen(&frozen), c);
    assert_eq!(out, out_frozen);
    assert_eq!(&out[3 * c..4 * c], &table[3 * c..4 * c]);
    let mut dtable = vec![0.0; v * c];
    embedding_backward(&mut dtable, &g, &ids, c);
    check("embedding dtable", &table, &dtable, &coords(v * c, 1000, 0), |t| dot_loss(&g, &forward(t)));
}

// ---------------------------------------------------------------------------------------------------------------
// LoRA linear

/// One adapted layer with every buffer the kernels need.
struct LoraCase {
    n: usize,
    x: Vec<f32>,
    w: FrozenMatrix,
    lora: LoraWeights,
    dropout: Option<LoraDropout>,
}

impl LoraCase {
    fn new(dropout: Option<LoraDropout>, use_rslora: bool) -> Self {
        let (n, i, o, r) = (6, 20, 12, 4);
        let mut lora = LoraWeights::zeros(r, i, o, 8.0, use_rslora);
        lora.init(11);
        // B is zero after init; a random B makes every gradient path nonzero.
        lora.b = rand(o * r, 0.5, 12);
        let w = FrozenMatrix::from_f32(o, i, rand(o * i, 0.3, 13));
        LoraCase { n, x: rand(n * i, 1.0, 14), w, lora, dropout }
    }

    /// y[N, O] = 0.5 (the residual it accumulates into) + the layer.
    fn forward(&self, x: &[f32], lora: &LoraWeights) -> (Vec<f32>, Vec<f32>) {
        let n = self.n;
        let mut y = vec![0.5; n * lora.out_features];
        let mut xa = vec![0.0; n * lora.r];
        let mut xd = vec![0.0; if self.dropout.is_some() { n * lora.in_features } else { 0 }];
        lora_forward(&mut y, &mut xa, &mut xd, x, &self.w, lora, self.dropout, n, true);
        (y, xa)
    }

    fn check_gradients(&self, tag: &str) {
        let (n, i, o, r) = (self.n, self.lora.in_features, self.lora.out_features, self.lora.r);
        let g = rand(n * o, 1.0, 15);
        let (_, xa) = self.forward(&self.x, &self.lora);
        let (mut dx, mut da, mut db) = (vec![0.25; n * i], vec![0.5; r * i], vec![-0.5; o * r]);
        let (mut dxa, mut xd) = (vec![0.0; n * r], vec![0.0; n * i]);
        lora_backward(
            &mut dx,
            &mut da,
            &mut db,
            &mut dxa,
            &mut xd,
            &g,
            &self.x,
            &xa,
            &self.w,
            &self.lora,
            self.dropout,
            n,
            true,
        );
        dx.iter_mut().for_each(|v| *v -= 0.25);
        da.iter_mut().for_each(|v| *v -= 0.5);
        db.iter_mut().for_each(|v| *v += 0.5);
        let all = |len| coords(len, 1000, 0);
        check(&format!("lora {tag} dx"), &self.x, &dx, &all(n * i), |x| dot_loss(&g, &self.forward(x, &self.lora).0));
        check(&format!("lora {tag} dA"), &self.lora.a, &da, &all(r * i), |a| {
            let l = LoraWeights { a: a.to_vec(), ..self.lora.clone() };
            dot_loss(&g, &self.forward(&self.x, &l).0)
        });
        check(&format!("lora {tag} dB"), &self.lora.b, &db, &all(o * r), |b| {
            let l = LoraWeights { b: b.to_vec(), ..self.lora.clone() };
            dot_loss(&g, &self.forward(&self.x, &l).0)
        });
    }
}

/// x·Wᵀ + scale · (xd·Aᵀ)·Bᵀ in f64, with xd the (already dropped-out) adapter input.
fn lora_reference(c: &LoraCase, xd: &[f32]) -> Vec<f64> {
    let (n, i, o, r) = (c.n, c.lora.in_features, c.lora.out_features, c.lora.r);
    let w = c.w.to_f32();
    let mut y = vec![0.0f64; n * o];
    for row in 0..n {
        let xa: Vec<f64> =
            (0..r).map(|k| (0..i).map(|j| xd[row * i + j] as f64 * c.lora.a[k * i + j] as f64).sum()).collect();
        for out in 0..o {
            let base: f64 = (0..i).map(|j| c.x[row * i + j] as f64 * w[out * i + j] as f64).sum();
            let delta: f64 = (0..r).map(|k| xa[k] * c.lora.b[out * r + k] as f64).sum();
            y[row * o + out] = base + c.lora.scale as f64 * delta;
        }
    }
    y
}

#[test]
fn lora_backward_matches_finite_differences_without_dropout() {
    let case = LoraCase::new(None, false);
    assert_eq!(case.lora.scale, 2.0);
    let (y, _) = case.forward(&case.x, &case.lora);
    for (a, b) in y.iter().zip(lora_reference(&case, &case.x)) {
        assert!((*a as f64 - 0.5 - b).abs() < 1e-5, "lora forward: {a} vs {b} + 0.5");
    }
    case.check_gradients("p=0");
}

#[test]
fn lora_backward_matches_finite_differences_with_dropout_and_rslora() {
    let dropout = LoraDropout { p: 0.3, seed: 99 };
    let case = LoraCase::new(Some(dropout), true);
    assert_eq!(case.lora.scale, lora_scale(8.0, 4, true));
    assert_eq!(case.lora.scale, 4.0);
    // The mask is fixed by the seed: about p of the inputs dropped, the rest scaled by 1/(1 − p).
    let mut xd = vec![0.0; case.x.len()];
    dropout.apply(&mut xd, &case.x, case.lora.in_features);
    let mut again = vec![0.0; case.x.len()];
    dropout.apply(&mut again, &case.x, case.lora.in_features);
    assert_eq!(xd, again, "the mask must be reproducible from its seed");
    let dropped = xd.iter().filter(|&&v| v == 0.0).count() as f64 / xd.len() as f64;
    assert!((0.15..0.45).contains(&dropped), "dropped fraction {dropped}");
    for (&d, &x) in xd.iter().zip(&case.x) {
        assert!(d == 0.0 || (d - x / 0.7).abs() < 1e-6);
    }
    let (y, _) = case.forward(&case.x, &case.lora);
    for (a, b) in y.iter().zip(lora_reference(&case, &xd)) {
        assert!((*a as f64 - 0.5 - b).abs() < 1e-5, "lora forward with dropout: {a} vs {b} + 0.5");
    }
    case.check_gradients("p=0.3 rslora");
}

/// Three adapted layers reading one input, as q/k/v_proj with GQA (k and v narrower than q).
struct LoraGroupCase {
    n: usize,
    x: Vec<f32>,
    ws: Vec<FrozenMatrix>,
    loras: Vec<LoraWeights>,
}

impl LoraGroupCase {
    fn new() -> Self {
        let (n, i, r) = (6, 20, 4);
        let (mut ws, mut loras) = (Vec::new(), Vec::new());
        for (k, o) in [12, 4, 4].into_iter().enumerate() {
            let mut lora = LoraWeights::zeros(r, i, o, 8.0, false);
            lora.init(21 + k as u64);
            lora.b = rand(o * r, 0.5, 31 + k as u64);
            loras.push(lora);
            ws.push(FrozenMatrix::from_f32(o, i, rand(o * i, 0.3, 41 + k as u64)));
        }
        LoraGroupCase { n, x: rand(n * i, 1.0, 51), ws, loras }
    }

    /// Each layer's (y [N, O], xa [N, R]).
    fn forward(&self, x: &[f32], loras: &[LoraWeights]) -> Vec<(Vec<f32>, Vec<f32>)> {
        let n = self.n;
        let mut outs: Vec<(Vec<f32>, Vec<f32>)> =
            loras.iter().map(|l| (vec![9.0; n * l.out_features], vec![9.0; n * l.r])).collect();
        let mut group: Vec<LoraOut<'_>> = outs
            .iter_mut()
            .zip(self.ws.iter().zip(loras))
            .map(|((y, xa), (w, lora))| LoraOut { y, xa, w, lora })
            .collect();
        lora_group_forward(x, &mut group, n);
        outs
    }

    fn loss(&self, gs: &[Vec<f32>], x: &[f32], loras: &[LoraWeights]) -> f64 {
        gs.iter().zip(self.forward(x, loras)).map(|(g, (y, _))| dot_loss(g, &y)).sum()
    }
}

#[test]
fn lora_group_backward_matches_finite_differences() {
    let case = LoraGroupCase::new();
    let (n, i) = (case.n, case.x.len() / case.n);
    let gs: Vec<Vec<f32>> =
        case.loras.iter().enumerate().map(|(k, l)| rand(n * l.out_features, 1.0, 61 + k as u64)).collect();
    let outs = case.forward(&case.x, &case.loras);
    // Gradients accumulate into what the buffers held: dx with `accumulate`, dA and dB always.
    let mut dx = vec![0.25; n * i];
    let mut da: Vec<Vec<f32>> = case.loras.iter().map(|l| vec![0.5; l.a.len()]).collect();
    let mut db: Vec<Vec<f32>> = case.loras.iter().map(|l| vec![-0.5; l.b.len()]).collect();
    let mut grads: Vec<LoraGrad<'_>> = (gs.iter().zip(&outs).zip(case.ws.iter().zip(&case.loras)))
        .zip(da.iter_mut().zip(db.iter_mut()))
        .map(|(((dy, (_, xa)), (w, lora)), (da, db))| LoraGrad { dy, xa, w, lora, da, db })
        .collect();
    lora_group_backward(&mut dx, &case.x, &mut grads, n, true);
    dx.iter_mut().for_each(|v| *v -= 0.25);
    da.iter_mut().flatten().for_each(|v| *v -= 0.5);
    db.iter_mut().flatten().for_each(|v| *v += 0.5);
    let all = |len| coords(len, 1000, 0);
    check("lora group dx", &case.x, &dx, &all(n * i), |x| case.loss(&gs, x, &case.loras));
    for k in 0..case.loras.len() {
        check(&format!("lora group dA[{k}]"), &case.loras[k].a, &da[k], &all(da[k].len()), |a| {
            let mut loras = case.loras.clone();
            loras[k].a = a.to_vec();
            case.loss(&gs, &case.x, &loras)
        });
        check(&format!("lora group dB[{k}]"), &case.loras[k].b, &db[k], &all(db[k].len()), |b| {
            let mut loras = case.loras.clone();
            loras[k].b = b.to_vec();
            case.loss(&gs, &case.x, &loras)
        });
    }
}

#[test]
fn lora_init_is_peft_kaiming_uniform_with_zero_b() {
    let (r, i, o) = (8, 576, 192);
    let mut l = LoraWeights::zeros(r, i, o, 16.0, false);
    l.b.fill(1.0);
    l.init(5);
    assert_eq!(l.scale, 2.0);
    assert!(l.b.iter().all(|&v| v == 0.0));
    let bound = 1.0 / (i as f32).sqrt();
    assert!(l.a.iter().all(|&v| v.abs() <= bound));
    let max = l.a.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    assert!(max > 0.99 * bound, "A should fill U(−{bound}, {bound}); max |A| = {max}");
    let mean = l.a.iter().map(|&v| v as f64).sum::<f64>() / l.a.len() as f64;
    assert!(mean.abs() < 0.02 * bound as f64);
    let mut other = l.clone();
    other.init(5);
    assert_eq!(l.a, other.a, "same seed, same A");
}

// ---------------------------------------------------------------------------------------------------------------
// Head + cross-entropy

#[test]
fn cross_entropy_head_matches_finite_differences() {
    let (c, v, chunk) = (8, 23, 4);
    let targets = [5, IGNORE_INDEX, 0, 22, IGNORE_INDEX, IGNORE_INDEX, 7, 7, 13, IGNORE_INDEX, 1];
    let n = targets.len();
    let h = rand(n * c, 1.0, 21);
    let w = rand(v * c, 1.0, 22);
    let mut scratch = CrossEntropyScratch::new(chunk, c, v);
    let n_targets = targets.iter().filter(|&&t| t >= 0).count();
    let grad_scale = 1.0 / (n_targets as f32 * 2.0); // as if a second micro-batch held as many targets

    // The loss against a plain f64 log-softmax over full logits.
    let mut want = 0.0f64;
    for (row, &tg) in h.chunks(c).zip(&targets) {
        if tg < 0 {
            continue;
        }
        let logits: Vec<f64> =
            w.chunks(c).map(|wr| wr.iter().zip(row).map(|(&a, &b)| a as f64 * b as f64).sum()).collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        want += lse - logits[tg as usize];
    }
    let mut loss_of =
        |h: &[f32], w: &[f32]| cross_entropy_forward(&mut scratch, h, VocabMatrix::Trained(w), &targets, c);
    let (loss, count) = loss_of(&h, &w);
    assert_eq!(count, n_targets);
    assert!((loss - want).abs() < 1e-4 * want, "loss {loss} vs {want}");

    let mut scratch = CrossEntropyScratch::new(chunk, c, v);
    let (mut dh, mut dw) = (vec![7.0; n * c], vec![0.5; v * c]);
    let (loss2, count2) = cross_entropy_forward_backward(
        &mut dh,
        Some(&mut dw),
        &mut scratch,
        &h,
        VocabMatrix::Trained(&w),
        &targets,
        c,
        grad_scale,
    );
    assert_eq!((loss2, count2), (loss, count));
    dw.iter_mut().for_each(|x| *x -= 0.5);
    for (row, &tg) in dh.chunks(c).zip(&targets) {
        if tg < 0 {
            assert!(row.iter().all(|&x| x == 0.0), "ignored rows get no gradient");
        }
    }
    let scaled = |(l, _): (f64, usize)| l * grad_scale as f64;
    check("cross-entropy dh", &h, &dh, &coords(n * c, 1000, 0), |h| scaled(loss_of(h, &w)));
    check("cross-entropy dW (tied/trained head)", &w, &dw, &coords(v * c, 1000, 0), |w| scaled(loss_of(&h, w)));

    // A frozen head gives the same loss and dh, and no dW.
    let frozen = FrozenMatrix::from_f32(v, c, w.clone());
    let mut dh_frozen = vec![0.0; n * c];
    let (loss3, _) = cross_entropy_forward_backward(
        &mut dh_frozen,
        None,
        &mut scratch,
        &h,
        VocabMatrix::Frozen(&frozen),
        &targets,
        c,
        grad_scale,
    );
    assert!((loss3 - loss).abs() < 1e-9 * loss);
    let worst = dh.iter().zip(&dh_frozen).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-7, "frozen head dh differs by {worst}");
}

// ---------------------------------------------------------------------------------------------------------------
// Attention

struct AttentionCase {
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    d: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    doc_start: Option<Vec<u32>>,
    /// Sliding window W: query i sees keys i − W < j ≤ i.
    window: Option<usize>,
}

impl AttentionCase {
    fn new(b: usize, t: usize, docs: Option<&[&[usize]]>) -> Self {
        Self::with_heads(b, t, docs, 4, 2)
    }

    fn with_heads(b: usize, t: usize, docs: Option<&[&[usize]]>, nh: usize, nkv: usize) -> Self {
        let d = 8;
        let doc_start = docs.map(|docs| {
            let mut ds = Vec::with_capacity(b * t);
            for starts in docs {
                for i in 0..t {
                    ds.push(*starts.iter().rev().find(|&&s| s <= i).expect("a document starts at 0") as u32);
                }
            }
            ds
        });
        // Scores of order one: q and k entries of order one, D = 8, scale 1/√8.
        AttentionCase {
            b,
            t,
            nh,
            nkv,
            d,
            q: rand(b * t * nh * d, 1.0, 31),
            k: rand(b * t * nkv * d, 1.0, 32),
            v: rand(b * t * nkv * d, 1.0, 33),
            doc_start,
            window: None,
        }
    }

    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (b, t, nh, nkv, d) = (self.b, self.t, self.nh, self.nkv, self.d);
        let (mut out, mut lse) = (vec![f32::NAN; b * t * nh * d], vec![f32::NAN; b * nh * t]);
        attention_forward(&mut out, &mut lse, q, k, v, self.doc_start.as_deref(), self.window, b, t, nh, nkv, d);
        (out, lse)
    }

    fn check_gradients(&self, tag: &str) {
        let (b, t, nh, nkv, d) = (self.b, self.t, self.nh, self.nkv, self.d);
        let g = rand(b * t * nh * d, 1.0, 34);
        let (out, lse) = self.forward(&self.q, &self.k, &self.v);
        let (mut dq, mut dk, mut dv) = (vec![9.0; self.q.len()], vec![9.0; self.k.len()], vec![9.0; self.v.len()]);
        let (mut dk_heads, mut dv_heads) = (vec![9.0; self.q.len()], vec![9.0; self.q.len()]);
        attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &mut dk_heads,
            &mut dv_heads,
            &g,
            &self.q,
            &self.k,
            &self.v,
            &out,
            &lse,
            self.doc_start.as_deref(),
            self.window,
            b,
            t,
            nh,
            nkv,
            d,
        );
        let loss = |q: &[f32], k: &[f32], v: &[f32]| dot_loss(&g, &self.forward(q, k, v).0);
        check(&format!("attention {tag} dq"), &self.q, &dq, &coords(dq.len(), 300, 1), |q| loss(q, &self.k, &self.v));
        check(&format!("attention {tag} dk"), &self.k, &dk, &coords(dk.len(), 300, 2), |k| loss(&self.q, k, &self.v));
        check(&format!("attention {tag} dv"), &self.v, &dv, &coords(dv.len(), 300, 3), |v| loss(&self.q, &self.k, v));
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    // T = 150 is three query tiles (64, 64, 22) within one key block.
    const { assert!(150 % TILE != 0 && 150 > 2 * TILE) };
    AttentionCase::new(2, 150, None).check_gradients("causal");
}

#[test]
fn attention_backward_matches_finite_differences_over_several_key_blocks() {
    // T = 300: the last query tiles see two key blocks (256 and 44 keys), so the online softmax rescales.
    const { assert!(300 % TILE != 0 && 300 > KEY_TILE && 300 % KEY_TILE != 0) };
    AttentionCase::new(1, 300, None).check_gradients("causal, two key blocks");
}

#[test]
fn attention_backward_matches_finite_differences_with_documents() {
    // Boundaries inside tiles and on a tile edge (64); the second sequence has different documents.
    let docs: [&[usize]; 2] = [&[0, 40, 64, 100], &[0, 70, 149]];
    AttentionCase::new(2, 150, Some(&docs)).check_gradients("packed");
}

#[test]
fn attention_backward_matches_finite_differences_with_a_window() {
    // A window inside a tile (5), one tile wide (64), and one that is wider than some documents but not others.
    for window in [5, TILE, 50] {
        let mut case = AttentionCase::new(2, 150, None);
        case.window = Some(window);
        case.check_gradients(&format!("window {window}"));
    }
    let docs: [&[usize]; 2] = [&[0, 40, 64, 100], &[0, 70, 149]];
    let mut case = AttentionCase::new(2, 150, Some(&docs));
    case.window = Some(50);
    case.check_gradients("packed, window 50");
}

/// The largest |a − b| / (1 + |b|).
fn worst(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f32::max)
}

#[test]
fn attention_forward_equals_the_inference_attention() {
    let case = AttentionCase::new(2, 150, None);
    let (b, t, nh, nkv, d) = (case.b, case.t, case.nh, case.nkv, case.d);
    let (qd, kvd) = (nh * d, nkv * d);
    let (out, lse) = case.forward(&case.q, &case.k, &case.v);
    for bi in 0..b {
        let mut want = vec![0.0; t * qd];
        let (q, k, v) =
            (&case.q[bi * t * qd..][..t * qd], &case.k[bi * t * kvd..][..t * kvd], &case.v[bi * t * kvd..][..t * kvd]);
        attention_forward_cached(&mut want, q, k, v, t, 0, None, nh, nkv, d);
        let err = worst(&out[bi * t * qd..][..t * qd], &want);
        assert!(err < 1e-5, "sequence {bi}: flash and cached attention differ by {err}");
    }
    // lse against a direct f64 log-sum-exp of a few rows.
    for (bi, h, i) in [(0, 0, 0), (0, 3, 149), (1, 1, 63), (1, 2, 64)] {
        let g = h / (nh / nkv);
        let qrow = &case.q[(bi * t + i) * qd + h * d..][..d];
        let scores: Vec<f64> = (0..=i)
            .map(|j| {
                let krow = &case.k[(bi * t + j) * kvd + g * d..][..d];
                qrow.iter().zip(krow).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / (d as f64).sqrt()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let want = max + scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
        let got = lse[(bi * nh + h) * t + i] as f64;
        assert!((got - want).abs() < 1e-5, "lse[{bi}, {h}, {i}] = {got}, want {want}");
    }
}

#[test]
fn packed_attention_equals_attention_on_each_document_alone() {
    let docs: [&[usize]; 2] = [&[0, 40, 64, 100], &[0, 70, 149]];
    let case = AttentionCase::new(2, 150, Some(&docs));
    let (t, nh, nkv, d) = (case.t, case.nh, case.nkv, case.d);
    let (qd, kvd) = (nh * d, nkv * d);
    let (out, _) = case.forward(&case.q, &case.k, &case.v);
    for (bi, starts) in docs.iter().enumerate() {
        for (si, &s) in starts.iter().enumerate() {
            let e = starts.get(si + 1).copied().unwrap_or(t);
            let len = e - s;
            let rows = |x: &[f32], w: usize| x[(bi * t + s) * w..(bi * t + e) * w].to_vec();
            let mut want = vec![0.0; len * qd];
            attention_forward_cached(
                &mut want,
                &rows(&case.q, qd),
                &rows(&case.k, kvd),
                &rows(&case.v, kvd),
                len,
                0,
                None,
                nh,
                nkv,
                d,
            );
            let err = worst(&out[(bi * t + s) * qd..(bi * t + e) * qd], &want);
            assert!(err < 1e-5, "sequence {bi}, document at {s}: differs by {err}");
        }
    }
}

/// Attention of every query row against an f64 softmax written from the rule itself: query i sees key j iff
/// doc_start ≤ j ≤ i and i − j < W. Returns (out, lse) as attention_forward lays them out.
fn windowed_reference(case: &AttentionCase) -> (Vec<f64>, Vec<f64>) {
    let (b, t, nh, nkv, d) = (case.b, case.t, case.nh, case.nkv, case.d);
    let (qd, kvd) = (nh * d, nkv * d);
    let (mut out, mut lse) = (vec![0.0f64; b * t * qd], vec![0.0f64; b * nh * t]);
    for bi in 0..b {
        for i in 0..t {
            let doc = case.doc_start.as_ref().map_or(0, |ds| ds[bi * t + i] as usize);
            let seen: Vec<usize> = (0..=i).filter(|&j| j >= doc && case.window.is_none_or(|w| i - j < w)).collect();
            for h in 0..nh {
                let g = h / (nh / nkv);
                let qrow = &case.q[(bi * t + i) * qd + h * d..][..d];
                let scores: Vec<f64> = seen
                    .iter()
                    .map(|&j| {
                        let krow = &case.k[(bi * t + j) * kvd + g * d..][..d];
                        qrow.iter().zip(krow).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                lse[(bi * nh + h) * t + i] = max + z.ln();
                for (&j, s) in seen.iter().zip(&scores) {
                    let p = (s - max).exp() / z;
                    let vrow = &case.v[(bi * t + j) * kvd + g * d..][..d];
                    for (o, &x) in out[(bi * t + i) * qd + h * d..][..d].iter_mut().zip(vrow) {
                        *o += p * x as f64;
                    }
                }
            }
        }
    }
    (out, lse)
}

fn worst_f64(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).abs() / (1.0 + y.abs())).fold(0.0, f64::max)
}

/// The backward of the attention written from the rule in f64, one query row and head at a time: with P the row's
/// softmax over the keys it sees, dV_j += P_j·dO, dS_j = P_j·(dO·V_j − Σ_j' P_j'·dO·V_j'), dQ += dS_j·K_j/√D and
/// dK_j += dS_j·Q/√D. Returns (dq, dk, dv) as attention_backward lays them out.
fn backward_reference(case: &AttentionCase, dout: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (b, t, nh, nkv, d) = (case.b, case.t, case.nh, case.nkv, case.d);
    let (qd, kvd, scale) = (nh * d, nkv * d, 1.0 / (d as f64).sqrt());
    let (mut dq, mut dk, mut dv) = (vec![0.0f64; b * t * qd], vec![0.0f64; b * t * kvd], vec![0.0f64; b * t * kvd]);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
    for bi in 0..b {
        for i in 0..t {
            let doc = case.doc_start.as_ref().map_or(0, |ds| ds[bi * t + i] as usize);
            let seen: Vec<usize> = (0..=i).filter(|&j| j >= doc && case.window.is_none_or(|w| i - j < w)).collect();
            for h in 0..nh {
                let g = h / (nh / nkv);
                let (qo, ko) = ((bi * t + i) * qd + h * d, |j: usize| (bi * t + j) * kvd + g * d);
                let (qrow, grow) = (&case.q[qo..][..d], &dout[qo..][..d]);
                let scores: Vec<f64> = seen.iter().map(|&j| dot(qrow, &case.k[ko(j)..][..d]) * scale).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                let p: Vec<f64> = scores.iter().map(|s| (s - max).exp() / z).collect();
                let dp: Vec<f64> = seen.iter().map(|&j| dot(grow, &case.v[ko(j)..][..d])).collect();
                let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for ((&j, &pj), &dpj) in seen.iter().zip(&p).zip(&dp) {
                    let ds = pj * (dpj - delta) * scale;
                    for c in 0..d {
                        dv[ko(j) + c] += pj * grow[c] as f64;
                        dq[qo + c] += ds * case.k[ko(j) + c] as f64;
                        dk[ko(j) + c] += ds * qrow[c] as f64;
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// The backward against the f64 rule for head layouts whose tasks split differently: 9 query heads on 3 key/value
/// heads with 4 sequences (one task per sequence and key/value head) and with one (each split in three, the shares
/// summed), multi-query (4 on 1), and one query head per key/value head; with documents, windows and T = 300.
#[test]
fn attention_backward_matches_the_rule_for_every_head_grouping() {
    let docs: [&[usize]; 4] = [&[0, 40, 64, 100], &[0, 70, 149], &[0], &[0, 1, 33, 97]];
    let cases = [
        (4, 150, 9, 3, Some(&docs[..]), None),
        (4, 150, 9, 3, None, Some(50)),
        (1, 300, 9, 3, None, None),
        (1, 150, 9, 3, Some(&docs[..1]), Some(TILE)),
        (1, 150, 4, 1, None, None),
        (2, 300, 4, 1, Some(&docs[..2]), Some(280)),
        (2, 150, 2, 2, Some(&docs[..2]), None),
    ];
    for (b, t, nh, nkv, docs, window) in cases {
        let mut case = AttentionCase::with_heads(b, t, docs, nh, nkv);
        case.window = window;
        let g = rand(case.q.len(), 1.0, 36);
        let (out, lse) = case.forward(&case.q, &case.k, &case.v);
        let (mut dq, mut dk, mut dv) = (vec![9.0; case.q.len()], vec![9.0; case.k.len()], vec![9.0; case.v.len()]);
        let (mut dkh, mut dvh) = (vec![9.0; case.q.len()], vec![9.0; case.q.len()]);
        let (q, k, v, ds) = (&case.q, &case.k, &case.v, case.doc_start.as_deref());
        #[rustfmt::skip]
        attention_backward(&mut dq, &mut dk, &mut dv, &mut dkh, &mut dvh, &g, q, k, v, &out, &lse, ds, window, b, t, nh, nkv, case.d);
        let (want_dq, want_dk, want_dv) = backward_reference(&case, &g);
        for (name, got, want) in [("dq", &dq, &want_dq), ("dk", &dk, &want_dk), ("dv", &dv, &want_dv)] {
            let err = worst_f64(got, want);
            let shape = format!("B {b}, T {t}, NH {nh}, NKV {nkv}, documents {}, window {window:?}", docs.is_some());
            assert!(err < 1e-5, "{shape}: {name} differs from the rule by {err}");
        }
    }
}

/// The training attention and the inference one (a prompt, then one query at a time against the growing cache)
/// with a window, on and off tile edges and with packed documents, against the f64 rule.
#[test]
fn windowed_attention_matches_the_rule_in_training_and_inference() {
    let docs: [&[usize]; 2] = [&[0, 40, 64, 100], &[0, 70, 149]];
    // T = 300 with a window of 280 spans two key blocks (KEY_TILE = 256); 1000 masks nothing.
    let cases = [(150, 1, None), (150, 4, None), (150, TILE, None), (150, 100, None), (150, 50, Some(&docs[..]))];
    for (t, window, docs) in cases.into_iter().chain([(300, 280, None), (300, 1000, None)]) {
        let mut case = AttentionCase::new(2, t, docs);
        case.window = Some(window);
        let (b, t, nh, nkv, d) = (case.b, case.t, case.nh, case.nkv, case.d);
        let (qd, kvd) = (nh * d, nkv * d);
        let (want, want_lse) = windowed_reference(&case);
        let (out, lse) = case.forward(&case.q, &case.k, &case.v);
        let err = worst_f64(&out, &want).max(worst_f64(&lse, &want_lse));
        assert!(err < 1e-5, "window {window}, documents {}: training attention differs by {err}", docs.is_some());
        if docs.is_some() {
            continue;
        }
        for bi in 0..b {
            let (q, k, v) = (
                &case.q[bi * t * qd..][..t * qd],
                &case.k[bi * t * kvd..][..t * kvd],
                &case.v[bi * t * kvd..][..t * kvd],
            );
            let prompt = 7;
            let mut got = vec![0.0; t * qd];
            attention_forward_cached(
                &mut got[..prompt * qd],
                &q[..prompt * qd],
                k,
                v,
                prompt,
                0,
                Some(window),
                nh,
                nkv,
                d,
            );
            for p in prompt..t {
                let row = &mut got[p * qd..(p + 1) * qd];
                attention_forward_cached(row, &q[p * qd..(p + 1) * qd], k, v, 1, p, Some(window), nh, nkv, d);
            }
            let err = worst_f64(&got, &want[bi * t * qd..][..t * qd]);
            assert!(err < 1e-5, "window {window}, sequence {bi}: cached attention differs by {err}");
        }
    }
}

/// A window at least as long as the sequence masks nothing: the same bits as no window, in every kernel.
#[test]
fn a_window_as_long_as_the_sequence_changes_no_bit() {
    let docs: [&[usize]; 2] = [&[0, 40, 64, 100], &[0, 70, 149]];
    for docs in [None, Some(&docs[..])] {
        let mut case = AttentionCase::new(2, 150, docs);
        let g = rand(case.q.len(), 1.0, 35);
        let run = |case: &AttentionCase| {
            let (b, t, nh, nkv, d) = (case.b, case.t, case.nh, case.nkv, case.d);
            let (out, lse) = case.forward(&case.q, &case.k, &case.v);
            let (mut dq, mut dk, mut dv) = (vec![0.0; case.q.len()], vec![0.0; case.k.len()], vec![0.0; case.v.len()]);
            let (mut dkh, mut dvh) = (vec![0.0; case.q.len()], vec![0.0; case.q.len()]);
            let (q, k, v, ds) = (&case.q, &case.k, &case.v, case.doc_start.as_deref());
            #[rustfmt::skip]
            attention_backward(&mut dq, &mut dk, &mut dv, &mut dkh, &mut dvh, &g, q, k, v, &out, &lse, ds, case.window, b, t, nh, nkv, d);
            // The last query of the first sequence against its cache.
            let qd = nh * d;
            let mut cached = vec![0.0; qd];
            attention_forward_cached(&mut cached, &q[(t - 1) * qd..t * qd], k, v, 1, t - 1, case.window, nh, nkv, d);
            (out, lse, dq, dk, dv, cached)
        };
        let none = run(&case);
        for window in [case.t, case.t + 1, 1 << 20] {
            case.window = Some(window);
            assert!(run(&case) == none, "window {window}: not the same bits as no window");
        }
    }
}
