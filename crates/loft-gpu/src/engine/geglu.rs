//! Twin of `loft::engine::geglu`: out = gelu(gate) · up (GELU's tanh approximation), elementwise; every buffer
//! [N, F].

use loft::Result;

use crate::context::{groups_1d, Binding, Context, GpuBuffer, Kernel};

/// out = gelu(gate) · up.
pub fn geglu_forward(ctx: &Context, out: &mut GpuBuffer, gate: &GpuBuffer, up: &GpuBuffer) -> Result<()> {
    let len = gate.len();
    ensure!(out.len() == len && up.len() == len, "geglu_forward: shapes");
    ctx.dispatch(
        &Kernel {
            name: "geglu_forward".into(),
            source: include_str!("../shaders/geglu_forward.wgsl").into(),
            entry: "main",
        },
        &[len as u32, 0, 0, 0],
        &[Binding::Write(out), Binding::Read(gate), Binding::Read(up)],
        groups_1d(len, 256),
    )
}

/// Backward of [`geglu_forward`]; dgate and dup are OVERWRITTEN.
pub fn geglu_backward(
    ctx: &Context,
    dgate: &mut GpuBuffer,
    dup: &mut GpuBuffer,
    dout: &GpuBuffer,
    gate: &GpuBuffer,
    up: &GpuBuffer,
) -> Result<()> {
    let len = gate.len();
    ensure!(dgate.len() == len && dup.len() == len && dout.len() == len && up.len() == len, "geglu_backward: shapes");
    ctx.dispatch(
        &Kernel {
            name: "geglu_backward".into(),
            source: include_str!("../shaders/geglu_backward.wgsl").into(),
            entry: "main",
        },
        &[len as u32, 0, 0, 0],
        &[Binding::Write(dgate), Binding::Write(dup), Binding::Read(dout), Binding::Read(gate), Binding::Read(up)],
        groups_1d(len, 256),
    )
}
