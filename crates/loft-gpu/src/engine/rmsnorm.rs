//! Twin of `loft::engine::rmsnorm`. Legend: N = rows, C = channels.

use loft::Result;

use crate::context::{groups_1d, groups_for, Binding, Context, GpuBuffer, Kernel};

fn kernel(name: &str, source: &str) -> Kernel {
    Kernel { name: name.to_string(), source: source.to_string(), entry: "main" }
}

/// y[N, C] = rmsnorm(x[N, C]) · w[C] (inference: the training kernel, its rstd left in scratch).
pub fn rmsnorm_forward(
    ctx: &Context,
    y: &mut GpuBuffer,
    x: &GpuBuffer,
    w: &GpuBuffer,
    c: usize,
    eps: f32,
) -> Result<()> {
    let n = x.len() / c;
    let mut rstd = ctx.zeros(n)?;
    rmsnorm_forward_train(ctx, y, &mut rstd, x, w, n, c, eps)
}

/// Training forward: y[N, C] = x[N, C] / rms(x) · w[C], and rstd[N] = 1/rms of each row, kept for the backward.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward_train(
    ctx: &Context,
    y: &mut GpuBuffer,
    rstd: &mut GpuBuffer,
    x: &GpuBuffer,
    w: &GpuBuffer,
    n: usize,
    c: usize,
    eps: f32,
) -> Result<()> {
    ensure!(y.len() == n * c && x.len() == n * c && rstd.len() == n && w.len() == c, "rmsnorm_forward_train: shapes");
    ctx.dispatch(
        &kernel("rmsnorm_forward", include_str!("../shaders/rmsnorm_forward.wgsl")),
        &[n as u32, c as u32, eps.to_bits(), 0],
        &[Binding::Write(y), Binding::Write(rstd), Binding::Read(x), Binding::Read(w)],
        groups_for(n),
    )
}

/// Backward of [`rmsnorm_forward_train`]. dx[N, C] is ACCUMULATED into; dw[C], when the norm weight is trained,
/// is accumulated too.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    ctx: &Context,
    dx: &mut GpuBuffer,
    dw: Option<&mut GpuBuffer>,
    dy: &GpuBuffer,
    x: &GpuBuffer,
    w: &GpuBuffer,
    rstd: &GpuBuffer,
    n: usize,
    c: usize,
) -> Result<()> {
    ensure!(dx.len() == n * c && dy.len() == n * c && x.len() == n * c, "rmsnorm_backward: shapes");
    ensure!(rstd.len() == n && w.len() == c, "rmsnorm_backward: shapes");
    let p = [n as u32, c as u32, 0, 0];
    ctx.dispatch(
        &kernel("rmsnorm_backward", include_str!("../shaders/rmsnorm_backward.wgsl")),
        &p,
        &[Binding::Write(dx), Binding::Read(dy), Binding::Read(x), Binding::Read(w), Binding::Read(rstd)],
        groups_for(n),
    )?;
    if let Some(dw) = dw {
        ensure!(dw.len() == c, "rmsnorm_backward: dw shape");
        ctx.dispatch(
            &kernel("rmsnorm_backward_weight", include_str!("../shaders/rmsnorm_backward_weight.wgsl")),
            &p,
            &[Binding::Write(dw), Binding::Read(dy), Binding::Read(x), Binding::Read(rstd)],
            groups_1d(c, 256),
        )?;
    }
    Ok(())
}
