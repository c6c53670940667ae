// out = gelu(gate) · up, GELU's tanh approximation: gelu(g) = ½ g (1 + tanh(√(2/π) (g + 0.044715 g³))).

struct Params { len: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<T1>;
@group(0) @binding(2) var<storage, read> gate: array<T2>;
@group(0) @binding(3) var<storage, read> up: array<T3>;

// tanh through exp of a clamped argument: WGSL's tanh may overflow to NaN for large |u| on some devices.
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
    let t = tanh_safe(0.7978846 * (g + 0.044715 * g * g * g));
    out[e] = T1(0.5 * g * (1.0 + t) * f32(up[e]));
}
