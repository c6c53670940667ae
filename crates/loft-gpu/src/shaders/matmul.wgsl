// Tiled matrix product: c[M, N] = (accumulate ? c : 0) + alpha · Σ_k A[m, k] · B[k, n], f32 accumulation.
// A 64 × 64 tile of c per workgroup of 16 × 16 threads, each thread a 4 × 4 block (rows ty + 16·i, columns
// tx + 16·j); K in steps of 16 through workgroup memory. Edges are masked, so no size need be a multiple of a tile.
// A is read through strides (row-major, transposed or offset views of one buffer); B's reader `load_b` is spliced
// in below: strided f32, or a frozen weight dequantized from its GGUF blocks.

struct Params {
    m: u32, n: u32, k: u32, accumulate: u32,
    alpha: f32, a_off: u32, a_rs: u32, a_cs: u32,
    b_off: u32, b_rs: u32, b_cs: u32, c_off: u32,
    c_rs: u32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> c: array<T1>;
@group(0) @binding(2) var<storage, read> a: array<T2>;
//B_DECL

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> As: array<f32, 1024>; // [TK][TM]
var<workgroup> Bs: array<f32, 1024>; // [TK][TN]

fn load_a(m: u32, k: u32) -> f32 {
    return f32(a[p.a_off + m * p.a_rs + k * p.a_cs]);
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
            // A tile: element (mm, kk) with kk fastest
            let mm = e / TK;
            let kk = e % TK;
            var va = 0.0;
            if (row0 + mm < p.m && k0 + kk < p.k) {
                va = load_a(row0 + mm, k0 + kk);
            }
            As[kk * TM + mm] = va;
            // B tile: element (kb, nn) with nn fastest
            let kb = e / TN;
            let nn = e % TN;
            var vb = 0.0;
            if (k0 + kb < p.k && col0 + nn < p.n) {
                vb = load_b(k0 + kb, col0 + nn);
            }
            Bs[kb * TN + nn] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = As[kk * TM + lid.y + 16u * i];
                bv[i] = Bs[kk * TN + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let gm = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let gn = col0 + lid.x + 16u * j;
            if (gm < p.m && gn < p.n) {
                let at = p.c_off + gm * p.c_rs + gn;
                var v = p.alpha * acc[i * 4u + j];
                if (p.accumulate != 0u) {
                    v += f32(c[at]);
                }
                c[at] = T1(v);
            }
        }
    }
}
