//! Twin of `loft::engine::frozen`: a frozen linear weight [out, in] kept on the device in its own storage (f32,
//! f16, bf16, GGUF Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K blocks, or bitsandbytes' NF4) and decoded element by element inside the matmul kernel, so a
//! 4-bit base never has an f32 copy on the device.

use gguf::GgmlType;
use loft::engine::nf4::Nf4Dtype;
use loft::engine::FrozenMatrix;
use loft::{Error, Result};

use super::matmul::{groups, kernel, params, View, K_SLICE};
use crate::context::{groups_for, human_bytes, Binding, Context, GpuBuffer, Kernel};

/// Up to this many input rows (decoding), the forward runs one workgroup per weight row (shaders/matvec_frozen.wgsl)
/// instead of the tiled matmul, whose 64-row tiles would be nearly all padding.
pub const MATVEC_MAX_ROWS: usize = 4;

/// `fn load_w(r, c, row_bytes) -> f32`: element (r, c) of a row-major matrix stored as `dtype` in `wq`
/// (array<u32>), rows `row_bytes` apart. None for types without a GPU decoder.
pub(crate) fn load_w_wgsl(dtype: GgmlType) -> Option<&'static str> {
    Some(match dtype {
        GgmlType::F32 => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    return bitcast<f32>(wq[r * (row_bytes / 4u) + c]);
}"
        }
        GgmlType::F16 => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    return half_at(r * row_bytes + 2u * c);
}"
        }
        GgmlType::BF16 => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    let a = r * row_bytes + 2u * c;
    return bitcast<f32>((byte_at(a) | (byte_at(a + 1u) << 8u)) << 16u);
}"
        }
        // 18-byte blocks of 32: d (f16), 16 bytes of nibbles; element j is (lo_j − 8)·d, element j+16 (hi_j − 8)·d.
        GgmlType::Q4_0 => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    let base = r * row_bytes + (c / 32u) * 18u;
    let j = c % 32u;
    let q = byte_at(base + 2u + j % 16u);
    let nib = select(q & 15u, q >> 4u, j >= 16u);
    return (f32(nib) - 8.0) * half_at(base);
}"
        }
        // 20-byte blocks of 32: d, m (f16), 16 bytes of nibbles; element = q·d + m.
        GgmlType::Q4_1 => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    let base = r * row_bytes + (c / 32u) * 20u;
    let j = c % 32u;
    let q = byte_at(base + 4u + j % 16u);
    let nib = select(q & 15u, q >> 4u, j >= 16u);
    return f32(nib) * half_at(base) + half_at(base + 2u);
}"
        }
        // 22-byte blocks of 32: d (f16), qh (32 fifth bits, little-endian), 16 bytes of nibbles; element j is
        // (lo_j | bit_j << 4 − 16)·d, element j+16 (hi_j | bit_(j+16) << 4 − 16)·d.
        GgmlType::Q5_0 => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    let base = r * row_bytes + (c / 32u) * 22u;
    let j = c % 32u;
    let q = byte_at(base + 6u + j % 16u);
    let nib = select(q & 15u, q >> 4u, j >= 16u);
    let bit = (byte_at(base + 2u + j / 8u) >> (j % 8u)) & 1u;
    return (f32(nib | (bit << 4u)) - 16.0) * half_at(base);
}"
        }
        // 24-byte blocks of 32: d, m (f16), qh, 16 bytes of nibbles; element = (nibble | bit << 4)·d + m.
        GgmlType::Q5_1 => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    let base = r * row_bytes + (c / 32u) * 24u;
    let j = c % 32u;
    let q = byte_at(base + 8u + j % 16u);
    let nib = select(q & 15u, q >> 4u, j >= 16u);
    let bit = (byte_at(base + 4u + j / 8u) >> (j % 8u)) & 1u;
    return f32(nib | (bit << 4u)) * half_at(base) + half_at(base + 2u);
}"
        }
        // 34-byte blocks of 32: d (f16), 32 signed bytes; element = q·d.
        GgmlType::Q8_0 => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    let base = r * row_bytes + (c / 32u) * 34u;
    let q = bitcast<i32>(byte_at(base + 2u + c % 32u) << 24u) >> 24u;
    return f32(q) * half_at(base);
}"
        }
        // 144-byte blocks of 256: d, dmin (f16), 12 bytes of 6-bit scales and mins of 8 sub-blocks of 32, then 128
        // bytes of nibbles, each 32 bytes holding a pair of sub-blocks (low nibbles, then high):
        // element = d·scale·q − dmin·min.
        GgmlType::Q4K => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    let base = r * row_bytes + (c / 256u) * 144u;
    let i = c % 256u;
    let j = i / 64u;
    let hi = select(0u, 1u, i % 64u >= 32u);
    let sm = scale_min_k4(base + 4u, 2u * j + hi);
    let q = (byte_at(base + 16u + 32u * j + i % 32u) >> (4u * hi)) & 15u;
    return half_at(base) * f32(sm.x) * f32(q) - half_at(base + 2u) * f32(sm.y);
}"
        }
        // 176-byte blocks of 256: as Q4_K with a fifth bit per value in 32 bytes of qh (bit 2·pair + high of byte
        // i % 32): element = d·scale·(q + 16·bit) − dmin·min.
        GgmlType::Q5K => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    let base = r * row_bytes + (c / 256u) * 176u;
    let i = c % 256u;
    let j = i / 64u;
    let hi = select(0u, 1u, i % 64u >= 32u);
    let sm = scale_min_k4(base + 4u, 2u * j + hi);
    let q = (byte_at(base + 48u + 32u * j + i % 32u) >> (4u * hi)) & 15u;
    let bit = (byte_at(base + 16u + i % 32u) >> (2u * j + hi)) & 1u;
    return half_at(base) * f32(sm.x) * (f32(q) + 16.0 * f32(bit)) - half_at(base + 2u) * f32(sm.y);
}"
        }
        // 210-byte blocks of 256: 128 bytes of low nibbles, 64 of 2-bit highs, 16 signed 8-bit scales (one per 16
        // values), d (f16) last; each half of 128 values reads ql[64·half..], qh[32·half..], scales[8·half..]:
        // element = d·scale·(q − 32).
        GgmlType::Q6K => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    let base = r * row_bytes + (c / 256u) * 210u;
    let i = c % 256u;
    let n = i / 128u;
    let k = (i % 128u) / 32u;
    let l = i % 32u;
    let qlb = byte_at(base + 64u * n + l + 32u * (k & 1u));
    let lo = select(qlb & 15u, qlb >> 4u, k >= 2u);
    let hb = (byte_at(base + 128u + 32u * n + l) >> (2u * k)) & 3u;
    let q = i32(lo | (hb << 4u)) - 32;
    let sc = bitcast<i32>(byte_at(base + 192u + 8u * n + l / 16u + 2u * k) << 24u) >> 24u;
    return half_at(base + 208u) * f32(sc) * f32(q);
}"
        }
        _ => return None,
    })
}

