//! Gemma 3 270M's real Q4_K_M GGUF (`scripts/fetch.sh gemma3`) on lavapipe (or the adapter LOFT_GPU_ADAPTER
//! names, held to lavapipe's limit). Its tied 262,144 × 640 embedding/head is stored as Q8_0, 170 MiB: more than
//! lavapipe's (and wgpu's default) 128 MiB storage binding, so the device keeps it in blocks of rows (`GpuFrozen`). The mean next-token
//! loss of a short text (the start of crates/loft/tests/fixtures/gemma3_270m's eval text) equals the CPU's within
//! the parity tolerance, and greedy decoding after it through the KV cache gives the CPU's tokens.
//!
//! A test binary of its own: lavapipe runs this model at about 0.2 tokens a second on two cores (a decode step
//! takes about 2 s in the layers and 3 s in the head), so this takes a minute or two.

#[path = "../../loft/tests/common/mod.rs"]
mod common;

use loft::engine::Cpu;
use loft::model::{LoadedModel, Runner};
use loft_gpu::{Context, Wgpu};

/// The relative error the parity tests hold to (tests/parity/common.rs).
const TOL: f64 = 1e-4;

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an array of ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0 as u32
}

#[test]
fn gemma3_270m_on_lavapipe_decodes_and_scores_as_the_cpu() {
    let started = std::time::Instant::now();
    let path = common::GEMMA3_MODEL.path();
    let loaded = LoadedModel::load(&path.display().to_string()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let model = &loaded.model;
    let name = std::env::var("LOFT_GPU_ADAPTER").unwrap_or_else(|_| "lavapipe".into());
    // lavapipe's own limit; a device with larger bindings (LOFT_GPU_ADAPTER) is held to it, so the table splits
    // there too.
    let ctx = Context::open_named(&name).unwrap_or_else(|e| panic!("the test adapter '{name}': {e}"));
    let ctx = ctx.with_weight_block_bytes(128 << 20);
    let table = model.weights.embed_tokens.storage_bytes() as u64;
    eprintln!(
        "gemma3 270m: embedding/head {} ({table} bytes), largest block on {name}: {} bytes",
        model.weights.embed_tokens.storage_name(),
        ctx.max_weight_block_bytes()
    );
    assert!(table > ctx.max_weight_block_bytes(), "the table must exceed one block for this test");
    let gpu = Wgpu::new(ctx);
    let (cpu_run, gpu_run) =
        (Runner::new(&Cpu, model).unwrap().with_exact_products(), Runner::new(&gpu, model).unwrap());

    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::workspace().join("crates/loft/tests/fixtures/gemma3_270m/expected.json"))
            .expect("crates/loft/tests/fixtures/gemma3_270m/expected.json"),
    )
    .expect("expected.json");

    // One prefill serves both checks: the first 32 tokens of the fixture's eval text (BOS first), whose rows'
    // logits give the loss of their 31 next tokens, then 4 greedy tokens through the KV cache (each step runs the
    // 262k-row head, seconds on lavapipe).
    let text = &ids(&expected["eval"]["ids"])[..32];
    let (cpu_loss, cpu_tokens) = score_and_greedy(&cpu_run, text, 4);
    let (gpu_loss, gpu_tokens) = score_and_greedy(&gpu_run, text, 4);
    let rel = ((gpu_loss - cpu_loss) / cpu_loss).abs();
    eprintln!(
        "gemma3 270m on {name}: loss over {} tokens cpu {cpu_loss:.9}, gpu {gpu_loss:.9} (rel {rel:.2e}); greedy cpu \
         {cpu_tokens:?}, gpu {gpu_tokens:?}; {:.1} s in all",
        text.len() - 1,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(gpu_tokens, cpu_tokens, "greedy tokens on {name} differ from the CPU's");
    assert!(rel <= TOL, "loss {gpu_loss} on {name}, {cpu_loss} on the CPU: rel {rel:.2e}");
}

/// The mean next-token loss over `text` (from the logits of all its rows, as `Runner::next_token_nll` scores
/// them), then `steps` greedy tokens after it through the KV cache.
fn score_and_greedy<B: loft::engine::Backend>(run: &Runner<'_, B>, text: &[u32], steps: usize) -> (f64, Vec<u32>) {
    let who = run.backend().describe();
    let v = run.model().config.vocab_size;
    let mut cache = run.cache(text.len() + steps).unwrap_or_else(|e| panic!("{who}: {e}"));
    let hidden = run.forward(text, &mut cache).unwrap_or_else(|e| panic!("{who}: {e}"));
    let logits = run.logits(&hidden, 0, text.len()).unwrap_or_else(|e| panic!("{who}: {e}"));
    let rows: Vec<&[f32]> = logits.chunks_exact(v).collect();
    let nll = |row: &[f32], target: u32| {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() - row[target as usize] as f64
    };
    let loss = rows.iter().zip(&text[1..]).map(|(row, &t)| nll(row, t)).sum::<f64>() / (text.len() - 1) as f64;
    let mut next = argmax(rows[text.len() - 1]);
    let mut out = vec![next];
    while out.len() < steps {
        let hidden = run.forward(&[next], &mut cache).unwrap_or_else(|e| panic!("{who}: {e}"));
        next = argmax(&run.logits(&hidden, 0, 1).unwrap_or_else(|e| panic!("{who}: {e}")));
        out.push(next);
    }
    (loss, out)
}
