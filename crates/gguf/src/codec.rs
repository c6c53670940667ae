//! GGML block codecs: bytes of a tensor ⇄ f32, delegating the block maths to candle's k_quants (whose blocks
//! are `#[repr(C)]` with ggml's exact layout) and splitting large inputs into chunks of whole blocks for rayon.

use candle_core::quantized::k_quants::{
    self, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K,
    BlockQ8_0, BlockQ8_1,
};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::{Error, GgmlType};

/// Elements per parallel work item (rounded to whole blocks); small enough to spread a 50k×576 embedding.
const CHUNK_ELEMENTS: usize = 1 << 15;

/// A candle block type whose bytes are exactly one ggml block of `TYPE`.
///
/// # Safety
/// Implementors are `#[repr(C)]` structs of integers and `f16`s only: no padding, every bit pattern valid,
/// and `size_of::<Self>() == TYPE.type_size()` (checked at compile time below).
unsafe trait Block: k_quants::GgmlType + Send + Sync {
    const TYPE: GgmlType;
}

macro_rules! blocks {
    ($($block:ty => $t:expr),* $(,)?) => {$(
        // SAFETY: candle declares each of these #[repr(C)] with the fields of ggml's block (u8/i8/i16
        // arrays, f16, f32), and the size assertion rules out padding.
        unsafe impl Block for $block {
            const TYPE: GgmlType = $t;
        }
        const _: () = assert!(std::mem::size_of::<$block>() == $t.type_size());
    )*};
}

blocks! {
    BlockQ4_0 => GgmlType::Q4_0,
    BlockQ4_1 => GgmlType::Q4_1,
    BlockQ5_0 => GgmlType::Q5_0,
    BlockQ5_1 => GgmlType::Q5_1,
    BlockQ8_0 => GgmlType::Q8_0,
    BlockQ8_1 => GgmlType::Q8_1,
    BlockQ2K => GgmlType::Q2K,
    BlockQ3K => GgmlType::Q3K,
    BlockQ4K => GgmlType::Q4K,
    BlockQ5K => GgmlType::Q5K,
    BlockQ6K => GgmlType::Q6K,
    BlockQ8K => GgmlType::Q8K,
}

/// Byte size of the candle block for `dtype`, for the layout test.
#[doc(hidden)]
pub fn candle_block_size(dtype: GgmlType) -> Option<usize> {
    use std::mem::size_of;
    Some(match dtype {
        GgmlType::Q4_0 => size_of::<BlockQ4_0>(),
        GgmlType::Q4_1 => size_of::<BlockQ4_1>(),
        GgmlType::Q5_0 => size_of::<BlockQ5_0>(),
        GgmlType::Q5_1 => size_of::<BlockQ5_1>(),
        GgmlType::Q8_0 => size_of::<BlockQ8_0>(),
        GgmlType::Q8_1 => size_of::<BlockQ8_1>(),
        GgmlType::Q2K => size_of::<BlockQ2K>(),
        GgmlType::Q3K => size_of::<BlockQ3K>(),
        GgmlType::Q4K => size_of::<BlockQ4K>(),
        GgmlType::Q5K => size_of::<BlockQ5K>(),
        GgmlType::Q6K => size_of::<BlockQ6K>(),
        GgmlType::Q8K => size_of::<BlockQ8K>(),
        _ => return None,
    })
}

