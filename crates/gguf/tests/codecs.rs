//! Quantize → dequantize error bounds on random data, block-size checks, candle's block layout.

use gguf::{dequantize, quantize, GgmlType};

fn random(n: usize, mut seed: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn candle_blocks_have_ggml_sizes() {
    for t in GgmlType::ALL {
        if let Some(size) = gguf::candle_block_size(t) {
            assert_eq!(size, t.type_size(), "{t}");
        }
    }
    // Spot values from ggml's type_traits.
    for (t, bs, ts) in [
        (GgmlType::Q4_0, 32, 18),
        (GgmlType::Q4_1, 32, 20),
        (GgmlType::Q8_0, 32, 34),
        (GgmlType::Q4K, 256, 144),
        (GgmlType::Q5K, 256, 176),
        (GgmlType::Q6K, 256, 210),
        (GgmlType::Q8K, 256, 292),
        (GgmlType::BF16, 1, 2),
    ] {
        assert_eq!((t.block_size(), t.type_size()), (bs, ts), "{t}");
        assert_eq!(GgmlType::from_u32(t as u32), Some(t));
        assert_eq!(GgmlType::from_name(t.name()), Some(t));
    }
    assert_eq!(GgmlType::Q4K.name(), "Q4_K");
    assert_eq!(GgmlType::from_u32(16), None);
    assert_eq!(GgmlType::Q4K.row_bytes(512), Some(288));
    assert_eq!(GgmlType::Q4K.row_bytes(100), None);
}

#[test]
fn round_trip_error_bounds() {
    let rows = 3;
    let row_len = 1024;
    let data = random(rows * row_len, 1);
    // Max |error| for |x| ≤ 1: the quantization step of each type (2 / levels), which the reference
    // quantizers' error-weighted scale search can exceed half of but not a whole of.
    for (t, bound) in [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 4e-3),
        (GgmlType::Q8_0, 2.0 / 255.0),
        (GgmlType::Q6K, 2.0 / 63.0),
        (GgmlType::Q5K, 2.0 / 31.0),
        (GgmlType::Q5_0, 2.0 / 31.0),
        (GgmlType::Q5_1, 2.0 / 31.0),
        (GgmlType::Q4_0, 2.0 / 15.0),
        (GgmlType::Q4_1, 2.0 / 15.0),
        (GgmlType::Q4K, 2.0 / 15.0),
    ] {
        let bytes = quantize(t, &data, row_len).expect("quantize");
        assert_eq!(Some(bytes.len()), t.row_bytes(data.len()), "{t}");
        let mut back = vec![0f32; data.len()];
        dequantize(t, &bytes, &mut back).expect("dequantize");
        let max_err = data.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{t}: max error {max_err}");
        assert!(max_err <= bound, "{t}: max error {max_err} > {bound}");
        // Deterministic: quantizing again gives the same bytes.
        assert_eq!(quantize(t, &data, row_len).expect("again"), bytes, "{t}");
    }
}

#[test]
fn large_inputs_split_into_chunks_like_small_ones() {
    // Bigger than one parallel chunk; the result must equal quantizing row by row.
    let row_len = 4096;
    let data = random(row_len * 20, 3);
    for t in [GgmlType::Q4K, GgmlType::Q8_0, GgmlType::F16] {
        let all = quantize(t, &data, row_len).expect("all");
        let by_row: Vec<u8> = data.chunks(row_len).flat_map(|r| quantize(t, r, row_len).expect("row")).collect();
        assert_eq!(all, by_row, "{t}");
        let mut whole = vec![0f32; data.len()];
        dequantize(t, &all, &mut whole).expect("deq");
        let rb = t.row_bytes(row_len).expect("rb");
        for (i, r) in all.chunks(rb).enumerate() {
            let mut part = vec![0f32; row_len];
            dequantize(t, r, &mut part).expect("deq row");
            assert_eq!(part, whole[i * row_len..(i + 1) * row_len], "{t}");
        }
    }
}

#[test]
fn unaligned_bytes_decode_the_same() {
    let data = random(512, 5);
    for t in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q8_0, GgmlType::F32] {
        let bytes = quantize(t, &data, 256).expect("q");
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let (mut a, mut b) = (vec![0f32; 512], vec![0f32; 512]);
        dequantize(t, &bytes, &mut a).expect("aligned");
        dequantize(t, &shifted[1..], &mut b).expect("unaligned");
        assert_eq!(a, b, "{t}");
    }
}

#[test]
fn size_errors() {
    let data = random(512, 7);
    assert_eq!(
        quantize(GgmlType::Q4K, &data, 100).expect_err("row").to_string(),
        "quantize Q4_K: row length 100 is not a positive multiple of the 256-element block"
    );
    assert_eq!(
        quantize(GgmlType::Q8_0, &data[..500], 64).expect_err("rows").to_string(),
        "quantize Q8_0: 500 values is not a whole number of 64-value rows"
    );
    assert!(quantize(GgmlType::Q3K, &data, 256).expect_err("unsupported").to_string().contains("not supported"));
    let mut nan = data.clone();
    nan[300] = f32::NAN;
    assert_eq!(
        quantize(GgmlType::Q4_0, &nan, 256).expect_err("nan").to_string(),
        "quantize Q4_0: value 300 (row 1, column 44) is NaN, expected a finite number"
    );
    let mut out = vec![0f32; 100];
    assert_eq!(
        dequantize(GgmlType::Q8_0, &[0; 34], &mut out).expect_err("partial").to_string(),
        "dequantize Q8_0: 100 elements is not a whole number of 32-element blocks"
    );
    let mut out = vec![0f32; 64];
    assert_eq!(
        dequantize(GgmlType::Q8_0, &[0; 34], &mut out).expect_err("short").to_string(),
        "dequantize Q8_0: 64 elements need 68 bytes, got 34"
    );
    assert!(dequantize(GgmlType::I32, &[0; 4], &mut [0f32]).is_err());
}
