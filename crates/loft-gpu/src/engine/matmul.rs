//! Twins of `loft::engine::matmul`: the three row-major products of a transformer's forward and backward, on one
//! tiled kernel (shaders/matmul.wgsl) that reads its operands through strides.
//! - `matmul_nt`: y[N,M] (+)= alpha · x[N,K] · w[M,K]ᵀ
//! - `matmul_nn`: y[N,K] (+)= alpha · x[N,M] · w[M,K]
//! - `matmul_tn`: y[M,K] (+)= alpha · x[N,M]ᵀ · z[N,K]

use loft::Result;

use crate::context::{groups_for, Binding, Context, GpuBuffer, Kernel};

const TEMPLATE: &str = include_str!("../shaders/matmul.wgsl");

/// Edge of the square output tile one workgroup computes.
pub(crate) const TILE: usize = 64;

/// The matmul kernel with B read by `b_decl` (its binding and a `load_b(k, n) -> f32`); `name` tells the
/// specialisations apart in the pipeline cache.
pub(crate) fn kernel(name: &str, b_decl: &str) -> Kernel {
    Kernel { name: name.to_string(), source: TEMPLATE.replace("//B_DECL", b_decl), entry: "main" }
}

const F32_B: &str = "@group(0) @binding(3) var<storage, read> b: array<T3>;
fn load_b(k: u32, n: u32) -> f32 {
    return f32(b[p.b_off + k * p.b_rs + n * p.b_cs]);
}";

/// Where an operand lives in its buffer: element offset, row stride, column stride.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

/// Parameter block of shaders/matmul.wgsl: c's element (m, n) is at c_off + m · c_rs + n.
#[allow(clippy::too_many_arguments)]
pub(crate) fn params(
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    alpha: f32,
    a: View,
    b: View,
    c_off: usize,
    c_rs: usize,
) -> Vec<u32> {
    [m, n, k, accumulate as usize]
        .iter()
        .map(|&v| v as u32)
        .chain([alpha.to_bits()])
        .chain([a.off, a.rs, a.cs, b.off, b.rs, b.cs, c_off, c_rs, 0, 0, 0].iter().map(|&v| v as u32))
        .collect()
}

pub(crate) fn groups(m: usize, n: usize) -> [u32; 3] {
    let [x, _, _] = groups_for(n.div_ceil(TILE));
    [x, m.div_ceil(TILE) as u32, 1]
}

/// c[M, N] = (accumulate ? c : 0) + alpha · A[M, K] · B[K, N] with A and B given as strided views; c is
/// row-major and contiguous from element 0.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    ctx: &Context,
    c: &mut GpuBuffer,
    a: &GpuBuffer,
    av: View,
    b: &GpuBuffer,
    bv: View,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    ensure!(c.len() >= m * n, "gemm: c is smaller than [{m}, {n}]");
    let extent = |v: View, rows: usize, cols: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            v.off + (rows - 1) * v.rs + (cols - 1) * v.cs + 1
        }
    };
    ensure!(a.len() >= extent(av, m, k) && b.len() >= extent(bv, k, n), "gemm: operand too small");
    if m == 0 || n == 0 {
        return Ok(());
    }
    // The reduction in slices of at most K_SLICE, each accumulating onto the last (see K_SLICE).
    let mut k0 = 0;
    loop {
        let kk = (k - k0).min(K_SLICE);
        let (a_s, b_s) = (View { off: av.off + k0 * av.cs, ..av }, View { off: bv.off + k0 * bv.rs, ..bv });
        let p = params(m, n, kk, accumulate || k0 > 0, alpha, a_s, b_s, 0, n);
        ctx.dispatch(
            &kernel("matmul_f32", F32_B),
            &p,
            &[Binding::Write(c), Binding::Read(a), Binding::Read(b)],
            groups(m, n),
        )?;
        k0 += kk;
        if k0 >= k {
            return Ok(());
        }
    }
}

/// The longest reduction one matmul dispatch runs: lavapipe sums a reduction of 60,000 (3,750 tiles of 16)
/// wrongly in one workgroup while 58,000 is right, so longer ones are split into dispatches that accumulate (a
/// head's input gradient reduces over the vocabulary).
pub(crate) const K_SLICE: usize = 32_768;

/// y[N,M] = (accumulate ? y : 0) + alpha · x[N,K] · w[M,K]ᵀ
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt(
    ctx: &Context,
    y: &mut GpuBuffer,
    x: &GpuBuffer,
    w: &GpuBuffer,
    n: usize,
    k: usize,
    m: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    let (xv, wv) = (View { off: 0, rs: k, cs: 1 }, View { off: 0, rs: 1, cs: k });
    gemm(ctx, y, x, xv, w, wv, n, m, k, alpha, accumulate)
}

/// y[N,K] = (accumulate ? y : 0) + alpha · x[N,M] · w[M,K]
#[allow(clippy::too_many_arguments)]
pub fn matmul_nn(
    ctx: &Context,
    y: &mut GpuBuffer,
    x: &GpuBuffer,
    w: &GpuBuffer,
    n: usize,
    m: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    let (xv, wv) = (View { off: 0, rs: m, cs: 1 }, View { off: 0, rs: k, cs: 1 });
    gemm(ctx, y, x, xv, w, wv, n, k, m, alpha, accumulate)
}

/// y[M,K] = (accumulate ? y : 0) + alpha · x[N,M]ᵀ · z[N,K]
#[allow(clippy::too_many_arguments)]
pub fn matmul_tn(
    ctx: &Context,
    y: &mut GpuBuffer,
    x: &GpuBuffer,
    z: &GpuBuffer,
    n: usize,
    m: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    let (xv, zv) = (View { off: 0, rs: 1, cs: m }, View { off: 0, rs: k, cs: 1 });
    gemm(ctx, y, x, xv, z, zv, m, k, n, alpha, accumulate)
}