/// Byte and f16 readers over `wq`, for the decoders above.
pub(crate) const BYTES_WGSL: &str = "fn byte_at(a: u32) -> u32 {
    return (wq[a >> 2u] >> ((a & 3u) * 8u)) & 0xffu;
}
fn half_at(a: u32) -> f32 {
    return unpack2x16float(byte_at(a) | (byte_at(a + 1u) << 8u)).x;
}
// The 6-bit scale and min of K-quant sub-block j from the 12 bytes at `at`.
fn scale_min_k4(at: u32, j: u32) -> vec2<u32> {
    if (j < 4u) {
        return vec2<u32>(byte_at(at + j) & 63u, byte_at(at + j + 4u) & 63u);
    }
    let d = (byte_at(at + j + 4u) & 15u) | ((byte_at(at + j - 4u) >> 6u) << 4u);
    let m = (byte_at(at + j + 4u) >> 4u) | ((byte_at(at + j) >> 6u) << 4u);
    return vec2<u32>(d, m);
}";

/// NF4 (bitsandbytes' 4-bit NormalFloat, blocks straddling rows) in one buffer of words per block of rows: a header
/// `[blocksize, word offset P of the codes, rounding (0 f32, 1 f16, 2 bf16)]`, the 16-entry quant_map at words 3..19,
/// each block's f32 scale from word 19 (double-quantized scales are decoded once on the host: 4 bytes per 64
/// values), then the packed codes from word P (value 2i in the high nibble of byte i). `row_bytes` is the number
/// of values per row. element = round(quant_map[q] · scale).
const NF4_WGSL: &str = "fn round_bf16(v: f32) -> f32 {
    let u = bitcast<u32>(v);
    return bitcast<f32>((u + 0x7fffu + ((u >> 16u) & 1u)) & 0xffff0000u);
}
fn round_f16(v: f32) -> f32 {
    if (abs(v) < 6.103515625e-05) {
        // below f16's smallest normal: multiples of 2^-24, ties to even
        return round(v * 16777216.0) / 16777216.0;
    }
    let u = bitcast<u32>(v);
    return bitcast<f32>((u + 0xfffu + ((u >> 13u) & 1u)) & 0xffffe000u);
}
fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    let i = r * row_bytes + c;
    let byte = byte_at(wq[1] * 4u + (i >> 1u));
    let q = select(byte >> 4u, byte & 15u, (i & 1u) == 1u);
    let v = bitcast<f32>(wq[3u + q]) * bitcast<f32>(wq[19u + i / wq[0]]);
    switch (wq[2]) {
        case 1u: { return round_f16(v); }
        case 2u: { return round_bf16(v); }
        default: { return v; }
    }
}";

