//! NF4, the 4-bit NormalFloat blocks of QLoRA as bitsandbytes stores them (`bitsandbytes.functional.quantize_4bit`
//! with `quant_type="nf4"`), so that a `*-bnb-4bit` checkpoint and a base quantized here hold the same numbers.
//!
//! The matrix is flattened row-major and cut into blocks of `blocksize` (64) values, straddling rows when a row is
//! not a whole number of blocks. Each value is a 4-bit index into a 16-entry table (`quant_map`), two per byte,
//! the first in the high nibble. Each block has a scale `absmax`; with double quantization the scales are stored
//! as 8-bit codes of bitsandbytes' dynamic map in blocks of 256, each block with its own f32 scale, plus one
//! offset (the mean scale):
//!
//!   absmax[b] = nested_quant_map[absmax_code[b]] · nested_absmax[b / 256] + offset
//!   w[i]      = round_to(dtype, quant_map[q[i]] · absmax[i / 64])
//!
//! in f32, in that order, as bitsandbytes dequantizes; `dtype` is the checkpoint's own (its `quant_state` says
//! `bfloat16` for a bf16 model): bitsandbytes hands the layer that type, so loft rounds to it too.

#![forbid(unsafe_code)]

use super::dynamic_map::{create_dynamic_map, nearest_code};

/// bitsandbytes' NF4 table (`get_4bit_type("nf4")`), ascending; index 7 is zero.
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// bitsandbytes' default block of values per scale for 4-bit weights.
pub const BLOCKSIZE: usize = 64;
/// bitsandbytes' block of scales per nested scale (double quantization).
pub const NESTED_BLOCKSIZE: usize = 256;

/// The type bitsandbytes dequantizes to (the checkpoint's `dtype`); loft rounds each value to it, in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nf4Dtype {
    F32,
    F16,
    BF16,
}

impl Nf4Dtype {
    /// The name bitsandbytes writes in `quant_state` (`str(torch.bfloat16).strip("torch.")`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "float32" => Some(Nf4Dtype::F32),
            "float16" => Some(Nf4Dtype::F16),
            "bfloat16" => Some(Nf4Dtype::BF16),
            _ => None,
        }
    }

    fn round(self, v: f32) -> f32 {
        match self {
            Nf4Dtype::F32 => v,
            Nf4Dtype::F16 => half::f16::from_f32(v).to_f32(),
            Nf4Dtype::BF16 => half::bf16::from_f32(v).to_f32(),
        }
    }
}

/// The per-block scales.
#[derive(Clone, Debug)]
pub enum Absmax {
    /// One f32 per block.
    F32(Vec<f32>),
    /// Double quantization: one u8 code per block, one f32 per `blocksize` codes, one offset.
    Nested { codes: Vec<u8>, quant_map: Box<[f32; 256]>, absmax: Vec<f32>, blocksize: usize, offset: f32 },
}

/// A flattened tensor of `len` values in NF4 blocks.
#[derive(Clone, Debug)]
pub struct Nf4Blocks {
    /// `len.div_ceil(2)` bytes; value 2i in the high nibble, 2i+1 in the low one.
    pub packed: Vec<u8>,
    pub len: usize,
    pub blocksize: usize,
    pub quant_map: [f32; 16],
    pub absmax: Absmax,
    pub dtype: Nf4Dtype,
}

/// Why a set of NF4 parts does not describe `len` values.
#[derive(Debug, PartialEq)]
pub enum Nf4Error {
    Blocksize(usize),
    Packed { got: usize, want: usize },
    Absmax { got: usize, want: usize },
    NestedAbsmax { got: usize, want: usize },
}

impl std::fmt::Display for Nf4Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Nf4Error::Blocksize(b) => write!(f, "blocksize {b} is not a power of two from 32 to 4096"),
            Nf4Error::Packed { got, want } => write!(f, "{got} packed bytes, expected {want}"),
            Nf4Error::Absmax { got, want } => write!(f, "{got} absmax values, expected {want} (one per block)"),
            Nf4Error::NestedAbsmax { got, want } => write!(f, "{got} nested_absmax values, expected {want}"),
        }
    }
}

impl Nf4Blocks {
    /// Checks that the parts fit `len` values; the kernels index without further checks.
    pub fn validate(&self) -> Result<(), Nf4Error> {
        let b = self.blocksize;
        if !(32..=4096).contains(&b) || !b.is_power_of_two() {
            return Err(Nf4Error::Blocksize(b));
        }
        let want = self.len.div_ceil(2);
        if self.packed.len() != want {
            return Err(Nf4Error::Packed { got: self.packed.len(), want });
        }
        let blocks = self.len.div_ceil(b);
        match &self.absmax {
            Absmax::F32(a) if a.len() != blocks => Err(Nf4Error::Absmax { got: a.len(), want: blocks }),
            Absmax::Nested { codes, .. } if codes.len() != blocks => {
                Err(Nf4Error::Absmax { got: codes.len(), want: blocks })
            }
            Absmax::Nested { absmax, blocksize, .. }
                if *blocksize == 0 || absmax.len() != blocks.div_ceil(*blocksize) =>
            {
                Err(Nf4Error::NestedAbsmax { got: absmax.len(), want: blocks.div_ceil((*blocksize).max(1)) })
            }
            _ => Ok(()),
        }
    }

