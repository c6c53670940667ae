//! Twin of `loft::engine::embedding`: the token lookup and its scatter-add, and the [V, C] matrix shared with the
//! output head. Legend: N = tokens, C = hidden_size, V = vocab_size.

use gguf::GgmlType;
use loft::Result;

use super::frozen::{load_w_wgsl, GpuFrozen, BYTES_WGSL};
use super::matmul::{matmul_nn, matmul_nt};
use crate::context::{groups_1d, Binding, Context, GpuBuffer, Kernel};

/// A [V, C] matrix read by the embedding and the head: the frozen base weights in their blocks, or a trained f32
/// copy, row-major.
#[derive(Clone, Copy)]
pub enum VocabMatrix<'a> {
    Frozen(&'a GpuFrozen),
    Trained(&'a GpuBuffer),
}

impl VocabMatrix<'_> {
    /// V, for rows of width `c`.
    pub fn rows(&self, c: usize) -> usize {
        match self {
            VocabMatrix::Frozen(m) => m.rows,
            VocabMatrix::Trained(w) => w.len() / c,
        }
    }

    /// y[N, V] = x[N, C] · Wᵀ (overwritten).
    pub fn forward(&self, ctx: &Context, y: &mut GpuBuffer, x: &GpuBuffer, n: usize, c: usize) -> Result<()> {
        match self {
            VocabMatrix::Frozen(m) => m.forward(ctx, y, x, n, false),
            VocabMatrix::Trained(w) => matmul_nt(ctx, y, x, w, n, c, w.len() / c, 1.0, false),
        }
    }

    /// dx[N, C] = dy[N, V] · W (overwritten).
    pub fn backward_input(&self, ctx: &Context, dx: &mut GpuBuffer, dy: &GpuBuffer, n: usize, c: usize) -> Result<()> {
        match self {
            VocabMatrix::Frozen(m) => m.backward_input(ctx, dx, dy, n, false),
            VocabMatrix::Trained(w) => matmul_nn(ctx, dx, dy, w, n, w.len() / c, c, 1.0, false),
        }
    }
}

/// out[N, C] = table[ids[n]] for each token (overwritten). ids: [N], each < V (the caller validated them).
/// A frozen table kept in several blocks of rows is read one block at a time, each writing its tokens' rows.
pub fn embedding_forward(
    ctx: &Context,
    out: &mut GpuBuffer,
    ids: &[u32],
    table: VocabMatrix<'_>,
    c: usize,
) -> Result<()> {
    ensure!(out.len() == ids.len() * c, "embedding_forward: shapes");
    let v = table.rows(c);
    ensure!(ids.iter().all(|&id| (id as usize) < v), "embedding_forward: token id outside the vocabulary");
    // (row0, rows, data) of each block of the table.
    let (name, load_w, row_bytes, blocks) = match table {
        VocabMatrix::Frozen(m) => (
            m.storage_name(),
            m.load_w_wgsl(),
            m.row_bytes(),
            m.blocks().iter().map(|b| (b.row0, b.rows, &b.data)).collect::<Vec<_>>(),
        ),
        VocabMatrix::Trained(w) => {
            let f32_rows = format!("{BYTES_WGSL}\n{}", load_w_wgsl(GgmlType::F32).expect("f32 has a decoder"));
            ("f32".to_string(), f32_rows, 4 * c, vec![(0, v, w)])
        }
    };
    let source = include_str!("../shaders/embedding_forward.wgsl").replace("//LOAD_W", &load_w);
    let kernel = Kernel { name: format!("embedding_forward_{name}"), source, entry: "main" };
    let ids_buf = ctx.upload_u32(ids)?;
    for (row0, rows, data) in blocks {
        ctx.dispatch(
            &kernel,
            &[ids.len() as u32, c as u32, row_bytes as u32, row0 as u32, rows as u32, 0, 0, 0],
            &[Binding::Write(out), Binding::Read(&ids_buf), Binding::Read(data)],
            groups_1d(ids.len() * c, 256),
        )?;
    }
    Ok(())
}

/// Backward of [`embedding_forward`] for a trained table: dtable[V, C] += dout[N, C] scattered by ids (a token
/// seen twice gets both rows).
pub fn embedding_backward(
    ctx: &Context,
    dtable: &mut GpuBuffer,
    dout: &GpuBuffer,
    ids: &[u32],
    c: usize,
) -> Result<()> {
    ensure!(dout.len() == ids.len() * c, "embedding_backward: shapes");
    ensure!(ids.iter().all(|&id| (id as usize + 1) * c <= dtable.len()), "embedding_backward: id outside dtable");
    let ids_buf = ctx.upload_u32(ids)?;
    ctx.dispatch(
        &Kernel {
            name: "embedding_backward".into(),
            source: include_str!("../shaders/embedding_backward.wgsl").into(),
            entry: "main",
        },
        &[ids.len() as u32, c as u32, 0, 0],
        &[Binding::Write(dtable), Binding::Read(dout), Binding::Read(&ids_buf)],
        groups_1d(c, 256),
    )
}
