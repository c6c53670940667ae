// LoRA dropout, regenerated from its seed exactly as the CPU draws it: row r's stream is
// SplitMix64(seed ^ SplitMix64(r).next_u64()), and element j keeps when the stream's (j+1)-th draw, as
// (z >> 11) / 2^53, is ≥ p, i.e. when (z >> 11) ≥ ceil(p · 2^53) (the threshold comes from the host, exact).
// 64-bit words are vec2<u32>(lo, hi): WGSL has no u64.
//
// Entry `apply`:    out[N, I] = keep ? x · scale : 0                        (xd = dropout(x))
// Entry `backward`: out[N, I] += keep ? x · scale : 0, x being the gradient   (dx += dropout'(g))

struct Params { n: u32, i: u32, seed_lo: u32, seed_hi: u32, thr_lo: u32, thr_hi: u32, scale: f32, accumulate: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<T2>;

const GOLDEN: vec2<u32> = vec2<u32>(0x7F4A7C15u, 0x9E3779B9u);

// The full 64-bit product of two u32.
fn mul32(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>((p00 & 0xffffu) | (mid << 16u), p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

// The low 64 bits of a · b.
fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let ll = mul32(a.x, b.x);
    return vec2<u32>(ll.x, ll.y + a.x * b.y + a.y * b.x);
}

// z ^ (z >> s), 0 < s < 32
fn xorshr(z: vec2<u32>, s: u32) -> vec2<u32> {
    return vec2<u32>(z.x ^ ((z.x >> s) | (z.y << (32u - s))), z.y ^ (z.y >> s));
}

// SplitMix64's output function.
fn mix(z0: vec2<u32>) -> vec2<u32> {
    var z = mul64(xorshr(z0, 30u), vec2<u32>(0x1CE4E5B9u, 0xBF58476Du));
    z = mul64(xorshr(z, 27u), vec2<u32>(0x133111EBu, 0x94D049BBu));
    return xorshr(z, 31u);
}

fn kept(row: u32, j: u32) -> bool {
    let row_seed = vec2<u32>(p.seed_lo, p.seed_hi) ^ mix(add64(vec2<u32>(row, 0u), GOLDEN));
    let z = mix(add64(row_seed, mul64(vec2<u32>(j + 1u, 0u), GOLDEN)));
    let hi = z.y >> 11u;
    let lo = (z.x >> 11u) | (z.y << 21u);
    return hi > p.thr_hi || (hi == p.thr_hi && lo >= p.thr_lo);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let e = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (e >= p.n * p.i) {
        return;
    }
    var v = 0.0;
    if (kept(e / p.i, e % p.i)) {
        v = f32(x[e]) * p.scale;
    }
    if (p.accumulate != 0u) {
        out[e] += v;
    } else {
        out[e] = v;
    }
}
