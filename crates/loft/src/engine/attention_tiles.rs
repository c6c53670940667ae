//! The products of the training attention's tiles (engine::attention): c[M, N] = a[M, K] · b[K, N] at the block
//! sizes of a score tile (M, N, K up to a few hundred), written for them instead of going through the general gemm,
//! whose packing and copies cost as much as its multiply-adds at these sizes.
//!
//! b's rows and c's rows are contiguous (N lanes each, rows strided), a is read through any (row, column) strides, one
//! value at a time: a block of 6 rows × 64 columns of c is held in AVX-512 registers, and per step of K each row's a
//! value is broadcast against one row of b, so that every load of b feeds 6 fused multiply-adds. The result goes
//! through a [`Store`]: plain, accumulated, or fused with the softmax's element-wise step, so that a score block is
//! written once. CPUs without AVX-512 take gemm's product and then the store as a separate pass.
//! Legend: M = rows of c, N = columns of c, K = inner width.

use gemm::Parallelism;

use super::matmul::gemm_strided;
use super::vector_math as vm;

/// One product's operands: c[M, N] (row r at c[r · c_stride..]) from a[M, K] (a[r, kk] at a[r · a_s.0 + kk · a_s.1])
/// and b[K, N] (row kk at b[kk · b_stride..]).
pub struct Tiles<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub c: &'a mut [f32],
    pub c_stride: usize,
    pub a: &'a [f32],
    pub a_s: (usize, usize),
    pub b: &'a [f32],
    pub b_stride: usize,
    /// Row r of a is zero outside its columns a_cols[r].0..a_cols[r].1 (a bound, not necessarily tight; None: no
    /// bound): a block of rows multiplies only the columns of K that one of its rows may have nonzero.
    pub a_cols: Option<&'a [(usize, usize)]>,
}

/// What is written to c[r, j] from the product's value ab = Σ_kk a[r, kk] · b[kk, j].
#[derive(Clone, Copy)]
pub enum Store<'a> {
    /// c = alpha · ab
    Set(f32),
    /// c += alpha · ab
    Add(f32),
    /// c = exp(alpha · ab − shift[r]) for the columns keys[r].0 ≤ j < keys[r].1, 0 elsewhere: a softmax row's
    /// probabilities under a mask. Column blocks that no row of a register block sees are not multiplied.
    Exp { alpha: f32, shift: &'a [f32], keys: &'a [(usize, usize)] },
    /// c = alpha · p[r, j] · (ab − delta[r]), p laid out as c: the softmax's backward dS = P ⊙ (dP − Δ). p is zero
    /// outside the columns keys[r] (as Exp wrote it), where column blocks are not multiplied either.
    SoftmaxGrad { alpha: f32, p: &'a [f32], delta: &'a [f32], keys: &'a [(usize, usize)] },
}

/// c = store(a · b), on the calling thread.
pub fn tile_product(t: Tiles, store: Store) {
    let Tiles { m, n, k, ref c, c_stride, a, a_s, b, b_stride, a_cols } = t;
    if m == 0 || n == 0 {
        return;
    }
    assert!(c_stride >= n && b_stride >= n, "tile_product: a row stride is below N = {n}");
    assert!(c.len() >= (m - 1) * c_stride + n, "tile_product: c is smaller than [{m}, {n}]");
    assert!(k == 0 || b.len() >= (k - 1) * b_stride + n, "tile_product: b is smaller than [{k}, {n}]");
    assert!(k == 0 || a.len() > (m - 1) * a_s.0 + (k - 1) * a_s.1, "tile_product: a is smaller than [{m}, {k}]");
    match store {
        Store::Set(_) | Store::Add(_) => {}
        Store::Exp { shift, keys, .. } => {
            assert!(shift.len() >= m && keys.len() >= m, "tile_product: a shift and keys per row");
        }
        Store::SoftmaxGrad { p, delta, keys, .. } => {
            assert!(p.len() >= (m - 1) * c_stride + n, "tile_product: p is smaller than c");
            assert!(delta.len() >= m && keys.len() >= m, "tile_product: a delta and keys per row");
        }
    }
    if let Some(cols) = a_cols {
        assert!(cols.len() >= m && cols[..m].iter().all(|&(lo, hi)| lo >= hi || hi <= k), "tile_product: a_cols");
    }
    widest(t, store)
}

