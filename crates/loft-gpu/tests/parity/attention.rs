//! Training attention, forward (out, lse) and backward (dq, dk, dv), causal with grouped-query heads, with and
//! without document boundaries and a sliding window.

use loft::engine::attention as cpu;
use loft_gpu::engine::attention;

use crate::common::{assert_parity, ctx, rand, read, up};

struct Case {
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    d: usize,
    docs: Option<Vec<u32>>,
    window: Option<usize>,
}

#[test]
fn attention_forward_and_backward_equal_the_cpu() {
    let c = ctx();
    // SmolLM2's heads (9 over 3, D = 64) over 70 positions (more than one 64-key chunk), with and without packed
    // documents (sequence 0: two documents, sequence 1: three), and an odd shape.
    let packed: Vec<u32> = (0..140u32)
        .map(|i| match (i / 70, i % 70) {
            (0, j) if j < 30 => 0,
            (0, _) => 30,
            (_, j) if j < 5 => 0,
            (_, j) if j < 50 => 5,
            _ => 50,
        })
        .collect();
    // Windows: narrower than a document, wider than some (sequence 1's 45-token one), and 3 keys. (A window of one
    // key gives dq = dk = 0 up to rounding, which a relative comparison cannot judge.)
    let cases = [
        Case { b: 2, t: 70, nh: 9, nkv: 3, d: 64, docs: None, window: None },
        Case { b: 2, t: 70, nh: 9, nkv: 3, d: 64, docs: Some(packed.clone()), window: None },
        Case { b: 2, t: 70, nh: 9, nkv: 3, d: 64, docs: None, window: Some(20) },
        Case { b: 2, t: 70, nh: 9, nkv: 3, d: 64, docs: Some(packed), window: Some(33) },
        Case {
            b: 1,
            t: 13,
            nh: 4,
            nkv: 2,
            d: 22,
            docs: Some(vec![0, 0, 0, 3, 3, 3, 3, 3, 8, 8, 8, 8, 12]),
            window: None,
        },
        Case { b: 1, t: 13, nh: 4, nkv: 2, d: 22, docs: None, window: Some(3) },
    ];
    for Case { b, t, nh, nkv, d, docs, window } in cases {
        let label = format!("B={b} T={t} NH={nh} NKV={nkv} D={d} docs={} window={window:?}", docs.is_some());
        let (nq, nk) = (b * t * nh * d, b * t * nkv * d);
        let (q, k, v) = (rand(nq, 1), rand(nk, 2), rand(nk, 3));
        let (mut out, mut lse) = (vec![0.0; nq], vec![0.0; b * nh * t]);
        cpu::attention_forward(&mut out, &mut lse, &q, &k, &v, docs.as_deref(), window, b, t, nh, nkv, d);
        let (gq, gk, gv) = (up(&q), up(&k), up(&v));
        let (mut gout, mut glse) = (c.zeros(nq).unwrap(), c.zeros(b * nh * t).unwrap());
        attention::attention_forward(c, &mut gout, &mut glse, &gq, &gk, &gv, docs.as_deref(), window, b, t, nh, nkv, d)
            .unwrap();
        assert_parity(&format!("attention forward out {label}"), &read(&gout), &out);
        assert_parity(&format!("attention forward lse {label}"), &read(&glse), &lse);

        let dout = rand(nq, 4);
        let (mut dq, mut dk, mut dv) = (vec![0.0; nq], vec![0.0; nk], vec![0.0; nk]);
        let (mut dkh, mut dvh) = (vec![0.0; nq], vec![0.0; nq]);
        cpu::attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &mut dkh,
            &mut dvh,
            &dout,
            &q,
            &k,
            &v,
            &out,
            &lse,
            docs.as_deref(),
            window,
            b,
            t,
            nh,
            nkv,
            d,
        );
        let (mut gdq, mut gdk, mut gdv) = (c.zeros(nq).unwrap(), c.zeros(nk).unwrap(), c.zeros(nk).unwrap());
        let (mut gdkh, mut gdvh) = (c.zeros(nq).unwrap(), c.zeros(nq).unwrap());
        attention::attention_backward(
            c,
            &mut gdq,
            &mut gdk,
            &mut gdv,
            &mut gdkh,
            &mut gdvh,
            &up(&dout),
            &gq,
            &gk,
            &gv,
            &gout,
            &glse,
            docs.as_deref(),
            window,
            b,
            t,
            nh,
            nkv,
            d,
        )
        .unwrap();
        assert_parity(&format!("attention backward dq {label}"), &read(&gdq), &dq);
        assert_parity(&format!("attention backward dk {label}"), &read(&gdk), &dk);
        assert_parity(&format!("attention backward dv {label}"), &read(&gdv), &dv);
    }
}

/// The inference forward against a KV cache: one decoded token, a prefill, and new tokens past 64 cached ones,
/// without and with sliding windows (narrower than the cache, and wider than the positions: no window).
#[test]
fn cached_attention_equals_the_cpu() {
    let c = ctx();
    let shapes = [(1, 37, 9, 3, 64), (5, 0, 9, 3, 64), (3, 70, 9, 3, 64), (2, 11, 4, 2, 22)];
    let windows = [None, Some(1), Some(4), Some(50), Some(1000)];
    for ((t, p0, nh, nkv, d), window) in shapes.into_iter().flat_map(|s| windows.map(|w| (s, w))) {
        let cache = p0 + t + 4; // rows past p0 + T are never read
        let (q, k, v) = (rand(t * nh * d, 1), rand(cache * nkv * d, 2), rand(cache * nkv * d, 3));
        let mut want = vec![0.0; t * nh * d];
        cpu::attention_forward_cached(&mut want, &q, &k, &v, t, p0, window, nh, nkv, d);
        let mut out = c.zeros(t * nh * d).unwrap();
        let (q, k, v) = (up(&q), up(&k), up(&v));
        attention::attention_forward_cached(c, &mut out, &q, &k, &v, t, p0, window, nh, nkv, d).unwrap();
        let label = format!("attention cached T={t} p0={p0} NH={nh} NKV={nkv} D={d} window={window:?}");
        assert_parity(&label, &read(&out), &want);
    }
}