/// How a frozen weight is stored on the device.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Storage {
    /// GGUF blocks (or plain f32/f16/bf16), rows `row_bytes` apart.
    Ggml(GgmlType),
    /// See [`NF4_WGSL`].
    Nf4,
}

/// Rows row0..row0 + rows of a frozen weight in a buffer of their own, laid out as a whole weight of that many rows
/// (`load_w(r, …)` takes r from the block's first row).
pub(crate) struct RowBlock {
    pub row0: usize,
    pub rows: usize,
    pub data: GpuBuffer,
}

/// The frozen weight on the device. Layout as on the CPU: [rows = out, cols = in], each row a whole number of
/// blocks (NF4: the matrix flattened, blocks straddling rows).
///
/// A weight larger than one storage binding allows ([`Context::max_weight_block_bytes`]: 128 MiB on lavapipe and
/// by wgpu's defaults, which Gemma 3's tied 262k × 640 Q8_0 table and Llama 3.1 8B's head pass) is kept as several
/// [`RowBlock`]s of whole rows, each within it; the products and the embedding lookup run block by block, each
/// writing its slice of the output (or, for the input gradient, adding its share).
pub struct GpuFrozen {
    pub rows: usize,
    pub cols: usize,
    storage: Storage,
    /// What load_w takes as `row_bytes`: bytes per row, or values per row for NF4.
    row_bytes: usize,
    blocks: Vec<RowBlock>,
}

