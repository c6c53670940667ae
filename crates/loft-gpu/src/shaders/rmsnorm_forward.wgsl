// RMSNorm training forward, one workgroup per row: y[N, C] = x · rstd · w, rstd[N] = 1 / sqrt(mean(x²) + eps).

struct Params { n: u32, c: u32, eps: f32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T1>;
@group(0) @binding(2) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<T3>;
@group(0) @binding(4) var<storage, read> w: array<f32>;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.n) {
        return;
    }
    let o = row * p.c;
    var s = 0.0;
    for (var i = lid; i < p.c; i += 256u) {
        let v = f32(x[o + i]);
        s += v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) {
            red[lid] += red[lid + st];
        }
        workgroupBarrier();
    }
    let rs = 1.0 / sqrt(red[0] / f32(p.c) + p.eps);
    for (var i = lid; i < p.c; i += 256u) {
        y[o + i] = T1(f32(x[o + i]) * rs * w[i]);
    }
    if (lid == 0u) {
        rstd[row] = rs;
    }
}