    /// Quantizes `w` as `quantize_4bit(w, blocksize, compress_statistics=double_quant, quant_type="nf4")`: the
    /// same 4-bit codes and f32 scales (bitsandbytes' torch kernel: scale by the reciprocal of the block's absmax,
    /// clamp, take the code whose midpoint interval holds the value, ties to the lower code). With
    /// `double_quant`, each scale takes the nearest code of the dynamic map (bitsandbytes' CPU kernel reads a
    /// 65536-entry table instead and picks the neighbouring code for about one scale in a hundred).
    pub fn quantize(w: &[f32], blocksize: usize, double_quant: bool, dtype: Nf4Dtype) -> Nf4Blocks {
        let mut bounds = [0f32; 15];
        for (i, b) in bounds.iter_mut().enumerate() {
            *b = (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0;
        }
        let mut codes = vec![0u8; w.len() + w.len() % 2];
        let mut absmax = Vec::with_capacity(w.len().div_ceil(blocksize));
        for (block, out) in w.chunks(blocksize).zip(codes.chunks_mut(blocksize)) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            absmax.push(amax);
            let inv = 1.0 / amax.max(1e-38);
            for (v, q) in block.iter().zip(out.iter_mut()) {
                let s = (v * inv).clamp(-1.0, 1.0);
                *q = bounds.iter().take_while(|&&b| b < s).count() as u8;
            }
        }
        if w.len() % 2 == 1 {
            // bitsandbytes pads the scaled values with one 0.0, which is code 7.
            codes[w.len()] = 7;
        }
        let packed = codes.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
        let absmax = if double_quant { nest_absmax(&absmax) } else { Absmax::F32(absmax) };
        Nf4Blocks { packed, len: w.len(), blocksize, quant_map: NF4_CODE, absmax, dtype }
    }

    /// The f32 scale of block `b`.
    #[inline]
    pub fn block_absmax(&self, b: usize) -> f32 {
        match &self.absmax {
            Absmax::F32(a) => a[b],
            Absmax::Nested { codes, quant_map, absmax, blocksize, offset } => {
                quant_map[codes[b] as usize] * absmax[b / blocksize] + offset
            }
        }
    }

    /// Values `start .. start + out.len()` of the flattened tensor.
    pub fn dequantize(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        assert!(end <= self.len, "Nf4Blocks::dequantize: range past the end");
        let mut i = start;
        while i < end {
            let b = i / self.blocksize;
            let block_end = ((b + 1) * self.blocksize).min(end);
            let scale = self.block_absmax(b);
            let dst = &mut out[i - start..block_end - start];
            let (code, dtype) = (&self.quant_map, self.dtype);
            for (k, o) in dst.iter_mut().enumerate() {
                let j = i + k;
                let byte = self.packed[j >> 1];
                let q = if j & 1 == 0 { byte >> 4 } else { byte & 0x0f };
                *o = dtype.round(code[q as usize] * scale);
            }
            i = block_end;
        }
    }

    /// Bytes held: the packed codes and the scales.
    pub fn storage_bytes(&self) -> usize {
        self.packed.len()
            + match &self.absmax {
                Absmax::F32(a) => a.len() * 4,
                Absmax::Nested { codes, absmax, .. } => codes.len() + absmax.len() * 4 + 256 * 4 + 4,
            }
    }
}

/// Double quantization as bitsandbytes' `quantize_4bit(..., compress_statistics=True)`: subtract the mean scale,
/// then 8-bit blockwise quantization (blocks of 256) with the signed dynamic map.
fn nest_absmax(absmax: &[f32]) -> Absmax {
    let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len().max(1) as f64) as f32;
    let map = create_dynamic_map(true);
    let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let mut codes = Vec::with_capacity(centred.len());
    let mut scales = Vec::with_capacity(centred.len().div_ceil(NESTED_BLOCKSIZE));
    for block in centred.chunks(NESTED_BLOCKSIZE) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        scales.push(amax);
        if amax == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0 / amax;
        codes.extend(block.iter().map(|v| nearest_code(&map, (v * inv).clamp(-1.0, 1.0))));
    }
    Absmax::Nested { codes, quant_map: Box::new(map), absmax: scales, blocksize: NESTED_BLOCKSIZE, offset }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_round_trips_within_half_a_code_step() {
        let w: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 70.0).collect();
        for double_quant in [false, true] {
            let q = Nf4Blocks::quantize(&w, BLOCKSIZE, double_quant, Nf4Dtype::F32);
            q.validate().unwrap();
            let mut back = vec![0.0; w.len()];
            q.dequantize(0, &mut back);
            for (b, block) in w.chunks(BLOCKSIZE).enumerate() {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (k, v) in block.iter().enumerate() {
                    let err = (back[b * BLOCKSIZE + k] - v).abs();
                    assert!(err <= 0.16 * amax + 1e-3, "block {b} value {k}: {v} came back as {}", back[b * 64 + k]);
                }
            }
            // Any sub-range decodes as the whole does (ranges straddle blocks and start on odd values).
            let mut part = vec![0.0; 333];
            q.dequantize(101, &mut part);
            assert_eq!(&part[..], &back[101..434]);
        }
    }
}
