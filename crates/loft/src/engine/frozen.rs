//! The frozen base weights of a linear layer, behind one type so that the storage (f32 now; quantized blocks for
//! QLoRA) never leaks into the kernels that call it. Layout is torch's: [out, in] (rows = out features).

use super::matmul::{matmul_nn, matmul_nt};

#[derive(Clone, Debug)]
pub struct FrozenMatrix {
    pub rows: usize,
    pub cols: usize,
    data: Vec<f32>,
}

impl FrozenMatrix {
    /// `data` is row-major [rows, cols]; the caller has checked its length.
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "FrozenMatrix::from_f32: length");
        FrozenMatrix { rows, cols, data }
    }

    /// y[N, rows] = (accumulate ? y : 0) + x[N, cols] · Wᵀ
    pub fn forward(&self, y: &mut [f32], x: &[f32], n: usize, accumulate: bool) {
        matmul_nt(y, x, &self.data, n, self.cols, self.rows, 1.0, accumulate);
    }

    /// dx[N, cols] = (accumulate ? dx : 0) + dy[N, rows] · W  (the input gradient; W itself gets none)
    pub fn backward_input(&self, dx: &mut [f32], dy: &[f32], n: usize, accumulate: bool) {
        matmul_nn(dx, dy, &self.data, n, self.rows, self.cols, 1.0, accumulate);
    }

    /// Copies row `r` (an embedding lookup) into `out[cols]`.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.data[r * self.cols..(r + 1) * self.cols]);
    }

    /// The whole matrix in f32, row-major.
    pub fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        std::borrow::Cow::Borrowed(&self.data)
    }

    /// Bytes held for the weights.
    pub fn storage_bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }
}
