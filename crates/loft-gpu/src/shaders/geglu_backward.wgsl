// Backward of out = gelu(gate) · up (dgate and dup overwritten), t = tanh(√(2/π) (g + 0.044715 g³)):
// dup = dout · ½ g (1 + t);  dgate = dout · up · (½ (1 + t) + ½ g (1 − t²) √(2/π) (1 + 3 · 0.044715 g²)).

struct Params { len: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dgate: array<f32>;
@group(0) @binding(2) var<storage, read_write> dup: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read> gate: array<T4>;
@group(0) @binding(5) var<storage, read> up: array<T5>;

fn tanh_safe(u: f32) -> f32 {
    let e = exp(2.0 * clamp(u, -15.0, 15.0));
    return (e - 1.0) / (e + 1.0);
}

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
    let t = tanh_safe(0.7978846 * (g + 0.044715 * g * g * g));
    dup[e] = d * 0.5 * g * (1.0 + t);
    dgate[e] = d * u * (0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * 0.7978846 * (1.0 + 0.134145 * g * g));
}