/// Splits `rows` rows into the fewest blocks of about equal size whose `bytes(rows)` stay within `limit`, each a
/// multiple of `unit` rows but the last: [(row0, row1)]. None when `unit` rows alone exceed the limit.
fn row_blocks(rows: usize, unit: usize, limit: u64, bytes: impl Fn(usize) -> u64) -> Option<Vec<(usize, usize)>> {
    if bytes(rows) <= limit {
        return Some(vec![(0, rows)]);
    }
    let units = rows.div_ceil(unit);
    // The most units that fit one block (bytes grows with rows).
    let (mut lo, mut hi) = (0, units);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if bytes(mid * unit) <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    if lo == 0 {
        return None;
    }
    let per = units.div_ceil(units.div_ceil(lo)) * unit;
    Some((0..rows).step_by(per).map(|r0| (r0, (r0 + per).min(rows))).collect())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl GpuFrozen {
    /// Uploads the weight in its own storage, in blocks of whole rows when it exceeds one binding. `name` (the
    /// tensor) is for the errors: a type without a GPU decoder, or a row too large for any binding.
    pub fn upload(ctx: &Context, m: &FrozenMatrix, name: &str) -> Result<Self> {
        let limit = ctx.max_weight_block_bytes();
        let too_large = |unit: usize, bytes: u64| {
            let (shape, storage) = (format!("[{}, {}]", m.rows, m.cols), m.storage_name());
            let rows = match unit {
                1 => format!("one row of {shape} ({storage}) takes"),
                _ => format!("{unit} rows of {shape} ({storage}, whole blocks of codes) take"),
            };
            Error::hinted(
                format!(
                    "{name}: {rows} {}, more than {}'s largest storage buffer ({})",
                    human_bytes(bytes),
                    ctx.label(),
                    human_bytes(limit)
                ),
                "use --device cpu",
            )
        };
        if let Some(nf4) = m.nf4() {
            // A block of rows starts on a whole NF4 block and a whole byte of codes: `unit` rows hold a multiple
            // of both. Each block has its own header, quant_map and scales (NF4_WGSL).
            let bs = nf4.blocksize;
            let step = bs * 2 / gcd(bs, 2);
            let unit = step / gcd(step, m.cols.max(1));
            let bytes = |rows: usize| {
                let values = rows * m.cols;
                ((19 + values.div_ceil(bs)) * 4 + values.div_ceil(2)).next_multiple_of(4) as u64
            };
            let spans = row_blocks(m.rows, unit, limit, bytes).ok_or_else(|| too_large(unit, bytes(unit)))?;
            let rounding = match nf4.dtype {
                Nf4Dtype::F32 => 0u32,
                Nf4Dtype::F16 => 1,
                Nf4Dtype::BF16 => 2,
            };
            let mut blocks = Vec::with_capacity(spans.len());
            for (r0, r1) in spans {
                let (v0, v1) = (r0 * m.cols, r1 * m.cols);
                let (b0, b1) = (v0 / bs, v1.div_ceil(bs));
                let mut words: Vec<u8> = [bs as u32, (19 + b1 - b0) as u32, rounding]
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .chain(nf4.quant_map.iter().flat_map(|x| x.to_le_bytes()))
                    .chain((b0..b1).flat_map(|b| nf4.block_absmax(b).to_le_bytes()))
                    .collect();
                words.extend_from_slice(&nf4.packed[v0 / 2..v1.div_ceil(2)]);
                words.resize(words.len().next_multiple_of(4), 0);
                blocks.push(RowBlock { row0: r0, rows: r1 - r0, data: ctx.upload_words(&words)? });
            }
            return Ok(GpuFrozen { rows: m.rows, cols: m.cols, storage: Storage::Nf4, row_bytes: m.cols, blocks });
        }
        let unsupported = |what: String| {
            Error::hinted(
                format!(
                    "{name}: frozen weights stored as {what} have no GPU kernel yet (f32, f16, bf16, q4_0, q4_1, \
                     q5_0, q5_1, q8_0, q4_k, q5_k, q6_k and nf4 do)"
                ),
                "load the base at another type, or use --device cpu",
            )
        };
        let (dtype, bytes) = m.ggml_blocks().ok_or_else(|| unsupported(m.storage_name()))?;
        if load_w_wgsl(dtype).is_none() {
            return Err(unsupported(m.storage_name()));
        }
        let row_bytes = dtype.row_bytes(m.cols).expect("the matrix was validated when it was built");
        let block_bytes = |rows: usize| (rows * row_bytes).next_multiple_of(4) as u64;
        let spans = row_blocks(m.rows, 1, limit, block_bytes).ok_or_else(|| too_large(1, block_bytes(1)))?;
        let mut blocks = Vec::with_capacity(spans.len());
        for (r0, r1) in spans {
            let data = ctx.upload_bytes(&bytes[r0 * row_bytes..r1 * row_bytes])?;
            blocks.push(RowBlock { row0: r0, rows: r1 - r0, data });
        }
        Ok(GpuFrozen { rows: m.rows, cols: m.cols, storage: Storage::Ggml(dtype), row_bytes, blocks })
    }

    /// The storage in words: `f32`, a ggml block type (`q4_1`), or `nf4`.
    pub fn storage_name(&self) -> String {
        match self.storage {
            Storage::Ggml(t) => t.name().to_lowercase(),
            Storage::Nf4 => "nf4".into(),
        }
    }

    /// `fn load_w(r, c, row_bytes) -> f32` for this storage, with the byte readers it needs (reads `wq`).
    pub(crate) fn load_w_wgsl(&self) -> String {
        let body = match self.storage {
            Storage::Ggml(t) => load_w_wgsl(t).expect("checked at upload"),
            Storage::Nf4 => NF4_WGSL,
        };
        format!("{BYTES_WGSL}\n{body}")
    }

    pub(crate) fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The blocks of rows, in order (one unless the weight exceeds a binding).
    pub(crate) fn blocks(&self) -> &[RowBlock] {
        &self.blocks
    }

    /// How many blocks of rows the weight is kept in.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Device bytes of the weight (its blocks, each padded to whole words; NF4 with its scales in f32 and a header
    /// per block).
    pub fn storage_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.data.len() * 4).sum()
    }

    fn kernel(&self) -> Kernel {
        let decl = format!(
            "@group(0) @binding(3) var<storage, read> wq: array<u32>;\n{}\n\
             fn load_b(k: u32, n: u32) -> f32 {{\n    if (p.b_cs != 0u) {{ return load_w(n, k, p.b_rs); }}\n    \
             return load_w(k + p.b_off, n, p.b_rs);\n}}",
            self.load_w_wgsl()
        );
        kernel(&format!("matmul_frozen_{}", self.storage_name()), &decl)
    }

    /// y[N, rows] = (accumulate ? y : 0) + x[N, cols] · Wᵀ; each block of rows writes its columns of y.
    pub fn forward(&self, ctx: &Context, y: &mut GpuBuffer, x: &GpuBuffer, n: usize, accumulate: bool) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        ensure!(y.len() >= n * rows && x.len() >= n * cols, "GpuFrozen::forward: operand too small");
        if n == 0 || rows == 0 {
            return Ok(());
        }
        if n <= MATVEC_MAX_ROWS {
            let source = include_str!("../shaders/matvec_frozen.wgsl").replace("//LOAD_W", &self.load_w_wgsl());
            let kernel = Kernel { name: format!("matvec_frozen_{}", self.storage_name()), source, entry: "main" };
            for b in &self.blocks {
                let p = [n, b.rows, cols, accumulate as usize, self.row_bytes, b.row0, rows, 0].map(|v| v as u32);
                let bind = [Binding::Write(y), Binding::Read(x), Binding::Read(&b.data)];
                ctx.dispatch(&kernel, &p, &bind, groups_for(b.rows))?;
            }
            return Ok(());
        }
        // B(k, n) = W[n, k]: transposed (b_cs = 1), rows row_bytes apart (b_rs); the block's rows are columns
        // row0.. of y, whose rows are `rows` apart.
        let (kernel, xv) = (self.kernel(), View { off: 0, rs: cols, cs: 1 });
        let wv = View { off: 0, rs: self.row_bytes, cs: 1 };
        for b in &self.blocks {
            let p = params(n, b.rows, cols, accumulate, 1.0, xv, wv, b.row0, rows);
            let bind = [Binding::Write(y), Binding::Read(x), Binding::Read(&b.data)];
            ctx.dispatch(&kernel, &p, &bind, groups(n, b.rows))?;
        }
        Ok(())
    }

    /// dx[N, cols] = (accumulate ? dx : 0) + dy[N, rows] · W  (the input gradient; W itself gets none), summed
    /// over the blocks of rows: dx += dy[:, row0..row0 + rows] · W[row0..row0 + rows].
    pub fn backward_input(
        &self,
        ctx: &Context,
        dx: &mut GpuBuffer,
        dy: &GpuBuffer,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        ensure!(dx.len() >= n * cols && dy.len() >= n * rows, "GpuFrozen::backward_input: operand too small");
        if n == 0 || cols == 0 {
            return Ok(());
        }
        let kernel = self.kernel();
        // The reduction runs over the weight's rows: each block's, in slices of at most K_SLICE rows (b_off: the
        // slice's first row within the block), each accumulating onto the last.
        let mut first = true;
        for b in &self.blocks {
            for r0 in (0..b.rows).step_by(K_SLICE) {
                let dyv = View { off: b.row0 + r0, rs: rows, cs: 1 };
                let wv = View { off: r0, rs: self.row_bytes, cs: 0 };
                let k = (b.rows - r0).min(K_SLICE);
                let p = params(n, cols, k, accumulate || !first, 1.0, dyv, wv, 0, cols);
                let bind = [Binding::Write(dx), Binding::Read(dy), Binding::Read(&b.data)];
                ctx.dispatch(&kernel, &p, &bind, groups(n, cols))?;
                first = false;
            }
        }
        Ok(())
    }
}
