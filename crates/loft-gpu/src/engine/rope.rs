//! Twin of `loft::engine::rope`: the rotation in place, with the cos/sin tables the CPU builds
//! (`Rope::tables`, [T, D/2] each) uploaded as they are. Legend: T = tokens, H = heads, D = head_dim.

use loft::Result;

use crate::context::{groups_1d, Binding, Context, GpuBuffer, Kernel};

#[allow(clippy::too_many_arguments)]
fn rope(
    ctx: &Context,
    x: &mut GpuBuffer,
    t: usize,
    h: usize,
    d: usize,
    cos: &GpuBuffer,
    sin: &GpuBuffer,
    backward: bool,
) -> Result<()> {
    let half = d / 2;
    ensure!(x.len() == t * h * d && cos.len() >= t * half && sin.len() >= t * half, "rope: shapes");
    ctx.dispatch(
        &Kernel { name: "rope".into(), source: include_str!("../shaders/rope.wgsl").into(), entry: "main" },
        &[t as u32, h as u32, d as u32, backward as u32],
        &[Binding::Write(x), Binding::Read(cos), Binding::Read(sin)],
        groups_1d(t * h * half, 256),
    )
}

/// x[T, H, D] rotated in place by the angles in cos/sin [T, D/2].
pub fn rope_forward(
    ctx: &Context,
    x: &mut GpuBuffer,
    t: usize,
    h: usize,
    d: usize,
    cos: &GpuBuffer,
    sin: &GpuBuffer,
) -> Result<()> {
    rope(ctx, x, t, h, d, cos, sin, false)
}

/// The rotation is orthogonal, so the gradient is the inverse rotation: dx = Rᵀ dy, in place.
pub fn rope_backward(
    ctx: &Context,
    dx: &mut GpuBuffer,
    t: usize,
    h: usize,
    d: usize,
    cos: &GpuBuffer,
    sin: &GpuBuffer,
) -> Result<()> {
    rope(ctx, dx, t, h, d, cos, sin, true)
}
