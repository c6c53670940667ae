// Attention backward, part 3 of 3: dk[b, j, g] = Σ over the query heads h of group g of dk_heads[b, h, j] (and dv
// likewise), heads in order. One thread per element of dk.

struct Params { b: u32, t: u32, nh: u32, nkv: u32, d: u32, has_doc: u32, scale: f32, window: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dk: array<f32>;
@group(0) @binding(2) var<storage, read_write> dv: array<f32>;
@group(0) @binding(3) var<storage, read> dk_heads: array<f32>;
@group(0) @binding(4) var<storage, read> dv_heads: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let at = (wid.y * nwg.x + wid.x) * 256u + lid; // ((b·T + j)·NKV + g)·D + e
    if (at >= p.b * p.t * p.nkv * p.d) {
        return;
    }
    let e = at % p.d;
    let g = (at / p.d) % p.nkv;
    let row = at / (p.d * p.nkv);
    let bi = row / p.t;
    let j = row % p.t;
    let group = p.nh / p.nkv;
    var sk = 0.0;
    var sv = 0.0;
    for (var h = g * group; h < (g + 1u) * group; h++) {
        let o = ((bi * p.nh + h) * p.t + j) * p.d + e;
        sk += dk_heads[o];
        sv += dv_heads[o];
    }
    dk[at] = sk;
    dv[at] = sv;
}
