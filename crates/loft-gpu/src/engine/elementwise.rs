//! Twin of `loft::engine::elementwise`: x *= s in place, and y += x.

use loft::Result;

use crate::context::{groups_1d, Binding, Context, GpuBuffer, Kernel};

/// x *= s over the whole buffer.
pub fn scale_forward(ctx: &Context, x: &mut GpuBuffer, s: f32) -> Result<()> {
    let len = x.len();
    if len == 0 {
        return Ok(());
    }
    ctx.dispatch(
        &Kernel { name: "scale".into(), source: include_str!("../shaders/scale.wgsl").into(), entry: "main" },
        &[len as u32, s.to_bits(), 0, 0],
        &[Binding::Write(x)],
        groups_1d(len, 256),
    )
}

/// y += x over the whole of y (x at least as long).
pub fn add_forward(ctx: &Context, y: &mut GpuBuffer, x: &GpuBuffer) -> Result<()> {
    let len = y.len();
    ensure!(x.len() >= len, "add: {} values onto a buffer of {len}", x.len());
    if len == 0 {
        return Ok(());
    }
    ctx.dispatch(
        &Kernel { name: "add".into(), source: include_str!("../shaders/add.wgsl").into(), entry: "main" },
        &[len as u32, 0, 0, 0],
        &[Binding::Write(y), Binding::Read(x)],
        groups_1d(len, 256),
    )
}