/// A block's online-softmax step: [`softmax_block`] or [`softmax_block_training`].
pub type SoftmaxStep = fn(&mut [f32], usize, &[(usize, usize)], &mut [f32], &mut [f32], &mut [f32]);

/// The online softmax's step over one block of scaled scores sc[M, N] (row r at sc[r · N..]), for the rows that see
/// the columns keys[r] = [ja, jb): with m' = max(mx[r], max_j sc[r, j]) over them, sc[r, j] = exp(sc[r, j] − m')
/// there and 0 elsewhere, correction[r] = exp(mx[r] − m'), l[r] = l[r] · correction[r] + Σ_j sc[r, j], mx[r] = m'.
/// A row that sees nothing is zeroed and keeps its state (correction 1). The exponentials are vector_math's, the same
/// bits at every vector width: the inference prefill runs this too, and greedy decoding after it (gemma3_real's) is
/// close enough to a tie to flip on a different exp's rounding.
pub fn softmax_block(
    sc: &mut [f32],
    n: usize,
    keys: &[(usize, usize)],
    mx: &mut [f32],
    l: &mut [f32],
    correction: &mut [f32],
) {
    softmax_rows(sc, n, keys, mx, l, correction, |row, prev| {
        let m_new = prev.max(vm::max(row));
        (m_new, vm::exp_shifted_sum(row, m_new))
    })
}

/// [`softmax_block`] for training: on AVX-512 each row's maximum and its exponentials and their sum in vector
/// registers, e^x by the same fused multiply-add routine as the backward's [`Store::Exp`] (about 1 ulp; so the
/// forward's row logsumexp and the probabilities the backward recomputes from it come from one exp). Other CPUs take
/// [`softmax_block`]. The inference prefill keeps [`softmax_block`] (its bits must not depend on the CPU).
pub fn softmax_block_training(
    sc: &mut [f32],
    n: usize,
    keys: &[(usize, usize)],
    mx: &mut [f32],
    l: &mut [f32],
    correction: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return softmax_rows(sc, n, keys, mx, l, correction, |row, prev| unsafe { avx512::exp_row(row, prev) });
    }
    softmax_block(sc, n, keys, mx, l, correction)
}

/// The online softmax's step over a block's rows, `exp_row(row[ja..jb], mx[r])` giving (m', Σ) with the row's
/// exponentials written in place.
fn softmax_rows(
    sc: &mut [f32],
    n: usize,
    keys: &[(usize, usize)],
    mx: &mut [f32],
    l: &mut [f32],
    correction: &mut [f32],
    exp_row: impl Fn(&mut [f32], f32) -> (f32, f32),
) {
    let m = keys.len();
    assert!(sc.len() >= m * n && mx.len() >= m && l.len() >= m && correction.len() >= m, "softmax_block: shapes");
    assert!(keys.iter().all(|&(ja, jb)| ja >= jb || jb <= n), "softmax_block: keys beyond N = {n}");
    for (r, row) in sc.chunks_exact_mut(n.max(1)).take(m).enumerate() {
        let (ja, jb) = keys[r];
        if ja >= jb {
            row.fill(0.0);
            correction[r] = 1.0;
            continue;
        }
        let (m_new, sum) = exp_row(&mut row[ja..jb], mx[r]);
        row[..ja].fill(0.0);
        row[jb..].fill(0.0);
        correction[r] = (mx[r] - m_new).exp();
        l[r] = l[r] * correction[r] + sum;
        mx[r] = m_new;
    }
}

/// dst[j, i] = src[i, j] for i < rows, j < cols: row i of src at src[i · src_stride..], row j of dst at
/// dst[j · dst_stride..]. On AVX-512, 16 × 16 blocks are transposed in registers; the edges element by element.
pub fn transpose(dst: &mut [f32], dst_stride: usize, src: &[f32], src_stride: usize, rows: usize, cols: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        src_stride >= cols && src.len() >= (rows - 1) * src_stride + cols,
        "transpose: src is not [{rows}, {cols}]"
    );
    assert!(
        dst_stride >= rows && dst.len() >= (cols - 1) * dst_stride + rows,
        "transpose: dst is not [{cols}, {rows}]"
    );
    let (mut rows16, mut cols16) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        (rows16, cols16) = (rows / 16 * 16, cols / 16 * 16);
        // SAFETY: the CPU has AVX-512 (checked just above); the blocks lie within the extents asserted above.
        unsafe { avx512::transpose_blocks(dst, dst_stride, src, src_stride, rows16, cols16) };
    }
    // The edges: columns past the whole blocks for every row, then rows past them for the whole blocks' columns.
    for i in 0..rows {
        let from = if i < rows16 { cols16 } else { 0 };
        for j in from..cols {
            dst[j * dst_stride + i] = src[i * src_stride + j];
        }
    }
}

