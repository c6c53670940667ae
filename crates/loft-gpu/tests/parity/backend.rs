//! The training kernel pairs of `loft::engine::Backend`, driven through the trait on both backends by one generic
//! function, at SmolLM2-135M's shapes (C = 576, F = 1536, 9 heads over 3, D = 64) and at an odd shape.

use gguf::GgmlType;
use loft::engine::{rope::Rope, Backend, Cpu, FrozenMatrix, LoraDropout, LoraWeights, Vocab};

use crate::common::{assert_parity, gpu, rand};

/// One layer's worth of shapes: B sequences of T tokens (N = B·T rows), hidden C, MLP width F, heads NH over NKV
/// of D, and a vocabulary of V (the embedding table and the head).
struct Shape {
    b: usize,
    t: usize,
    c: usize,
    f: usize,
    nh: usize,
    nkv: usize,
    d: usize,
    v: usize,
    /// The frozen [F, C] projection's and [V, C] head's storage.
    dtype: GgmlType,
    /// Document boundaries for the attention (packed sequences), or none.
    docs: bool,
}

/// A random frozen [rows, cols] matrix in `dtype`, values in [-scale, scale).
fn frozen(rows: usize, cols: usize, dtype: GgmlType, seed: u64, scale: f32) -> FrozenMatrix {
    let w: Vec<f32> = rand(rows * cols, seed).iter().map(|w| w * scale).collect();
    match dtype {
        GgmlType::F32 => FrozenMatrix::from_f32(rows, cols, w),
        dt => {
            let blocks = gguf::quantize(dt, &w, cols).expect("quantize the test weight");
            FrozenMatrix::from_quantized(rows, cols, dt, blocks).expect("a quantized test weight")
        }
    }
}

