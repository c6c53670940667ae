// Rotary embedding in place, Hugging Face layout (element i of a head pairs with i + D/2), one thread per pair.
// x: [T, H, D]; cos, sin: [T, D/2]. The backward is the inverse rotation (the rotation is orthogonal).

struct Params { t: u32, h: u32, d: u32, backward: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<T1>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half = p.d / 2u;
    let e = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (e >= p.t * p.h * half) {
        return;
    }
    let i = e % half;
    let head = e / half; // t · H + h
    let ti = head / p.h;
    let lo = head * p.d + i;
    let hi = lo + half;
    let c = cos_t[ti * half + i];
    let s = sin_t[ti * half + i];
    let a = f32(x[lo]);
    let b = f32(x[hi]);
    if (p.backward == 0u) {
        x[lo] = T1(a * c - b * s);
        x[hi] = T1(b * c + a * s);
    } else {
        x[lo] = T1(a * c + b * s);
        x[hi] = T1(b * c - a * s);
    }
}
