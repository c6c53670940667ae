//! Integer dot products for decoding: the activations quantized to 8 bits (as llama.cpp quantizes them, to
//! Q8_0/Q8_1/Q8_K, before its quantized products, but with a scale per 4 values), then each weight row's blocks
//! (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) multiplied with them in integers. Variants: a scalar reference
//! (also the portable path), AVX2 (`maddubs` + `madd`, 8 lanes) and AVX-512 VNNI (`dpbusd`, two blocks per 16
//! lanes), chosen at run time.
//!
//! Every variant computes the same float operations in the same order, so the CPU's features never change an answer
//! and each SIMD variant equals the scalar reference bit for bit. A row is cut into blocks b of 32 values (a
//! K-quant super-block k of 256 holds blocks b = 8k .. 8k + 7; s = b mod 8 is the block's place in it). For a
//! weight row w and a quantized vector x:
//!   per block b, 8 exact i32 lane sums: lane j = Σ of elements 4j..4j+3 of u_b ⊙ q_b − o·Σ q_bj, where u_b are the
//!     block's unsigned codes and o its offset (a Q4 element e < 16 is the low nibble of byte e, e ≥ 16 the high
//!     nibble of byte e − 16; Q5's fifth bit of element e is bit e of qh):
//!       Q4_0: the nibble, o = 8;                 Q4_1: the nibble, o = 0;
//!       Q5_0: nibble | 16·bit, o = 16;           Q5_1: nibble | 16·bit, o = 0;
//!       Q8_0: the signed byte itself (|w| against x with w's sign in the SIMD variants);
//!       NF4: the level's code 256·hi + lo of [`Nf4Codes`] (element 2i the high nibble of byte i, 2i + 1 the
//!             low one), as two signed bytes each taken as Q8_0's, lane = (Σ hi·q << 8) + Σ lo·q;
//!       Q4_K: block s's nibbles (low of qs[32·(s/2) + e] for even s, high for odd), o = 0;
//!       Q5_K: those | 16·(bit s of qh[e]), o = 0;
//!       Q6_K: (4 bits of ql[64·(s/4) + 32·(s mod 2) + e], low for s mod 4 < 2, high otherwise)
//!             | 16·(bits 2·(s mod 4)..+1 of qh[32·(s/4) + e]), o = 32;
//!   acc[b mod 2][j] = fma(dw_bj · dx_bj, lane_j as f32, acc[b mod 2][j])   (two accumulators of 8 lanes; dx_bj:
//!     the activations' scale of lane j of block b, see [`Q8Vector`]; dw_bj the weights' scale of the lane:
//!     the block's f16 d for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0; the caller's f32 dw_b for NF4 (absmax / 32512); d · sc_s
//!     for Q4_K/Q5_K (sc_s, m_s: the super-block's 6-bit scale and min of block s, as ggml's
//!     `get_scale_min_k4`); d · sc[2s + j/4] for Q6_K (i8 scales per 16))
//!   Q4_1, Q5_1 only: mins = mins + mw_b · sx_b, in block order            (sx_b = Σ_j dx_bj · Σ q_bj)
//!   Q4_K, Q5_K only: per super-block, mins8[s] = fma(dmin · m_s, sx_b, mins8[s]) for s = 0..8
//!   result = hsum8(acc[0] + acc[1]) (+ mins for Q4_1/Q5_1, − hsum8(mins8) for Q4_K/Q5_K),
//!     hsum8(v) = ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)).
//! The lane sums are exact: |u·q| pairs stay within i16 (63·127·2 for Q6_K's codes, the largest), and |w·q| pairs of
//! Q8_0 too (128·127·2); the lanes within i32. The weights' scales are products of f16 and small integers, so each
//! dw is one rounding of the exact value (two for d · sc · dx as a whole).
//! [`dot_rows`] takes up to [`MAX_ROWS`] vectors per pass over the row; each gets the bits it gets alone.

use gguf::GgmlType;
use half::f16;

/// Values per block, for the weights and the activations alike.
pub const BLOCK: usize = 32;

/// The most vectors [`dot_rows`] takes at once.
pub const MAX_ROWS: usize = 4;

/// Whether `dtype` has an integer kernel here.
pub fn has_kernel(dtype: GgmlType) -> bool {
    use GgmlType::*;
    matches!(dtype, Q4_0 | Q4_1 | Q8_0 | Q5_0 | Q5_1 | Q4K | Q5K | Q6K)
}

/// One activation vector quantized to 8 bits with a scale per lane (4 values): x ≈ d[lane]·q, with what the
/// weight types need per block. A scale per 4 values rather than llama.cpp's per 32 costs the kernels nothing (a
/// vector of 8 scales multiplies the 8 lane sums where one broadcast scale would) and confines the rounding of an
/// outlier (this model family's hidden states reach 30× their typical size) to its own lane.
#[derive(Clone, Debug, Default)]
pub struct Q8Vector {
    /// q[cols], in −127..=127.
    q: Vec<i8>,
    /// d[cols / 4] = max |x| / 127 over each lane's four values.
    d: Vec<f32>,
    /// s[blocks] = Σ over the block's lanes of d · Σ q, in lane order (Q4_1's min multiplies it).
    s: Vec<f32>,
    /// neg8[cols / 4]: −8 · Σ q over each lane's four values (Q4_0's offset of 8, added to the lane sums).
    neg8: Vec<i32>,
}

impl Q8Vector {
    /// `x` (a whole number of blocks) quantized per lane of 4: d = max |x| / 127, q = x / d rounded to nearest,
    /// ties to even.
    pub fn quantize(&mut self, x: &[f32]) {
        assert!(x.len().is_multiple_of(BLOCK), "Q8Vector::quantize: {} values are not whole blocks", x.len());
        let lanes = x.len() / 4;
        self.q.resize(x.len(), 0);
        self.d.resize(lanes, 0.0);
        self.neg8.resize(lanes, 0);
        self.s.resize(x.len() / BLOCK, 0.0);
        for (j, (xl, ql)) in x.chunks_exact(4).zip(self.q.chunks_exact_mut(4)).enumerate() {
            let amax = xl.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (q, &v) in ql.iter_mut().zip(xl) {
                *q = round_ties_even(v * id) as i8;
            }
            self.d[j] = d;
            self.neg8[j] = -8 * ql.iter().map(|&q| q as i32).sum::<i32>();
        }
        for (b, s) in self.s.iter_mut().enumerate() {
            *s = (b * 8..b * 8 + 8).fold(0.0f32, |acc, j| acc + self.d[j] * (self.neg8[j] / -8) as f32);
        }
    }

    /// A new vector holding `x` quantized.
    pub fn new(x: &[f32]) -> Self {
        let mut v = Q8Vector::default();
        v.quantize(x);
        v
    }

    /// The values the quantized vector stands for: d[b]·q.
    pub fn dequantize(&self) -> Vec<f32> {
        self.q.iter().enumerate().map(|(i, &q)| self.d[i / 4] * q as f32).collect()
    }
}

/// out[k·N + i] = Σ w_k[j]·xs[i][j] for each weight row w_k of `w` (rows of whole `dtype` blocks, one of
/// [`has_kernel`]'s, as long as the vectors) and up to [`MAX_ROWS`] quantized vectors, each exactly as alone.
pub fn dot_rows(dtype: GgmlType, w: &[u8], xs: &[&Q8Vector], out: &mut [f32]) {
    let kernel = Kernel::detect();
    match xs.len() {
        1 => kernel.run::<1>(dtype, w, xs, out),
        2 => kernel.run::<2>(dtype, w, xs, out),
        3 => kernel.run::<3>(dtype, w, xs, out),
        4 => kernel.run::<4>(dtype, w, xs, out),
        n => panic!("q8_dot::dot_rows: {n} vectors; 1 to {MAX_ROWS} are taken"),
    }
}

/// NF4's 16 levels (bitsandbytes' `quant_map`) as integers: level ≈ (256·hi + lo) / [`Nf4Codes::SCALE`], hi =
/// round(127·level) and lo = round(256·(127·level − hi)), each a signed byte. The levels are not integers; one byte
/// (hi alone, as llama.cpp's IQ4_NL table) is off by up to 0.0037 of a block's absmax for NF4's table, and on the
/// default model in NF4 moved the decode logits by 0.57 from the exact products (0.27 from the activations' 8 bits
/// alone); the second byte brings the codes within 1.4e-5 of absmax (bitsandbytes' own rounding of each value to
/// bf16 moves it by up to 2⁻⁹ of itself) and the logits to 0.34, at the cost of a second product per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nf4Codes {
    hi: [i8; 16],
    lo: [i8; 16],
}

impl Nf4Codes {
    /// A weight is code · (absmax / SCALE).
    pub const SCALE: f32 = 127.0 * 256.0;

    /// The codes of `levels`; None when a level lies outside ±1 (this scale would not fit).
    pub fn new(levels: &[f32; 16]) -> Option<Nf4Codes> {
        if !levels.iter().all(|l| l.abs() <= 1.0) {
            return None;
        }
        let hi = levels.map(|l| round_ties_even(l * 127.0));
        let lo =
            std::array::from_fn(|i| round_ties_even((levels[i] * 127.0 - hi[i]) * 256.0).clamp(-127.0, 127.0) as i8);
        Some(Nf4Codes { hi: hi.map(|h| h as i8), lo })
    }

    /// Level i's code, 256·hi + lo.
    pub fn code(&self, i: usize) -> i32 {
        256 * self.hi[i] as i32 + self.lo[i] as i32
    }
}