/// Decodes `bytes` (whole blocks of `dtype`) into `out.len()` f32 values, ggml's element order.
pub fn dequantize(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), Error> {
    let n = out.len();
    let want = dtype.row_bytes(n).ok_or_else(|| {
        Error::Codec(format!(
            "dequantize {dtype}: {n} elements is not a whole number of {}-element blocks",
            dtype.block_size()
        ))
    })?;
    if bytes.len() != want {
        return Err(Error::Codec(format!("dequantize {dtype}: {n} elements need {want} bytes, got {}", bytes.len())));
    }
    match dtype {
        GgmlType::F32 => decode_scalars::<4>(bytes, out, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => decode_scalars::<2>(bytes, out, |b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::BF16 => decode_scalars::<2>(bytes, out, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::F64 => decode_scalars::<8>(bytes, out, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        GgmlType::Q4_0 => decode_blocks::<BlockQ4_0>(bytes, out),
        GgmlType::Q4_1 => decode_blocks::<BlockQ4_1>(bytes, out),
        GgmlType::Q5_0 => decode_blocks::<BlockQ5_0>(bytes, out),
        GgmlType::Q5_1 => decode_blocks::<BlockQ5_1>(bytes, out),
        GgmlType::Q8_0 => decode_blocks::<BlockQ8_0>(bytes, out),
        GgmlType::Q8_1 => decode_blocks::<BlockQ8_1>(bytes, out),
        GgmlType::Q2K => decode_blocks::<BlockQ2K>(bytes, out),
        GgmlType::Q3K => decode_blocks::<BlockQ3K>(bytes, out),
        GgmlType::Q4K => decode_blocks::<BlockQ4K>(bytes, out),
        GgmlType::Q5K => decode_blocks::<BlockQ5K>(bytes, out),
        GgmlType::Q6K => decode_blocks::<BlockQ6K>(bytes, out),
        GgmlType::Q8K => decode_blocks::<BlockQ8K>(bytes, out),
        GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 => {
            return Err(Error::Codec(format!("dequantize {dtype}: integer tensors are not decoded to f32")))
        }
    }
    Ok(())
}

/// Encodes `data`, rows of `row_len` values, as `dtype` (ggml's reference quantizers, no importance matrix).
pub fn quantize(dtype: GgmlType, data: &[f32], row_len: usize) -> Result<Vec<u8>, Error> {
    let bs = dtype.block_size();
    if !dtype.can_quantize() {
        return Err(Error::Codec(format!(
            "quantize {dtype}: not supported (expected one of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)"
        )));
    }
    if row_len == 0 || !row_len.is_multiple_of(bs) {
        return Err(Error::Codec(format!(
            "quantize {dtype}: row length {row_len} is not a positive multiple of the {bs}-element block"
        )));
    }
    if !data.len().is_multiple_of(row_len) {
        return Err(Error::Codec(format!(
            "quantize {dtype}: {} values is not a whole number of {row_len}-value rows",
            data.len()
        )));
    }
    let n_bytes = dtype
        .row_bytes(data.len())
        .ok_or_else(|| Error::Codec(format!("quantize {dtype}: {} values overflow", data.len())))?;
    if bs > 1 {
        // ggml's block quantizers turn NaN and infinity into garbage scales for the whole block.
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::Codec(format!(
                "quantize {dtype}: value {i} (row {}, column {}) is {}, expected a finite number",
                i / row_len,
                i % row_len,
                data[i]
            )));
        }
    }
    let mut out = vec![0u8; n_bytes];
    match dtype {
        GgmlType::F32 => encode_scalars::<4>(data, &mut out, |v, b| b.copy_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => encode_scalars::<2>(data, &mut out, |v, b| b.copy_from_slice(&f16::from_f32(v).to_le_bytes())),
        GgmlType::BF16 => {
            encode_scalars::<2>(data, &mut out, |v, b| b.copy_from_slice(&bf16::from_f32(v).to_le_bytes()))
        }
        GgmlType::Q4_0 => encode_blocks::<BlockQ4_0>(data, &mut out),
        GgmlType::Q4_1 => encode_blocks::<BlockQ4_1>(data, &mut out),
        GgmlType::Q5_0 => encode_blocks::<BlockQ5_0>(data, &mut out),
        GgmlType::Q5_1 => encode_blocks::<BlockQ5_1>(data, &mut out),
        GgmlType::Q8_0 => encode_blocks::<BlockQ8_0>(data, &mut out),
        GgmlType::Q4K => encode_blocks::<BlockQ4K>(data, &mut out),
        GgmlType::Q5K => encode_blocks::<BlockQ5K>(data, &mut out),
        GgmlType::Q6K => encode_blocks::<BlockQ6K>(data, &mut out),
        _ => unreachable!("can_quantize() lists exactly the types above"),
    }
    Ok(out)
}

/// Work items of whole blocks: `(elements, bytes)` per chunk.
fn chunk_sizes(dtype: GgmlType) -> (usize, usize) {
    let blocks = (CHUNK_ELEMENTS / dtype.block_size()).max(1);
    (blocks * dtype.block_size(), blocks * dtype.type_size())
}

fn decode_scalars<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn(&[u8]) -> f32 + Sync) {
    out.par_chunks_mut(CHUNK_ELEMENTS).zip(bytes.par_chunks(CHUNK_ELEMENTS * N)).for_each(|(o, b)| {
        for (y, x) in o.iter_mut().zip(b.chunks_exact(N)) {
            *y = f(x);
        }
    });
}

fn encode_scalars<const N: usize>(data: &[f32], out: &mut [u8], f: impl Fn(f32, &mut [u8]) + Sync) {
    out.par_chunks_mut(CHUNK_ELEMENTS * N).zip(data.par_chunks(CHUNK_ELEMENTS)).for_each(|(o, d)| {
        for (b, &v) in o.chunks_exact_mut(N).zip(d) {
            f(v, b);
        }
    });
}

/// `bytes` must hold exactly `out.len() / T::BLCK_SIZE` blocks (checked by the callers).
fn decode_blocks<T: Block>(bytes: &[u8], out: &mut [f32]) {
    let (elems, nbytes) = chunk_sizes(T::TYPE);
    out.par_chunks_mut(elems)
        .zip(bytes.par_chunks(nbytes))
        .for_each(|(o, b)| with_blocks::<T>(b, |blocks| T::to_float(blocks, o)));
}

fn encode_blocks<T: Block>(data: &[f32], out: &mut [u8]) {
    let (elems, nbytes) = chunk_sizes(T::TYPE);
    out.par_chunks_mut(nbytes).zip(data.par_chunks(elems)).for_each(|(o, d)| {
        let mut blocks = vec![T::zeros(); o.len() / std::mem::size_of::<T>()];
        T::from_float(d, &mut blocks);
        o.copy_from_slice(block_bytes(&blocks));
    });
}

/// Views `bytes` (a whole number of blocks) as `&[T]`, copying into an aligned buffer when it is not aligned.
fn with_blocks<T: Block>(bytes: &[u8], f: impl FnOnce(&[T])) {
    let size = std::mem::size_of::<T>();
    assert_eq!(bytes.len() % size, 0, "callers pass whole blocks");
    let n = bytes.len() / size;
    if bytes.as_ptr().align_offset(std::mem::align_of::<T>()) == 0 {
        // SAFETY: aligned, in bounds (n * size == bytes.len()), and every bit pattern is a valid T (Block).
        let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), n) };
        f(blocks);
    } else {
        let mut blocks = vec![T::zeros(); n];
        // SAFETY: the destination holds n * size bytes, T has no padding and accepts any bit pattern (Block).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), blocks.as_mut_ptr().cast::<u8>(), bytes.len());
        }
        f(&blocks);
    }
}

fn block_bytes<T: Block>(blocks: &[T]) -> &[u8] {
    // SAFETY: T has no padding (Block), so all of its bytes are initialised; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks)) }
}
