//! RMSNorm, RoPE, SwiGLU and the embedding, forward and backward.

use gguf::GgmlType;
use loft::engine::{embedding as cpu_emb, rmsnorm as cpu_norm, rope as cpu_rope, swiglu as cpu_swiglu, FrozenMatrix};
use loft_gpu::engine::{embedding, rmsnorm, rope, swiglu, GpuFrozen, VocabMatrix};

use crate::common::{assert_parity, ctx, rand, read, up};

#[test]
fn rmsnorm_forward_and_backward_equal_the_cpu() {
    let c = ctx();
    for (n, ch) in [(6, 576), (7, 45), (3, 1000)] {
        let x = rand(n * ch, 1);
        let w: Vec<f32> = rand(ch, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
        let (mut y, mut rstd) = (vec![0.0; n * ch], vec![0.0; n]);
        cpu_norm::rmsnorm_forward_train(&mut y, &mut rstd, &x, &w, n, ch, 1e-5);
        let (mut gy, mut grstd, gx, gw) = (c.zeros(n * ch).unwrap(), c.zeros(n).unwrap(), up(&x), up(&w));
        rmsnorm::rmsnorm_forward_train(c, &mut gy, &mut grstd, &gx, &gw, n, ch, 1e-5).unwrap();
        assert_parity(&format!("rmsnorm forward y [{n},{ch}]"), &read(&gy), &y);
        assert_parity(&format!("rmsnorm forward rstd [{n},{ch}]"), &read(&grstd), &rstd);
        let mut y_inference = vec![0.0; n * ch];
        cpu_norm::rmsnorm_forward(&mut y_inference, &x, &w, ch, 1e-5);
        let mut gy_inference = c.zeros(n * ch).unwrap();
        rmsnorm::rmsnorm_forward(c, &mut gy_inference, &gx, &gw, ch, 1e-5).unwrap();
        assert_parity(&format!("rmsnorm forward (inference) [{n},{ch}]"), &read(&gy_inference), &y_inference);

        let dy = rand(n * ch, 3);
        let dx0 = rand(n * ch, 4);
        let dw0 = rand(ch, 5);
        let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
        cpu_norm::rmsnorm_backward(&mut dx, Some(&mut dw), &dy, &x, &w, &rstd, n, ch);
        let (mut gdx, mut gdw) = (up(&dx0), up(&dw0));
        rmsnorm::rmsnorm_backward(c, &mut gdx, Some(&mut gdw), &up(&dy), &gx, &gw, &grstd, n, ch).unwrap();
        assert_parity(&format!("rmsnorm backward dx [{n},{ch}]"), &read(&gdx), &dx);
        assert_parity(&format!("rmsnorm backward dw [{n},{ch}]"), &read(&gdw), &dw);
    }
}

/// The CPU's own cos/sin tables, at positions past 1000 (large angles), for 9 and 3 heads of 64 and an odd D.
#[test]
fn rope_forward_and_backward_equal_the_cpu() {
    let c = ctx();
    for (t, h, d) in [(5, 9, 64), (5, 3, 64), (7, 2, 22)] {
        let r = cpu_rope::Rope::new(d, 100_000.0, None);
        let (cos, sin) = r.tables(1000..1000 + t);
        let x = rand(t * h * d, 6);
        let mut want = x.clone();
        cpu_rope::rope_forward(&mut want, t, h, d, &cos, &sin);
        let (gcos, gsin) = (up(&cos), up(&sin));
        let mut gx = up(&x);
        rope::rope_forward(c, &mut gx, t, h, d, &gcos, &gsin).unwrap();
        assert_parity(&format!("rope forward [{t},{h},{d}]"), &read(&gx), &want);
        let mut want = x.clone();
        cpu_rope::rope_backward(&mut want, t, h, d, &cos, &sin);
        let mut gx = up(&x);
        rope::rope_backward(c, &mut gx, t, h, d, &gcos, &gsin).unwrap();
        assert_parity(&format!("rope backward [{t},{h},{d}]"), &read(&gx), &want);
    }
}

#[test]
fn swiglu_forward_and_backward_equal_the_cpu() {
    let c = ctx();
    for len in [5 * 1536, 1001] {
        let gate: Vec<f32> = rand(len, 7).iter().map(|v| v * 6.0).collect();
        let upv = rand(len, 8);
        let mut out = vec![0.0; len];
        cpu_swiglu::swiglu_forward(&mut out, &gate, &upv);
        let (gg, gu) = (up(&gate), up(&upv));
        let mut gout = c.zeros(len).unwrap();
        swiglu::swiglu_forward(c, &mut gout, &gg, &gu).unwrap();
        assert_parity(&format!("swiglu forward [{len}]"), &read(&gout), &out);

        let dout = rand(len, 9);
        let (mut dg, mut du) = (vec![0.0; len], vec![0.0; len]);
        cpu_swiglu::swiglu_backward(&mut dg, &mut du, &dout, &gate, &upv);
        let (mut gdg, mut gdu) = (c.zeros(len).unwrap(), c.zeros(len).unwrap());
        swiglu::swiglu_backward(c, &mut gdg, &mut gdu, &up(&dout), &gg, &gu).unwrap();
        assert_parity(&format!("swiglu backward dgate [{len}]"), &read(&gdg), &dg);
        assert_parity(&format!("swiglu backward dup [{len}]"), &read(&gdu), &du);
    }
}

/// Lookups from a trained f32 table and from a frozen Q8_0 table (the default model's token_embd), and the
/// scatter-add with a repeated token.
#[test]
fn embedding_gather_and_scatter_equal_the_cpu() {
    let c = ctx();
    let (v, ch) = (300, 576);
    let table = rand(v * ch, 10);
    let ids = [5u32, 299, 0, 5, 17, 5, 250];
    let n = ids.len();
    let mut want = vec![0.0; n * ch];
    cpu_emb::embedding_forward(&mut want, &ids, cpu_emb::VocabMatrix::Trained(&table), ch);
    let gtable = up(&table);
    let mut out = c.zeros(n * ch).unwrap();
    embedding::embedding_forward(c, &mut out, &ids, VocabMatrix::Trained(&gtable), ch).unwrap();
    assert_parity("embedding gather f32 [300,576]", &read(&out), &want);

    for dtype in [GgmlType::Q8_0, GgmlType::Q4_1] {
        let fm = FrozenMatrix::from_quantized(v, ch, dtype, gguf::quantize(dtype, &table, ch).unwrap()).unwrap();
        let mut want = vec![0.0; n * ch];
        cpu_emb::embedding_forward(&mut want, &ids, cpu_emb::VocabMatrix::Frozen(&fm), ch);
        let gf = GpuFrozen::upload(c, &fm, "token_embd.weight").unwrap();
        let mut out = c.zeros(n * ch).unwrap();
        embedding::embedding_forward(c, &mut out, &ids, VocabMatrix::Frozen(&gf), ch).unwrap();
        assert_parity(&format!("embedding gather {dtype} [300,576]"), &read(&out), &want);
    }

    let dout = rand(n * ch, 11);
    let d0 = rand(v * ch, 12);
    let mut want = d0.clone();
    cpu_emb::embedding_backward(&mut want, &dout, &ids, ch);
    let mut gd = up(&d0);
    embedding::embedding_backward(c, &mut gd, &up(&dout), &ids, ch).unwrap();
    assert_parity("embedding scatter-add [300,576]", &read(&gd), &want);
}

/// Qwen2's frozen q/k/v bias: y[N, O] += b[O], over rows of the model's widths and an odd one; the values past
/// N·O stay.
#[test]
fn bias_forward_equals_the_cpu() {
    let c = ctx();
    for (n, o) in [(6, 576), (5, 192), (7, 45)] {
        let (y0, b) = (rand(n * o + 3, 61), rand(o, 62));
        let mut want = y0.clone();
        loft::engine::bias::bias_forward(&mut want, &b, n);
        let mut gy = up(&y0);
        loft_gpu::engine::bias::bias_forward(c, &mut gy, &up(&b), n).unwrap();
        assert_parity(&format!("bias forward [{n},{o}]"), &read(&gy), &want);
        assert!(loft_gpu::engine::bias::bias_forward(c, &mut up(&y0[..o]), &up(&b), 2).is_err());
    }
}
