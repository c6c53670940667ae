// Embedding gather: out[N, C] = table[ids[n]], the table read through `load_w` (f32, or a frozen table decoded
// from its GGUF blocks); one thread per output element. `wq` holds rows row0..row0 + rows of the table (one block
// of a table kept in several, GpuFrozen): only the tokens whose rows it holds are written.

struct Params { n: u32, c: u32, row_bytes: u32, row0: u32, rows: u32, _p0: u32, _p1: u32, _p2: u32 }

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
    let id = ids[e / p.c];
    if (id < p.row0 || id - p.row0 >= p.rows) {
        return;
    }
    out[e] = load_w(id - p.row0, e % p.c, p.row_bytes);
}
