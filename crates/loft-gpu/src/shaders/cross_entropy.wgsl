// Cross-entropy over a chunk of gathered rows, one workgroup per row of logits [M, V]: the row's loss
// logsumexp − logit[target] into losses[loss_off + row], and (grads) the logits' gradient in place:
// (softmax − onehot(target)) · grad_scale.

struct Params { m: u32, v: u32, grads: u32, grad_scale: f32, loss_off: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> losses: array<f32>;
@group(0) @binding(3) var<storage, read> targets: array<u32>;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.m) {
        return;
    }
    let o = row * p.v;
    let t = targets[row];
    let target_logit = logits[o + t];
    var mx = -3.0e38;
    for (var i = lid; i < p.v; i += 256u) {
        mx = max(mx, logits[o + i]);
    }
    red[lid] = mx;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) {
            red[lid] = max(red[lid], red[lid + st]);
        }
        workgroupBarrier();
    }
    mx = red[0];
    workgroupBarrier();
    var s = 0.0;
    for (var i = lid; i < p.v; i += 256u) {
        let e = exp(logits[o + i] - mx);
        if (p.grads != 0u) {
            logits[o + i] = e;
        }
        s += e;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (lid < st) {
            red[lid] += red[lid + st];
        }
        workgroupBarrier();
    }
    let sum = red[0];
    if (lid == 0u) {
        losses[p.loss_off + row] = mx + log(sum) - target_logit;
    }
    if (p.grads != 0u) {
        let k = p.grad_scale / sum;
        for (var i = lid; i < p.v; i += 256u) {
            var x = logits[o + i] * k;
            if (i == t) {
                x -= p.grad_scale;
            }
            logits[o + i] = x;
        }
    }
}
