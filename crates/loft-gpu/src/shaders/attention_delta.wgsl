// Attention backward, part 0: Δ[b, h, i] = Σ_d dout·out of each query row and head, into the second half of
// lse_delta [2, B, NH, T] (the first half holds the forward's lse). One thread per (b, h, i).

struct Params { b: u32, t: u32, nh: u32, nkv: u32, d: u32, has_doc: u32, scale: f32, window: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> lse_delta: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> out: array<T3>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let li = (wid.y * nwg.x + wid.x) * 256u + lid; // (b·NH + h)·T + i
    let n = p.b * p.nh * p.t;
    if (li >= n) {
        return;
    }
    let i = li % p.t;
    let h = (li / p.t) % p.nh;
    let bi = li / (p.t * p.nh);
    let o = (bi * p.t + i) * p.nh * p.d + h * p.d;
    var s = 0.0;
    for (var e = 0u; e < p.d; e++) {
        s += dout[o + e] * f32(out[o + e]);
    }
    lse_delta[n + li] = s;
}
