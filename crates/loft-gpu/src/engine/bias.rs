//! Twin of `loft::engine::bias`: y[N, O] += b[O] on every row (a frozen bias; no backward).

use loft::Result;

use crate::context::{groups_1d, Binding, Context, GpuBuffer, Kernel};

/// y[N, O] += b[O], row by row, over the first N·O values of y.
pub fn bias_forward(ctx: &Context, y: &mut GpuBuffer, b: &GpuBuffer, n: usize) -> Result<()> {
    let (o, len) = (b.len(), n * b.len());
    ensure!(o > 0 && y.len() >= len, "bias_forward: y of {} values is not [{n}, {o}]", y.len());
    ctx.dispatch(
        &Kernel {
            name: "bias_forward".into(),
            source: include_str!("../shaders/bias_forward.wgsl").into(),
            entry: "main",
        },
        &[len as u32, o as u32, 0, 0],
        &[Binding::Write(y), Binding::Read(b)],
        groups_1d(len, 256),
    )
}
