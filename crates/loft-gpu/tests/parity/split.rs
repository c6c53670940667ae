//! Frozen weights larger than one storage binding, kept as several blocks of whole rows (`GpuFrozen`), on a context
//! whose block limit is forced down to 4 KiB (`Context::with_weight_block_bytes`) so that tiny matrices split into
//! 2–3 blocks as Gemma 3's 170 MiB table does on lavapipe's 128 MiB bindings: the forward (one row per workgroup
//! and tiled) and the embedding lookup equal the one-block upload bit for bit, the input gradient (summed over the
//! blocks) and all three equal the CPU, the device holds the blocks' bytes and no more, and a whole tiny model's
//! inference and LoRA training step equal the CPU's and the unsplit GPU's.

use std::sync::OnceLock;

use gguf::GgmlType;
use loft::data::Batch;
use loft::engine::nf4::{Nf4Blocks, Nf4Dtype, BLOCKSIZE};
use loft::engine::{Cpu, FrozenMatrix};
use loft::lora::{Adapter, DeviceAdapter, Gradients, LoraConfig};
use loft::model::{llama_from_gguf, Arch, Llama, Runner, TargetModule};
use loft::train::forward_backward::{forward_backward, forward_backward_host, TrainArena};
use loft_gpu::engine::{embedding, GpuFrozen, VocabMatrix};
use loft_gpu::{Context, Wgpu};

use crate::common::{assert_parity, gpu, rand, TOL};
use crate::lcommon::adapter_with_nonzero_b;
use crate::lcommon::tiny::{random_weights, write_gguf, TinyConfig};

/// The forced limit on one block's bytes.
const LIMIT: u64 = 4096;

/// The test adapter with frozen weights kept in blocks of at most [`LIMIT`] bytes (its own context: the shared one
/// keeps the device's limit).
fn split_gpu() -> &'static Wgpu {
    static GPU: OnceLock<Wgpu> = OnceLock::new();
    GPU.get_or_init(|| Wgpu::new(split_context()))
}

/// A new context on the test adapter with [`LIMIT`]: one no other test allocates on, where a test counts the
/// device's bytes.
fn split_context() -> Context {
    let name = std::env::var("LOFT_GPU_ADAPTER").unwrap_or_else(|_| "lavapipe".into());
    let ctx = Context::open_named(&name).unwrap_or_else(|e| panic!("the test adapter '{name}': {e}"));
    ctx.with_weight_block_bytes(LIMIT)
}

fn read(c: &Context, buf: &loft_gpu::GpuBuffer) -> Vec<f32> {
    c.read_f32(buf).unwrap_or_else(|e| panic!("read-back failed: {e}"))
}

fn up(c: &Context, data: &[f32]) -> loft_gpu::GpuBuffer {
    c.upload_f32(data).unwrap_or_else(|e| panic!("upload failed: {e}"))
}

/// A [rows, cols] matrix of small random values stored as `dtype` (None: NF4 with double-quantized bf16 scales).
fn matrix(rows: usize, cols: usize, dtype: Option<GgmlType>, seed: u64) -> FrozenMatrix {
    let w: Vec<f32> = rand(rows * cols, seed).iter().map(|v| v * 0.1).collect();
    match dtype {
        Some(GgmlType::F32) => FrozenMatrix::from_f32(rows, cols, w),
        Some(t) => {
            let bytes = gguf::quantize(t, &w, cols).unwrap_or_else(|e| panic!("{e}"));
            FrozenMatrix::from_quantized(rows, cols, t, bytes).expect("the shape fits the blocks")
        }
        None => {
            let blocks = Nf4Blocks::quantize(&w, BLOCKSIZE, true, Nf4Dtype::BF16);
            FrozenMatrix::from_nf4(rows, cols, blocks).expect("the blocks hold the matrix")
        }
    }
}