/// Every training method of the trait once, on backend `be`; each output back on the host with its label.
fn train_kernels<B: Backend>(be: &B, s: &Shape) -> loft::Result<Vec<(String, Vec<f32>)>> {
    let (n, c, f) = (s.b * s.t, s.c, s.f);
    let mut outs = Vec::new();
    let mut keep = |label: &str, buf: &B::Buf, len: usize| -> loft::Result<()> {
        outs.push((label.to_string(), be.read(buf, 0, len)?));
        Ok(())
    };

    // linear_backward_input over a frozen [F, C] weight, overwritten then accumulated.
    let fm = frozen(f, c, s.dtype, 11, 1.0);
    let m = be.matrix("blk.0.ffn_up.weight", &fm)?;
    let dy = be.upload(&rand(n * f, 12))?;
    let mut dx = be.zeros(n * c)?;
    be.linear_backward_input(&mut dx, &dy, &m, n, false)?;
    keep("linear_backward_input", &dx, n * c)?;
    be.linear_backward_input(&mut dx, &dy, &m, n, true)?;
    keep("linear_backward_input (accumulate)", &dx, n * c)?;

    // A rank-8 LoRA adapter on that [F, C] weight, without and with dropout: forward, then backward into dA and dB
    // that already hold values; the adapter makes the round trip to the device and back unchanged.
    let r = 8;
    let mut lw = LoraWeights::zeros(r, c, f, 16.0, false);
    lw.a = rand(r * c, 30);
    lw.b = rand(f * r, 31);
    let lora = be.lora(&lw)?;
    let back = be.lora_weights(&lora)?;
    assert!(
        back.a == lw.a && back.b == lw.b && back.r == r && back.scale == lw.scale,
        "{}: LoRA round trip",
        be.describe()
    );
    let x = be.upload(&rand(n * c, 32))?;
    let dy = be.upload(&rand(n * f, 33))?;
    for (name, dropout) in [("", None), (" (dropout 0.1)", Some(LoraDropout { p: 0.1, seed: 77 }))] {
        let (mut y, mut xa, mut xd) = (be.upload(&rand(n * f, 34))?, be.zeros(n * r)?, be.zeros(n * c)?);
        be.lora_forward(&mut y, &mut xa, &mut xd, &x, &m, &lora, dropout, n, true)?;
        keep(&format!("lora_forward y{name}"), &y, n * f)?;
        keep(&format!("lora_forward xa{name}"), &xa, n * r)?;
        let (mut dx, mut da, mut db) = (be.zeros(n * c)?, be.upload(&rand(r * c, 35))?, be.upload(&rand(f * r, 36))?);
        let mut dxa = be.zeros(n * r)?;
        be.lora_backward(&mut dx, &mut da, &mut db, &mut dxa, &mut xd, &dy, &x, &xa, &m, &lora, dropout, n, false)?;
        keep(&format!("lora_backward dx{name}"), &dx, n * c)?;
        keep(&format!("lora_backward dA{name}"), &da, r * c)?;
        keep(&format!("lora_backward dB{name}"), &db, f * r)?;
    }

    // rmsnorm: training forward, then backward into a dx and dw that already hold values.
    let x = be.upload(&rand(n * c, 13))?;
    let wv: Vec<f32> = rand(c, 14).iter().map(|v| 1.0 + 0.5 * v).collect();
    let wn = be.vector(&wv)?;
    let (mut y, mut rstd) = (be.zeros(n * c)?, be.zeros(n)?);
    be.rmsnorm_forward_train(&mut y, &mut rstd, &x, &wn, n, c, 1e-5)?;
    keep("rmsnorm_forward_train y", &y, n * c)?;
    keep("rmsnorm_forward_train rstd", &rstd, n)?;
    let dy = be.upload(&rand(n * c, 15))?;
    let (mut dx, mut dw) = (be.upload(&rand(n * c, 16))?, be.upload(&rand(c, 17))?);
    be.rmsnorm_backward(&mut dx, Some(&mut dw), &dy, &x, &wn, &rstd, n, c)?;
    keep("rmsnorm_backward dx", &dx, n * c)?;
    keep("rmsnorm_backward dw", &dw, c)?;
    be.rmsnorm_backward(&mut dx, None, &dy, &x, &wn, &rstd, n, c)?;
    keep("rmsnorm_backward dx (no dw)", &dx, n * c)?;

    // rope_backward on q-shaped gradients, with the CPU's tables at large positions.
    let (cos, sin) = Rope::new(s.d, 100_000.0, None).tables(1000..1000 + n);
    let (cos, sin) = (be.upload(&cos)?, be.upload(&sin)?);
    let qd = s.nh * s.d;
    let mut dq = be.upload(&rand(n * qd, 18))?;
    be.rope_backward(&mut dq, n, s.nh, s.d, &cos, &sin)?;
    keep("rope_backward", &dq, n * qd)?;

    // swiglu_backward over [N, F].
    let (gate, upv, dout) = (be.upload(&rand(n * f, 19))?, be.upload(&rand(n * f, 20))?, be.upload(&rand(n * f, 21))?);
    let (mut dgate, mut dup) = (be.zeros(n * f)?, be.zeros(n * f)?);
    be.swiglu_backward(&mut dgate, &mut dup, &dout, &gate, &upv)?;
    keep("swiglu_backward dgate", &dgate, n * f)?;
    keep("swiglu_backward dup", &dup, n * f)?;

    // Gemma's GeGLU (tanh GELU) forward and backward, with gates out to ±8 where tanh saturates; scale and add.
    let wide = |seed: u64| rand(n * f, seed).iter().map(|v| 8.0 * v).collect::<Vec<f32>>();
    let gate = be.upload(&wide(24))?;
    let mut act = be.zeros(n * f)?;
    be.geglu_forward(&mut act, &gate, &upv)?;
    keep("geglu_forward", &act, n * f)?;
    be.geglu_backward(&mut dgate, &mut dup, &dout, &gate, &upv)?;
    keep("geglu_backward dgate", &dgate, n * f)?;
    keep("geglu_backward dup", &dup, n * f)?;
    be.scale(&mut act, 25.3)?;
    keep("scale", &act, n * f)?;
    be.add(&mut act, &upv)?;
    keep("add", &act, n * f)?;

    // embedding_backward: scatter-add with repeated ids into a table that holds values.
    let ids: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % s.v.min(n.max(2) / 2 + 1)) as u32).collect();
    let mut dtable = be.upload(&rand(s.v * c, 22))?;
    be.embedding_backward(&mut dtable, &be.upload(&rand(n * c, 23))?, &ids, c)?;
    keep("embedding_backward", &dtable, s.v * c)?;

    // attention, training forward and backward, optionally with two documents per sequence.
    let (b, t, nh, nkv, d) = (s.b, s.t, s.nh, s.nkv, s.d);
    let kvd = nkv * d;
    let docs: Vec<u32> = (0..b * t).map(|i| if i % t < t / 2 { 0 } else { (t / 2) as u32 }).collect();
    let doc_start = s.docs.then_some(docs.as_slice());
    let (q, k, v) = (be.upload(&rand(n * qd, 24))?, be.upload(&rand(n * kvd, 25))?, be.upload(&rand(n * kvd, 26))?);
    let (mut out, mut lse) = (be.zeros(n * qd)?, be.zeros(b * nh * t)?);
    be.attention_forward(&mut out, &mut lse, &q, &k, &v, doc_start, None, b, t, nh, nkv, d)?;
    keep("attention_forward out", &out, n * qd)?;
    keep("attention_forward lse", &lse, b * nh * t)?;
    let dout = be.upload(&rand(n * qd, 27))?;
    let (mut dq, mut dk, mut dv) = (be.zeros(n * qd)?, be.zeros(n * kvd)?, be.zeros(n * kvd)?);
    let (mut dkh, mut dvh) = (be.zeros(n * qd)?, be.zeros(n * qd)?);
    be.attention_backward(
        &mut dq, &mut dk, &mut dv, &mut dkh, &mut dvh, &dout, &q, &k, &v, &out, &lse, doc_start, None, b, t, nh, nkv, d,
    )?;
    keep("attention_backward dq", &dq, n * qd)?;
    keep("attention_backward dk", &dk, n * kvd)?;
    keep("attention_backward dv", &dv, n * kvd)?;

    // The chunked cross-entropy head, 3 rows a chunk, two targets ignored: loss only, then loss and gradients over
    // the frozen head and over a trained one (dhead accumulated into values it holds). Heads of values in ±0.2
    // give logits of a few units, as parity/head.rs has them.
    let mut losses = Vec::new();
    let head_fm = frozen(s.v, c, s.dtype, 40, 0.2);
    let head = be.matrix("output.weight", &head_fm)?;
    let trained = be.upload(&rand(s.v * c, 41).iter().map(|w| w * 0.2).collect::<Vec<_>>())?;
    let targets: Vec<i32> = (0..n).map(|i| if i % 4 == 1 { -100 } else { ((i * 37 + 5) % s.v) as i32 }).collect();
    let h = be.upload(&rand(n * c, 42))?;
    let mut scratch = be.cross_entropy_scratch(3, c, s.v)?;
    let (loss, rows) = be.cross_entropy_forward(&mut scratch, &h, Vocab::Frozen(&head), &targets, c)?;
    losses.push(("cross_entropy_forward (loss, rows)".to_string(), vec![loss as f32, rows as f32]));
    let mut dh = be.upload(&rand(n * c, 43))?;
    let (loss, rows) =
        be.cross_entropy_forward_backward(&mut dh, None, &mut scratch, &h, Vocab::Frozen(&head), &targets, c, 0.125)?;
    losses.push(("cross_entropy_forward_backward (loss, rows)".to_string(), vec![loss as f32, rows as f32]));
    keep("cross_entropy_forward_backward dh", &dh, n * c)?;
    let mut dhead = be.upload(&rand(s.v * c, 44))?;
    let (loss, rows) = be.cross_entropy_forward_backward(
        &mut dh,
        Some(&mut dhead),
        &mut scratch,
        &h,
        Vocab::Trained(&trained),
        &targets,
        c,
        0.125,
    )?;
    losses.push(("cross_entropy_forward_backward trained (loss, rows)".to_string(), vec![loss as f32, rows as f32]));
    keep("cross_entropy_forward_backward trained dh", &dh, n * c)?;
    keep("cross_entropy_forward_backward trained dhead", &dhead, s.v * c)?;
    outs.extend(losses);
    Ok(outs)
}