/// out[k·N + i] = Σ w_k[j]·xs[i][j] for NF4 weight rows w_k: `packed` holds whole rows of cols / 2 bytes (value 2e
/// in the high nibble of byte e, 2e + 1 in the low one), `dw` one scale per 32 values of each row (the NF4 block's
/// absmax / [`Nf4Codes::SCALE`]); up to [`MAX_ROWS`] vectors, each exactly as alone.
pub fn dot_rows_nf4(codes: &Nf4Codes, packed: &[u8], dw: &[f32], xs: &[&Q8Vector], out: &mut [f32]) {
    let kernel = Kernel::detect();
    match xs.len() {
        1 => kernel.run_nf4::<1>(codes, packed, dw, xs, out),
        2 => kernel.run_nf4::<2>(codes, packed, dw, xs, out),
        3 => kernel.run_nf4::<3>(codes, packed, dw, xs, out),
        4 => kernel.run_nf4::<4>(codes, packed, dw, xs, out),
        n => panic!("q8_dot::dot_rows_nf4: {n} vectors; 1 to {MAX_ROWS} are taken"),
    }
}

/// The variants, slowest first; the CPU runs the fastest it supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernel {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Kernel {
    /// The fastest variant the CPU supports.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            use std::sync::OnceLock;
            static KERNEL: OnceLock<Kernel> = OnceLock::new();
            *KERNEL.get_or_init(|| {
                let avx2 = std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c");
                let vnni = avx2
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni");
                match (vnni, avx2) {
                    (true, _) => Kernel::Avx512Vnni,
                    (false, true) => Kernel::Avx2,
                    _ => Kernel::Scalar,
                }
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Scalar
    }

    /// The variants this CPU can run, slowest first (the tests compare each with the scalar reference).
    pub fn available() -> Vec<Kernel> {
        let best = Kernel::detect();
        [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Vnni].into_iter().filter(|&k| k <= best).collect()
    }

    /// [`dot_rows`] on this variant, which the CPU must support ([`Kernel::detect`], [`Kernel::available`]).
    pub fn run<const N: usize>(self, dtype: GgmlType, w: &[u8], xs: &[&Q8Vector], out: &mut [f32]) {
        let xs: &[&Q8Vector; N] = xs.try_into().expect("N vectors");
        let blocks = xs.first().map_or(0, |x| x.s.len());
        assert!(has_kernel(dtype), "q8_dot: no integer kernel for {dtype}");
        let row_bytes = dtype.row_bytes(blocks * BLOCK).unwrap_or_else(|| {
            panic!("q8_dot: {} values are not whole {dtype} blocks", blocks * BLOCK);
        });
        assert!(
            blocks > 0
                && w.len().is_multiple_of(row_bytes)
                && out.len() == w.len() / row_bytes * N
                && xs.iter().all(|x| x.s.len() == blocks),
            "q8_dot: the rows, the vectors and the output differ in length"
        );
        match self {
            Kernel::Scalar => scalar::rows::<N>(dtype, w, row_bytes, xs, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::detect` chose this variant only where the CPU has AVX2, FMA and F16C; lengths checked.
            Kernel::Avx2 => unsafe {
                match dtype {
                    GgmlType::Q4_0 => avx2::rows_q4::<N, true>(w, row_bytes, xs, out),
                    GgmlType::Q4_1 => avx2::rows_q4::<N, false>(w, row_bytes, xs, out),
                    GgmlType::Q8_0 => avx2::rows_q8_0::<N>(w, row_bytes, xs, out),
                    _ => avx2_more::rows::<N>(dtype, w, row_bytes, xs, out),
                }
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: chosen only where the CPU has AVX-512 F/BW/VL/VNNI as well; lengths checked.
            Kernel::Avx512Vnni => unsafe {
                match dtype {
                    GgmlType::Q4_0 => avx512::rows_q4::<N, true>(w, row_bytes, xs, out),
                    GgmlType::Q4_1 => avx512::rows_q4::<N, false>(w, row_bytes, xs, out),
                    GgmlType::Q8_0 => avx512::rows_q8_0::<N>(w, row_bytes, xs, out),
                    _ => avx512_more::rows::<N>(dtype, w, row_bytes, xs, out),
                }
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => scalar::rows::<N>(dtype, w, row_bytes, xs, out),
        }
    }

    /// [`dot_rows_nf4`] on this variant, which the CPU must support.
    pub fn run_nf4<const N: usize>(
        self,
        codes: &Nf4Codes,
        packed: &[u8],
        dw: &[f32],
        xs: &[&Q8Vector],
        out: &mut [f32],
    ) {
        let xs: &[&Q8Vector; N] = xs.try_into().expect("N vectors");
        let blocks = xs.first().map_or(0, |x| x.s.len());
        let rows = packed.len() / (16 * blocks).max(1);
        assert!(
            blocks > 0
                && packed.len() == rows * 16 * blocks
                && dw.len() == rows * blocks
                && out.len() == rows * N
                && xs.iter().all(|x| x.s.len() == blocks),
            "q8_dot: the NF4 rows, their scales, the vectors and the output differ in length"
        );
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::detect` chose these variants only where the CPU has AVX2, FMA and F16C; lengths checked.
            Kernel::Avx2 => unsafe { avx2_more::rows_nf4::<N>(codes, packed, dw, xs, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: chosen only where the CPU has AVX-512 F/BW/VL/VNNI as well; lengths checked.
            Kernel::Avx512Vnni => unsafe { avx512_more::rows_nf4::<N>(codes, packed, dw, xs, out) },
            _ => scalar::rows_nf4::<N>(codes, packed, dw, xs, out),
        }
    }
}

/// v rounded to the nearest integer, ties to even, for |v| ≤ 2²²: adding and removing 1.5·2²³ leaves no
/// fraction bits (the FPU's own rounding; `f32::round_ties_even` would be a libm call without SSE4.1).
#[inline(always)]
fn round_ties_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

#[inline(always)]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// hsum8 of the module's legend.
#[inline(always)]
fn hsum8(v: [f32; 8]) -> f32 {
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

/// The reference: the module's legend, written out.
mod scalar {
    use super::*;

    /// The 8 lane sums of one block (`wb`: the block's bytes; `q`: the vector's 32 values, `neg8` its 8 offsets).
    fn lanes(dtype: GgmlType, wb: &[u8], q: &[i8], neg8: &[i32]) -> [i32; 8] {
        let weight = |e: usize| -> i32 {
            match dtype {
                GgmlType::Q8_0 => wb[2 + e] as i8 as i32,
                _ => {
                    let qs = &wb[wb.len() - 16..];
                    (if e < 16 { qs[e] & 15 } else { qs[e - 16] >> 4 }) as i32
                }
            }
        };
        std::array::from_fn(|j| {
            let sum: i32 = (4 * j..4 * j + 4).map(|e| weight(e) * q[e] as i32).sum();
            if dtype == GgmlType::Q4_0 {
                sum + neg8[j]
            } else {
                sum
            }
        })
    }

    pub fn rows<const N: usize>(dtype: GgmlType, w: &[u8], row_bytes: usize, xs: &[&Q8Vector; N], out: &mut [f32]) {
        for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(N)) {
            for (o, x) in o.iter_mut().zip(xs) {
                *o = dot(dtype, wr, x);
            }
        }
    }

    pub fn dot(dtype: GgmlType, w: &[u8], x: &Q8Vector) -> f32 {
        if x.s.is_empty() {
            return 0.0;
        }
        if !matches!(dtype, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0) {
            return dot_more(dtype, w, x);
        }
        let block_bytes = w.len() / x.s.len();
        let mut acc = [[0.0f32; 8]; 2];
        let mut mins = 0.0f32;
        for (b, wb) in w.chunks_exact(block_bytes).enumerate() {
            let lane = lanes(dtype, wb, &x.q[b * BLOCK..(b + 1) * BLOCK], &x.neg8[b * 8..b * 8 + 8]);
            let dw = half_at(wb, 0);
            for ((a, &l), &dx) in acc[b % 2].iter_mut().zip(&lane).zip(&x.d[b * 8..b * 8 + 8]) {
                *a = (dw * dx).mul_add(l as f32, *a);
            }
            if dtype == GgmlType::Q4_1 {
                mins += half_at(wb, 2) * x.s[b];
            }
        }
        let sum = hsum8(std::array::from_fn(|j| acc[0][j] + acc[1][j]));
        if dtype == GgmlType::Q4_1 {
            sum + mins
        } else {
            sum
        }
    }

    pub fn rows_nf4<const N: usize>(codes: &Nf4Codes, packed: &[u8], dw: &[f32], xs: &[&Q8Vector; N], out: &mut [f32]) {
        let blocks = xs[0].s.len();
        for ((wr, dwr), o) in packed.chunks_exact(16 * blocks).zip(dw.chunks_exact(blocks)).zip(out.chunks_exact_mut(N))
        {
            for (o, x) in o.iter_mut().zip(xs) {
                *o = dot_nf4(codes, wr, dwr, x);
            }
        }
    }

    /// One NF4 row (`w`: its packed bytes, `dw`: its scale per block of 32), the module's legend written out.
    pub fn dot_nf4(codes: &Nf4Codes, w: &[u8], dw: &[f32], x: &Q8Vector) -> f32 {
        let mut acc = [[0.0f32; 8]; 2];
        for (b, (wb, &d)) in w.chunks_exact(16).zip(dw).enumerate() {
            let c = |e: usize| codes.code((if e.is_multiple_of(2) { wb[e / 2] >> 4 } else { wb[e / 2] & 15 }) as usize);
            for (j, a) in acc[b % 2].iter_mut().enumerate() {
                let lane: i32 = (4 * j..4 * j + 4).map(|e| c(e) * x.q[b * BLOCK + e] as i32).sum();
                *a = (d * x.d[b * 8 + j]).mul_add(lane as f32, *a);
            }
        }
        hsum8(std::array::from_fn(|j| acc[0][j] + acc[1][j]))
    }

    /// ggml's `get_scale_min_k4`: the 6-bit scale and min of block s of a Q4_K/Q5_K super-block.
    pub fn scale_min_k4(s: usize, q: &[u8]) -> (u8, u8) {
        if s < 4 {
            (q[s] & 63, q[s + 4] & 63)
        } else {
            ((q[s + 4] & 0xF) | ((q[s - 4] >> 6) << 4), (q[s + 4] >> 4) | ((q[s] >> 6) << 4))
        }
    }

    /// Block s of super-block `sb` (a Q5_0/Q5_1 block is its own super-block, s = 0): the unsigned codes u in
    /// element order, and dw, the weights' scale of each lane (the module's legend).
    fn codes(dtype: GgmlType, sb: &[u8], s: usize) -> ([u8; 32], [f32; 8]) {
        let nibble = |qs: &[u8], e: usize| if e < 16 { qs[e] & 15 } else { qs[e - 16] >> 4 };
        match dtype {
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let at = if dtype == GgmlType::Q5_0 { 2 } else { 4 };
                let qh = u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
                let qs = &sb[at + 4..at + 20];
                let u = std::array::from_fn(|e| nibble(qs, e) | (((qh >> e) & 1) as u8) << 4);
                (u, [half_at(sb, 0); 8])
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let (sc, _) = scale_min_k4(s, &sb[4..16]);
                let (qh, qs) = match dtype {
                    GgmlType::Q4K => (None, &sb[16..144]),
                    _ => (Some(&sb[16..48]), &sb[48..176]),
                };
                let u = std::array::from_fn(|e| {
                    let byte = qs[32 * (s / 2) + e];
                    let low = if s.is_multiple_of(2) { byte & 15 } else { byte >> 4 };
                    low | qh.map_or(0, |qh| ((qh[e] >> s) & 1) << 4)
                });
                (u, [half_at(sb, 0) * sc as f32; 8])
            }
            GgmlType::Q6K => {
                let (ql, qh, sc) = (&sb[0..128], &sb[128..192], &sb[192..208]);
                let (n, t) = (s / 4, s % 4);
                let u = std::array::from_fn(|e| {
                    let byte = ql[64 * n + 32 * (t % 2) + e];
                    let low = if t < 2 { byte & 15 } else { byte >> 4 };
                    low | ((qh[32 * n + e] >> (2 * t)) & 3) << 4
                });
                let d = half_at(sb, 208);
                (u, std::array::from_fn(|j| d * sc[2 * s + j / 4] as i8 as f32))
            }
            _ => unreachable!("codes: {dtype} has its own path"),
        }
    }

    /// Q5_0, Q5_1, Q4_K, Q5_K and Q6_K: the module's legend, written out.
    fn dot_more(dtype: GgmlType, w: &[u8], x: &Q8Vector) -> f32 {
        let per = dtype.block_size() / BLOCK;
        let offset = match dtype {
            GgmlType::Q5_0 => 16 / 8,
            GgmlType::Q6K => 32 / 8,
            _ => 0,
        };
        let mut acc = [[0.0f32; 8]; 2];
        let mut mins = 0.0f32;
        let mut mins8 = [0.0f32; 8];
        for (k, sb) in w.chunks_exact(dtype.type_size()).enumerate() {
            #[allow(clippy::needless_range_loop)] // s picks the block, its codes and its min alike
            for s in 0..per {
                let b = k * per + s;
                let (u, dw) = codes(dtype, sb, s);
                let q = &x.q[b * BLOCK..(b + 1) * BLOCK];
                for j in 0..8 {
                    let sum: i32 = (4 * j..4 * j + 4).map(|e| u[e] as i32 * q[e] as i32).sum();
                    let lane = sum + offset * x.neg8[b * 8 + j];
                    acc[b % 2][j] = (dw[j] * x.d[b * 8 + j]).mul_add(lane as f32, acc[b % 2][j]);
                }
                match dtype {
                    GgmlType::Q5_1 => mins += half_at(sb, 2) * x.s[b],
                    GgmlType::Q4K | GgmlType::Q5K => {
                        let (_, m) = scale_min_k4(s, &sb[4..16]);
                        mins8[s] = (half_at(sb, 2) * m as f32).mul_add(x.s[b], mins8[s]);
                    }
                    _ => {}
                }
            }
        }
        let sum = hsum8(std::array::from_fn(|j| acc[0][j] + acc[1][j]));
        match dtype {
            GgmlType::Q5_1 => sum + mins,
            GgmlType::Q4K | GgmlType::Q5K => sum - hsum8(mins8),
            _ => sum,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Q8Vector, BLOCK};
    use std::arch::x86_64::*;

    #[inline(always)]
    pub(super) unsafe fn half(b: *const u8) -> f32 {
        // SAFETY (callers): compiled with f16c; b points at two readable bytes.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(b as *const u16) as i32))) }
    }

    /// hsum8 of the module's legend on a vector.
    #[inline(always)]
    pub(super) unsafe fn hsum8(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
        }
    }

    /// A Q4 block's 16 bytes of nibbles as 32 unsigned bytes in element order (low nibbles, then high).
    #[inline(always)]
    pub(super) unsafe fn nibbles(qs: *const u8) -> __m256i {
        unsafe {
            let raw = _mm_loadu_si128(qs as *const __m128i);
            _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F))
        }
    }

    /// One block's 8 lane sums of u·x (u unsigned, x signed bytes): maddubs into i16 pairs, madd into i32 lanes.
    #[inline(always)]
    unsafe fn lanes(u: __m256i, x: __m256i) -> __m256i {
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)) }
    }

    /// Q4_0 (OFFSET: nibble − 8, 18-byte blocks) or Q4_1 (nibble, plus the min; 20-byte blocks).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows_q4<const N: usize, const OFFSET: bool>(
        w: &[u8],
        row_bytes: usize,
        xs: &[&Q8Vector; N],
        out: &mut [f32],
    ) {
        for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(N)) {
            // SAFETY: the caller's features are this function's.
            let r = unsafe { dot_q4::<N, OFFSET>(wr, xs) };
            o.iter_mut().zip(r).for_each(|(o, v)| *o = v);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows_q8_0<const N: usize>(w: &[u8], row_bytes: usize, xs: &[&Q8Vector; N], out: &mut [f32]) {
        for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(N)) {
            // SAFETY: as above.
            let r = unsafe { dot_q8_0::<N>(wr, xs) };
            o.iter_mut().zip(r).for_each(|(o, v)| *o = v);
        }
    }

    #[inline(always)]
    unsafe fn dot_q4<const N: usize, const OFFSET: bool>(w: &[u8], xs: &[&Q8Vector; N]) -> [f32; N] {
        let bb = if OFFSET { 18 } else { 20 };
        let blocks = w.len() / bb;
        // Block b into acc (the even or the odd accumulators: two arrays, so that they stay in registers).
        #[inline(always)]
        unsafe fn block<const N: usize, const OFFSET: bool>(
            wb: *const u8,
            b: usize,
            xs: &[&Q8Vector; N],
            acc: &mut [__m256; N],
            mins: &mut [f32; N],
        ) {
            let bb = if OFFSET { 18 } else { 20 };
            unsafe {
                let u = nibbles(wb.add(bb - 16));
                let dw = _mm256_set1_ps(half(wb));
                for r in 0..N {
                    let x = xs[r];
                    let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
                    let mut l = lanes(u, xv);
                    if OFFSET {
                        l = _mm256_add_epi32(l, _mm256_loadu_si256(x.neg8.as_ptr().add(b * 8) as *const __m256i));
                    }
                    let scale = _mm256_mul_ps(dw, _mm256_loadu_ps(x.d.as_ptr().add(b * 8)));
                    acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(l), acc[r]);
                    if !OFFSET {
                        mins[r] += half(wb.add(2)) * *x.s.get_unchecked(b);
                    }
                }
            }
        }
        unsafe {
            let (mut even, mut odd) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
            let mut mins = [0.0f32; N];
            let p = w.as_ptr();
            for b in (0..blocks & !1).step_by(2) {
                block::<N, OFFSET>(p.add(b * bb), b, xs, &mut even, &mut mins);
                block::<N, OFFSET>(p.add((b + 1) * bb), b + 1, xs, &mut odd, &mut mins);
            }
            if blocks % 2 == 1 {
                block::<N, OFFSET>(p.add((blocks - 1) * bb), blocks - 1, xs, &mut even, &mut mins);
            }
            // Loops, not closures, here and below: a closure would not inherit the caller's target features, and
            // its intrinsics would become calls.
            let mut out = [0.0f32; N];
            for r in 0..N {
                let sum = hsum8(_mm256_add_ps(even[r], odd[r]));
                out[r] = if OFFSET { sum } else { sum + mins[r] };
            }
            out
        }
    }

    /// Q8_0 (34-byte blocks of signed bytes): |w| against x with w's sign, so maddubs sees an unsigned operand.
    #[inline(always)]
    unsafe fn dot_q8_0<const N: usize>(w: &[u8], xs: &[&Q8Vector; N]) -> [f32; N] {
        let blocks = w.len() / 34;
        #[inline(always)]
        unsafe fn block<const N: usize>(wb: *const u8, b: usize, xs: &[&Q8Vector; N], acc: &mut [__m256; N]) {
            unsafe {
                let wv = _mm256_loadu_si256(wb.add(2) as *const __m256i);
                let u = _mm256_sign_epi8(wv, wv);
                let dw = _mm256_set1_ps(half(wb));
                for r in 0..N {
                    let x = xs[r];
                    let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
                    let l = lanes(u, _mm256_sign_epi8(xv, wv));
                    let scale = _mm256_mul_ps(dw, _mm256_loadu_ps(x.d.as_ptr().add(b * 8)));
                    acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(l), acc[r]);
                }
            }
        }
        unsafe {
            let (mut even, mut odd) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
            let p = w.as_ptr();
            for b in (0..blocks & !1).step_by(2) {
                block::<N>(p.add(b * 34), b, xs, &mut even);
                block::<N>(p.add((b + 1) * 34), b + 1, xs, &mut odd);
            }
            if blocks % 2 == 1 {
                block::<N>(p.add((blocks - 1) * 34), blocks - 1, xs, &mut even);
            }
            let mut out = [0.0f32; N];
            for r in 0..N {
                out[r] = hsum8(_mm256_add_ps(even[r], odd[r]));
            }
            out
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2_more {
    //! Q5_0, Q5_1, Q4_K, Q5_K and Q6_K on AVX2: each block's codes unpacked to 32 unsigned bytes, then the shared
    //! [`accumulate`].
    use super::avx2::{half, hsum8, nibbles};
    use super::{Nf4Codes, Q8Vector, BLOCK};
    use gguf::GgmlType;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows<const N: usize>(
        dtype: GgmlType,
        w: &[u8],
        row_bytes: usize,
        xs: &[&Q8Vector; N],
        out: &mut [f32],
    ) {
        for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(N)) {
            // SAFETY: the caller's features are these functions'; `run` checked the lengths.
            let r = unsafe {
                match dtype {
                    GgmlType::Q5_0 => dot_q5::<N, true>(wr, xs),
                    GgmlType::Q5_1 => dot_q5::<N, false>(wr, xs),
                    GgmlType::Q4K => dot_k::<N, false>(wr, xs),
                    GgmlType::Q5K => dot_k::<N, true>(wr, xs),
                    _ => dot_q6_k::<N>(wr, xs),
                }
            };
            o.iter_mut().zip(r).for_each(|(o, v)| *o = v);
        }
    }

    /// acc = fma(dw ⊙ dx_b, lanes, acc) for block b of each vector, lanes = the 8 lane sums of u·q_b, plus
    /// (neg8_b << SHIFT) when SHIFT ≥ 0 (the offset o = 8·2^SHIFT of the legend).
    #[inline(always)]
    pub(super) unsafe fn accumulate<const N: usize, const SHIFT: i32>(
        u: __m256i,
        dw: __m256,
        b: usize,
        xs: &[&Q8Vector; N],
        acc: &mut [__m256; N],
    ) {
        unsafe {
            for r in 0..N {
                let x = xs[r];
                let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
                let mut l = _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), _mm256_set1_epi16(1));
                if SHIFT >= 0 {
                    let neg8 = _mm256_loadu_si256(x.neg8.as_ptr().add(b * 8) as *const __m256i);
                    l = _mm256_add_epi32(l, _mm256_sllv_epi32(neg8, _mm256_set1_epi32(SHIFT)));
                }
                let scale = _mm256_mul_ps(dw, _mm256_loadu_ps(x.d.as_ptr().add(b * 8)));
                acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(l), acc[r]);
            }
        }
    }

    /// A Q5 block's fifth bits (bit e of the 4 bytes at qh, for element e) as 0x10 in byte e, else 0.
    #[inline(always)]
    pub(super) unsafe fn fifth_bits(qh: *const u8) -> __m256i {
        unsafe {
            let bits = _mm256_set1_epi32(std::ptr::read_unaligned(qh as *const u32) as i32);
            #[rustfmt::skip]
            let spread = _mm256_shuffle_epi8(bits, _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
            ));
            let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
        }
    }

    /// Q5_0 (OFFSET: 22-byte blocks, codes − 16) or Q5_1 (24-byte blocks, plus the min).
    #[inline(always)]
    unsafe fn dot_q5<const N: usize, const OFFSET: bool>(w: &[u8], xs: &[&Q8Vector; N]) -> [f32; N] {
        #[inline(always)]
        unsafe fn block<const N: usize, const OFFSET: bool>(
            p: *const u8,
            b: usize,
            xs: &[&Q8Vector; N],
            acc: &mut [__m256; N],
            mins: &mut [f32; N],
        ) {
            let at = if OFFSET { 2 } else { 4 };
            unsafe {
                let u = _mm256_or_si256(nibbles(p.add(at + 4)), fifth_bits(p.add(at)));
                let dw = _mm256_set1_ps(half(p));
                if OFFSET {
                    accumulate::<N, 1>(u, dw, b, xs, acc);
                } else {
                    accumulate::<N, -1>(u, dw, b, xs, acc);
                    for r in 0..N {
                        mins[r] += half(p.add(2)) * *xs[r].s.get_unchecked(b);
                    }
                }
            }
        }
        let bb = if OFFSET { 22 } else { 24 };
        let blocks = w.len() / bb;
        unsafe {
            let (mut even, mut odd) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
            let mut mins = [0.0f32; N];
            let p = w.as_ptr();
            for b in (0..blocks & !1).step_by(2) {
                block::<N, OFFSET>(p.add(b * bb), b, xs, &mut even, &mut mins);
                block::<N, OFFSET>(p.add((b + 1) * bb), b + 1, xs, &mut odd, &mut mins);
            }
            if blocks % 2 == 1 {
                block::<N, OFFSET>(p.add((blocks - 1) * bb), blocks - 1, xs, &mut even, &mut mins);
            }
            let mut out = [0.0f32; N];
            for r in 0..N {
                let sum = hsum8(_mm256_add_ps(even[r], odd[r]));
                out[r] = if OFFSET { sum } else { sum + mins[r] };
            }
            out
        }
    }

    /// NF4 rows (see [`super::dot_rows_nf4`]): each block's nibbles looked up in the two code tables, each then
    /// taken as Q8_0's signed bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows_nf4<const N: usize>(
        codes: &Nf4Codes,
        packed: &[u8],
        dw: &[f32],
        xs: &[&Q8Vector; N],
        out: &mut [f32],
    ) {
        #[inline(always)]
        unsafe fn block<const N: usize>(
            tables: (__m256i, __m256i),
            wb: *const u8,
            dw: f32,
            b: usize,
            xs: &[&Q8Vector; N],
            acc: &mut [__m256; N],
        ) {
            unsafe {
                let raw = _mm_loadu_si128(wb as *const __m128i);
                let mask = _mm_set1_epi8(0x0F);
                let (hi, lo) = (_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
                // Element 2i is byte i's high nibble, 2i + 1 its low one.
                let idx = _mm256_set_m128i(_mm_unpackhi_epi8(hi, lo), _mm_unpacklo_epi8(hi, lo));
                let (hi, lo) = (_mm256_shuffle_epi8(tables.0, idx), _mm256_shuffle_epi8(tables.1, idx));
                let (uh, ul) = (_mm256_sign_epi8(hi, hi), _mm256_sign_epi8(lo, lo));
                let dwv = _mm256_set1_ps(dw);
                let ones = _mm256_set1_epi16(1);
                for r in 0..N {
                    let x = xs[r];
                    let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
                    let lh = _mm256_madd_epi16(_mm256_maddubs_epi16(uh, _mm256_sign_epi8(xv, hi)), ones);
                    let ll = _mm256_madd_epi16(_mm256_maddubs_epi16(ul, _mm256_sign_epi8(xv, lo)), ones);
                    let l = _mm256_add_epi32(_mm256_slli_epi32(lh, 8), ll);
                    let scale = _mm256_mul_ps(dwv, _mm256_loadu_ps(x.d.as_ptr().add(b * 8)));
                    acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(l), acc[r]);
                }
            }
        }
        let blocks = xs[0].s.len();
        unsafe {
            let tables = (
                _mm256_broadcastsi128_si256(_mm_loadu_si128(codes.hi.as_ptr() as *const __m128i)),
                _mm256_broadcastsi128_si256(_mm_loadu_si128(codes.lo.as_ptr() as *const __m128i)),
            );
            for ((wr, dwr), o) in
                packed.chunks_exact(16 * blocks).zip(dw.chunks_exact(blocks)).zip(out.chunks_exact_mut(N))
            {
                let (mut even, mut odd) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
                let p = wr.as_ptr();
                for b in (0..blocks & !1).step_by(2) {
                    block::<N>(tables, p.add(16 * b), *dwr.get_unchecked(b), b, xs, &mut even);
                    block::<N>(tables, p.add(16 * (b + 1)), *dwr.get_unchecked(b + 1), b + 1, xs, &mut odd);
                }
                if blocks % 2 == 1 {
                    block::<N>(
                        tables,
                        p.add(16 * (blocks - 1)),
                        *dwr.get_unchecked(blocks - 1),
                        blocks - 1,
                        xs,
                        &mut even,
                    );
                }
                for r in 0..N {
                    o[r] = hsum8(_mm256_add_ps(even[r], odd[r]));
                }
            }
        }
    }

    /// The 6-bit scales and mins of a Q4_K/Q5_K super-block (its 12 bytes `q`), all eight of each at once as the
    /// bytes of a u64 (ggml's `get_scale_min_k4` for s = 0..8).
    #[inline(always)]
    pub(super) fn scales_mins_k4(q: &[u8]) -> (u64, u64) {
        let word = |i: usize| u32::from_le_bytes([q[i], q[i + 1], q[i + 2], q[i + 3]]);
        let (a, b, c) = (word(0), word(4), word(8));
        let sc = (a & 0x3f3f_3f3f) as u64 | (((c & 0x0f0f_0f0f) | ((a >> 2) & 0x3030_3030)) as u64) << 32;
        let m = (b & 0x3f3f_3f3f) as u64 | ((((c >> 4) & 0x0f0f_0f0f) | ((b >> 2) & 0x3030_3030)) as u64) << 32;
        (sc, m)
    }

    /// 8 unsigned bytes (a u64) as 8 f32.
    #[inline(always)]
    pub(super) unsafe fn u8x8(v: u64) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64))) }
    }

    /// Q4_K (144-byte super-blocks) or Q5_K (Q5: 176 bytes, the fifth bits in qh).
    #[inline(always)]
    unsafe fn dot_k<const N: usize, const Q5: bool>(w: &[u8], xs: &[&Q8Vector; N]) -> [f32; N] {
        let sbb = if Q5 { 176 } else { 144 };
        unsafe {
            let (mut even, mut odd) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
            let mut mins8 = [_mm256_setzero_ps(); N];
            let (mask, one) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
            for (k, sb) in w.chunks_exact(sbb).enumerate() {
                let p = sb.as_ptr();
                let (sc, m) = scales_mins_k4(&sb[4..16]);
                let dw8 = _mm256_mul_ps(_mm256_set1_ps(half(p)), u8x8(sc));
                let mw8 = _mm256_mul_ps(_mm256_set1_ps(half(p.add(2))), u8x8(m));
                for r in 0..N {
                    mins8[r] = _mm256_fmadd_ps(mw8, _mm256_loadu_ps(xs[r].s.as_ptr().add(8 * k)), mins8[r]);
                }
                let mut qh = if Q5 { _mm256_loadu_si256(p.add(16) as *const __m256i) } else { _mm256_setzero_si256() };
                let qs = p.add(if Q5 { 48 } else { 16 });
                for c in 0..4 {
                    let raw = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                    let mut lo = _mm256_and_si256(raw, mask);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
                    if Q5 {
                        // Bits 2c and 2c + 1 of each qh byte (qh shifted right by 2c so far).
                        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
                        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4));
                        qh = _mm256_srli_epi16(qh, 2);
                    }
                    let s = 2 * c as i32;
                    let b = 8 * k + 2 * c;
                    accumulate::<N, -1>(lo, _mm256_permutevar8x32_ps(dw8, _mm256_set1_epi32(s)), b, xs, &mut even);
                    accumulate::<N, -1>(
                        hi,
                        _mm256_permutevar8x32_ps(dw8, _mm256_set1_epi32(s + 1)),
                        b + 1,
                        xs,
                        &mut odd,
                    );
                }
            }
            let mut out = [0.0f32; N];
            for r in 0..N {
                out[r] = hsum8(_mm256_add_ps(even[r], odd[r])) - hsum8(mins8[r]);
            }
            out
        }
    }

    /// The scales of Q6_K's 16-value halves 2t and 2t + 1 of a block, each over 4 lanes.
    #[inline(always)]
    pub(super) unsafe fn q6_pair(dw: __m256, t: i32) -> __m256 {
        unsafe {
            let (a, b) = (2 * t, 2 * t + 1);
            _mm256_permutevar8x32_ps(dw, _mm256_setr_epi32(a, a, a, a, b, b, b, b))
        }
    }

    /// Q6_K (210-byte super-blocks: ql, qh, i8 scales, d).
    #[inline(always)]
    unsafe fn dot_q6_k<const N: usize>(w: &[u8], xs: &[&Q8Vector; N]) -> [f32; N] {
        unsafe {
            let (mut even, mut odd) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
            let m4 = _mm256_set1_epi8(0x0F);
            for (k, sb) in w.chunks_exact(210).enumerate() {
                let p = sb.as_ptr();
                let d = _mm256_set1_ps(half(p.add(208)));
                let sc = _mm_loadu_si128(p.add(192) as *const __m128i);
                let dw = [
                    _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))),
                    _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8)))),
                ];
                for (n, &dw) in dw.iter().enumerate() {
                    let ql0 = _mm256_loadu_si256(p.add(64 * n) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(p.add(64 * n + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i);
                    // Each code's two high bits moved to bits 4..5 (no loop or closure: see `avx2::dot_q4`).
                    let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)), 4);
                    let h1 = _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C)), 2);
                    let h2 = _mm256_and_si256(qh, _mm256_set1_epi8(0x30));
                    let h3 = _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0xC0u8 as i8)), 2);
                    let u = [
                        _mm256_or_si256(_mm256_and_si256(ql0, m4), h0),
                        _mm256_or_si256(_mm256_and_si256(ql1, m4), h1),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h2),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h3),
                    ];
                    let b = 8 * k + 4 * n;
                    accumulate::<N, 2>(u[0], q6_pair(dw, 0), b, xs, &mut even);
                    accumulate::<N, 2>(u[1], q6_pair(dw, 1), b + 1, xs, &mut odd);
                    accumulate::<N, 2>(u[2], q6_pair(dw, 2), b + 2, xs, &mut even);
                    accumulate::<N, 2>(u[3], q6_pair(dw, 3), b + 3, xs, &mut odd);
                }
            }
            let mut out = [0.0f32; N];
            for r in 0..N {
                out[r] = hsum8(_mm256_add_ps(even[r], odd[r]));
            }
            out
        }
    }
}

