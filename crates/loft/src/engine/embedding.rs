//! Token embedding lookup, and the [V, C] matrix type shared with the output head (a tied head is the same
//! table). Legend: N = tokens, C = hidden_size, V = vocab_size.

#![forbid(unsafe_code)]

use rayon::prelude::*;

use super::frozen::FrozenMatrix;
use super::matmul::{matmul_nn, matmul_nt};

/// A [V, C] matrix read by the embedding and the head: the frozen base weights, or a trained f32 copy (a trained
/// embedding, lm_head or tied pair), row-major.
#[derive(Clone, Copy, Debug)]
pub enum VocabMatrix<'a> {
    Frozen(&'a FrozenMatrix),
    Trained(&'a [f32]),
}

impl VocabMatrix<'_> {
    /// V, for rows of width `c`.
    pub fn rows(&self, c: usize) -> usize {
        match self {
            VocabMatrix::Frozen(m) => m.rows,
            VocabMatrix::Trained(w) => w.len() / c,
        }
    }

    /// out[C] = row r.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        match self {
            VocabMatrix::Frozen(m) => m.row_into(r, out),
            VocabMatrix::Trained(w) => out.copy_from_slice(&w[r * out.len()..(r + 1) * out.len()]),
        }
    }

    /// y[N, V] = x[N, C] · Wᵀ (overwritten).
    pub fn forward(&self, y: &mut [f32], x: &[f32], n: usize, c: usize) {
        match self {
            VocabMatrix::Frozen(m) => m.forward(y, x, n, false),
            VocabMatrix::Trained(w) => matmul_nt(y, x, w, n, c, w.len() / c, 1.0, false),
        }
    }

    /// dx[N, C] = dy[N, V] · W (overwritten).
    pub fn backward_input(&self, dx: &mut [f32], dy: &[f32], n: usize, c: usize) {
        match self {
            VocabMatrix::Frozen(m) => m.backward_input(dx, dy, n, false),
            VocabMatrix::Trained(w) => matmul_nn(dx, dy, w, n, w.len() / c, c, 1.0, false),
        }
    }
}

/// out[N, C] = table[ids[n]] for each token (overwritten). ids: [N], each < V (the caller validated them).
pub fn embedding_forward(out: &mut [f32], ids: &[u32], table: VocabMatrix<'_>, c: usize) {
    assert_eq!(out.len(), ids.len() * c, "embedding_forward: shapes");
    let v = table.rows(c);
    assert!(ids.iter().all(|&id| (id as usize) < v), "embedding_forward: token id outside the vocabulary");
    out.par_chunks_mut(c).zip(ids.par_iter()).with_min_len(16).for_each(|(row, &id)| table.row_into(id as usize, row));
}

/// Backward of [`embedding_forward`] for a trained table: dtable[V, C] += dout[N, C] scattered by ids (a token
/// seen twice gets both rows). Serial: N·C additions are negligible next to the matrix products.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], c: usize) {
    assert_eq!(dout.len(), ids.len() * c, "embedding_backward: shapes");
    assert!(ids.iter().all(|&id| (id as usize + 1) * c <= dtable.len()), "embedding_backward: id outside dtable");
    for (row, &id) in dout.chunks_exact(c).zip(ids) {
        let dst = &mut dtable[id as usize * c..(id as usize + 1) * c];
        for (d, &g) in dst.iter_mut().zip(row) {
            *d += g;
        }
    }
}
