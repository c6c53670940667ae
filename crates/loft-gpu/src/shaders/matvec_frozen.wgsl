// A frozen weight times a few input rows (decoding, N ≤ 4): y[N, R] = (accumulate ? y : 0) + x[N, C] · Wᵀ, for
// the R rows of one block of the weight (GpuFrozen), written to columns row0.. of y, whose rows are y_rs apart.
// One workgroup per weight row: its 64 threads stride over the row's C values (element c decoded by `load_w`,
// spliced in below, once for all N inputs), then a tree reduction. The tiled matmul would compute a 64-row tile
// for the one row decoding has.

struct Params { n: u32, rows: u32, cols: u32, accumulate: u32, row_bytes: u32, row0: u32, y_rs: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<T1>;
@group(0) @binding(2) var<storage, read> x: array<T2>;
@group(0) @binding(3) var<storage, read> wq: array<u32>;

//LOAD_W

const WG: u32 = 64u;

var<workgroup> partial: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.rows) {
        return;
    }
    var acc = vec4<f32>(0.0);
    for (var c = tid; c < p.cols; c += WG) {
        let w = load_w(r, c, p.row_bytes);
        var xv = vec4<f32>(0.0);
        for (var i = 0u; i < p.n; i++) {
            xv[i] = f32(x[i * p.cols + c]);
        }
        acc += w * xv;
    }
    partial[tid] = acc;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (tid < st) {
            partial[tid] += partial[tid + st];
        }
        workgroupBarrier();
    }
    if (tid < p.n) {
        let at = tid * p.y_rs + p.row0 + r;
        var v = partial[0][tid];
        if (p.accumulate != 0u) {
            v += f32(y[at]);
        }
        y[at] = T1(v);
    }
}
