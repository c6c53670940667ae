// AdamW updates on 32-bit state, one thread per element, scalars from the host exactly as the CPU computes them.
// Entry `torch`: torch.optim.AdamW (`_single_tensor_adam`, decoupled decay first):
//   p *= 1 − lr·wd;  m += (1 − β1)(g − m);  v = v·β2 + (1 − β2)·g·g;  p += −step · m / (√v / √c2 + eps)
// Entry `bnb`: bitsandbytes' 32-bit Adam (the small tensors of AdamW8bit):
//   v = v·β2 + (1 − β2)·g·g;  m = m·β1 + (1 − β1)·g;  p += step · (m / (√v + eps_hat));  p *= 1 − lr·wd

struct Params { len: u32, apply_decay: u32, a: f32, b: f32, c: f32, d: f32, e: f32, f: f32, g: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(4) var<storage, read> grad: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// a = decay, b = 1 − β1, c = β2, d = 1 − β2, e = √(1 − β2ᵗ), f = −lr / (1 − β1ᵗ), g = eps
@compute @workgroup_size(256)
fn torch(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let g = grad[i];
    var x = param[i];
    if (p.apply_decay != 0u) {
        x *= p.a;
    }
    var m = exp_avg[i];
    m += p.b * (g - m);
    let v = exp_avg_sq[i] * p.c + p.d * g * g;
    let denom = sqrt(v) / p.e + p.g;
    x += p.f * m / denom;
    param[i] = x;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
}

// a = β1, b = β2, c = step_size, d = eps_hat, e = decay
@compute @workgroup_size(256)
fn bnb(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.len) {
        return;
    }
    let g = grad[i];
    let v = exp_avg_sq[i] * p.b + (1.0 - p.b) * g * g;
    let m = exp_avg[i] * p.a + (1.0 - p.a) * g;
    var x = param[i] + p.c * (m / (sqrt(v) + p.d));
    if (p.apply_decay != 0u) {
        x *= p.e;
    }
    param[i] = x;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
}