/// Each storage at a shape that splits into 3 blocks under [`LIMIT`]; NF4 at widths whose 64-value blocks straddle
/// rows (33: a block of rows must be a multiple of 64 rows; 96: of 2).
#[test]
fn split_products_and_lookup_equal_one_block_and_the_cpu() {
    // Its own context: the device's byte count below must see this test's uploads alone.
    let own = split_context();
    let (split, whole) = (&own, gpu().context());
    let cases = [
        (Some(GgmlType::F32), 25, 96),
        (Some(GgmlType::F16), 50, 96),
        (Some(GgmlType::Q8_0), 100, 96),
        (Some(GgmlType::Q4K), 67, 256),
        (Some(GgmlType::Q6K), 40, 256),
        (None, 400, 33),
        (None, 150, 96),
    ];
    for (dtype, rows, cols) in cases {
        let m = matrix(rows, cols, dtype, 21);
        let name = m.storage_name();
        let held = split.allocated_bytes();
        let g = GpuFrozen::upload(split, &m, "test.weight").unwrap();
        let one = GpuFrozen::upload(whole, &m, "test.weight").unwrap();
        assert_eq!((g.block_count(), one.block_count()), (3, 1), "{name} [{rows},{cols}]: blocks");
        // The device holds the blocks: the rows' bytes padded to words per block; NF4 with two more headers (76
        // bytes) and the scale of a 64-value block cut between two blocks of rows kept in both.
        let overhead = g.storage_bytes() as i64 - one.storage_bytes() as i64;
        let most = if dtype.is_some() { 3 * 3 } else { 2 * 76 + 2 * 4 + 3 * 3 };
        assert!((-3..=most).contains(&overhead), "{name}: {overhead} bytes more in blocks than in one");
        assert_eq!(split.allocated_bytes() - held, g.storage_bytes() as u64, "{name}: the device's count");
        assert!(g.storage_bytes() <= 3 * LIMIT as usize);

        for n in [3, 70] {
            let label = format!("split {name} [{rows},{cols}] n={n}");
            let x = rand(n * cols, 22);
            let y0 = rand(n * rows, 23);
            for acc in [false, true] {
                let mut want = y0.clone();
                m.forward(&mut want, &x, n, acc);
                let mut y = up(split, &y0);
                g.forward(split, &mut y, &up(split, &x), n, acc).unwrap();
                let mut y1 = up(whole, &y0);
                one.forward(whole, &mut y1, &up(whole, &x), n, acc).unwrap();
                assert_eq!(read(split, &y), read(whole, &y1), "{label} acc={acc}: forward differs from one block");
                assert_parity(&format!("{label} forward acc={acc}"), &read(split, &y), &want);

                let dy = rand(n * rows, 24);
                let dx0 = rand(n * cols, 25);
                let mut want = dx0.clone();
                m.backward_input(&mut want, &dy, n, acc);
                let mut dx = up(split, &dx0);
                g.backward_input(split, &mut dx, &up(split, &dy), n, acc).unwrap();
                assert_parity(&format!("{label} input grad acc={acc}"), &read(split, &dx), &want);
            }
        }

        // Every row looked up, some twice and out of order: the decoded values, as the one-block upload and the
        // CPU decode them.
        let ids: Vec<u32> = (0..rows as u32).rev().chain([0, rows as u32 / 2, rows as u32 - 1]).collect();
        let mut table = split.zeros(ids.len() * cols).unwrap();
        embedding::embedding_forward(split, &mut table, &ids, VocabMatrix::Frozen(&g), cols).unwrap();
        let mut table1 = whole.zeros(ids.len() * cols).unwrap();
        embedding::embedding_forward(whole, &mut table1, &ids, VocabMatrix::Frozen(&one), cols).unwrap();
        let cpu = m.to_f32();
        let want: Vec<f32> = ids.iter().flat_map(|&i| cpu[i as usize * cols..][..cols].to_vec()).collect();
        assert_eq!(read(split, &table), read(whole, &table1), "split {name}: lookup differs from one block");
        assert_eq!(read(split, &table), want, "split {name}: lookup differs from the CPU's decoding");
    }
}

