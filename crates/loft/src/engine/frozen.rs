//! The frozen base weights of a linear layer, behind one type so that the storage never leaks into the kernels
//! that call it: f32, a GGUF file's own quantized blocks (QLoRA keeps a 4-bit base as it is), or bitsandbytes'
//! NF4 blocks (a `*-bnb-4bit` checkpoint, or a 16-bit Hugging Face base quantized at load).
//! Layout is torch's: [out, in] (rows = out features); a quantized row is a whole number of blocks.
//!
//! Quantized products never hold the whole f32 matrix: one row at a time (dot products, for a few input rows as
//! in decoding) or a tile of rows dequantized into per-thread scratch and multiplied with `gemm`.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use gguf::GgmlType;
use rayon::prelude::*;

use super::matmul::{matmul_nn, matmul_nt_single};
use super::nf4::Nf4Blocks;
use super::q8_dot::{self, Q8Vector};
use super::quant_dot;

/// [`FrozenMatrix::forward_then`]'s term: (part of the product, its first row, its columns).
type BlockTerm<'a> = dyn Fn(&mut [f32], usize, Range<usize>) + Sync + 'a;

#[derive(Clone, Debug)]
pub struct FrozenMatrix {
    pub rows: usize,
    pub cols: usize,
    storage: Storage,
}

#[derive(Clone, Debug)]
enum Storage {
    F32(Vec<f32>),
    /// `rows` rows of `row_bytes` bytes each, ggml blocks of `dtype`.
    Quantized {
        dtype: GgmlType,
        data: Vec<u8>,
        row_bytes: usize,
    },
    /// The row-major matrix flattened into bitsandbytes' NF4 blocks (a block may straddle two rows).
    Nf4(Nf4Blocks),
}

/// Up to this many input rows, a quantized product runs row by row on the packed blocks (decode); above it,
/// tiles are dequantized and go through gemm. Each input row's result is the same whatever the count up to it.
pub const DOT_MAX_ROWS: usize = quant_dot::MAX_ROWS;
/// Weight rows dequantized at once per tile.
const TILE_ROWS: usize = 64;
/// Weight rows per tile of the input gradient, and rows each thread dequantizes at a time.
const BACKWARD_TILE_ROWS: usize = 256;
const DEQUANT_TASK_ROWS: usize = 16;

