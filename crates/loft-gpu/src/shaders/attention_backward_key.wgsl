// Attention backward, part 2 of 3: each query head's share of dk and dv, one workgroup per (sequence, key row,
// head), over the queries i ≥ j whose document starts at or before j (and, with a sliding window W > 0, i < j + W):
//   dvₕ[j] = Σᵢ Pᵢⱼ · dOᵢ,   dkₕ[j] = Σᵢ dSᵢⱼ · qᵢ   (dS = P ⊙ (dO·Vᵀ − Δ) / √D).
// dk_heads, dv_heads: [B, NH, T, D]; lse_delta: [2, B, NH, T].

struct Params { b: u32, t: u32, nh: u32, nkv: u32, d: u32, has_doc: u32, scale: f32, window: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dk_heads: array<f32>;
@group(0) @binding(2) var<storage, read_write> dv_heads: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read> q: array<T4>;
@group(0) @binding(5) var<storage, read> k: array<T5>;
@group(0) @binding(6) var<storage, read> v: array<T6>;
@group(0) @binding(7) var<storage, read> lse_delta: array<f32>;
@group(0) @binding(8) var<storage, read> doc_start: array<u32>;

const WG: u32 = 64u;

var<workgroup> ks: array<f32, 256>;
var<workgroup> vs: array<f32, 256>;
var<workgroup> ps: array<f32, 64>;
var<workgroup> dss: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let task = wid.y * nwg.x + wid.x; // (b·T + j)·NH + h
    if (task >= p.b * p.t * p.nh) {
        return;
    }
    let h = task % p.nh;
    let krow = task / p.nh;
    let bi = krow / p.t;
    let j = krow % p.t;
    let g = h / (p.nh / p.nkv);
    let qd = p.nh * p.d;
    let kvd = p.nkv * p.d;
    let ko = krow * kvd + g * p.d;
    for (var e = tid; e < p.d; e += WG) {
        ks[e] = f32(k[ko + e]);
        vs[e] = f32(v[ko + e]);
    }
    workgroupBarrier();
    var dk_acc: array<f32, 4>;
    var dv_acc: array<f32, 4>;
    for (var c = 0u; c < 4u; c++) {
        dk_acc[c] = 0.0;
        dv_acc[c] = 0.0;
    }
    let n_lse = p.b * p.nh * p.t;
    var iend = p.t;
    if (p.window != 0u) {
        iend = min(p.t, j + p.window);
    }
    for (var i0 = j; i0 < iend; i0 += WG) {
        let i = i0 + tid;
        var pp = 0.0;
        var ds = 0.0;
        if (i < iend) {
            var seen = true;
            if (p.has_doc != 0u) {
                seen = doc_start[bi * p.t + i] <= j;
            }
            if (seen) {
                let qo = (bi * p.t + i) * qd + h * p.d;
                var s = 0.0;
                var dp = 0.0;
                for (var e = 0u; e < p.d; e++) {
                    s += f32(q[qo + e]) * ks[e];
                    dp += dout[qo + e] * vs[e];
                }
                let li = (bi * p.nh + h) * p.t + i;
                pp = exp(s * p.scale - lse_delta[li]);
                ds = pp * (dp - lse_delta[n_lse + li]) * p.scale;
            }
        }
        ps[tid] = pp;
        dss[tid] = ds;
        workgroupBarrier();
        let cnt = min(WG, iend - i0);
        for (var ii = 0u; ii < cnt; ii++) {
            let qo = (bi * p.t + i0 + ii) * qd + h * p.d;
            let a = ps[ii];
            let b = dss[ii];
            for (var c = 0u; c < 4u; c++) {
                let e = tid + c * WG;
                if (e < p.d) {
                    dv_acc[c] += a * dout[qo + e];
                    dk_acc[c] += b * f32(q[qo + e]);
                }
            }
        }
        workgroupBarrier();
    }
    let ho = ((bi * p.nh + h) * p.t + j) * p.d;
    for (var c = 0u; c < 4u; c++) {
        let e = tid + c * WG;
        if (e < p.d) {
            dk_heads[ho + e] = dk_acc[c];
            dv_heads[ho + e] = dv_acc[c];
        }
    }
}