#[test]
fn training_kernel_pairs_agree_through_the_backend_trait() {
    let shapes = [
        Shape { b: 2, t: 5, c: 576, f: 1536, nh: 9, nkv: 3, d: 64, v: 1000, dtype: GgmlType::Q8_0, docs: true },
        Shape { b: 1, t: 7, c: 576, f: 1536, nh: 9, nkv: 3, d: 64, v: 1000, dtype: GgmlType::F32, docs: false },
        Shape { b: 3, t: 3, c: 45, f: 101, nh: 6, nkv: 2, d: 22, v: 37, dtype: GgmlType::F32, docs: true },
    ];
    for s in &shapes {
        let cpu = train_kernels(&Cpu, s).unwrap_or_else(|e| panic!("cpu: {e}"));
        let wgpu = train_kernels(gpu(), s).unwrap_or_else(|e| panic!("wgpu: {e}"));
        assert_eq!(cpu.len(), wgpu.len());
        for ((label, want), (_, got)) in cpu.iter().zip(&wgpu) {
            let what = format!("trait {label} [B{} T{} C{} F{} {}/{}x{}]", s.b, s.t, s.c, s.f, s.nh, s.nkv, s.d);
            assert_parity(&what, got, want);
        }
    }
}

/// Bad shapes come back as errors from the wgpu backend, never a panic.
#[test]
fn training_kernels_on_the_gpu_refuse_bad_shapes() {
    let be = gpu();
    let buf = |n: usize| be.zeros(n).unwrap();
    let (mut a, mut b2) = (buf(10), buf(3));
    let w = be.vector(&[1.0; 5]).unwrap();
    assert!(be.rmsnorm_forward_train(&mut a, &mut b2, &buf(10), &w, 2, 5, 1e-5).is_err());
    assert!(be.rmsnorm_backward(&mut a, Some(&mut buf(4)), &buf(10), &buf(10), &w, &buf(2), 2, 5).is_err());
    assert!(be.rope_backward(&mut a, 2, 1, 4, &buf(4), &buf(4)).is_err());
    assert!(be.swiglu_backward(&mut a, &mut buf(9), &buf(10), &buf(10), &buf(10)).is_err());
    assert!(be.geglu_backward(&mut a, &mut buf(9), &buf(10), &buf(10), &buf(10)).is_err());
    assert!(be.geglu_forward(&mut a, &buf(9), &buf(10)).is_err());
    assert!(be.add(&mut a, &buf(9)).is_err());
    assert!(be.embedding_backward(&mut buf(10), &buf(10), &[0, 2], 5).is_err());
    let fm = FrozenMatrix::from_f32(3, 4, vec![0.0; 12]);
    let m = be.matrix("w", &fm).unwrap();
    assert!(be.linear_backward_input(&mut buf(7), &buf(6), &m, 2, false).is_err());
    let lora = be.lora(&LoraWeights::zeros(2, 4, 3, 4.0, false)).unwrap();
    let wrong = be.lora(&LoraWeights::zeros(2, 3, 4, 4.0, false)).unwrap();
    let (mut y, mut xa, mut xd) = (buf(6), buf(4), buf(8));
    assert!(be.lora_forward(&mut y, &mut xa, &mut xd, &buf(8), &m, &wrong, None, 2, false).is_err());
    assert!(be.lora_forward(&mut y, &mut xa, &mut xd, &buf(7), &m, &lora, None, 2, false).is_err());
    let dp = Some(LoraDropout { p: 0.1, seed: 1 });
    assert!(be.lora_forward(&mut y, &mut xa, &mut buf(7), &buf(8), &m, &lora, dp, 2, false).is_err());
    let (mut dx, mut da, mut db, mut dxa) = (buf(8), buf(8), buf(5), buf(4));
    assert!(be
        .lora_backward(&mut dx, &mut da, &mut db, &mut dxa, &mut xd, &y, &buf(8), &xa, &m, &lora, None, 2, false)
        .is_err());
    let mut scratch = be.cross_entropy_scratch(2, 4, 3).unwrap();
    assert!(be.cross_entropy_scratch(0, 4, 3).is_err());
    let hh = buf(8);
    assert!(be.cross_entropy_forward(&mut scratch, &hh, Vocab::Frozen(&m), &[0, 3], 4).is_err());
    assert!(be.cross_entropy_forward(&mut scratch, &hh, Vocab::Frozen(&m), &[0, 1, 2], 4).is_err());
    assert!(be.cross_entropy_forward(&mut scratch, &hh, Vocab::Trained(&buf(20)), &[0, 1], 4).is_err());
    assert!(be.cross_entropy_forward(&mut scratch, &hh, Vocab::Frozen(&m), &[0, -100], 4).is_ok());
    let mut dh = buf(8);
    let r = be.cross_entropy_forward_backward(
        &mut dh,
        Some(&mut buf(11)),
        &mut scratch,
        &hh,
        Vocab::Frozen(&m),
        &[0, 1],
        4,
        1.0,
    );
    assert!(r.is_err());
    let mut bad = LoraWeights::zeros(2, 4, 3, 4.0, false);
    bad.a.pop();
    assert!(be.lora(&bad).is_err());
    let (mut out, mut lse) = (buf(2 * 4 * 8), buf(2 * 4));
    let q = buf(2 * 4 * 8);
    assert!(be.attention_forward(&mut out, &mut lse, &q, &buf(8), &buf(8), None, None, 1, 2, 3, 2, 8).is_err());
    assert!(be
        .attention_forward(&mut out, &mut lse, &q, &buf(16), &buf(16), Some(&[1, 0]), None, 1, 2, 4, 1, 8)
        .is_err());
    assert!(be.attention_forward(&mut out, &mut lse, &q, &buf(16), &buf(16), None, Some(0), 1, 2, 4, 1, 8).is_err());
    let kv = buf(2 * 8);
    let (mut dq, mut dk, mut dv, mut h1, mut h2) = (buf(64), buf(16), buf(16), buf(64), buf(63));
    let r = be.attention_backward(
        &mut dq, &mut dk, &mut dv, &mut h1, &mut h2, &q, &q, &kv, &kv, &q, &lse, None, None, 1, 2, 4, 1, 8,
    );
    assert!(r.is_err());
}