impl FrozenMatrix {
    /// `data` is row-major [rows, cols]; the caller has checked its length.
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "FrozenMatrix::from_f32: length");
        FrozenMatrix { rows, cols, storage: Storage::F32(data) }
    }

    /// Packed ggml blocks, [rows, cols] with each row a whole number of blocks. Types without a fast kernel still
    /// work through per-row dequantization. Returns None when the shape and byte count do not fit `dtype`.
    pub fn from_quantized(rows: usize, cols: usize, dtype: GgmlType, data: Vec<u8>) -> Option<Self> {
        let row_bytes = dtype.row_bytes(cols)?;
        if data.len() != rows.checked_mul(row_bytes)? || !dtype.can_dequantize() {
            return None;
        }
        if dtype == GgmlType::F32 {
            let v = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            return Some(Self::from_f32(rows, cols, v));
        }
        Some(FrozenMatrix { rows, cols, storage: Storage::Quantized { dtype, data, row_bytes } })
    }

    /// NF4 blocks of a [rows, cols] matrix flattened row-major. Returns None when they do not hold rows·cols
    /// values (see [`Nf4Blocks::validate`] for why).
    pub fn from_nf4(rows: usize, cols: usize, blocks: Nf4Blocks) -> Option<Self> {
        if blocks.len != rows.checked_mul(cols)? || blocks.validate().is_err() {
            return None;
        }
        Some(FrozenMatrix { rows, cols, storage: Storage::Nf4(blocks) })
    }

    /// The storage type as a ggml type: F32 or the block type; None for NF4, which ggml has no type for.
    pub fn dtype(&self) -> Option<GgmlType> {
        match &self.storage {
            Storage::F32(_) => Some(GgmlType::F32),
            Storage::Quantized { dtype, .. } => Some(*dtype),
            Storage::Nf4(_) => None,
        }
    }

    /// The storage type in words: `f32`, a ggml block type (`q4_0`, `bf16`), or `nf4`.
    pub fn storage_name(&self) -> String {
        match &self.storage {
            Storage::F32(_) => "f32".into(),
            Storage::Quantized { dtype, .. } => dtype.to_string().to_lowercase(),
            Storage::Nf4(_) => "nf4".into(),
        }
    }

    /// The NF4 blocks, when that is the storage.
    pub fn nf4(&self) -> Option<&Nf4Blocks> {
        match &self.storage {
            Storage::Nf4(b) => Some(b),
            _ => None,
        }
    }

    /// The stored bytes as they are, for a device that decodes them itself: ggml blocks of the returned type,
    /// row-major, each row a whole number of blocks (F32 storage as little-endian floats); None for NF4.
    pub fn ggml_blocks(&self) -> Option<(GgmlType, Cow<'_, [u8]>)> {
        match &self.storage {
            Storage::F32(w) => Some((GgmlType::F32, Cow::Owned(w.iter().flat_map(|x| x.to_le_bytes()).collect()))),
            Storage::Quantized { dtype, data, .. } => Some((*dtype, Cow::Borrowed(data))),
            Storage::Nf4(_) => None,
        }
    }

    /// Weight rows [r0, r1) as f32 into `out[(r1 - r0) · cols]` (any storage).
    fn rows_into(&self, r0: usize, r1: usize, out: &mut [f32]) {
        let cols = self.cols;
        match &self.storage {
            Storage::F32(w) => out.copy_from_slice(&w[r0 * cols..r1 * cols]),
            Storage::Quantized { dtype, data, row_bytes } => {
                dequantize_rows(*dtype, &data[r0 * row_bytes..r1 * row_bytes], out)
            }
            Storage::Nf4(blocks) => blocks.dequantize(r0 * cols, out),
        }
    }

    /// y[N, rows] = (accumulate ? y : 0) + x[N, cols] · Wᵀ
    pub fn forward(&self, y: &mut [f32], x: &[f32], n: usize, accumulate: bool) {
        self.product(y, x, n, accumulate, None)
    }

    /// [`FrozenMatrix::forward`] with a term added to each block of the product: `then(part, row0, cols)` adds into
    /// rows row0.. of the product's columns `cols` (part: [part.len() / cols.len(), cols.len()], contiguous; whether
    /// it already holds y's previous value when accumulating depends on the storage, so `then` must only add). The
    /// blocks cover y once. Over blocks of a quantized base each tile gets its term on the thread that multiplied it,
    /// while it is in cache; over f32 weights, the term is a pass after the product, by rows on the threads; for the
    /// few rows of a decoding step, one call over all of y. For the LoRA adapter's term y += s·xa·Bᵀ, a block of B's
    /// rows at a time.
    pub fn forward_then(
        &self,
        y: &mut [f32],
        x: &[f32],
        n: usize,
        accumulate: bool,
        then: impl Fn(&mut [f32], usize, Range<usize>) + Sync,
    ) {
        self.product(y, x, n, accumulate, Some(&then))
    }

    /// [`FrozenMatrix::forward_then`], the term optional (`forward` takes no pass for it).
    fn product(&self, y: &mut [f32], x: &[f32], n: usize, accumulate: bool, then: Option<&BlockTerm<'_>>) {
        let (rows, cols) = (self.rows, self.cols);
        assert!(y.len() >= n * rows && x.len() >= n * cols, "FrozenMatrix::forward: operand too small");
        let y = &mut y[..n * rows];
        match &self.storage {
            Storage::F32(w) => {
                matmul_nt(y, x, w, n, cols, rows, accumulate);
                if let (Some(then), true) = (then, rows > 0) {
                    let chunk = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
                    y.par_chunks_mut(chunk * rows).enumerate().for_each(|(j, part)| then(part, j * chunk, 0..rows));
                }
            }
            Storage::Quantized { dtype, data, row_bytes } if n <= DOT_MAX_ROWS => {
                let xs: Vec<&[f32]> = x[..n * cols].chunks_exact(cols).collect();
                rows_in_parallel(y, rows, n, accumulate, Vec::new, |scratch, r0, out| {
                    for (k, o) in out.chunks_exact_mut(n).enumerate() {
                        let r = r0 + k;
                        quant_dot::dot_rows(*dtype, &data[r * row_bytes..(r + 1) * row_bytes], &xs, scratch, o)
                    }
                });
                if let (Some(then), true) = (then, rows > 0) {
                    then(y, 0, 0..rows);
                }
            }
            Storage::Quantized { .. } | Storage::Nf4(_) => {
                // Tiles of weight rows in parallel: a task dequantizes rows [r0, r1) and multiplies them into its
                // own [N, r1 - r0] buffer, then copies that into columns [r0, r1) of y under the lock (the copy is
                // about 1/(2·cols) of the product's work, so the tasks rarely wait for it).
                let y = Mutex::new(y);
                let scratch = || (Vec::new(), Vec::new());
                (0..rows.div_ceil(TILE_ROWS)).into_par_iter().for_each_init(scratch, |(tile, part), t| {
                    let (r0, r1) = (t * TILE_ROWS, ((t + 1) * TILE_ROWS).min(rows));
                    let m = r1 - r0;
                    tile.resize(m * cols, 0.0);
                    self.rows_into(r0, r1, tile);
                    part.resize(n * m, 0.0);
                    matmul_nt_single(part, x, tile, n, cols, m);
                    if let Some(then) = then {
                        then(part, 0, r0..r1);
                    }
                    let mut y = y.lock().unwrap_or_else(PoisonError::into_inner);
                    for (y_row, p_row) in y.chunks_exact_mut(rows).zip(part.chunks_exact(m)) {
                        let dst = &mut y_row[r0..r1];
                        if accumulate {
                            dst.iter_mut().zip(p_row).for_each(|(d, &v)| *d += v);
                        } else {
                            dst.copy_from_slice(p_row);
                        }
                    }
                });
            }
        }
    }

    /// [`FrozenMatrix::forward`] for the few rows of a decoding step (N ≤ [`DOT_MAX_ROWS`]): over Q4_0, Q4_1,
    /// Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K blocks, or NF4 whose rows are whole blocks (each NF4 level as an
    /// integer code, [`q8_dot::Nf4Codes`]: within 1.4e-5 of a block's absmax), each row of x is quantized to 8 bits
    /// with a scale per 4 values and multiplied in integers (see [`q8_dot`]: about 1/254 of each block's largest
    /// |x| of rounding per value, as llama.cpp decodes). Other storage, and more rows, take
    /// [`FrozenMatrix::forward`]. Each row's result is the same whatever the number of rows beside it.
    pub fn decode_forward(&self, y: &mut [f32], x: &[f32], n: usize, accumulate: bool) {
        let (rows, cols) = (self.rows, self.cols);
        assert!(y.len() >= n * rows && x.len() >= n * cols, "FrozenMatrix::decode_forward: operand too small");
        match &self.storage {
            Storage::Quantized { dtype, data, row_bytes } if n <= DOT_MAX_ROWS && q8_dot::has_kernel(*dtype) => {
                let xs: Vec<Q8Vector> = x[..n * cols].chunks_exact(cols).map(Q8Vector::new).collect();
                let xs: Vec<&Q8Vector> = xs.iter().collect();
                rows_in_parallel(
                    y,
                    rows,
                    n,
                    accumulate,
                    || (),
                    |_, r0, out| {
                        q8_dot::dot_rows(*dtype, &data[r0 * row_bytes..(r0 + out.len() / n) * row_bytes], &xs, out)
                    },
                );
            }
            Storage::Nf4(blocks) if n <= DOT_MAX_ROWS && cols.is_multiple_of(blocks.blocksize) => {
                let Some(codes) = q8_dot::Nf4Codes::new(&blocks.quant_map) else {
                    return self.forward(y, x, n, accumulate);
                };
                let xs: Vec<Q8Vector> = x[..n * cols].chunks_exact(cols).map(Q8Vector::new).collect();
                let xs: Vec<&Q8Vector> = xs.iter().collect();
                // Each row is whole NF4 blocks; each 32 values take their block's absmax / SCALE.
                let per_block = blocks.blocksize / q8_dot::BLOCK;
                let row_blocks = cols / q8_dot::BLOCK;
                rows_in_parallel(y, rows, n, accumulate, Vec::new, |dw: &mut Vec<f32>, r0, out| {
                    let r1 = r0 + out.len() / n;
                    dw.clear();
                    let first = r0 * cols / blocks.blocksize;
                    for b in first..r1 * cols / blocks.blocksize {
                        dw.extend(std::iter::repeat_n(blocks.block_absmax(b) / q8_dot::Nf4Codes::SCALE, per_block));
                    }
                    debug_assert_eq!(dw.len(), (r1 - r0) * row_blocks);
                    q8_dot::dot_rows_nf4(&codes, &blocks.packed[r0 * cols / 2..r1 * cols / 2], dw, &xs, out)
                });
            }
            _ => self.forward(y, x, n, accumulate),
        }
    }

    /// dx[N, cols] = (accumulate ? dx : 0) + dy[N, rows] · W  (the input gradient; W itself gets none)
    pub fn backward_input(&self, dx: &mut [f32], dy: &[f32], n: usize, accumulate: bool) {
        let (rows, cols) = (self.rows, self.cols);
        assert!(dx.len() >= n * cols && dy.len() >= n * rows, "FrozenMatrix::backward_input: operand too small");
        match &self.storage {
            Storage::F32(w) => matmul_nn(dx, dy, w, n, rows, cols, 1.0, accumulate),
            Storage::Quantized { .. } | Storage::Nf4(_) => {
                if !accumulate {
                    dx[..n * cols].fill(0.0);
                }
                // dx += dy[:, r0..r1] · W[r0..r1, :], tile by tile: each tile dequantized by all threads, then one
                // product (gemm threads inside it). Tiles are deeper than the forward's so the product's inner
                // dimension keeps gemm efficient.
                let mut tile = vec![0.0f32; BACKWARD_TILE_ROWS * cols];
                let mut dy_tile = vec![0.0f32; n * BACKWARD_TILE_ROWS];
                for r0 in (0..rows).step_by(BACKWARD_TILE_ROWS) {
                    let r1 = (r0 + BACKWARD_TILE_ROWS).min(rows);
                    let k = r1 - r0;
                    tile[..k * cols].par_chunks_mut(DEQUANT_TASK_ROWS * cols).enumerate().for_each(|(j, part)| {
                        let a = r0 + j * DEQUANT_TASK_ROWS;
                        self.rows_into(a, a + part.len() / cols, part);
                    });
                    for i in 0..n {
                        dy_tile[i * k..(i + 1) * k].copy_from_slice(&dy[i * rows + r0..i * rows + r1]);
                    }
                    matmul_nn(dx, &dy_tile[..n * k], &tile[..k * cols], n, k, cols, 1.0, true);
                }
            }
        }
    }

    /// Copies row `r` (an embedding lookup) into `out[cols]`.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        self.rows_into(r, r + 1, out)
    }

    /// The whole matrix in f32, row-major (a copy when quantized).
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match &self.storage {
            Storage::F32(w) => Cow::Borrowed(w),
            Storage::Quantized { .. } | Storage::Nf4(_) => {
                let mut out = vec![0.0f32; self.rows * self.cols];
                self.rows_into(0, self.rows, &mut out);
                Cow::Owned(out)
            }
        }
    }

    /// A copy with f32 storage (dequantized once).
    pub fn to_f32_matrix(&self) -> FrozenMatrix {
        FrozenMatrix::from_f32(self.rows, self.cols, self.to_f32().into_owned())
    }

    /// Bytes held for the weights.
    pub fn storage_bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(w) => w.len() * 4,
            Storage::Quantized { data, .. } => data.len(),
            Storage::Nf4(blocks) => blocks.storage_bytes(),
        }
    }
}