/// Two blocks per 512-bit step: lanes 0..8 hold the even block (acc[0] of the legend), lanes 8..16 the odd one
/// (acc[1]); an odd last block goes through 256-bit `dpbusd` into the even half.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::avx2::{half, hsum8, nibbles};
    use super::{Q8Vector, BLOCK};
    use std::arch::x86_64::*;

    /// [lo(a), hi(a)] and [lo(b), hi(b)] as 64 unsigned bytes: blocks a and b's nibbles in element order.
    #[inline(always)]
    pub(super) unsafe fn nibbles2(a: *const u8, b: *const u8) -> __m512i {
        unsafe {
            let raw = _mm256_set_m128i(_mm_loadu_si128(b as *const __m128i), _mm_loadu_si128(a as *const __m128i));
            let z = _mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1);
            // 128-bit lanes [a, b, a>>4, b>>4] → [a, a>>4, b, b>>4]
            _mm512_and_si512(_mm512_shuffle_i64x2(z, z, 0b11_01_10_00), _mm512_set1_epi8(0x0F))
        }
    }

    /// [s0 × 8, s1 × 8]
    #[inline(always)]
    pub(super) unsafe fn pair(s0: f32, s1: f32) -> __m512 {
        unsafe { _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1)) }
    }

    /// hsum8(even half + odd half), after `tail` (an odd last block's fma) into the even half.
    #[inline(always)]
    pub(super) unsafe fn finish(acc: __m512, tail: Option<(__m256, __m256i)>) -> f32 {
        unsafe {
            let mut even = _mm512_castps512_ps256(acc);
            let odd = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1));
            if let Some((scale, l)) = tail {
                even = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(l), even);
            }
            hsum8(_mm256_add_ps(even, odd))
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn rows_q4<const N: usize, const OFFSET: bool>(
        w: &[u8],
        row_bytes: usize,
        xs: &[&Q8Vector; N],
        out: &mut [f32],
    ) {
        for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(N)) {
            // SAFETY: the caller's features are this function's.
            let r = unsafe { dot_q4::<N, OFFSET>(wr, xs) };
            o.iter_mut().zip(r).for_each(|(o, v)| *o = v);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn rows_q8_0<const N: usize>(w: &[u8], row_bytes: usize, xs: &[&Q8Vector; N], out: &mut [f32]) {
        for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(N)) {
            // SAFETY: as above.
            let r = unsafe { dot_q8_0::<N>(wr, xs) };
            o.iter_mut().zip(r).for_each(|(o, v)| *o = v);
        }
    }

    #[inline(always)]
    unsafe fn dot_q4<const N: usize, const OFFSET: bool>(w: &[u8], xs: &[&Q8Vector; N]) -> [f32; N] {
        let bb = if OFFSET { 18 } else { 20 };
        let blocks = w.len() / bb;
        unsafe {
            let mut acc = [_mm512_setzero_ps(); N];
            let mut mins = [0.0f32; N];
            let p = w.as_ptr();
            for b in (0..blocks & !1).step_by(2) {
                let (w0, w1) = (p.add(b * bb), p.add((b + 1) * bb));
                let u = nibbles2(w0.add(bb - 16), w1.add(bb - 16));
                let dw = pair(half(w0), half(w1));
                for r in 0..N {
                    let x = xs[r];
                    let xv = _mm512_loadu_si512(x.q.as_ptr().add(b * BLOCK) as *const _);
                    let init = match OFFSET {
                        true => _mm512_loadu_si512(x.neg8.as_ptr().add(b * 8) as *const _),
                        false => _mm512_setzero_si512(),
                    };
                    let l = _mm512_dpbusd_epi32(init, u, xv);
                    let scale = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d.as_ptr().add(b * 8)));
                    acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(l), acc[r]);
                    if !OFFSET {
                        mins[r] += half(w0.add(2)) * *x.s.get_unchecked(b);
                        mins[r] += half(w1.add(2)) * *x.s.get_unchecked(b + 1);
                    }
                }
            }
            let mut out = [0.0f32; N];
            for r in 0..N {
                let x = xs[r];
                let mut tail = None;
                if blocks % 2 == 1 {
                    let b = blocks - 1;
                    let wb = p.add(b * bb);
                    let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
                    let init = match OFFSET {
                        true => _mm256_loadu_si256(x.neg8.as_ptr().add(b * 8) as *const __m256i),
                        false => _mm256_setzero_si256(),
                    };
                    if !OFFSET {
                        mins[r] += half(wb.add(2)) * *x.s.get_unchecked(b);
                    }
                    let l = _mm256_dpbusd_epi32(init, nibbles(wb.add(bb - 16)), xv);
                    tail = Some((_mm256_mul_ps(_mm256_set1_ps(half(wb)), _mm256_loadu_ps(x.d.as_ptr().add(b * 8))), l));
                }
                let sum = finish(acc[r], tail);
                out[r] = if OFFSET { sum } else { sum + mins[r] };
            }
            out
        }
    }

    #[inline(always)]
    unsafe fn dot_q8_0<const N: usize>(w: &[u8], xs: &[&Q8Vector; N]) -> [f32; N] {
        let blocks = w.len() / 34;
        unsafe {
            let mut acc = [_mm512_setzero_ps(); N];
            let p = w.as_ptr();
            for b in (0..blocks & !1).step_by(2) {
                let (w0, w1) = (p.add(b * 34), p.add((b + 1) * 34));
                let wv = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256(w0.add(2) as *const __m256i)),
                    _mm256_loadu_si256(w1.add(2) as *const __m256i),
                    1,
                );
                let u = _mm512_abs_epi8(wv);
                let negative = _mm512_movepi8_mask(wv);
                let dw = pair(half(w0), half(w1));
                for r in 0..N {
                    let x = xs[r];
                    let xv = _mm512_loadu_si512(x.q.as_ptr().add(b * BLOCK) as *const _);
                    let signed = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
                    let l = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, signed);
                    let scale = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d.as_ptr().add(b * 8)));
                    acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(l), acc[r]);
                }
            }
            let mut out = [0.0f32; N];
            for r in 0..N {
                let x = xs[r];
                let mut tail = None;
                if blocks % 2 == 1 {
                    let b = blocks - 1;
                    let wb = p.add(b * 34);
                    let wv = _mm256_loadu_si256(wb.add(2) as *const __m256i);
                    let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
                    let l =
                        _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
                    tail = Some((_mm256_mul_ps(_mm256_set1_ps(half(wb)), _mm256_loadu_ps(x.d.as_ptr().add(b * 8))), l));
                }
                out[r] = finish(acc[r], tail);
            }
            out
        }
    }
}