/// A row (or, for NF4, the rows that make a whole block of codes) larger than a binding cannot be split: one line
/// naming the tensor, what it needed and the limit, with the hint to use the CPU. Activations are not limited by
/// the weights' setting.
#[test]
fn a_row_larger_than_a_binding_names_the_tensor() {
    let split = split_gpu().context();
    let m = matrix(4, 2048, Some(GgmlType::F32), 26); // 8 KiB rows
    let e = GpuFrozen::upload(split, &m, "model.embed_tokens.weight").err().expect("a row over the limit");
    let msg = e.to_string();
    assert!(
        msg.starts_with("model.embed_tokens.weight: one row of [4, 2048] (f32) takes 8.0 KiB, more than GPU #")
            && msg.ends_with("'s largest storage buffer (4.0 KiB)")
            && !msg.contains('\n'),
        "{msg}"
    );
    assert!(e.hint().is_some_and(|h| h.contains("--device cpu")), "{msg}");
    // NF4 blocks of rows start on a whole 64-value block of codes: 64 rows of 255 values, 9 KiB.
    let wide = matrix(64, 255, None, 28);
    let msg = GpuFrozen::upload(split, &wide, "w").err().expect("a block of codes over the limit").to_string();
    assert!(msg.starts_with("w: 64 rows of [64, 255] (nf4, whole blocks of codes) take 9.0 KiB"), "{msg}");
    assert!(split.zeros(4 * LIMIT as usize).is_ok(), "an activation is not a weight");
}

fn tiny_model(cfg: &TinyConfig, seed: u64, dtype: GgmlType) -> Llama {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, cfg, &random_weights(cfg, seed));
    let file = gguf::GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut model = llama_from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if dtype != GgmlType::F32 {
        let requant = |m: &mut FrozenMatrix| {
            let bytes = gguf::quantize(dtype, &m.to_f32(), m.cols).unwrap_or_else(|e| panic!("{e}"));
            *m = FrozenMatrix::from_quantized(m.rows, m.cols, dtype, bytes).expect("the shape fits the blocks");
        };
        let w = &mut model.weights;
        requant(&mut w.embed_tokens);
        w.lm_head.as_mut().map(requant);
        for layer in &mut w.layers {
            for t in TargetModule::ALL {
                requant(layer.module_mut(t));
            }
        }
    }
    model
}

fn flat(a: &Adapter) -> Vec<f32> {
    let mut v = Vec::new();
    a.for_each_tensor(|_, t| v.extend_from_slice(t));
    v
}

/// Greedy token of each logits row.
fn argmax(logits: &[f32], v: usize) -> Vec<usize> {
    logits
        .chunks_exact(v)
        .map(|r| r.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0)
        .collect()
}

