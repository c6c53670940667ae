//! Gemma 3 270M's real Q4_K_M GGUF (`scripts/fetch.sh gemma3`) on lavapipe (or the adapter LOFT_GPU_ADAPTER
//! names). Its tied 262,144 × 640 embedding/head is stored as Q8_0, 170 MiB: more than lavapipe's (and wgpu's
//! default) 128 MiB storage binding, so the device keeps it in blocks of rows (`GpuFrozen`). Greedy decoding
//! through the KV cache gives the CPU's tokens (and transformers', crates/loft/tests/fixtures/gemma3_270m), and the
//! mean next-token loss of a short text equals the CPU's within the parity tolerance.
//!
//! A test binary of its own: lavapipe runs this model at well under a token a second on two cores.

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
    let ctx = Context::open_named(&name).unwrap_or_else(|e| panic!("the test adapter '{name}': {e}"));
    let table = model.weights.embed_tokens.storage_bytes() as u64;
    eprintln!(
        "gemma3 270m: embedding/head {} ({table} bytes), largest block on {name}: {} bytes",
        model.weights.embed_tokens.storage_name(),
        ctx.max_weight_block_bytes()
    );
    if name == "lavapipe" {
        assert!(table > ctx.max_weight_block_bytes(), "the table must exceed lavapipe's binding for this test");
    }
    let gpu = Wgpu::new(ctx);
    let (cpu_run, gpu_run) = (Runner::new(&Cpu, model).unwrap(), Runner::new(&gpu, model).unwrap());

    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::workspace().join("crates/loft/tests/fixtures/gemma3_270m/expected.json"))
            .expect("crates/loft/tests/fixtures/gemma3_270m/expected.json"),
    )
    .expect("expected.json");

    // Greedy: the fixture's prompt, 12 tokens, each step's logits compared.
    let prompt = ids(&expected["greedy"]["prompt_ids"]);
    let steps = 12;
    let tokens = [greedy(&cpu_run, &prompt, steps), greedy(&gpu_run, &prompt, steps)];
    let transformers = &ids(&expected["greedy"]["tokens"])[..steps];
    eprintln!("gemma3 270m greedy: cpu {:?}, gpu {:?}, transformers {transformers:?}", tokens[0], tokens[1]);
    assert_eq!(tokens[1], tokens[0], "greedy tokens on {name} differ from the CPU's");
    assert_eq!(tokens[0], transformers, "the CPU's greedy tokens differ from transformers'");
    let greedy_s = started.elapsed().as_secs_f64();

    // Loss: the first 48 tokens of the fixture's eval text (BOS first).
    let text = &ids(&expected["eval"]["ids"])[..48];
    let mean = |nll: Vec<f64>| nll.iter().sum::<f64>() / nll.len() as f64;
    let cpu_loss = mean(cpu_run.next_token_nll(text).unwrap());
    let gpu_loss = mean(gpu_run.next_token_nll(text).unwrap());
    let rel = ((gpu_loss - cpu_loss) / cpu_loss).abs();
    eprintln!(
        "gemma3 270m loss over {} tokens: cpu {cpu_loss:.9}, gpu {gpu_loss:.9}, rel {rel:.2e} (greedy took {greedy_s:.1} s, \
         all {:.1} s)",
        text.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(rel <= TOL, "loss {gpu_loss} on {name}, {cpu_loss} on the CPU: rel {rel:.2e}");
}

/// `steps` greedy tokens after `prompt`, through the KV cache.
fn greedy<B: loft::engine::Backend>(run: &Runner<'_, B>, prompt: &[u32], steps: usize) -> Vec<u32> {
    let who = run.backend().describe();
    let mut cache = run.cache(prompt.len() + steps).unwrap_or_else(|e| panic!("{who}: {e}"));
    let mut hidden = run.forward(prompt, &mut cache).unwrap_or_else(|e| panic!("{who}: {e}"));
    let mut row = prompt.len() - 1;
    let mut out = Vec::new();
    for _ in 0..steps {
        let next = argmax(&run.logits(&hidden, row, 1).unwrap_or_else(|e| panic!("{who}: {e}")));
        out.push(next);
        hidden = run.forward(&[next], &mut cache).unwrap_or_else(|e| panic!("{who}: {e}"));
        row = 0;
    }
    out
}
