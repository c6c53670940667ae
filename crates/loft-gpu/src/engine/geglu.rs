//! Twin of `loft::engine::geglu`: out = gelu(gate) · up (GELU's tanh approximation), elementwise; every buffer
//! [N, F]. Dispatched as SwiGLU is (`super::swiglu`), with its own kernels.

use loft::Result;

use super::swiglu::{gated_backward, gated_forward};
use crate::context::{Context, GpuBuffer};

/// out = gelu(gate) · up.
pub fn geglu_forward(ctx: &Context, out: &mut GpuBuffer, gate: &GpuBuffer, up: &GpuBuffer) -> Result<()> {
    gated_forward(ctx, "geglu_forward", include_str!("../shaders/geglu_forward.wgsl"), out, gate, up)
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
    let source = include_str!("../shaders/geglu_backward.wgsl");
    gated_backward(ctx, "geglu_backward", source, dgate, dup, dout, gate, up)
}