/// y[i, r] = (accumulate ? y[i, r] : 0) + out[(r − r0)·N + i] for the N rows of y [N, rows], where
/// `dot(scratch, r0, out)` writes the N products of each weight row from r0 on (out.len() / N rows): chunks of
/// weight rows in parallel, each output column written by one task.
fn rows_in_parallel<S>(
    y: &mut [f32],
    rows: usize,
    n: usize,
    accumulate: bool,
    scratch: impl Fn() -> S + Sync + Send,
    dot: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) {
    let chunk = rows.div_ceil(rayon::current_num_threads() * 4).max(16);
    let put = |dst: &mut f32, v: f32| *dst = if accumulate { *dst + v } else { v };
    if n == 1 && !accumulate {
        // One row, overwritten: each task writes its own slice of y.
        y[..rows].par_chunks_mut(chunk).enumerate().for_each_init(scratch, |s, (c, ys)| dot(s, c * chunk, ys));
        return;
    }
    let cols_out: Vec<(usize, Vec<f32>)> = (0..rows)
        .step_by(chunk)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map_init(scratch, |s, r0| {
            let r1 = (r0 + chunk).min(rows);
            let mut out = vec![0.0f32; (r1 - r0) * n];
            dot(s, r0, &mut out);
            (r0, out)
        })
        .collect();
    for (r0, out) in cols_out {
        for (k, o) in out.chunks_exact(n).enumerate() {
            for (i, &v) in o.iter().enumerate() {
                put(&mut y[i * rows + r0 + k], v);
            }
        }
    }
}

