//! The output head fused with cross-entropy, chunk by chunk, so that only [chunk, V] logits ever exist.
//! Legend: N = rows (tokens), C = hidden_size, V = vocab_size.
//!
//! Rows whose target is negative (transformers' ignore_index, -100) are skipped entirely: no logits are computed
//! for them and their input gradient is zero. The remaining rows are gathered into chunks, so a prompt masked out
//! of the loss costs nothing in the head.

#![forbid(unsafe_code)]

use rayon::prelude::*;

use super::embedding::VocabMatrix;
use super::matmul::matmul_tn;
use super::vector_math as vm;

/// Rows of logits the fused head holds at once, unless the backend narrows it ([`super::Backend::head_chunk`]):
/// [256, V] f32 is 50 MB at SmolLM2's vocabulary (smaller chunks measured slower: the head is re-read per chunk).
pub const HEAD_CHUNK: usize = 256;

/// The target of a row that does not count (transformers' `ignore_index`); any negative target is ignored.
pub const IGNORE_INDEX: i32 = -100;

/// Buffers of the chunked head, allocated once for a given chunk size and model shape.
pub struct CrossEntropyScratch {
    chunk: usize,
    /// Target rows gathered into the current chunk: [chunk, C].
    h: Vec<f32>,
    /// Their logits, then the logits' gradient: [chunk, V].
    logits: Vec<f32>,
    /// Their input gradient: [chunk, C].
    dh: Vec<f32>,
    /// Row index of each gathered row: [chunk].
    rows: Vec<usize>,
}

impl CrossEntropyScratch {
    pub fn new(chunk: usize, c: usize, v: usize) -> Self {
        assert!(chunk > 0, "CrossEntropyScratch: chunk must be positive");
        CrossEntropyScratch {
            chunk,
            h: vec![0.0; chunk * c],
            logits: vec![0.0; chunk * v],
            dh: vec![0.0; chunk * c],
            rows: Vec::with_capacity(chunk),
        }
    }

    /// 4-byte words the scratch of [`CrossEntropyScratch::new`] holds (a row index counts as two).
    pub fn floats(chunk: usize, c: usize, v: usize) -> usize {
        chunk * (2 * c + v + 2)
    }

    pub fn floats_held(&self) -> usize {
        self.h.len() + self.logits.len() + self.dh.len() + 2 * self.rows.capacity()
    }
}

/// Loss only (evaluation): returns (Σ over target rows of −log softmax(h·Wᵀ)[target], number of target rows).
/// h: [N, C]; head: [V, C]; targets: [N], the token row i predicts (already shifted), negative = ignored.
pub fn cross_entropy_forward(
    scratch: &mut CrossEntropyScratch,
    h: &[f32],
    head: VocabMatrix<'_>,
    targets: &[i32],
    c: usize,
) -> (f64, usize) {
    head_cross_entropy(None, None, scratch, h, head, targets, c, 0.0)
}

/// Loss and gradients. dh[N, C] is OVERWRITTEN with grad_scale · ∂loss_sum/∂h (zero on ignored rows);
/// dhead[V, C], when the head is trained (untied lm_head, or the tied embedding), is ACCUMULATED with
/// grad_scale · ∂loss_sum/∂W. grad_scale is 1 / (target rows across all micro-batches of the step), so that
/// gradients of micro-batches add up to the gradient of the mean loss. Returns (loss sum, target rows) as
/// [`cross_entropy_forward`] does, unscaled.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_forward_backward(
    dh: &mut [f32],
    dhead: Option<&mut [f32]>,
    scratch: &mut CrossEntropyScratch,
    h: &[f32],
    head: VocabMatrix<'_>,
    targets: &[i32],
    c: usize,
    grad_scale: f32,
) -> (f64, usize) {
    head_cross_entropy(Some(dh), dhead, scratch, h, head, targets, c, grad_scale)
}

#[allow(clippy::too_many_arguments)]
fn head_cross_entropy(
    mut dh: Option<&mut [f32]>,
    mut dhead: Option<&mut [f32]>,
    s: &mut CrossEntropyScratch,
    h: &[f32],
    head: VocabMatrix<'_>,
    targets: &[i32],
    c: usize,
    grad_scale: f32,
) -> (f64, usize) {
    let (n, v) = (targets.len(), head.rows(c));
    assert_eq!(h.len(), n * c, "cross_entropy: h is not [N, C]");
    assert!(
        s.h.len() == s.chunk * c && s.logits.len() == s.chunk * v,
        "cross_entropy: scratch built for another shape"
    );
    assert!(targets.iter().all(|&t| (t as i64) < v as i64), "cross_entropy: target outside the vocabulary");
    if let Some(dh) = dh.as_deref_mut() {
        assert_eq!(dh.len(), n * c, "cross_entropy: dh is not [N, C]");
        dh.fill(0.0);
    }
    if let Some(dw) = dhead.as_deref() {
        assert_eq!(dw.len(), v * c, "cross_entropy: dhead is not [V, C]");
    }
    let grads = dh.is_some();
    let (mut loss_sum, mut count, mut next) = (0.0f64, 0usize, 0usize);
    loop {
        s.rows.clear();
        while next < n && s.rows.len() < s.chunk {
            if targets[next] >= 0 {
                s.rows.push(next);
            }
            next += 1;
        }
        let m = s.rows.len();
        if m == 0 {
            break;
        }
        for (dst, &i) in s.h.chunks_exact_mut(c).zip(&s.rows) {
            dst.copy_from_slice(&h[i * c..(i + 1) * c]);
        }
        let (hs, logits) = (&s.h[..m * c], &mut s.logits[..m * v]);
        head.forward(logits, hs, m, c);
        // Each row: loss = logsumexp − logit[target]; its gradient (softmax − onehot) · grad_scale in place.
        loss_sum += logits
            .par_chunks_mut(v)
            .zip(s.rows.par_iter())
            .map(|(row, &i)| {
                let t = targets[i] as usize;
                let target_logit = row[t];
                let max = vm::max(row);
                vm::exp_shifted(row, max);
                let sum = vm::sum_f64(row);
                if grads {
                    let k = (grad_scale as f64 / sum) as f32;
                    row.iter_mut().for_each(|x| *x *= k);
                    row[t] -= grad_scale;
                }
                max as f64 + sum.ln() - target_logit as f64
            })
            .sum::<f64>();
        count += m;
        if let Some(dh) = dh.as_deref_mut() {
            let dhs = &mut s.dh[..m * c];
            head.backward_input(dhs, logits, m, c);
            for (src, &i) in dhs.chunks_exact(c).zip(&s.rows) {
                dh[i * c..(i + 1) * c].copy_from_slice(src);
            }
        }
        if let Some(dw) = dhead.as_deref_mut() {
            // dW[V, C] += dlogitsᵀ · h
            matmul_tn(dw, logits, hs, m, v, c, 1.0, true);
        }
    }
    (loss_sum, count)
}