/// A tied f32 Llama and a tied Q8_0 Gemma 3 (Gemma 3 270M's storage of its table) whose embedding/head splits into
/// 3 blocks and its MLP matrices into 2: the inference forward over a prompt and a cached token, the mean
/// next-token loss, and one LoRA training step (every linear layer adapted; the head's input gradient through the
/// blocks) equal the CPU's, and the unsplit GPU's forward bit for bit.
#[test]
fn a_tiny_model_split_in_blocks_runs_and_trains_as_the_cpu() {
    let llama = TinyConfig { vocab: 96, hidden: 32, ffn: 40, ..TinyConfig::default() };
    let gemma = TinyConfig { arch: Arch::Gemma3, vocab: 160, hidden: 64, ffn: 96, layers: 6, ..TinyConfig::default() };
    for (label, model) in [
        ("llama f32 tied", tiny_model(&llama, 41, GgmlType::F32)),
        ("gemma3 q8_0 tied", tiny_model(&gemma, 42, GgmlType::Q8_0)),
    ] {
        let cfg = &model.config;
        let v = cfg.vocab_size;
        let table = GpuFrozen::upload(split_gpu().context(), &model.weights.embed_tokens, "embed").unwrap();
        let gate = model.weights.layers[0].module(TargetModule::GateProj);
        let gate = GpuFrozen::upload(split_gpu().context(), gate, "gate").unwrap();
        assert_eq!((table.block_count(), gate.block_count()), (3, 2), "{label}: blocks");

        let tokens: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % v as u32).collect();
        let cpu = Runner::new(&Cpu, &model).unwrap().with_exact_products();
        let (one, split) = (Runner::new(gpu(), &model).unwrap(), Runner::new(split_gpu(), &model).unwrap());
        let (mut cc, mut oc, mut sc) = (cpu.cache(12).unwrap(), one.cache(12).unwrap(), split.cache(12).unwrap());
        for ids in [&tokens[..11], &tokens[11..]] {
            let (hc, ho, hs) = (
                cpu.forward(ids, &mut cc).unwrap(),
                one.forward(ids, &mut oc).unwrap(),
                split.forward(ids, &mut sc).unwrap(),
            );
            let lc = cpu.logits(&hc, 0, ids.len()).unwrap();
            let (lo, ls) = (one.logits(&ho, 0, ids.len()).unwrap(), split.logits(&hs, 0, ids.len()).unwrap());
            let what = format!("split {label}: logits of {} tokens", ids.len());
            assert_eq!(ls, lo, "{what} differ from the one-block upload");
            assert_parity(&what, &ls, &lc);
            assert_eq!(argmax(&ls, v), argmax(&lc, v), "{what}: greedy tokens");
        }
        let mean = |nll: Vec<f64>| nll.iter().sum::<f64>() / nll.len() as f64;
        let (nc, ns) = (mean(cpu.next_token_nll(&tokens).unwrap()), mean(split.next_token_nll(&tokens).unwrap()));
        eprintln!("split {label}: mean nll cpu {nc:.6}, gpu in blocks {ns:.6}");
        assert!(((ns - nc) / nc).abs() <= TOL as f64, "{label}: mean nll {ns} in blocks, {nc} on the CPU");

        let adapter = adapter_with_nonzero_b(&model, LoraConfig { r: 4, lora_alpha: 8.0, ..Default::default() });
        let rows: Vec<Vec<u32>> = (0..2).map(|b| (0..9).map(|i| (i * 7 + 3 * b + 1) % v as u32).collect()).collect();
        let labels: Vec<Vec<i32>> = rows.iter().map(|r| r.iter().map(|&t| t as i32).collect()).collect();
        let batch = Batch::from_rows(&rows, &labels);
        let scale = 1.0 / batch.n_targets() as f32;
        let mut cpu_grads = adapter.zeros_like();
        let mut arena = TrainArena::new(&Cpu, cfg, &adapter.config, 2, 9, false).unwrap();
        let (cpu_loss, _) =
            forward_backward_host(&model, &adapter, &mut cpu_grads, &mut arena, &batch, scale, 3).unwrap();
        let be = split_gpu();
        let dev = DeviceAdapter::upload(be, &adapter).unwrap();
        let mut grads = Gradients::zeros(be, &adapter).unwrap();
        let mut arena = TrainArena::new(be, cfg, &adapter.config, 2, 9, false).unwrap();
        let (loss, _) = forward_backward(&split, &dev, &mut grads, &mut arena, &batch, scale, 3).unwrap();
        let rel = ((loss - cpu_loss) / cpu_loss).abs();
        eprintln!("split {label}: training loss cpu {cpu_loss:.6}, gpu in blocks {loss:.6}, rel {rel:.2e}");
        assert!(rel <= TOL as f64, "{label}: training loss {loss} in blocks, {cpu_loss} on the CPU");
        assert_parity(
            &format!("split {label}: LoRA gradients"),
            &flat(&grads.download(be, &adapter).unwrap()),
            &flat(&cpu_grads),
        );
    }
}
