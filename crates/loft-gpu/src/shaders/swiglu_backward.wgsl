// Backward of out = silu(gate) · up (dgate and dup overwritten):
// dup = dout · gate · σ(gate);  dgate = dout · up · σ(gate) · (1 + gate · (1 − σ(gate))).

struct Params { len: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dgate: array<f32>;
@group(0) @binding(2) var<storage, read_write> dup: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read> gate: array<T4>;
@group(0) @binding(5) var<storage, read> up: array<T5>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (e >= p.len) {
        return;
    }
    let g = f32(gate[e]);
    let u = f32(up[e]);
    let d = dout[e];
    let s = 1.0 / (1.0 + exp(-g));
    dup[e] = d * g * s;
    dgate[e] = d * u * s * (1.0 + g * (1.0 - s));
}
