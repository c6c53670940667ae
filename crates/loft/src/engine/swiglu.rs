//! SwiGLU, the gate of Llama's MLP: out = silu(gate) · up, elementwise. Legend: N = rows, F = intermediate_size;
//! every buffer here is [N, F] (any length works: the op is elementwise).

#![forbid(unsafe_code)]

use rayon::prelude::*;

use super::vector_math::{silu_mul, silu_mul_backward};

/// Elements per parallel task: small enough to split a [1024, 1536] activation over the cores.
const CHUNK: usize = 1 << 14;

/// out = silu(gate) · up, with silu(g) = g · σ(g).
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(out.len() == gate.len() && up.len() == gate.len(), "swiglu_forward: shapes");
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK)).zip(up.par_chunks(CHUNK)).for_each(|((o, g), u)| {
        silu_mul(o, g, u);
    });
}

/// Backward of [`swiglu_forward`]; dgate and dup are OVERWRITTEN.
/// dup = dout · silu(gate);  dgate = dout · up · σ(gate) · (1 + gate · (1 − σ(gate))).
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    let len = gate.len();
    assert!(dgate.len() == len && dup.len() == len && dout.len() == len && up.len() == len, "swiglu_backward: shapes");
    let ins = dout.par_chunks(CHUNK).zip(gate.par_chunks(CHUNK)).zip(up.par_chunks(CHUNK));
    dgate.par_chunks_mut(CHUNK).zip(dup.par_chunks_mut(CHUNK)).zip(ins).for_each(|((dg, du), ((d, g), u))| {
        silu_mul_backward(dg, du, d, g, u);
    });
}
