use gguf::GgmlType;
use loft::engine::{matmul as cpu, FrozenMatrix};
use loft_gpu::engine::{embedding, matmul as gpu, GpuFrozen, VocabMatrix};

use crate::common::{assert_parity, ctx, rand, read, up};

/// NT, NN and TN, overwriting and accumulating with alpha ≠ 1, at the model's shapes and odd ones.
#[test]
fn three_layouts_equal_the_cpu() {
    let c = ctx();
    for (n, k, m) in
        [(5, 576, 1536), (8, 1536, 576), (37, 53, 29), (67, 130, 71), (1, 7, 3), (4, 16, 40000), (3, 20, 70001)]
    {
        let x = rand(n * k, 1);
        let w = rand(m * k, 2);
        let y0 = rand(n * m, 3);
        for (alpha, acc) in [(1.0, false), (0.5, true)] {
            let mut want = y0.clone();
            cpu::matmul_nt(&mut want, &x, &w, n, k, m, alpha, acc);
            let mut y = up(&y0);
            gpu::matmul_nt(c, &mut y, &up(&x), &up(&w), n, k, m, alpha, acc).unwrap();
            assert_parity(&format!("matmul_nt [{n},{k}]x[{m},{k}]T acc={acc}"), &read(&y), &want);

            // y[N,K] = x[N,M]·w[M,K] with x = the NT output's shape [n, m] and w [m, k]
            let dy = rand(n * m, 4);
            let dx0 = rand(n * k, 5);
            let mut want = dx0.clone();
            cpu::matmul_nn(&mut want, &dy, &w, n, m, k, alpha, acc);
            let mut dx = up(&dx0);
            gpu::matmul_nn(c, &mut dx, &up(&dy), &up(&w), n, m, k, alpha, acc).unwrap();
            assert_parity(&format!("matmul_nn [{n},{m}]x[{m},{k}] acc={acc}"), &read(&dx), &want);

            // y[M,K] = dy[N,M]ᵀ·x[N,K]
            let dw0 = rand(m * k, 6);
            let mut want = dw0.clone();
            cpu::matmul_tn(&mut want, &dy, &x, n, m, k, alpha, acc);
            let mut dw = up(&dw0);
            gpu::matmul_tn(c, &mut dw, &up(&dy), &up(&x), n, m, k, alpha, acc).unwrap();
            assert_parity(&format!("matmul_tn [{n},{m}]T x[{n},{k}] acc={acc}"), &read(&dw), &want);
        }
    }
}

/// The frozen linear layer's forward and input gradient over its own blocks equal the CPU's, for every storage
/// with a GPU decoder, at the MLP's shape [F, C] and at an odd one (rows not a multiple of the tile).
#[test]
fn frozen_products_over_blocks_equal_the_cpu() {
    let c = ctx();
    for (rows, cols) in [(1536, 576), (67, 96)] {
        let w: Vec<f32> = rand(rows * cols, 7).iter().map(|v| v * 0.1).collect();
        for dtype in [
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::F32,
        ] {
            let m = if dtype == GgmlType::F32 {
                FrozenMatrix::from_f32(rows, cols, w.clone())
            } else {
                FrozenMatrix::from_quantized(rows, cols, dtype, gguf::quantize(dtype, &w, cols).unwrap()).unwrap()
            };
            let g = GpuFrozen::upload(c, &m, "test.weight").unwrap();
            assert_eq!(
                g.storage_bytes(),
                m.storage_bytes().next_multiple_of(4),
                "{dtype}: the device holds the blocks"
            );
            for n in [5, 3, 1] {
                let x = rand(n * cols, 8);
                for acc in [false, true] {
                    let y0 = rand(n * rows, 9);
                    let mut want = y0.clone();
                    m.forward(&mut want, &x, n, acc);
                    let mut y = up(&y0);
                    g.forward(c, &mut y, &up(&x), n, acc).unwrap();
                    assert_parity(&format!("frozen {dtype} forward [{rows},{cols}] n={n} acc={acc}"), &read(&y), &want);

                    let dy = rand(n * rows, 10);
                    let dx0 = rand(n * cols, 11);
                    let mut want = dx0.clone();
                    m.backward_input(&mut want, &dy, n, acc);
                    let mut dx = up(&dx0);
                    g.backward_input(c, &mut dx, &up(&dy), n, acc).unwrap();
                    assert_parity(
                        &format!("frozen {dtype} input grad [{rows},{cols}] n={n} acc={acc}"),
                        &read(&dx),
                        &want,
                    );
                }
            }
        }
    }
}

