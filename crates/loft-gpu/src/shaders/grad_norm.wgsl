// Global gradient-norm clipping (torch.nn.utils.clip_grad_norm_), in three entries:
// `partial`: one workgroup per 4096 elements of one tensor writes its Σx² to partials[off + workgroup];
// `total`:   one workgroup sums partials[0..count] into norm[0] = √Σ;
// `clip`:    x *= max_norm / (norm + 1e-6) when that is below 1 and the norm is finite (else nothing).

struct Params { len: u32, off: u32, max_norm: f32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> data: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;

var<workgroup> red: array<f32, 256>;

fn reduce(lid: u32) -> f32 {
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) {
            red[lid] += red[lid + st];
        }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(256)
fn partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let w = wid.y * nwg.x + wid.x;
    let start = w * 4096u;
    if (start >= p.len) {
        return;
    }
    let end = min(start + 4096u, p.len);
    var s = 0.0;
    for (var i = start + lid; i < end; i += 256u) {
        let x = data[i];
        s += x * x;
    }
    red[lid] = s;
    let total = reduce(lid);
    if (lid == 0u) {
        partials[p.off + w] = total;
    }
}

// data = the partial sums (len of them); partials[0] receives the norm.
@compute @workgroup_size(256)
fn total(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.len; i += 256u) {
        s += data[i];
    }
    red[lid] = s;
    let t = reduce(lid);
    if (lid == 0u) {
        partials[0] = sqrt(t);
    }
}

// partials[0] holds the norm.
@compute @workgroup_size(256)
fn clip(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    let norm = partials[0];
    let finite = (bitcast<u32>(norm) & 0x7f800000u) != 0x7f800000u;
    if (i >= p.len || !finite || p.max_norm <= 0.0) {
        return;
    }
    let coef = p.max_norm / (norm + 1e-6);
    if (coef < 1.0) {
        data[i] *= coef;
    }
}
