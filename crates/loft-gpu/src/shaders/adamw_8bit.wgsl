// bitsandbytes' blockwise 8-bit AdamW (`kOptimizerStatic8bit2StateBlockwise`, ADAM), one workgroup per block of
// 256: dequantize both moments (code → map value · block absmax), update them and the parameter in f32 (the step
// uses the unquantized new moments), then requantize each to the nearest code against the block's new absmax; m
// keeps its sign through quantization. Codes are bytes, four to a word.
// maps: [512], bitsandbytes' signed dynamic map (for m) then the unsigned one (for v), each sorted.

struct Params { len: u32, apply_decay: u32, beta1: f32, beta2: f32, step_size: f32, eps_hat: f32, decay: f32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read_write> state1: array<u32>;
@group(0) @binding(3) var<storage, read_write> absmax1: array<f32>;
@group(0) @binding(4) var<storage, read_write> state2: array<u32>;
@group(0) @binding(5) var<storage, read_write> absmax2: array<f32>;
@group(0) @binding(6) var<storage, read> grad: array<f32>;
@group(0) @binding(7) var<storage, read> maps: array<f32>;

var<workgroup> red1: array<f32, 256>;
var<workgroup> red2: array<f32, 256>;
var<workgroup> codes1: array<u32, 256>;
var<workgroup> codes2: array<u32, 256>;

fn code_at(words_index: u32, byte: u32, second: bool) -> u32 {
    var w = 0u;
    if (second) {
        w = state2[words_index];
    } else {
        w = state1[words_index];
    }
    return (w >> (8u * byte)) & 0xffu;
}

// The largest i with map[i] ≤ x (a fixed 8-step search), then one step up when x is past the midpoint.
fn nearest(off: u32, x: f32) -> u32 {
    var i = 0u;
    for (var step = 128u; step > 0u; step >>= 1u) {
        if (maps[off + i + step] <= x) {
            i += step;
        }
    }
    if (i < 255u && x > (maps[off + i] + maps[off + i + 1u]) * 0.5) {
        i += 1u;
    }
    return i;
}

fn quantize(off: u32, x: f32, absmax: f32) -> u32 {
    if (absmax > 0.0) {
        return nearest(off, x / absmax);
    }
    return nearest(off, 0.0);
}

fn sign_bit(x: f32) -> u32 {
    return bitcast<u32>(x) >> 31u;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) j: u32) {
    let blk = wid.y * nwg.x + wid.x;
    if (blk * 256u >= p.len) {
        return;
    }
    let i = blk * 256u + j;
    let valid = i < p.len;
    let a1 = absmax1[blk];
    let a2 = absmax2[blk];
    var m = 0.0;
    var v = 0.0;
    if (valid) {
        m = maps[code_at(i / 4u, i % 4u, false)] * a1;
        v = maps[256u + code_at(i / 4u, i % 4u, true)] * a2;
        let g = grad[i];
        v = v * p.beta2 + (1.0 - p.beta2) * g * g;
        m = m * p.beta1 + (1.0 - p.beta1) * g;
    }
    red1[j] = abs(m);
    red2[j] = abs(v);
    workgroupBarrier();
    for (var st = 128u; st > 0u; st >>= 1u) {
        if (j < st) {
            red1[j] = max(red1[j], red1[j + st]);
            red2[j] = max(red2[j], red2[j + st]);
        }
        workgroupBarrier();
    }
    let n1 = red1[0];
    let n2 = red2[0];
    if (valid) {
        var x = param[i] + p.step_size * (m / (sqrt(v) + p.eps_hat));
        if (p.apply_decay != 0u) {
            x *= p.decay;
        }
        param[i] = x;
        var c = quantize(0u, m, n1);
        if (sign_bit(maps[c]) != sign_bit(m)) {
            if (m > 0.0) {
                c += 1u;
            } else {
                c -= 1u;
            }
        }
        codes1[j] = c;
        codes2[j] = quantize(256u, v, n2);
    } else {
        codes1[j] = 0u;
        codes2[j] = 0u;
    }
    workgroupBarrier();
    if (j == 0u) {
        absmax1[blk] = n1;
        absmax2[blk] = n2;
    }
    let word = blk * 64u + j;
    if (j < 64u && word * 4u < p.len) {
        let b = j * 4u;
        state1[word] = codes1[b] | (codes1[b + 1u] << 8u) | (codes1[b + 2u] << 16u) | (codes1[b + 3u] << 24u);
        state2[word] = codes2[b] | (codes2[b + 1u] << 8u) | (codes2[b + 2u] << 16u) | (codes2[b + 3u] << 24u);
    }
}
