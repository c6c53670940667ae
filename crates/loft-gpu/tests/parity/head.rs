//! The chunked head with cross-entropy: loss, input gradient and (trained head) weight gradient, with ignored rows.

use gguf::GgmlType;
use loft::engine::{cross_entropy as cpu, embedding::VocabMatrix as CpuVocab, FrozenMatrix};
use loft_gpu::engine::{cross_entropy, GpuFrozen, VocabMatrix};

use crate::common::{assert_parity, ctx, rand, read, up};

#[test]
fn head_cross_entropy_equals_the_cpu() {
    let c = ctx();
    let (v, ch, chunk) = (1000, 576, 4);
    // 11 rows, 3 ignored: chunks of 4, 4 and a partial one.
    let targets = [3, -100, 999, 0, 17, 17, -100, 500, 2, -100, 42];
    let n = targets.len();
    let h = rand(n * ch, 1);
    let w: Vec<f32> = rand(v * ch, 2).iter().map(|x| x * 0.2).collect();
    let grad_scale = 1.0 / 8.0;
    let mut scratch = cpu::CrossEntropyScratch::new(chunk, ch, v);
    let mut gscratch = cross_entropy::CrossEntropyScratch::new(c, chunk, ch, v).unwrap();
    let gh = up(&h);

    // A trained (untied) head: loss, dh and dW.
    let (mut dh, mut dw) = (vec![0.0; n * ch], rand(v * ch, 3));
    let (loss, count) = cpu::cross_entropy_forward_backward(
        &mut dh,
        Some(&mut dw),
        &mut scratch,
        &h,
        CpuVocab::Trained(&w),
        &targets,
        ch,
        grad_scale,
    );
    let gw = up(&w);
    let (mut gdh, mut gdw) = (c.zeros(n * ch).unwrap(), up(&rand(v * ch, 3)));
    let (gloss, gcount) = cross_entropy::cross_entropy_forward_backward(
        c,
        &mut gdh,
        Some(&mut gdw),
        &mut gscratch,
        &gh,
        VocabMatrix::Trained(&gw),
        &targets,
        ch,
        grad_scale,
    )
    .unwrap();
    assert_eq!(gcount, count);
    assert_parity("cross-entropy loss sum, trained head", &[gloss as f32], &[loss as f32]);
    assert_parity("cross-entropy dh, trained head [11,576]x[1000,576]", &read(&gdh), &dh);
    assert_parity("cross-entropy dW, trained head [1000,576]", &read(&gdw), &dw);

    // A frozen Q8_0 head (the default model's tied token_embd): loss only, then loss and dh.
    let fm =
        FrozenMatrix::from_quantized(v, ch, GgmlType::Q8_0, gguf::quantize(GgmlType::Q8_0, &w, ch).unwrap()).unwrap();
    let gf = GpuFrozen::upload(c, &fm, "token_embd.weight").unwrap();
    let (loss, count) = cpu::cross_entropy_forward(&mut scratch, &h, CpuVocab::Frozen(&fm), &targets, ch);
    let (gloss, gcount) =
        cross_entropy::cross_entropy_forward(c, &mut gscratch, &gh, VocabMatrix::Frozen(&gf), &targets, ch).unwrap();
    assert_eq!(gcount, count);
    assert_parity("cross-entropy loss sum, frozen Q8_0 head", &[gloss as f32], &[loss as f32]);
    let mut dh = vec![0.0; n * ch];
    cpu::cross_entropy_forward_backward(
        &mut dh,
        None,
        &mut scratch,
        &h,
        CpuVocab::Frozen(&fm),
        &targets,
        ch,
        grad_scale,
    );
    let mut gdh = c.zeros(n * ch).unwrap();
    cross_entropy::cross_entropy_forward_backward(
        c,
        &mut gdh,
        None,
        &mut gscratch,
        &gh,
        VocabMatrix::Frozen(&gf),
        &targets,
        ch,
        grad_scale,
    )
    .unwrap();
    assert_parity("cross-entropy dh, frozen Q8_0 head", &read(&gdh), &dh);
}
