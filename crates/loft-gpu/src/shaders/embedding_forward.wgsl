// Embedding gather: out[N, C] = table[ids[n]], the table read through `load_w` (f32, or a frozen table decoded
// from its GGUF blocks); one thread per output element.

struct Params { n: u32, c: u32, row_bytes: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read> wq: array<u32>;

//LOAD_W

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (e >= p.n * p.c) {
        return;
    }
    out[e] = load_w(ids[e / p.c], e % p.c, p.row_bytes);
}
