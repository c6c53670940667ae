//! Twin of `loft::engine::swiglu`: out = silu(gate) · up, elementwise; every buffer [N, F].

use loft::Result;

use crate::context::{groups_1d, Binding, Context, GpuBuffer, Kernel};

/// out = silu(gate) · up, with silu(g) = g · σ(g).
pub fn swiglu_forward(ctx: &Context, out: &mut GpuBuffer, gate: &GpuBuffer, up: &GpuBuffer) -> Result<()> {
    let len = gate.len();
    ensure!(out.len() == len && up.len() == len, "swiglu_forward: shapes");
    ctx.dispatch(
        &Kernel {
            name: "swiglu_forward".into(),
            source: include_str!("../shaders/swiglu_forward.wgsl").into(),
            entry: "main",
        },
        &[len as u32, 0, 0, 0],
        &[Binding::Write(out), Binding::Read(gate), Binding::Read(up)],
        groups_1d(len, 256),
    )
}

/// Backward of [`swiglu_forward`]; dgate and dup are OVERWRITTEN.
pub fn swiglu_backward(
    ctx: &Context,
    dgate: &mut GpuBuffer,
    dup: &mut GpuBuffer,
    dout: &GpuBuffer,
    gate: &GpuBuffer,
    up: &GpuBuffer,
) -> Result<()> {
    let len = gate.len();
    ensure!(dgate.len() == len && dup.len() == len && dout.len() == len && up.len() == len, "swiglu_backward: shapes");
    ctx.dispatch(
        &Kernel {
            name: "swiglu_backward".into(),
            source: include_str!("../shaders/swiglu_backward.wgsl").into(),
            entry: "main",
        },
        &[len as u32, 0, 0, 0],
        &[Binding::Write(dgate), Binding::Write(dup), Binding::Read(dout), Binding::Read(gate), Binding::Read(up)],
        groups_1d(len, 256),
    )
}
