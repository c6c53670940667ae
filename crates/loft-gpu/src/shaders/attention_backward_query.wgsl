// Attention backward, part 1 of 3 (after `attention_delta`): dq, one workgroup per (sequence, query row, head).
// With P = exp(S − lse), Δᵢ = Σ_d dOᵢ·Oᵢ and dS = P ⊙ (dO·Vᵀ − Δ) / √D:  dQᵢ = Σⱼ dSᵢⱼ · kⱼ.
// lse_delta: [2, B, NH, T], the forward's lse then Δ.

struct Params { b: u32, t: u32, nh: u32, nkv: u32, d: u32, has_doc: u32, scale: f32, window: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dq: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> q: array<T3>;
@group(0) @binding(4) var<storage, read> k: array<T4>;
@group(0) @binding(5) var<storage, read> v: array<T5>;
@group(0) @binding(6) var<storage, read> lse_delta: array<f32>;
@group(0) @binding(7) var<storage, read> doc_start: array<u32>;

const WG: u32 = 64u;

var<workgroup> qs: array<f32, 256>;
var<workgroup> dos: array<f32, 256>;
var<workgroup> dss: array<f32, 64>;
var<workgroup> range: vec2<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let task = wid.y * nwg.x + wid.x; // (b·T + i)·NH + h
    if (task >= p.b * p.t * p.nh) {
        return;
    }
    let h = task % p.nh;
    let row = task / p.nh;
    let bi = row / p.t;
    let i = row % p.t;
    let g = h / (p.nh / p.nkv);
    let qd = p.nh * p.d;
    let kvd = p.nkv * p.d;
    let qo = row * qd + h * p.d;
    let li = (bi * p.nh + h) * p.t + i;
    let row_lse = lse_delta[li];
    let delta = lse_delta[p.b * p.nh * p.t + li];
    if (tid == 0u) {
        var ja = 0u;
        if (p.has_doc != 0u) {
            ja = doc_start[row];
        }
        if (p.window != 0u && i + 1u > p.window) {
            ja = max(ja, i + 1u - p.window);
        }
        range = vec2<u32>(ja, i + 1u);
    }
    for (var e = tid; e < p.d; e += WG) {
        qs[e] = f32(q[qo + e]);
        dos[e] = dout[qo + e];
    }
    let r = workgroupUniformLoad(&range);
    let ja = r.x;
    let jb = r.y;
    var acc: array<f32, 4>;
    for (var c = 0u; c < 4u; c++) {
        acc[c] = 0.0;
    }
    for (var j0 = ja; j0 < jb; j0 += WG) {
        let j = j0 + tid;
        var ds = 0.0;
        if (j < jb) {
            let ko = (bi * p.t + j) * kvd + g * p.d;
            var s = 0.0;
            var dp = 0.0;
            for (var e = 0u; e < p.d; e++) {
                s += qs[e] * f32(k[ko + e]);
                dp += dos[e] * f32(v[ko + e]);
            }
            let pp = exp(s * p.scale - row_lse);
            ds = pp * (dp - delta) * p.scale;
        }
        dss[tid] = ds;
        workgroupBarrier();
        let cnt = min(WG, jb - j0);
        for (var jj = 0u; jj < cnt; jj++) {
            let ko = (bi * p.t + j0 + jj) * kvd + g * p.d;
            let d = dss[jj];
            for (var c = 0u; c < 4u; c++) {
                let e = tid + c * WG;
                if (e < p.d) {
                    acc[c] += d * f32(k[ko + e]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var c = 0u; c < 4u; c++) {
        let e = tid + c * WG;
        if (e < p.d) {
            dq[qo + e] = acc[c];
        }
    }
}