/// A frozen head's input gradient reduces over its rows (the vocabulary): past 60,000 one dispatch sums wrongly on
/// lavapipe, so the rows go in slices; 70,001 rows of f32 and of Q8_0 (3 slices) equal the CPU.
#[test]
fn frozen_input_gradient_over_a_vocabulary_of_rows_equals_the_cpu() {
    let c = ctx();
    let (rows, cols, n) = (70_001, 32, 3);
    let w: Vec<f32> = rand(rows * cols, 21).iter().map(|v| v * 0.1).collect();
    for dtype in [GgmlType::F32, GgmlType::Q8_0] {
        let m = if dtype == GgmlType::F32 {
            FrozenMatrix::from_f32(rows, cols, w.clone())
        } else {
            FrozenMatrix::from_quantized(rows, cols, dtype, gguf::quantize(dtype, &w, cols).unwrap()).unwrap()
        };
        let g = GpuFrozen::upload(c, &m, "test.weight").unwrap();
        let dy = rand(n * rows, 22);
        let mut want = vec![0.0; n * cols];
        m.backward_input(&mut want, &dy, n, false);
        let mut dx = c.zeros(n * cols).unwrap();
        g.backward_input(c, &mut dx, &up(&dy), n, false).unwrap();
        // A sum over 70,001 products rounds in f32 by more than the elementwise TOL on values that nearly cancel,
        // so the check is relative L2: f32 order gives ~1e-6, the one-dispatch fault gives ~1.
        let got = read(&dx);
        let d: f64 = got.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        let rel = d / want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
        eprintln!("parity frozen {dtype} input grad [{rows},{cols}] n={n}: rel L2 {rel:.2e}");
        assert!(rel <= 1e-5, "frozen {dtype} input grad over {rows} rows: rel L2 {rel:.2e} from the CPU");
    }
}

/// The K-quants (the blocks of the common Q4_K_M files): rows of 256-value super-blocks, at down_proj's shape
/// [C, F] = [576, 1536] and an odd row count.
#[test]
fn frozen_products_over_k_quant_blocks_equal_the_cpu() {
    let c = ctx();
    for (rows, cols, n) in [(576, 1536, 4), (67, 512, 3)] {
        let w: Vec<f32> = rand(rows * cols, 12).iter().map(|v| v * 0.1).collect();
        for dtype in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
            let m = FrozenMatrix::from_quantized(rows, cols, dtype, gguf::quantize(dtype, &w, cols).unwrap()).unwrap();
            let g = GpuFrozen::upload(c, &m, "test.weight").unwrap();
            assert_eq!(g.storage_bytes(), m.storage_bytes(), "{dtype}: the device holds the blocks");
            let x = rand(n * cols, 13);
            let mut want = vec![0.0; n * rows];
            m.forward(&mut want, &x, n, false);
            let mut y = c.zeros(n * rows).unwrap();
            g.forward(c, &mut y, &up(&x), n, false).unwrap();
            assert_parity(&format!("frozen {dtype} forward [{rows},{cols}] n={n}"), &read(&y), &want);
            let dy = rand(n * rows, 14);
            let mut want = vec![0.0; n * cols];
            m.backward_input(&mut want, &dy, n, false);
            let mut dx = c.zeros(n * cols).unwrap();
            g.backward_input(c, &mut dx, &up(&dy), n, false).unwrap();
            assert_parity(&format!("frozen {dtype} input grad [{rows},{cols}] n={n}"), &read(&dx), &want);
        }
    }
}

/// NF4 (bitsandbytes' QLoRA blocks): plain and double-quantized scales, values rounded to f32, f16 or bf16 as the
/// checkpoint's dtype says, at q_proj's shape and at odd shapes whose 64-value blocks straddle rows.
#[test]
fn frozen_products_over_nf4_blocks_equal_the_cpu() {
    use loft::engine::nf4::{Nf4Blocks, Nf4Dtype, BLOCKSIZE};
    let c = ctx();
    for (rows, cols, n) in [(576, 576, 4), (200, 96, 3), (7, 33, 5)] {
        let w: Vec<f32> = rand(rows * cols, 15).iter().map(|v| v * 0.05).collect();
        for (double_quant, dtype) in [(false, Nf4Dtype::F32), (true, Nf4Dtype::BF16), (true, Nf4Dtype::F16)] {
            let blocks = Nf4Blocks::quantize(&w, BLOCKSIZE, double_quant, dtype);
            let m = FrozenMatrix::from_nf4(rows, cols, blocks).unwrap();
            let g = GpuFrozen::upload(c, &m, "test.weight").unwrap();
            // Codes, plus one f32 scale per block and a small header: never an f32 copy of the matrix.
            let want_bytes =
                ((rows * cols).div_ceil(2) + 4 * (rows * cols).div_ceil(BLOCKSIZE) + 76).next_multiple_of(4);
            assert_eq!(g.storage_bytes(), want_bytes);
            let label = format!("[{rows},{cols}] {dtype:?} double_quant={double_quant}");
            // Decoded values, bit for bit: every row through the embedding lookup against the CPU's decoding.
            let ids: Vec<u32> = (0..rows as u32).collect();
            let mut table = c.zeros(rows * cols).unwrap();
            embedding::embedding_forward(c, &mut table, &ids, VocabMatrix::Frozen(&g), cols).unwrap();
            assert_eq!(read(&table), m.to_f32().to_vec(), "nf4 {label}: decoded values differ");
            let x = rand(n * cols, 16);
            let mut want = vec![0.0; n * rows];
            m.forward(&mut want, &x, n, false);
            let mut y = c.zeros(n * rows).unwrap();
            g.forward(c, &mut y, &up(&x), n, false).unwrap();
            assert_parity(&format!("frozen nf4 forward {label} n={n}"), &read(&y), &want);
            let dy = rand(n * rows, 17);
            let mut want = vec![0.0; n * cols];
            m.backward_input(&mut want, &dy, n, false);
            let mut dx = c.zeros(n * cols).unwrap();
            g.backward_input(c, &mut dx, &up(&dy), n, false).unwrap();
            assert_parity(&format!("frozen nf4 input grad {label} n={n}"), &read(&dx), &want);
        }
    }
}
