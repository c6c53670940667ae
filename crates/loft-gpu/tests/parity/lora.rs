//! The LoRA-wrapped frozen linear layer, forward and backward, with and without dropout (masks regenerated on the
//! device from the CPU's seeds and streams).

use gguf::GgmlType;
use loft::engine::{lora as cpu, FrozenMatrix, LoraDropout, LoraWeights};
use loft_gpu::engine::{lora, GpuFrozen, GpuLoraWeights};

use crate::common::{assert_parity, ctx, rand, read, up};

#[test]
fn lora_forward_and_backward_equal_the_cpu() {
    let c = ctx();
    // q_proj-like [576, 576] over Q4_1 blocks, down_proj-like [576, 1536] over Q8_0, and an odd f32 layer.
    for (o, i, r, n, dtype) in
        [(576, 576, 16, 5, GgmlType::Q4_1), (576, 1536, 8, 4, GgmlType::Q8_0), (45, 37, 3, 7, GgmlType::F32)]
    {
        let w: Vec<f32> = rand(o * i, 1).iter().map(|v| v * 0.1).collect();
        let fm = if dtype == GgmlType::F32 {
            FrozenMatrix::from_f32(o, i, w.clone())
        } else {
            FrozenMatrix::from_quantized(o, i, dtype, gguf::quantize(dtype, &w, i).unwrap()).unwrap()
        };
        let mut lw = LoraWeights::zeros(r, i, o, 2.0 * r as f32, true);
        lw.init(3);
        lw.b = rand(o * r, 4).iter().map(|v| v * 0.05).collect();
        let gf = GpuFrozen::upload(c, &fm, "test.weight").unwrap();
        let gl = GpuLoraWeights::upload(c, &lw).unwrap();
        let x = rand(n * i, 5);
        let dy = rand(n * o, 6);
        for dropout in [None, Some(LoraDropout { p: 0.1, seed: 0xDEAD_BEEF_1234_5678 })] {
            let label = format!("[{o},{i}] r={r} n={n} {dtype} dropout={}", dropout.is_some());
            let (mut y, mut xa, mut xd) = (rand(n * o, 7), vec![0.0; n * r], vec![0.0; n * i]);
            let (mut gy, mut gxa, mut gxd) = (up(&y), c.zeros(n * r).unwrap(), c.zeros(n * i).unwrap());
            cpu::lora_forward(&mut y, &mut xa, &mut xd, &x, &fm, &lw, dropout, n, true);
            let gx = up(&x);
            lora::lora_forward(c, &mut gy, &mut gxa, &mut gxd, &gx, &gf, &gl, dropout, n, true).unwrap();
            assert_parity(&format!("lora forward y {label}"), &read(&gy), &y);
            assert_parity(&format!("lora forward xa {label}"), &read(&gxa), &xa);

            let (mut dx, mut da, mut db, mut dxa) =
                (vec![0.0; n * i], rand(r * i, 8), rand(o * r, 9), vec![0.0; n * r]);
            let (mut gdx, mut gda, mut gdb) = (c.zeros(n * i).unwrap(), up(&da), up(&db));
            let mut gdxa = c.zeros(n * r).unwrap();
            cpu::lora_backward(&mut dx, &mut da, &mut db, &mut dxa, &mut xd, &dy, &x, &xa, &fm, &lw, dropout, n, false);
            let gdy = up(&dy);
            lora::lora_backward(
                c, &mut gdx, &mut gda, &mut gdb, &mut gdxa, &mut gxd, &gdy, &gx, &gxa, &gf, &gl, dropout, n, false,
            )
            .unwrap();
            assert_parity(&format!("lora backward dx {label}"), &read(&gdx), &dx);
            assert_parity(&format!("lora backward dA {label}"), &read(&gda), &da);
            assert_parity(&format!("lora backward dB {label}"), &read(&gdb), &db);
        }
    }
}

/// The device draws exactly the CPU's dropout mask: the kept positions of dropout(x) are the same elements.
#[test]
fn dropout_masks_are_the_cpus() {
    let c = ctx();
    let (n, i, r, o) = (9, 130, 2, 3);
    let fm = FrozenMatrix::from_f32(o, i, vec![0.0; o * i]);
    let mut lw = LoraWeights::zeros(r, i, o, 4.0, false);
    lw.init(1);
    let x: Vec<f32> = rand(n * i, 2).iter().map(|v| v + 2.0).collect(); // never zero
    for p in [0.05f32, 0.5, 0.9] {
        let dp = LoraDropout { p, seed: 42 + (p * 100.0) as u64 };
        let (mut y, mut xa, mut xd) = (vec![0.0; n * o], vec![0.0; n * r], vec![0.0; n * i]);
        cpu::lora_forward(&mut y, &mut xa, &mut xd, &x, &fm, &lw, Some(dp), n, false);
        let (mut gy, mut gxa, mut gxd) = (c.zeros(n * o).unwrap(), c.zeros(n * r).unwrap(), c.zeros(n * i).unwrap());
        let (gf, gl) = (GpuFrozen::upload(c, &fm, "w").unwrap(), GpuLoraWeights::upload(c, &lw).unwrap());
        lora::lora_forward(c, &mut gy, &mut gxa, &mut gxd, &up(&x), &gf, &gl, Some(dp), n, false).unwrap();
        let got = read(&gxd);
        let differ = got.iter().zip(&xd).filter(|(a, b)| (**a == 0.0) != (**b == 0.0)).count();
        assert_eq!(differ, 0, "p = {p}: {differ} of {} mask positions differ", n * i);
        assert_eq!(got, xd, "p = {p}: kept values are x · 1/(1 − p) on both sides");
    }
}