/// Q5_0, Q5_1, Q4_K, Q5_K, Q6_K and NF4 on AVX-512 VNNI: two blocks per 512-bit `dpbusd` (the even block in lanes
/// 0..8, the odd one in 8..16, as [`avx512`] does), the offsets as its initial value. Each beats its AVX2 variant:
/// one thread, a 1024×2048 matrix, µs AVX2 → VNNI on the project's Zen 4 EPYC: Q5_0 87 → 53, Q5_1 109 → 66,
/// Q4_K 59 → 37, Q5_K 67 → 39, Q6_K 73 → 38, NF4 108 → 70 (Q4_0 56 → 38 for comparison).
#[cfg(target_arch = "x86_64")]
mod avx512_more {
    use super::avx2::{half, hsum8, nibbles};
    use super::avx2_more::{fifth_bits, scales_mins_k4, u8x8};
    use super::avx512::{finish, nibbles2, pair};
    use super::{Nf4Codes, Q8Vector, BLOCK};
    use gguf::GgmlType;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn rows<const N: usize>(
        dtype: GgmlType,
        w: &[u8],
        row_bytes: usize,
        xs: &[&Q8Vector; N],
        out: &mut [f32],
    ) {
        for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(N)) {
            // SAFETY: the caller's features are these functions'; `run` checked the lengths.
            let r = unsafe {
                match dtype {
                    GgmlType::Q5_0 => dot_q5::<N, true>(wr, xs),
                    GgmlType::Q5_1 => dot_q5::<N, false>(wr, xs),
                    GgmlType::Q4K => dot_k::<N, false>(wr, xs),
                    GgmlType::Q5K => dot_k::<N, true>(wr, xs),
                    _ => dot_q6_k::<N>(wr, xs),
                }
            };
            o.iter_mut().zip(r).for_each(|(o, v)| *o = v);
        }
    }

    /// NF4 rows, as [`super::avx2_more::rows_nf4`], the blocks in pairs (an odd last block through that one's
    /// 256-bit steps with `dpbusd`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn rows_nf4<const N: usize>(
        codes: &Nf4Codes,
        packed: &[u8],
        dw: &[f32],
        xs: &[&Q8Vector; N],
        out: &mut [f32],
    ) {
        let blocks = xs[0].s.len();
        unsafe {
            let thi = _mm512_broadcast_i32x4(_mm_loadu_si128(codes.hi.as_ptr() as *const __m128i));
            let tlo = _mm512_broadcast_i32x4(_mm_loadu_si128(codes.lo.as_ptr() as *const __m128i));
            let (thi2, tlo2) = (_mm512_castsi512_si256(thi), _mm512_castsi512_si256(tlo));
            let mask = _mm256_set1_epi8(0x0F);
            for ((wr, dwr), o) in
                packed.chunks_exact(16 * blocks).zip(dw.chunks_exact(blocks)).zip(out.chunks_exact_mut(N))
            {
                let mut acc = [_mm512_setzero_ps(); N];
                let p = wr.as_ptr();
                for b in (0..blocks & !1).step_by(2) {
                    let raw = _mm256_loadu_si256(p.add(16 * b) as *const __m256i);
                    let (hi, lo) = (_mm256_and_si256(_mm256_srli_epi16(raw, 4), mask), _mm256_and_si256(raw, mask));
                    // Per 128-bit lane [b: 0..16, b + 1: 0..16] and [b: 16..32, b + 1: 16..32], then in block order.
                    let (e0, e1) = (_mm256_unpacklo_epi8(hi, lo), _mm256_unpackhi_epi8(hi, lo));
                    let z = _mm512_inserti64x4(_mm512_castsi256_si512(e0), e1, 1);
                    let idx = _mm512_shuffle_i64x2(z, z, 0b11_01_10_00);
                    let (ch, cl) = (_mm512_shuffle_epi8(thi, idx), _mm512_shuffle_epi8(tlo, idx));
                    let (uh, ul) = (_mm512_abs_epi8(ch), _mm512_abs_epi8(cl));
                    let (nh, nl) = (_mm512_movepi8_mask(ch), _mm512_movepi8_mask(cl));
                    let dwv = pair(*dwr.get_unchecked(b), *dwr.get_unchecked(b + 1));
                    for r in 0..N {
                        let x = xs[r];
                        let xv = _mm512_loadu_si512(x.q.as_ptr().add(b * BLOCK) as *const _);
                        let zero = _mm512_setzero_si512();
                        let lh = _mm512_dpbusd_epi32(zero, uh, _mm512_mask_sub_epi8(xv, nh, zero, xv));
                        let ll = _mm512_dpbusd_epi32(zero, ul, _mm512_mask_sub_epi8(xv, nl, zero, xv));
                        let l = _mm512_add_epi32(_mm512_slli_epi32(lh, 8), ll);
                        let scale = _mm512_mul_ps(dwv, _mm512_loadu_ps(x.d.as_ptr().add(b * 8)));
                        acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(l), acc[r]);
                    }
                }
                for r in 0..N {
                    let x = xs[r];
                    let mut tail = None;
                    if blocks % 2 == 1 {
                        let b = blocks - 1;
                        let raw = _mm_loadu_si128(p.add(16 * b) as *const __m128i);
                        let m = _mm_set1_epi8(0x0F);
                        let (hi, lo) = (_mm_and_si128(_mm_srli_epi16(raw, 4), m), _mm_and_si128(raw, m));
                        let idx = _mm256_set_m128i(_mm_unpackhi_epi8(hi, lo), _mm_unpacklo_epi8(hi, lo));
                        let (ch, cl) = (_mm256_shuffle_epi8(thi2, idx), _mm256_shuffle_epi8(tlo2, idx));
                        let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
                        let zero = _mm256_setzero_si256();
                        let lh = _mm256_dpbusd_epi32(zero, _mm256_sign_epi8(ch, ch), _mm256_sign_epi8(xv, ch));
                        let ll = _mm256_dpbusd_epi32(zero, _mm256_sign_epi8(cl, cl), _mm256_sign_epi8(xv, cl));
                        let l = _mm256_add_epi32(_mm256_slli_epi32(lh, 8), ll);
                        let scale = _mm256_mul_ps(
                            _mm256_set1_ps(*dwr.get_unchecked(b)),
                            _mm256_loadu_ps(x.d.as_ptr().add(b * 8)),
                        );
                        tail = Some((scale, l));
                    }
                    o[r] = finish(acc[r], tail);
                }
            }
        }
    }

    /// acc = fma(dw ⊙ dx, lanes, acc) for blocks b and b + 1 of each vector (u: both blocks' codes), the lanes
    /// starting from (neg8 << SHIFT) when SHIFT ≥ 0.
    #[inline(always)]
    unsafe fn accumulate2<const N: usize, const SHIFT: u32>(
        u: __m512i,
        dw: __m512,
        b: usize,
        xs: &[&Q8Vector; N],
        acc: &mut [__m512; N],
        offset: bool,
    ) {
        unsafe {
            for r in 0..N {
                let x = xs[r];
                let xv = _mm512_loadu_si512(x.q.as_ptr().add(b * BLOCK) as *const _);
                let init = match offset {
                    true => _mm512_slli_epi32::<SHIFT>(_mm512_loadu_si512(x.neg8.as_ptr().add(b * 8) as *const _)),
                    false => _mm512_setzero_si512(),
                };
                let l = _mm512_dpbusd_epi32(init, u, xv);
                let scale = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d.as_ptr().add(b * 8)));
                acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(l), acc[r]);
            }
        }
    }

    /// The fifth bits of two Q5 blocks as 0x10 bytes, the first block's in the low half.
    #[inline(always)]
    unsafe fn fifth_bits2(qa: *const u8, qb: *const u8) -> __m512i {
        unsafe {
            let bits = std::ptr::read_unaligned(qa as *const u32) as u64
                | (std::ptr::read_unaligned(qb as *const u32) as u64) << 32;
            _mm512_maskz_mov_epi8(bits, _mm512_set1_epi8(0x10))
        }
    }

    /// Q5_0 (OFFSET) or Q5_1, as [`super::avx2_more`]'s, the blocks in pairs.
    #[inline(always)]
    unsafe fn dot_q5<const N: usize, const OFFSET: bool>(w: &[u8], xs: &[&Q8Vector; N]) -> [f32; N] {
        let (bb, at) = if OFFSET { (22, 2) } else { (24, 4) };
        let blocks = w.len() / bb;
        unsafe {
            let mut acc = [_mm512_setzero_ps(); N];
            let mut mins = [0.0f32; N];
            let p = w.as_ptr();
            for b in (0..blocks & !1).step_by(2) {
                let (w0, w1) = (p.add(b * bb), p.add((b + 1) * bb));
                let u = _mm512_or_si512(nibbles2(w0.add(at + 4), w1.add(at + 4)), fifth_bits2(w0.add(at), w1.add(at)));
                let dw = pair(half(w0), half(w1));
                accumulate2::<N, 1>(u, dw, b, xs, &mut acc, OFFSET);
                if !OFFSET {
                    for r in 0..N {
                        mins[r] += half(w0.add(2)) * *xs[r].s.get_unchecked(b);
                        mins[r] += half(w1.add(2)) * *xs[r].s.get_unchecked(b + 1);
                    }
                }
            }
            let mut out = [0.0f32; N];
            for r in 0..N {
                let x = xs[r];
                let mut tail = None;
                if blocks % 2 == 1 {
                    let b = blocks - 1;
                    let wb = p.add(b * bb);
                    let u = _mm256_or_si256(nibbles(wb.add(at + 4)), fifth_bits(wb.add(at)));
                    let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i);
                    let init = match OFFSET {
                        true => _mm256_slli_epi32(_mm256_loadu_si256(x.neg8.as_ptr().add(b * 8) as *const __m256i), 1),
                        false => _mm256_setzero_si256(),
                    };
                    if !OFFSET {
                        mins[r] += half(wb.add(2)) * *x.s.get_unchecked(b);
                    }
                    let l = _mm256_dpbusd_epi32(init, u, xv);
                    tail = Some((_mm256_mul_ps(_mm256_set1_ps(half(wb)), _mm256_loadu_ps(x.d.as_ptr().add(b * 8))), l));
                }
                let sum = finish(acc[r], tail);
                out[r] = if OFFSET { sum } else { sum + mins[r] };
            }
            out
        }
    }

    /// Q4_K or Q5_K (Q5): blocks 2c and 2c + 1 are the low and high nibbles of the same 32 bytes.
    #[inline(always)]
    unsafe fn dot_k<const N: usize, const Q5: bool>(w: &[u8], xs: &[&Q8Vector; N]) -> [f32; N] {
        let sbb = if Q5 { 176 } else { 144 };
        unsafe {
            let mut acc = [_mm512_setzero_ps(); N];
            let mut mins8 = [_mm256_setzero_ps(); N];
            let (mask, one) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(1));
            for (k, sb) in w.chunks_exact(sbb).enumerate() {
                let p = sb.as_ptr();
                let (sc, m) = scales_mins_k4(&sb[4..16]);
                let dw8 = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_set1_ps(half(p)), u8x8(sc)));
                let mw8 = _mm256_mul_ps(_mm256_set1_ps(half(p.add(2))), u8x8(m));
                for r in 0..N {
                    mins8[r] = _mm256_fmadd_ps(mw8, _mm256_loadu_ps(xs[r].s.as_ptr().add(8 * k)), mins8[r]);
                }
                // [qh, qh >> 1]: bit 2c of the first half's bytes and bit 2c + 1 of the second's at bit 2c.
                let qh = if Q5 {
                    let h = _mm256_loadu_si256(p.add(16) as *const __m256i);
                    _mm512_inserti64x4(_mm512_castsi256_si512(h), _mm256_srli_epi16(h, 1), 1)
                } else {
                    _mm512_setzero_si512()
                };
                let qs = p.add(if Q5 { 48 } else { 16 });
                for c in 0..4 {
                    let raw = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                    let z = _mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1);
                    let mut u = _mm512_and_si512(z, mask);
                    if Q5 {
                        let bit = _mm512_and_si512(_mm512_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32)), one);
                        u = _mm512_or_si512(u, _mm512_slli_epi16(bit, 4));
                    }
                    let s = 2 * c as i32;
                    let idx = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(s), _mm512_set1_epi32(s + 1));
                    accumulate2::<N, 0>(u, _mm512_permutexvar_ps(idx, dw8), 8 * k + 2 * c, xs, &mut acc, false);
                }
            }
            let mut out = [0.0f32; N];
            for r in 0..N {
                out[r] = finish(acc[r], None) - hsum8(mins8[r]);
            }
            out
        }
    }

    /// Q6_K: blocks 4n and 4n + 1 are the low nibbles of ql's 64 bytes [64n, 64n + 64), blocks 4n + 2 and 4n + 3
    /// their high nibbles.
    #[inline(always)]
    unsafe fn dot_q6_k<const N: usize>(w: &[u8], xs: &[&Q8Vector; N]) -> [f32; N] {
        unsafe {
            let mut acc = [_mm512_setzero_ps(); N];
            let m4 = _mm512_set1_epi8(0x0F);
            for (k, sb) in w.chunks_exact(210).enumerate() {
                let p = sb.as_ptr();
                let sc = _mm_loadu_si128(p.add(192) as *const __m128i);
                let dw16 =
                    _mm512_mul_ps(_mm512_set1_ps(half(p.add(208))), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)));
                for n in 0..2 {
                    let ql = _mm512_loadu_si512(p.add(64 * n) as *const _);
                    let h = _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i);
                    // [qh, qh >> 2]: the first block of each pair takes bits 0..1 (then 4..5), the second bits 2..3
                    // (then 6..7).
                    let qh = _mm512_inserti64x4(_mm512_castsi256_si512(h), _mm256_srli_epi16(h, 2), 1);
                    let u01 = _mm512_or_si512(
                        _mm512_and_si512(ql, m4),
                        _mm512_slli_epi16(_mm512_and_si512(qh, _mm512_set1_epi8(0x03)), 4),
                    );
                    let u23 = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                        _mm512_and_si512(qh, _mm512_set1_epi8(0x30)),
                    );
                    let b = 8 * k + 4 * n;
                    let s = 8 * n as i32;
                    #[rustfmt::skip]
                    let idx01 = _mm512_setr_epi32(s, s, s, s, s + 1, s + 1, s + 1, s + 1,
                                                  s + 2, s + 2, s + 2, s + 2, s + 3, s + 3, s + 3, s + 3);
                    let idx23 = _mm512_add_epi32(idx01, _mm512_set1_epi32(4));
                    accumulate2::<N, 2>(u01, _mm512_permutexvar_ps(idx01, dw16), b, xs, &mut acc, true);
                    accumulate2::<N, 2>(u23, _mm512_permutexvar_ps(idx23, dw16), b + 2, xs, &mut acc, true);
                }
            }
            let mut out = [0.0f32; N];
            for r in 0..N {
                out[r] = finish(acc[r], None);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = crate::rng::SplitMix64::new(seed);
        (0..n).map(|_| s.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    const TYPES: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0];

    /// Each variant this CPU has gives the scalar reference's bits, for 1..=4 vectors, odd and even block counts,
    /// with extreme weights (Q8_0's −128, every nibble 0 and 15) and vectors (a zero block, one huge value).
    #[test]
    fn every_variant_equals_the_scalar_reference_bit_for_bit() {
        let kernels = Kernel::available();
        eprintln!("variants on this CPU: {kernels:?}");
        for cols in [32, 96, 576, 1536] {
            let w = rand(cols, cols as u64);
            let mut xs: Vec<Vec<f32>> = (0..MAX_ROWS).map(|i| rand(cols, 100 + i as u64)).collect();
            xs[1][..32].fill(0.0);
            xs[2][cols - 1] = 1e6;
            let qx: Vec<Q8Vector> = xs.iter().map(|x| Q8Vector::new(x)).collect();
            for dtype in TYPES {
                let mut q = gguf::quantize(dtype, &w, cols).unwrap();
                // Extremes the quantizer never writes but a file may hold.
                match dtype {
                    GgmlType::Q8_0 => q[2..34].iter_mut().step_by(3).for_each(|v| *v = 0x80),
                    _ => {
                        let bb = q.len() / (cols / 32);
                        q[bb - 16..bb]
                            .iter_mut()
                            .enumerate()
                            .for_each(|(i, v)| *v = if i % 2 == 0 { 0xFF } else { 0x00 })
                    }
                }
                let other = gguf::quantize(dtype, &rand(cols, 7), cols).unwrap();
                for n in 1..=MAX_ROWS {
                    let refs: Vec<&Q8Vector> = qx[..n].iter().collect();
                    let want: Vec<f32> = refs.iter().map(|x| scalar::dot(dtype, &q, x)).collect();
                    let want2: Vec<f32> = refs.iter().map(|x| scalar::dot(dtype, &other, x)).collect();
                    let q2: Vec<u8> = q.iter().chain(&other).copied().collect(); // two rows
                    for &k in &kernels {
                        let mut got = vec![0.0f32; 2 * n];
                        match n {
                            1 => k.run::<1>(dtype, &q2, &refs, &mut got),
                            2 => k.run::<2>(dtype, &q2, &refs, &mut got),
                            3 => k.run::<3>(dtype, &q2, &refs, &mut got),
                            _ => k.run::<4>(dtype, &q2, &refs, &mut got),
                        }
                        let want: Vec<f32> = want.iter().chain(&want2).copied().collect();
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "{k:?} {dtype} cols={cols} n={n}: {got:?} vs {want:?}");
                    }
                }
            }
        }
    }

    /// The types with unpacked codes (the `avx2_more` kernels).
    const MORE: [GgmlType; 5] = [GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];

    /// Four rows of `dtype` for `cols` values: quantized from random values; random bytes (every code, scale and
    /// min pattern, with random finite f16 fields); random bytes with the extreme scales (f16 fields ±65504, the
    /// 6-bit scales and mins 63, Q6_K's scales −128 and 127); all zero.
    fn test_rows(dtype: GgmlType, cols: usize, seed: u64) -> Vec<u8> {
        let mut rows = gguf::quantize(dtype, &rand(cols, seed), cols).unwrap();
        let row_bytes = rows.len();
        let mut bytes = crate::rng::SplitMix64::new(seed + 1);
        let halves: &[usize] = match dtype {
            GgmlType::Q5_0 | GgmlType::Q6K => &[0],
            _ => &[0, 2],
        };
        let at = |h: usize| if dtype == GgmlType::Q6K { 208 } else { h };
        for extreme in [false, true] {
            let mut row: Vec<u8> = (0..row_bytes).map(|_| bytes.next_u64() as u8).collect();
            for (k, sb) in row.chunks_exact_mut(dtype.type_size()).enumerate() {
                for &h in halves {
                    let v = match extreme {
                        true => f16::from_f32(if k % 2 == 0 { 65504.0 } else { -65504.0 }),
                        false => f16::from_f32(bytes.next_f64() as f32 * 2.0 - 1.0),
                    };
                    sb[at(h)..at(h) + 2].copy_from_slice(&v.to_le_bytes());
                }
                if extreme {
                    match dtype {
                        GgmlType::Q4K | GgmlType::Q5K => sb[4..16].fill(0xFF),
                        GgmlType::Q6K => {
                            sb[192..208].iter_mut().enumerate().for_each(|(i, v)| *v = 0x7F + (i % 2) as u8)
                        }
                        _ => {}
                    }
                }
            }
            rows.extend(row);
        }
        rows.extend(std::iter::repeat_n(0u8, row_bytes));
        rows
    }

    /// Q5_0, Q5_1, Q4_K, Q5_K and Q6_K: each variant this CPU has gives the scalar reference's bits, for 1..=4
    /// vectors, on [`test_rows`] (random, extreme and zero blocks) and vectors with a zero block and an outlier lane.
    #[test]
    fn every_variant_equals_the_scalar_reference_bit_for_bit_on_the_unpacked_types() {
        let kernels = Kernel::available();
        for dtype in MORE {
            let all_cols: &[usize] = match dtype.block_size() {
                32 => &[32, 96, 640, 1536],
                _ => &[256, 768, 2048, 2816],
            };
            for &cols in all_cols {
                let mut xs: Vec<Vec<f32>> = (0..MAX_ROWS).map(|i| rand(cols, 200 + i as u64)).collect();
                xs[1][..32].fill(0.0);
                xs[2][cols - 1] = 1e6;
                xs[3][5] = -3e4;
                let qx: Vec<Q8Vector> = xs.iter().map(|x| Q8Vector::new(x)).collect();
                let w = test_rows(dtype, cols, cols as u64);
                let row_bytes = dtype.row_bytes(cols).unwrap();
                for n in 1..=MAX_ROWS {
                    let refs: Vec<&Q8Vector> = qx[..n].iter().collect();
                    let want: Vec<f32> = w
                        .chunks_exact(row_bytes)
                        .flat_map(|row| refs.iter().map(|x| scalar::dot(dtype, row, x)).collect::<Vec<_>>())
                        .collect();
                    assert!(want.iter().all(|v| v.is_finite()), "{dtype} cols={cols}: {want:?}");
                    for &k in &kernels {
                        let mut got = vec![0.0f32; want.len()];
                        match n {
                            1 => k.run::<1>(dtype, &w, &refs, &mut got),
                            2 => k.run::<2>(dtype, &w, &refs, &mut got),
                            3 => k.run::<3>(dtype, &w, &refs, &mut got),
                            _ => k.run::<4>(dtype, &w, &refs, &mut got),
                        }
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "{k:?} {dtype} cols={cols} n={n}: {got:?} vs {want:?}");
                    }
                }
            }
        }
    }

    /// NF4: each variant gives the scalar reference's bits (random packed bytes: every code; scales 0, ordinary
    /// and 1e30; odd and even block counts; 1..=4 vectors with a zero block and outliers), and the reference is
    /// the dot of the codes' weights code · dw with the dequantized activations within 1e-5 of Σ|terms|, and of
    /// NF4's own weights level · absmax within that plus 1.6e-5 · Σ absmax·|x| (the codes' rounding, [`Nf4Codes`]).
    #[test]
    fn nf4_variants_equal_the_scalar_reference_and_the_codes_bound_holds() {
        use crate::engine::nf4::NF4_CODE;
        let codes = Nf4Codes::new(&NF4_CODE).unwrap();
        assert_eq!(codes.hi, [-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127]);
        let error = |i: usize| (NF4_CODE[i] as f64 - codes.code(i) as f64 / Nf4Codes::SCALE as f64).abs();
        let worst = (0..16).map(error).fold(0.0, f64::max);
        assert!(worst < 1.6e-5, "{worst}");
        let one_byte = (0..16).map(|i| (NF4_CODE[i] - codes.hi[i] as f32 / 127.0).abs()).fold(0.0, f32::max);
        eprintln!("NF4 codes: off by at most {worst:.2e} of absmax ({one_byte:.2e} with one byte)");
        assert!(Nf4Codes::new(&[1.5; 16]).is_none());
        let kernels = Kernel::available();
        let mut bytes = crate::rng::SplitMix64::new(11);
        for cols in [32, 96, 640, 1536] {
            let blocks = cols / BLOCK;
            let rows = 3;
            let packed: Vec<u8> = (0..rows * cols / 2).map(|_| bytes.next_u64() as u8).collect();
            let mut dw: Vec<f32> = (0..rows * blocks).map(|_| bytes.next_f64() as f32 * 0.01).collect();
            dw[0] = 0.0;
            dw[rows * blocks - 1] = 1e30;
            let mut xs: Vec<Vec<f32>> = (0..MAX_ROWS).map(|i| rand(cols, 300 + i as u64)).collect();
            xs[1][..32].fill(0.0);
            xs[2][cols - 1] = 1e6;
            let qx: Vec<Q8Vector> = xs.iter().map(|x| Q8Vector::new(x)).collect();
            for n in 1..=MAX_ROWS {
                let refs: Vec<&Q8Vector> = qx[..n].iter().collect();
                let want: Vec<f32> = (0..rows)
                    .flat_map(|k| {
                        let (w, d) = (&packed[k * cols / 2..(k + 1) * cols / 2], &dw[k * blocks..(k + 1) * blocks]);
                        refs.iter().map(move |x| scalar::dot_nf4(&codes, w, d, x))
                    })
                    .collect();
                for &k in &kernels {
                    let mut got = vec![0.0f32; rows * n];
                    match n {
                        1 => k.run_nf4::<1>(&codes, &packed, &dw, &refs, &mut got),
                        2 => k.run_nf4::<2>(&codes, &packed, &dw, &refs, &mut got),
                        3 => k.run_nf4::<3>(&codes, &packed, &dw, &refs, &mut got),
                        _ => k.run_nf4::<4>(&codes, &packed, &dw, &refs, &mut got),
                    }
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{k:?} NF4 cols={cols} n={n}: {got:?} vs {want:?}");
                }
            }
            // Against the weights: row 1 (ordinary scales), vector 0.
            let (w, d) = (&packed[cols / 2..cols], &dw[blocks..2 * blocks]);
            let xd = qx[0].dequantize();
            let nibble = |e: usize| (if e.is_multiple_of(2) { w[e / 2] >> 4 } else { w[e / 2] & 15 }) as usize;
            let (mut exact, mut codes_dot, mut terms, mut bound) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for (e, &x) in xd.iter().enumerate() {
                let (absmax, c) = (d[e / BLOCK] as f64 * Nf4Codes::SCALE as f64, codes.code(nibble(e)) as f64);
                codes_dot += c * d[e / BLOCK] as f64 * x as f64;
                terms += (c * d[e / BLOCK] as f64 * x as f64).abs();
                exact += NF4_CODE[nibble(e)] as f64 * absmax * x as f64;
                bound += 1.6e-5 * absmax * (x as f64).abs();
            }
            let got = scalar::dot_nf4(&codes, w, d, &qx[0]) as f64;
            assert!((got - codes_dot).abs() <= 1e-5 * terms, "NF4 cols={cols}: {got} vs {codes_dot}");
            assert!(
                (got - exact).abs() <= bound + 1e-5 * terms,
                "NF4 cols={cols}: {got} vs NF4's own {exact} (bound {bound})"
            );
        }
    }

    /// The integer product is the exact dot of the dequantized weights with the dequantized activations, up to
    /// f32 rounding: within 1e-5 of the sum of |terms| (computed in f64).
    #[test]
    fn the_result_is_the_dot_of_both_dequantized_operands() {
        for cols in [256, 1536] {
            let x = rand(cols, 2);
            let qx = Q8Vector::new(&x);
            let xd = qx.dequantize();
            for dtype in TYPES.into_iter().chain(MORE) {
                // The quantized row and the random-bytes one of `test_rows` (every code, scale and min).
                let q = &test_rows(dtype, cols, 1)[..2 * dtype.row_bytes(cols).unwrap()];
                let row_bytes = q.len() / 2;
                for q in q.chunks_exact(row_bytes) {
                    let mut wd = vec![0.0; cols];
                    gguf::dequantize(dtype, q, &mut wd).unwrap();
                    let want: f64 = wd.iter().zip(&xd).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let scale: f64 = wd.iter().zip(&xd).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                    let mut got = [0.0f32];
                    dot_rows(dtype, q, &[&qx], &mut got);
                    let err = (got[0] as f64 - want).abs() / scale;
                    assert!(err < 1e-5, "{dtype} cols={cols}: {} vs {want} ({err:.1e} of Σ|terms|)", got[0]);
                }
            }
        }
    }

    /// The activations' own error: each value within half a step (d/2) of x, d = max |x| / 127 per lane of 4; a
    /// block of zeros stays exactly zero, and an outlier moves only its own lane's step.
    #[test]
    fn quantized_activations_are_within_half_a_step() {
        let mut x = rand(128, 3);
        x[32..64].fill(0.0);
        x[70] = -40.0;
        let q = Q8Vector::new(&x);
        let back = q.dequantize();
        for (j, (xl, yl)) in x.chunks(4).zip(back.chunks(4)).enumerate() {
            let d = xl.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, y) in xl.iter().zip(yl) {
                assert!((a - y).abs() <= d * 0.5 * (1.0 + 1e-6), "lane {j}: {a} became {y} (step {d})");
            }
        }
        assert!((back[64] - x[64]).abs() <= 1.0 / 254.0, "the outlier at 70 moved a value of another lane");
        assert!(back[32..64].iter().all(|&v| v == 0.0));
        assert_eq!(q.q[70], -127);
    }
}
