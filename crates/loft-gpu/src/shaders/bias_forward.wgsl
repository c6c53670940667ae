// y[N, O] += b[O] on every row (a frozen bias; no backward).

struct Params { len: u32, o: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T1>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (e >= p.len) {
        return;
    }
    y[e] = T1(f32(y[e]) + b[e % p.o]);
}
