// Causal self-attention, one workgroup per (sequence, query row, head): out = softmax(q·kᵀ/√D + mask)·v and
// lse = log Σⱼ exp(sᵢⱼ), over keys doc_start[b, i] ≤ j ≤ p0 + i (p0 = 0 in training; with a KV cache the T new
// queries sit at positions p0.. and k, v hold KV_T ≥ p0 + T rows per sequence), and with a sliding window W > 0
// only the last W of them (p0 + i − j < W). Two passes over the keys: the row's max and sum
// (online, per thread, then merged), then the output with p = exp(s − lse), 64 keys at a time through workgroup
// memory. Legend: B, T, NH, NKV, D; q, out [B, T, NH·D]; k, v [B, T, NKV·D]; lse [B, NH, T]; doc_start [B, T].

struct Params { b: u32, t: u32, nh: u32, nkv: u32, d: u32, has_doc: u32, scale: f32, window: u32, p0: u32, kv_t: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<T1>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(3) var<storage, read> q: array<T3>;
@group(0) @binding(4) var<storage, read> k: array<T4>;
@group(0) @binding(5) var<storage, read> v: array<T5>;
@group(0) @binding(6) var<storage, read> doc_start: array<u32>;

const WG: u32 = 64u;
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, 256>;
var<workgroup> red_m: array<f32, 64>;
var<workgroup> red_l: array<f32, 64>;
var<workgroup> probs: array<f32, 64>;
var<workgroup> range: vec2<u32>;

fn score(ko: u32) -> f32 {
    var s = 0.0;
    for (var e = 0u; e < p.d; e++) {
        s += qs[e] * f32(k[ko + e]);
    }
    return s * p.scale;
}

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
    if (tid == 0u) {
        var ja = 0u;
        if (p.has_doc != 0u) {
            ja = doc_start[row];
        }
        let jb = p.p0 + i + 1u;
        if (p.window != 0u && jb > p.window) {
            ja = max(ja, jb - p.window);
        }
        range = vec2<u32>(ja, jb);
    }
    for (var e = tid; e < p.d; e += WG) {
        qs[e] = f32(q[qo + e]);
    }
    let r = workgroupUniformLoad(&range);
    let ja = r.x;
    let jb = r.y;

    // Pass 1: running max m and sum l of exp(s − m), per thread over keys ja + tid, ja + tid + 64, …
    var m = NEG;
    var l = 0.0;
    for (var j = ja + tid; j < jb; j += WG) {
        let s = score((bi * p.kv_t + j) * kvd + g * p.d);
        if (s > m) {
            l = l * exp(m - s) + 1.0;
            m = s;
        } else {
            l += exp(s - m);
        }
    }
    red_m[tid] = m;
    red_l[tid] = l;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (tid < st) {
            let m1 = red_m[tid];
            let m2 = red_m[tid + st];
            let mm = max(m1, m2);
            red_l[tid] = red_l[tid] * exp(m1 - mm) + red_l[tid + st] * exp(m2 - mm);
            red_m[tid] = mm;
        }
        workgroupBarrier();
    }
    let row_lse = red_m[0] + log(red_l[0]);

    // Pass 2: out = Σⱼ exp(sⱼ − lse) · vⱼ; thread tid owns output elements tid, tid + 64, …
    var acc: array<f32, 4>;
    for (var c = 0u; c < 4u; c++) {
        acc[c] = 0.0;
    }
    for (var j0 = ja; j0 < jb; j0 += WG) {
        let j = j0 + tid;
        var pj = 0.0;
        if (j < jb) {
            pj = exp(score((bi * p.kv_t + j) * kvd + g * p.d) - row_lse);
        }
        probs[tid] = pj;
        workgroupBarrier();
        let cnt = min(WG, jb - j0);
        for (var jj = 0u; jj < cnt; jj++) {
            let vo = (bi * p.kv_t + j0 + jj) * kvd + g * p.d;
            let pp = probs[jj];
            for (var c = 0u; c < 4u; c++) {
                let e = tid + c * WG;
                if (e < p.d) {
                    acc[c] += pp * f32(v[vo + e]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var c = 0u; c < 4u; c++) {
        let e = tid + c * WG;
        if (e < p.d) {
            out[qo + e] = T1(acc[c]);
        }
    }
    if (tid == 0u) {
        lse[(bi * p.nh + h) * p.t + i] = row_lse;
    }
}
