// RMSNorm weight gradient, one thread per channel, rows in order: dw[C] += Σ_rows dy · x · rstd.

struct Params { n: u32, c: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dw: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> rstd: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.c) {
        return;
    }
    var d = dw[i];
    for (var r = 0u; r < p.n; r++) {
        d += dy[r * p.c + i] * x[r * p.c + i] * rstd[r];
    }
    dw[i] = d;
}