/// The AVX-512 variant in intrinsics: blocks of up to 6 rows × 64 columns (24 vectors of sums, as gemm's own
/// AVX-512 kernel holds), with masked loads for the last columns, so that every size takes the register-blocked loop.
/// Written as safe code, the compiler assembled b's rows from pieces with shuffles and spilled the row offsets.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{k_range, seen_columns, store_grad, Store, Tiles};

    /// Rows and columns of a block.
    const ROWS: usize = 6;
    pub(super) const COLS: usize = 64;

    /// The product, column blocks outermost: a block of b (K × 64) is read from cache by every row block.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,avx,fma")]
    pub(super) fn product(t: Tiles, store: Store) {
        let Tiles { m, n, k, c, c_stride: cs, a, a_s, b, b_stride: bs, a_cols } = t;
        let mut sums = [[0.0f32; COLS]; ROWS];
        for col in (0..n).step_by(COLS) {
            let width = COLS.min(n - col);
            let b = &b[col..];
            for row in (0..m).step_by(ROWS) {
                let rows = ROWS.min(m - row);
                let (seen_lo, seen_hi) = seen_columns(store, row, rows, n);
                if col >= seen_hi || col + width <= seen_lo {
                    // No row sees these columns: p and dS are zero there.
                    for r in row..row + rows {
                        c[r * cs + col..r * cs + col + width].fill(0.0);
                    }
                    continue;
                }
                // Only the columns up to the last one a row sees are multiplied (the causal edge of a block); the
                // sums past them are zero, which the Exp and SoftmaxGrad stores turn into zeros.
                let computed = width.min(seen_hi - col);
                for s in &mut sums[..rows] {
                    s[computed..width].fill(0.0);
                }
                // SAFETY (of every arm): row + rows ≤ M, and b holds computed ≤ COLS columns of K rows (both
                // checked by tile_product), as `block` requires.
                let f = match (rows, computed.div_ceil(16)) {
                    (6, 4) => block::<6, 4>,
                    (6, 3) => block::<6, 3>,
                    (6, 2) => block::<6, 2>,
                    (6, _) => block::<6, 1>,
                    (5, 4) => block::<5, 4>,
                    (5, 3) => block::<5, 3>,
                    (5, 2) => block::<5, 2>,
                    (5, _) => block::<5, 1>,
                    (4, 4) => block::<4, 4>,
                    (4, 3) => block::<4, 3>,
                    (4, 2) => block::<4, 2>,
                    (4, _) => block::<4, 1>,
                    (3, 4) => block::<3, 4>,
                    (3, 3) => block::<3, 3>,
                    (3, 2) => block::<3, 2>,
                    (3, _) => block::<3, 1>,
                    (2, 4) => block::<2, 4>,
                    (2, 3) => block::<2, 3>,
                    (2, 2) => block::<2, 2>,
                    (2, _) => block::<2, 1>,
                    (_, 4) => block::<1, 4>,
                    (_, 3) => block::<1, 3>,
                    (_, 2) => block::<1, 2>,
                    (_, _) => block::<1, 1>,
                };
                // Set and Add store straight from the registers; the others take the sums through memory.
                let out = match store {
                    Store::Set(alpha) => Some((&mut c[row * cs + col..], cs, alpha, false)),
                    Store::Add(alpha) => Some((&mut c[row * cs + col..], cs, alpha, true)),
                    _ => None,
                };
                unsafe { f(&mut sums, out, a, a_s, row, k_range(a_cols, row, rows, k), b, bs, computed) };
                match store {
                    Store::Set(_) | Store::Add(_) => {}
                    Store::Exp { alpha, shift, keys } => {
                        let (shift, keys) = (&shift[row..row + rows], &keys[row..row + rows]);
                        store_exp(c, cs, row, col, width, &sums[..rows], alpha, shift, keys)
                    }
                    Store::SoftmaxGrad { alpha, p, delta, .. } => {
                        store_grad(c, cs, row, col, width, &sums[..rows], alpha, p, delta)
                    }
                }
            }
        }
    }

    /// Rows row..row + R of the sums a · b[.., ..width] (R rows × V vectors, the last one masked to the columns
    /// below width), in registers over the steps k0..k1 of K; then written to sums, or with out = (c, cs, alpha,
    /// accumulate) stored as c[r · cs + j] = alpha · sum (+ c[r · cs + j]) for j < width.
    ///
    /// # Safety
    /// row + R ≤ M, k1 ≤ K and a holds a[M, K] at strides a_s; b holds K rows of at least width ≤ 16·V columns at
    /// stride bs, width > 16·(V − 1); out's c holds (R − 1)·cs + width floats.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, const V: usize>(
        sums: &mut [[f32; COLS]; ROWS],
        out: Option<(&mut [f32], usize, f32, bool)>,
        a: &[f32],
        (ars, acs): (usize, usize),
        row: usize,
        (k0, k1): (usize, usize),
        b: &[f32],
        bs: usize,
        width: usize,
    ) {
        let last: __mmask16 = (1u32 << (width - 16 * (V - 1))).wrapping_sub(1) as __mmask16;
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for kk in k0..k1 {
            // SAFETY: row kk < K of b has `width` columns, and the last vector's load reads only those (masked).
            let bk = unsafe { b.add(kk * bs) };
            let bv: [__m512; V] = std::array::from_fn(|v| unsafe {
                if v + 1 < V {
                    _mm512_loadu_ps(bk.add(16 * v))
                } else {
                    _mm512_maskz_loadu_ps(last, bk.add(16 * v))
                }
            });
            let ak = unsafe { a.add(row * ars + kk * acs) };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row + r < M and kk < K: within a.
                let x = _mm512_set1_ps(unsafe { *ak.add(r * ars) });
                for (s, &y) in acc.iter_mut().zip(&bv) {
                    *s = _mm512_fmadd_ps(x, y, *s);
                }
            }
        }
        if let Some((c, cs, alpha, accumulate)) = out {
            let alpha = _mm512_set1_ps(alpha);
            for (r, acc) in acc.iter().enumerate() {
                for (v, &x) in acc.iter().enumerate() {
                    let lanes = if v + 1 < V { !0 } else { last };
                    // SAFETY: lane l of vector v is column 16·v + l < width of row r < R, within c (the caller's
                    // extent), and only those lanes are read and written.
                    unsafe {
                        let at = c.as_mut_ptr().add(r * cs + 16 * v);
                        let y = if accumulate {
                            _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, at), _mm512_mul_ps(alpha, x))
                        } else {
                            _mm512_mul_ps(alpha, x)
                        };
                        _mm512_mask_storeu_ps(at, lanes, y);
                    }
                }
            }
            return;
        }
        for (s, acc) in sums.iter_mut().zip(&acc) {
            for (v, &x) in acc.iter().enumerate() {
                // SAFETY: s holds COLS = 64 ≥ 16·V floats.
                unsafe { _mm512_storeu_ps(s.as_mut_ptr().add(16 * v), x) };
            }
        }
    }

    /// The 16 × 16 blocks of [`super::transpose`] over rows 0..rows16 and columns 0..cols16 (multiples of 16), each in
    /// four rounds of exchanges between registers: round b swaps the b-wide blocks off the diagonal of each 2b × 2b
    /// block, so that after b = 8, 4, 2, 1 every element has moved from (i, j) to (j, i).
    ///
    /// # Safety
    /// src holds rows16 rows of cols16 at stride src_stride, dst cols16 rows of rows16 at stride dst_stride.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_blocks(
        dst: &mut [f32],
        dst_stride: usize,
        src: &[f32],
        src_stride: usize,
        rows16: usize,
        cols16: usize,
    ) {
        // For round b: the lower row of a pair takes its own lanes l with l & b = 0 and the upper row's lanes l − b
        // for the others; the upper row takes the lower's lanes l + b and its own l & b ≠ 0.
        let index = |b: usize, upper: bool| -> __m512i {
            let lanes: [i32; 16] = std::array::from_fn(|l| match (upper, l & b == 0) {
                (false, true) => l as i32,
                (false, false) => (16 + l - b) as i32,
                (true, true) => (l + b) as i32,
                (true, false) => (16 + l) as i32,
            });
            // SAFETY: lanes is 16 i32, one vector.
            unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) }
        };
        let rounds = [8, 4, 2, 1].map(|b| (b, index(b, false), index(b, true)));
        for i0 in (0..rows16).step_by(16) {
            for j0 in (0..cols16).step_by(16) {
                // SAFETY: rows i0..i0 + 16 of src hold columns j0..j0 + 16 (the caller's extents).
                let mut r: [__m512; 16] =
                    std::array::from_fn(|i| unsafe { _mm512_loadu_ps(src.as_ptr().add((i0 + i) * src_stride + j0)) });
                for &(b, lower, upper) in &rounds {
                    for i in (0..16).filter(|i| i & b == 0) {
                        let (x, y) = (r[i], r[i + b]);
                        r[i] = _mm512_permutex2var_ps(x, lower, y);
                        r[i + b] = _mm512_permutex2var_ps(x, upper, y);
                    }
                }
                for (j, &row) in r.iter().enumerate() {
                    // SAFETY: rows j0..j0 + 16 of dst hold columns i0..i0 + 16 (the caller's extents).
                    unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add((j0 + j) * dst_stride + i0), row) };
                }
            }
        }
    }

    /// Store::Exp of one block in intrinsics: c[row + r, col + j] = exp(alpha · sums[r][j] − shift[r]) where
    /// keys[r].0 ≤ col + j < keys[r].1, else 0, for j < width ≤ COLS.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn store_exp(
        c: &mut [f32],
        cs: usize,
        row: usize,
        col: usize,
        width: usize,
        sums: &[[f32; COLS]],
        alpha: f32,
        shift: &[f32],
        keys: &[(usize, usize)],
    ) {
        let alpha = _mm512_set1_ps(alpha);
        for (r, ((s, &shift), &(ja, jb))) in sums.iter().zip(shift).zip(keys).enumerate() {
            let dst = &mut c[(row + r) * cs + col..][..width];
            let shift = _mm512_set1_ps(shift);
            for v in 0..width.div_ceil(16) {
                let c0 = col + 16 * v;
                let lanes = 16.min(width - 16 * v);
                let (lo, hi) = (ja.saturating_sub(c0).min(lanes), jb.saturating_sub(c0).min(lanes));
                let keep = if lo < hi { ((1u32 << hi) - 1) & !((1u32 << lo) - 1) } else { 0 } as __mmask16;
                let write = ((1u32 << lanes) - 1) as __mmask16;
                // SAFETY: v < width / 16 rounded up: the lanes below `lanes` are within s and dst, and the masked
                // store writes only those.
                unsafe {
                    let x = _mm512_fmsub_ps(alpha, _mm512_loadu_ps(s.as_ptr().add(16 * v)), shift);
                    _mm512_mask_storeu_ps(dst.as_mut_ptr().add(16 * v), write, _mm512_maskz_mov_ps(keep, exp(x)));
                }
            }
        }
    }

    /// With m' = max(prev, max(row)): row = exp(row − m') in place; returns (m', Σ row), the sum in 16 lanes.
    #[target_feature(enable = "avx512f")]
    pub(super) fn exp_row(row: &mut [f32], prev: f32) -> (f32, f32) {
        let (whole, rest) = (row.len() / 16, row.len() % 16);
        let tail = ((1u32 << rest) - 1) as __mmask16;
        let p = row.as_mut_ptr();
        // SAFETY: vectors v < whole lie within row; the tail's masked loads and stores touch only its `rest` lanes.
        unsafe {
            let mut vmax = _mm512_set1_ps(prev);
            for v in 0..whole {
                vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(p.add(16 * v)));
            }
            if rest > 0 {
                vmax = _mm512_max_ps(
                    vmax,
                    _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), tail, p.add(16 * whole)),
                );
            }
            let m = _mm512_reduce_max_ps(vmax);
            let shift = _mm512_set1_ps(m);
            let mut sum = _mm512_setzero_ps();
            for v in 0..whole {
                let e = exp(_mm512_sub_ps(_mm512_loadu_ps(p.add(16 * v)), shift));
                _mm512_storeu_ps(p.add(16 * v), e);
                sum = _mm512_add_ps(sum, e);
            }
            if rest > 0 {
                let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, p.add(16 * whole)), shift));
                _mm512_mask_storeu_ps(p.add(16 * whole), tail, e);
                sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(tail, e));
            }
            (m, _mm512_reduce_add_ps(sum))
        }
    }

    /// e^x as vector_math::exp computes it (Cody–Waite reduction, Cephes' polynomial), with fused multiply-adds and
    /// the scaling by 2ⁿ done by vscalefps, which also takes over- and underflow: about 1 ulp, 0 below −104.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.722_84)), _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for coef in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coef));
        }
        let y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(y, n)
    }
}

