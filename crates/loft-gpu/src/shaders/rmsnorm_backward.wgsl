// RMSNorm backward, one workgroup per row. With x̂ = x·rstd and g = dy ⊙ w:
// dx += rstd · (g − x̂ · mean(g ⊙ x̂)) = rstd · (dy·w − x · k),  k = rstd² · Σ(dy·w·x) / C.

struct Params { n: u32, c: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(5) var<storage, read> rstd: array<f32>;

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
        s += dy[o + i] * w[i] * x[o + i];
    }
    red[lid] = s;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) {
            red[lid] += red[lid + st];
        }
        workgroupBarrier();
    }
    let rs = rstd[row];
    let k = red[0] * rs * rs / f32(p.c);
    for (var i = lid; i < p.c; i += 256u) {
        dx[o + i] += rs * (dy[o + i] * w[i] - x[o + i] * k);
    }
}
