// Embedding scatter-add: dtable[V, C] += dout[N, C] by ids. One thread per channel walks the tokens in order, so
// a token seen twice adds both rows, without atomics and in the CPU's order.

struct Params { n: u32, c: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dtable: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.c) {
        return;
    }
    for (var r = 0u; r < p.n; r++) {
        let at = ids[r] * p.c + i;
        dtable[at] += dout[r * p.c + i];
    }
}