/// The run-time choice of the widest vectors.
fn widest(t: Tiles, store: Store) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU has every feature avx512::product was compiled with (checked just above).
        return unsafe { avx512::product(t, store) };
    }
    general(t, store)
}

/// Every other CPU: gemm's own kernels (its run-time choice of AVX2 or the baseline) for the product, then the
/// store element by element. (Register blocks in safe code, compiled for AVX2 and forced on an AVX-512 machine, made
/// attention_bench 2.2–2.4× slower than this path there; not measured on an AVX2-only CPU.)
fn general(t: Tiles, store: Store) {
    let Tiles { m, n, k, c, c_stride: cs, a, a_s, b, b_stride: bs, .. } = t;
    let (alpha, accumulate) = match store {
        Store::Set(alpha) | Store::Exp { alpha, .. } => (alpha, false),
        Store::Add(alpha) => (alpha, true),
        Store::SoftmaxGrad { .. } => (1.0, false),
    };
    gemm_strided(m, n, k, c, (cs, 1), accumulate, a, a_s, b, (bs, 1), alpha, Parallelism::None);
    for (r, row) in c.chunks_mut(cs).take(m).enumerate() {
        let row = &mut row[..n];
        match store {
            Store::Set(_) | Store::Add(_) => {}
            Store::Exp { shift, keys, .. } => {
                let (ja, jb) = (keys[r].0.min(n), keys[r].1.min(n));
                if ja >= jb {
                    row.fill(0.0);
                    continue;
                }
                vm::exp_shifted(&mut row[ja..jb], shift[r]);
                row[..ja].fill(0.0);
                row[jb..].fill(0.0);
            }
            Store::SoftmaxGrad { alpha, p, delta, .. } => {
                let (p, delta) = (&p[r * cs..r * cs + n], delta[r]);
                row.iter_mut().zip(p).for_each(|(x, &p)| *x = alpha * p * (*x - delta));
            }
        }
    }
}