fn matmul_nt(y: &mut [f32], x: &[f32], w: &[f32], n: usize, k: usize, m: usize, accumulate: bool) {
    super::matmul::matmul_nt(y, x, w, n, k, m, 1.0, accumulate);
}

/// Decodes whole rows; the byte count was validated at construction, so this cannot fail.
fn dequantize_rows(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) {
    gguf::dequantize(dtype, bytes, out).expect("rows were validated when the matrix was built");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = crate::rng::SplitMix64::new(seed);
        (0..n).map(|_| s.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    /// Forward products and the input gradient (each overwriting and accumulating) and a row lookup of a quantized
    /// matrix equal those of its dequantized f32 twin: ≤ 1e-5 relative.
    fn assert_products_equal_the_twin(fq: &FrozenMatrix, label: &str) {
        let (rows, cols) = (fq.rows, fq.cols);
        let twin = fq.to_f32_matrix();
        for n in [1, 3, 17] {
            let x = rand(n * cols, 2 + n as u64);
            for accumulate in [false, true] {
                let (mut a, mut b) = (vec![0.5; n * rows], vec![0.5; n * rows]);
                fq.forward(&mut a, &x, n, accumulate);
                twin.forward(&mut b, &x, n, accumulate);
                let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs() / (1.0 + q.abs())).fold(0.0, f32::max);
                assert!(worst < 1e-5, "{label} n={n} accumulate={accumulate}: forward differs by {worst}");
            }
            let dy = rand(n * rows, 9);
            for accumulate in [false, true] {
                let (mut da, mut db) = (vec![0.25; n * cols], vec![0.25; n * cols]);
                fq.backward_input(&mut da, &dy, n, accumulate);
                twin.backward_input(&mut db, &dy, n, accumulate);
                let worst = da.iter().zip(&db).map(|(p, q)| (p - q).abs() / (1.0 + q.abs())).fold(0.0, f32::max);
                assert!(worst < 1e-5, "{label} n={n} accumulate={accumulate}: input gradient differs by {worst}");
            }
        }
        let mut row = vec![0.0; cols];
        fq.row_into(rows - 1, &mut row);
        assert_eq!(&row[..], &twin.to_f32()[(rows - 1) * cols..]);
    }

    #[test]
    fn quantized_products_equal_the_dequantized_twin() {
        let (rows, cols) = (300, 96); // two input-gradient tiles, the second partial
        let w = rand(rows * cols, 1);
        for dtype in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16, GgmlType::BF16] {
            let q = gguf::quantize(dtype, &w, cols).unwrap();
            let fq = FrozenMatrix::from_quantized(rows, cols, dtype, q).unwrap();
            assert_products_equal_the_twin(&fq, &format!("{dtype}"));
        }
    }

    /// forward_then's blocks cover y exactly once, each told its rows and columns: a term that depends on the
    /// position, added through them, equals the same term added after forward, for f32 and quantized storage (the
    /// row-by-row products of a few rows and the tiles of more, the last one partial), overwriting and accumulating.
    #[test]
    fn forward_then_adds_its_term_once_to_every_element() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (rows, cols) = (300, 96);
        let w = rand(rows * cols, 1);
        let q4 =
            FrozenMatrix::from_quantized(rows, cols, GgmlType::Q4_1, gguf::quantize(GgmlType::Q4_1, &w, cols).unwrap());
        for (label, fm) in [("f32", FrozenMatrix::from_f32(rows, cols, w.clone())), ("Q4_1", q4.unwrap())] {
            for n in [1, 3, DOT_MAX_ROWS + 1, 100] {
                let x = rand(n * cols, 2 + n as u64);
                let term = |i: usize, j: usize| ((i * 7 + j * 3) % 11) as f32 * 0.125;
                for accumulate in [false, true] {
                    let (mut a, mut b) = (rand(n * rows, 5), rand(n * rows, 5));
                    let covered = AtomicUsize::new(0);
                    fm.forward_then(&mut a, &x, n, accumulate, |part, row0, cs| {
                        covered.fetch_add(part.len(), Ordering::Relaxed);
                        for (i, p_row) in part.chunks_exact_mut(cs.len()).enumerate() {
                            for (j, p) in cs.clone().zip(p_row) {
                                *p += term(row0 + i, j);
                            }
                        }
                    });
                    fm.forward(&mut b, &x, n, accumulate);
                    for (k, v) in b.iter_mut().enumerate() {
                        *v += term(k / rows, k % rows);
                    }
                    assert_eq!(covered.into_inner(), n * rows, "{label} n={n}: the blocks do not cover y once");
                    let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs() / (1.0 + q.abs())).fold(0.0, f32::max);
                    assert!(worst < 1e-5, "{label} n={n} accumulate={accumulate}: differs by {worst}");
                }
            }
        }
    }

    /// The decode products over the integer kernels' blocks equal the exact product of the weights with the
    /// activations as quantized (8 bits, a scale per 4 values), up to f32 rounding, for 1..=4 rows, overwriting and
    /// accumulating; other storage takes the exact product. Each row's result is the same whatever the rows beside it.
    #[test]
    fn decode_products_equal_the_exact_product_of_the_quantized_activations() {
        use GgmlType::*;
        for dtype in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4K, Q5K, Q6K, F16] {
            let (rows, cols) = (300, if dtype.block_size() == 256 { 768 } else { 96 });
            let w = rand(rows * cols, 1);
            let fq = FrozenMatrix::from_quantized(rows, cols, dtype, gguf::quantize(dtype, &w, cols).unwrap()).unwrap();
            let x = rand(DOT_MAX_ROWS * cols, 4);
            let xq: Vec<f32> = match q8_dot::has_kernel(dtype) {
                true => x.chunks_exact(cols).flat_map(|r| Q8Vector::new(r).dequantize()).collect(),
                false => x.clone(),
            };
            let mut alone = vec![0.0f32; rows];
            fq.decode_forward(&mut alone, &x[..cols], 1, false);
            for n in 1..=DOT_MAX_ROWS {
                for accumulate in [false, true] {
                    let (mut a, mut b) = (vec![0.5; n * rows], vec![0.5; n * rows]);
                    fq.decode_forward(&mut a, &x, n, accumulate);
                    fq.forward(&mut b, &xq, n, accumulate);
                    let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs() / (1.0 + q.abs())).fold(0.0, f32::max);
                    assert!(worst < 1e-5, "{dtype} n={n} accumulate={accumulate}: differs by {worst}");
                    if !accumulate {
                        assert!(a[..rows] == alone[..], "{dtype} n={n}: the first row differs from its product alone");
                    }
                }
            }
        }
    }

    /// NF4 decode products over rows of whole blocks equal the exact product of the codes' weights
    /// (code · absmax / SCALE, [`q8_dot::Nf4Codes`]) with the quantized activations, up to f32 rounding, for 1..=4
    /// rows, overwriting and accumulating, each row the same whatever the rows beside it; rows that are not whole
    /// blocks (96 values, blocks straddling rows) take the exact product.
    #[test]
    fn nf4_decode_products_take_the_integer_codes() {
        use crate::engine::nf4::{Nf4Dtype, BLOCKSIZE};
        for (rows, cols) in [(200, 128), (130, 640), (7, 96)] {
            let w: Vec<f32> = rand(rows * cols, 5).iter().map(|v| v * 0.05).collect();
            let blocks = Nf4Blocks::quantize(&w, BLOCKSIZE, true, Nf4Dtype::BF16);
            let codes = q8_dot::Nf4Codes::new(&blocks.quant_map).unwrap();
            let whole = cols % BLOCKSIZE == 0;
            let twin: Vec<f32> = (0..rows * cols)
                .map(|i| {
                    let q = if i % 2 == 0 { blocks.packed[i / 2] >> 4 } else { blocks.packed[i / 2] & 15 };
                    codes.code(q as usize) as f32 * (blocks.block_absmax(i / BLOCKSIZE) / q8_dot::Nf4Codes::SCALE)
                })
                .collect();
            let twin = FrozenMatrix::from_f32(rows, cols, twin);
            let fq = FrozenMatrix::from_nf4(rows, cols, blocks).unwrap();
            let x = rand(DOT_MAX_ROWS * cols, 6);
            let xq: Vec<f32> = x.chunks_exact(cols).flat_map(|r| Q8Vector::new(r).dequantize()).collect();
            let mut alone = vec![0.0f32; rows];
            fq.decode_forward(&mut alone, &x[..cols], 1, false);
            for n in 1..=DOT_MAX_ROWS {
                for accumulate in [false, true] {
                    let (mut a, mut b) = (vec![0.5; n * rows], vec![0.5; n * rows]);
                    fq.decode_forward(&mut a, &x, n, accumulate);
                    match whole {
                        true => twin.forward(&mut b, &xq, n, accumulate),
                        false => fq.forward(&mut b, &x, n, accumulate),
                    }
                    let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs() / (1.0 + q.abs())).fold(0.0, f32::max);
                    assert!(worst < 1e-5, "[{rows}, {cols}] n={n} accumulate={accumulate}: differs by {worst}");
                    if !accumulate {
                        assert!(a[..rows] == alone[..], "[{rows}, {cols}] n={n}: the first row differs from alone");
                    }
                }
            }
        }
    }

    /// The input gradient through an NF4 layer equals the one through its dequantized f32 twin (the QLoRA
    /// must-show), as do the forward products; rows of 96 values make 64-value blocks straddle rows.
    #[test]
    fn nf4_products_and_input_gradient_equal_the_dequantized_twin() {
        use crate::engine::nf4::{Nf4Dtype, BLOCKSIZE};
        for (rows, cols) in [(200, 96), (130, 64), (7, 33)] {
            let w: Vec<f32> = rand(rows * cols, 3).iter().map(|v| v * 0.05).collect();
            for (double_quant, dtype) in [(false, Nf4Dtype::F32), (true, Nf4Dtype::BF16), (true, Nf4Dtype::F16)] {
                let blocks = Nf4Blocks::quantize(&w, BLOCKSIZE, double_quant, dtype);
                let fq = FrozenMatrix::from_nf4(rows, cols, blocks).unwrap();
                assert_eq!((fq.dtype(), fq.storage_name().as_str()), (None, "nf4"));
                let n_blocks = (rows * cols).div_ceil(BLOCKSIZE);
                let scales = if double_quant { n_blocks + 4 * n_blocks.div_ceil(256) + 1028 } else { 4 * n_blocks };
                assert_eq!(fq.storage_bytes(), (rows * cols).div_ceil(2) + scales);
                let worst_twin_error = w.iter().zip(fq.to_f32().iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst_twin_error < 0.02, "NF4 error {worst_twin_error} is too large for weights of 0.05");
                assert_products_equal_the_twin(&fq, &format!("[{rows}, {cols}] {dtype:?}"));
            }
        }
    }
}
