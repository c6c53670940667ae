// Row gather and scatter by a list of row indices, rows of C: gather dst[r] = src[rows[r]]; scatter
// dst[rows[r]] = src[r]. One thread per element.

struct Params { m: u32, c: u32, scatter: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read> rows: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (e >= p.m * p.c) {
        return;
    }
    let r = e / p.c;
    let i = e % p.c;
    if (p.scatter != 0u) {
        dst[rows[r] * p.c + i] = src[e];
    } else {
        dst[e] = src[rows[r] * p.c + i];
    }
}
