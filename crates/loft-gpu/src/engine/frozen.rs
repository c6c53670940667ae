//! Twin of `loft::engine::frozen`: a frozen linear weight [out, in] kept on the device in its own storage (f32,
//! f16, bf16, or GGUF Q4_0 / Q4_1 / Q8_0 blocks) and decoded element by element inside the matmul kernel, so a
//! 4-bit base never has an f32 copy on the device.

use gguf::GgmlType;
use loft::engine::FrozenMatrix;
use loft::{Error, Result};

use super::matmul::{groups, kernel, params, View};
use crate::context::{Binding, Context, GpuBuffer, Kernel};

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
        // 34-byte blocks of 32: d (f16), 32 signed bytes; element = q·d.
        GgmlType::Q8_0 => {
            "fn load_w(r: u32, c: u32, row_bytes: u32) -> f32 {
    let base = r * row_bytes + (c / 32u) * 34u;
    let q = bitcast<i32>(byte_at(base + 2u + c % 32u) << 24u) >> 24u;
    return f32(q) * half_at(base);
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
}";

/// The frozen weight on the device. Layout as on the CPU: [rows = out, cols = in], each row a whole number of
/// blocks.
pub struct GpuFrozen {
    pub rows: usize,
    pub cols: usize,
    dtype: GgmlType,
    row_bytes: usize,
    data: GpuBuffer,
}

impl GpuFrozen {
    /// Uploads the weight's own blocks. `name` (the tensor) is for the error when its type has no GPU decoder.
    pub fn upload(ctx: &Context, m: &FrozenMatrix, name: &str) -> Result<Self> {
        let unsupported = |what: String| {
            Error::hinted(
                format!("{name}: frozen weights stored as {what} have no GPU kernel yet (f32, f16, bf16, q4_0, q4_1 and q8_0 do)"),
                "load the base at another type, or use --device cpu",
            )
        };
        let (dtype, bytes) = m.ggml_blocks().ok_or_else(|| unsupported(m.storage_name()))?;
        if load_w_wgsl(dtype).is_none() {
            return Err(unsupported(m.storage_name()));
        }
        let row_bytes = dtype.row_bytes(m.cols).expect("the matrix was validated when it was built");
        Ok(GpuFrozen { rows: m.rows, cols: m.cols, dtype, row_bytes, data: ctx.upload_bytes(&bytes)? })
    }

    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    pub(crate) fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    pub(crate) fn data(&self) -> &GpuBuffer {
        &self.data
    }

    /// Device bytes of the weight (its blocks, padded to whole words).
    pub fn storage_bytes(&self) -> usize {
        self.data.len() * 4
    }

    fn kernel(&self) -> Kernel {
        let decl = format!(
            "@group(0) @binding(3) var<storage, read> wq: array<u32>;\n{BYTES_WGSL}\n{}\n\
             fn load_b(k: u32, n: u32) -> f32 {{\n    if (p.b_cs != 0u) {{ return load_w(n, k, p.b_rs); }}\n    \
             return load_w(k, n, p.b_rs);\n}}",
            load_w_wgsl(self.dtype).expect("checked at upload")
        );
        kernel(&format!("matmul_frozen_{}", self.dtype.name().to_lowercase()), &decl)
    }

    /// y[N, rows] = (accumulate ? y : 0) + x[N, cols] · Wᵀ
    pub fn forward(&self, ctx: &Context, y: &mut GpuBuffer, x: &GpuBuffer, n: usize, accumulate: bool) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        assert!(y.len() >= n * rows && x.len() >= n * cols, "GpuFrozen::forward: operand too small");
        if n == 0 || rows == 0 {
            return Ok(());
        }
        // B(k, n) = W[n, k]: transposed (b_cs = 1), rows row_bytes apart (b_rs).
        let xv = View { off: 0, rs: cols, cs: 1 };
        let p = params(n, rows, cols, accumulate, 1.0, xv, View { off: 0, rs: self.row_bytes, cs: 1 }, rows);
        let b = [Binding::Write(y), Binding::Read(x), Binding::Read(&self.data)];
        ctx.dispatch(&self.kernel(), &p, &b, groups(n, rows))
    }

    /// dx[N, cols] = (accumulate ? dx : 0) + dy[N, rows] · W  (the input gradient; W itself gets none)
    pub fn backward_input(
        &self,
        ctx: &Context,
        dx: &mut GpuBuffer,
        dy: &GpuBuffer,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        assert!(dx.len() >= n * cols && dy.len() >= n * rows, "GpuFrozen::backward_input: operand too small");
        if n == 0 || cols == 0 {
            return Ok(());
        }
        let dyv = View { off: 0, rs: rows, cs: 1 };
        let p = params(n, cols, rows, accumulate, 1.0, dyv, View { off: 0, rs: self.row_bytes, cs: 0 }, cols);
        let b = [Binding::Write(dx), Binding::Read(dy), Binding::Read(&self.data)];
        ctx.dispatch(&self.kernel(), &p, &b, groups(n, cols))
    }
}