/// The columns [lo, hi) that any of rows [row, row + rows) sees under an Exp or SoftmaxGrad store's mask (all N
/// under the others).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn seen_columns(store: Store, row: usize, rows: usize, n: usize) -> (usize, usize) {
    match store {
        Store::Exp { keys, .. } | Store::SoftmaxGrad { keys, .. } => keys[row..row + rows]
            .iter()
            .filter(|(ja, jb)| ja < jb)
            .fold((n, 0), |(lo, hi), &(ja, jb)| (lo.min(ja), hi.max(jb))),
        _ => (0, n),
    }
}

/// The columns of a (the steps of K) [lo, hi) that rows [row, row + rows) may have nonzero.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn k_range(a_cols: Option<&[(usize, usize)]>, row: usize, rows: usize, k: usize) -> (usize, usize) {
    match a_cols {
        Some(cols) => {
            let (lo, hi) = cols[row..row + rows]
                .iter()
                .filter(|(lo, hi)| lo < hi)
                .fold((k, 0), |(lo, hi), &(a, b)| (lo.min(a), hi.max(b)));
            if lo < hi {
                (lo, hi)
            } else {
                (0, 0)
            }
        }
        None => (0, k),
    }
}

/// dS = alpha · P ⊙ (sums − Δ) for rows row.. and columns col..col + width of c (P at the same places of p).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn store_grad(
    c: &mut [f32],
    cs: usize,
    row: usize,
    col: usize,
    width: usize,
    sums: &[[f32; avx512::COLS]],
    alpha: f32,
    p: &[f32],
    delta: &[f32],
) {
    for (r, acc) in sums.iter().enumerate() {
        let at = (row + r) * cs + col;
        let (dst, acc, p, delta) = (&mut c[at..at + width], &acc[..width], &p[at..at + width], delta[row + r]);
        for ((d, &s), &p) in dst.iter_mut().zip(acc).zip(p) {
            *d = alpha * p * (s - delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn rand(len: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..len).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
    }

    /// Two blocks of the online softmax in a row against the rule in f64, on odd widths and masks of every kind:
    /// the portable variant and the training one.
    #[test]
    fn softmax_block_matches_the_rule() {
        for (block, (m, n)) in [softmax_block as SoftmaxStep, softmax_block_training]
            .into_iter()
            .flat_map(|f| [(96, 256), (7, 37), (5, 1), (12, 70), (4, 16), (3, 33)].map(|mn| (f, mn)))
        {
            let keys: Vec<(usize, usize)> = (0..m)
                .map(|r| [(0, 0), (0, n), (0, (r + 1).min(n)), (r / 3 % n, (r / 3 % n + 5).min(n))][r % 4])
                .collect();
            let (mut mx, mut l, mut correction) = (vec![f32::NEG_INFINITY; m], vec![0.0f32; m], vec![0.0f32; m]);
            let (mut want_mx, mut want_l) = (vec![f64::NEG_INFINITY; m], vec![0.0f64; m]);
            for seed in [1, 2] {
                let scores: Vec<f32> = rand(m * n, seed).iter().map(|x| x * 8.0).collect();
                let mut sc = scores.clone();
                block(&mut sc, n, &keys, &mut mx, &mut l, &mut correction);
                for r in 0..m {
                    let (ja, jb) = keys[r];
                    let row = &scores[r * n..(r + 1) * n];
                    let m_new = (ja..jb).fold(want_mx[r], |a, j| a.max(row[j] as f64));
                    let corr = if ja < jb { (want_mx[r] - m_new).exp() } else { 1.0 };
                    let mut sum = 0.0;
                    for j in 0..n {
                        let want = if (ja..jb).contains(&j) { (row[j] as f64 - m_new).exp() } else { 0.0 };
                        sum += want;
                        let got = sc[r * n + j] as f64;
                        assert!((got - want).abs() <= 1e-6 * want.max(1e-6), "m={m} n={n} [{r}, {j}]: {got} vs {want}");
                    }
                    if ja < jb {
                        (want_l[r], want_mx[r]) = (want_l[r] * corr + sum, m_new);
                    }
                    assert_eq!(mx[r] as f64, want_mx[r], "m={m} n={n} row {r}: max");
                    assert!((correction[r] as f64 - corr).abs() <= 1e-6 * corr.max(1e-6), "row {r}: correction");
                    assert!((l[r] as f64 - want_l[r]).abs() <= 1e-5 * want_l[r].max(1e-6), "row {r}: l");
                }
            }
        }
    }

    #[test]
    fn transpose_matches_a_plain_loop() {
        for (rows, cols) in [(256, 64), (37, 53), (16, 16), (33, 17), (1, 5), (5, 1), (48, 96)] {
            let (ss, ds) = (cols + 3, rows + 7);
            let src = rand(rows * ss, 1);
            let dst0 = rand(cols * ds, 2);
            let mut dst = dst0.clone();
            transpose(&mut dst, ds, &src, ss, rows, cols);
            for j in 0..cols {
                for i in 0..ds {
                    let want = if i < rows { src[i * ss + j] } else { dst0[j * ds + i] };
                    assert_eq!(dst[j * ds + i], want, "rows={rows} cols={cols} [{j}, {i}]");
                }
            }
        }
    }

    /// The chosen variant and the general one (gemm, then the store) against a plain loop in f64, for every store,
    /// both layouts of a (rows and columns contiguous), with and without bounds on a's nonzero columns, odd sizes,
    /// sizes that fill whole blocks and strided rows.
    #[test]
    fn tile_product_matches_a_plain_loop() {
        type Product = fn(Tiles, Store);
        let variants: [(&str, Product); 2] = [("chosen", tile_product), ("general", general)];
        for (m, n, k) in [(96, 256, 64), (37, 53, 19), (5, 3, 1), (64, 33, 96), (17, 64, 256), (8, 32, 7), (1, 1, 0)] {
            let (cs, bs) = (n + 3, n + 5);
            let b = rand(k.max(1) * bs, 2);
            let c0 = rand(m * cs, 3);
            let delta = rand(m, 5);
            let shift: Vec<f32> = rand(m, 6).iter().map(|x| x * 3.0).collect();
            // Masks of every kind: empty, all, a causal edge, a band; p is zero outside them, as SoftmaxGrad expects.
            let keys: Vec<(usize, usize)> =
                (0..m).map(|r| [(0, 0), (0, n), (0, (r + 1).min(n)), (r / 3, r)][r % 4]).collect();
            let mut p = rand(m * cs, 4);
            for (r, row) in p.chunks_exact_mut(cs).enumerate() {
                row.iter_mut()
                    .enumerate()
                    .filter(|(j, _)| !(keys[r].0..keys[r].1).contains(j))
                    .for_each(|(_, x)| *x = 0.0);
            }
            for (transposed, bounded) in [(false, false), (true, false), (false, true), (true, true)] {
                let a_s = if transposed { (1, m + 2) } else { (k + 1, 1) };
                let mut a = rand(m * (k + 1) + k * (m + 2) + 1, 1);
                // Bounds of every kind on a's nonzero columns (a zeroed outside them): all, a band, none, a tail.
                let cols: Vec<(usize, usize)> =
                    (0..m).map(|r| [(0, k), (r % 3, k.saturating_sub(r % 4)), (0, 0), (k / 2, k)][r % 4]).collect();
                let a_cols = bounded.then_some(&cols[..]);
                if bounded {
                    for (r, &(lo, hi)) in cols.iter().enumerate() {
                        (0..k).filter(|kk| !(lo..hi).contains(kk)).for_each(|kk| a[r * a_s.0 + kk * a_s.1] = 0.0);
                    }
                }
                let a = a;
                let ab = |r: usize, j: usize| -> (f64, f64) {
                    let terms = (0..k).map(|kk| a[r * a_s.0 + kk * a_s.1] as f64 * b[kk * bs + j] as f64);
                    terms.fold((0.0, 0.0), |(s, mag), x| (s + x, mag + x.abs()))
                };
                let stores: [(&str, Store); 4] = [
                    ("set", Store::Set(0.75)),
                    ("add", Store::Add(0.75)),
                    ("exp", Store::Exp { alpha: 0.75, shift: &shift, keys: &keys }),
                    ("grad", Store::SoftmaxGrad { alpha: 0.75, p: &p, delta: &delta, keys: &keys }),
                ];
                for (name, store) in stores {
                    for (variant, f) in variants {
                        let mut c = c0.clone();
                        f(Tiles { m, n, k, c: &mut c, c_stride: cs, a: &a, a_s, b: &b, b_stride: bs, a_cols }, store);
                        for r in 0..m {
                            for j in 0..cs {
                                let (got, old) = (c[r * cs + j] as f64, c0[r * cs + j] as f64);
                                let at =
                                    format!("{variant} {name} m={m} n={n} k={k} transposed={transposed} bounded={bounded} [{r}, {j}]");
                                if j >= n {
                                    assert_eq!(got, old, "{at}: column beyond N was written");
                                    continue;
                                }
                                let (s, mag) = ab(r, j);
                                let (want, tol) = match name {
                                    "set" => (0.75 * s, 0.75 * mag),
                                    "add" => (old + 0.75 * s, 0.75 * mag + old.abs()),
                                    "exp" => {
                                        let (ja, jb) = keys[r];
                                        let e = (0.75 * s - shift[r] as f64).exp();
                                        if (ja..jb).contains(&j) {
                                            (e, e * (1.0 + 0.75 * mag))
                                        } else {
                                            (0.0, 0.0)
                                        }
                                    }
                                    _ => {
                                        let pr = p[r * cs + j] as f64;
                                        (
                                            0.75 * pr * (s - delta[r] as f64),
                                            0.75 * pr.abs() * (mag + delta[r].abs() as f64),
                                        )
                                    }
                                };
                                let err = (got - want).abs();
                                assert!(err <= 1e-5 * tol.max(1e-3), "{at}: {got} vs {want}");
                            }
                        }
                    }
                }
            }
        }
    }
}
