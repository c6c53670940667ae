//! Twin of `loft::engine::swiglu`: out = silu(gate) · up, elementwise; every buffer [N, F]. The dispatch of a gated
//! activation (`gated_forward`/`gated_backward`) is shared with GeGLU (`super::geglu`), which differs only in its
//! kernels.

use loft::Result;

use crate::context::{groups_1d, Binding, Context, GpuBuffer, Kernel};

/// out = silu(gate) · up, with silu(g) = g · σ(g).
pub fn swiglu_forward(ctx: &Context, out: &mut GpuBuffer, gate: &GpuBuffer, up: &GpuBuffer) -> Result<()> {
    gated_forward(ctx, "swiglu_forward", include_str!("../shaders/swiglu_forward.wgsl"), out, gate, up)
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
    let source = include_str!("../shaders/swiglu_backward.wgsl");
    gated_backward(ctx, "swiglu_backward", source, dgate, dup, dout, gate, up)
}

/// out = act(gate) · up by the kernel `name` (bindings: out, gate, up; params: the length).
pub(crate) fn gated_forward(
    ctx: &Context,
    name: &str,
    source: &str,
    out: &mut GpuBuffer,
    gate: &GpuBuffer,
    up: &GpuBuffer,
) -> Result<()> {
    let len = gate.len();
    ensure!(out.len() == len && up.len() == len, "{name}: shapes");
    ctx.dispatch(
        &Kernel { name: name.into(), source: source.into(), entry: "main" },
        &[len as u32, 0, 0, 0],
        &[Binding::Write(out), Binding::Read(gate), Binding::Read(up)],
        groups_1d(len, 256),
    )
}

/// dgate, dup (OVERWRITTEN) of [`gated_forward`] by the kernel `name` (bindings: dgate, dup, dout, gate, up).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_backward(
    ctx: &Context,
    name: &str,
    source: &str,
    dgate: &mut GpuBuffer,
    dup: &mut GpuBuffer,
    dout: &GpuBuffer,
    gate: &GpuBuffer,
    up: &GpuBuffer,
) -> Result<()> {
    let len = gate.len();
    ensure!(dgate.len() == len && dup.len() == len && dout.len() == len && up.len() == len, "{name}: shapes");
    ctx.dispatch(
        &Kernel { name: name.into(), source: source.into(), entry: "main" },
        &[len as u32, 0, 0, 0],
        &[Binding::Write(dgate), Binding::Write(dup), Binding::Read(dout), Binding::Read(gate), Binding::Read(up)],
        groups_1d(len, 256),
    )
}
