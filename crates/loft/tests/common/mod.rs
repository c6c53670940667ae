//! What the integration tests share: the fixtures `make test` fetches (a missing one fails the test, naming it),
//! the PyTorch reference numbers, and the tiny models the tests build themselves.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file or folder the tests need, fetched by `scripts/fetch.sh <target>` (`make test` fetches them all first):
/// the path in the environment variable `env` when it is set, else `default`. A missing one fails the test with
/// one line naming the path and the command that fetches it.
pub struct Fixture {
    pub env: &'static str,
    pub default: &'static str,
    pub what: &'static str,
    pub fetch_target: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1.
pub const DEFAULT_MODEL: Fixture = Fixture {
    env: "LOFT_MODEL",
    default: ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    what: "the default model",
    fetch_target: "model",
};
/// Gemma 3 270M, Q4_K_M (the Gemma terms apply: fetched into the cache, never committed).
pub const GEMMA3_MODEL: Fixture = Fixture {
    env: "LOFT_GEMMA3_MODEL",
    default: ".cache/models/gemma-3-270m-q4_k_m.gguf",
    what: "Gemma 3 270M Q4_K_M",
    fetch_target: "gemma3",
};
/// llama.cpp's test vocabularies (`ggml-vocab-*.gguf` with `.inp`/`.out`) and `templates/*.jinja`, from the
/// llama-cpp-python sdist; the folder that holds `models/`.
pub const LLAMA_CPP: Fixture = Fixture {
    env: "LOFT_LLAMA_CPP_DIR",
    default: ".cache/llama.cpp",
    what: "llama.cpp's test vocabularies and chat templates",
    fetch_target: "vocab",
};
/// The Python of a venv with llama.cpp's `gguf` package and numpy.
pub const GGUF_PY: Fixture = Fixture {
    env: "LOFT_GGUF_PY",
    default: ".cache/venv-gguf/bin/python",
    what: "a venv with llama.cpp's gguf package",
    fetch_target: "gguf-py",
};
/// The Python of a venv with TensorBoard.
pub const TENSORBOARD_PY: Fixture = Fixture {
    env: "LOFT_TENSORBOARD_PY",
    default: ".cache/venv-tb/bin/python",
    what: "a venv with TensorBoard",
    fetch_target: "tensorboard",
};

/// The Python of a venv with OpenAI's official client (`openai`).
pub const OPENAI_PY: Fixture = Fixture {
    env: "LOFT_OPENAI_PY",
    default: ".cache/venv-openai/bin/python",
    what: "a venv with OpenAI's Python client",
    fetch_target: "openai",
};

impl Fixture {
    /// `relative` inside the fixture (empty for the fixture itself), which must exist.
    pub fn join(&self, relative: &str) -> PathBuf {
        let (base, from) = match std::env::var_os(self.env) {
            Some(p) => (PathBuf::from(p), format!(", {} is set", self.env)),
            None => (workspace().join(self.default), String::new()),
        };
        let p = if relative.is_empty() { base } else { base.join(relative) };
        if !p.exists() {
            panic!(
                "missing test fixture {} ({}{from}): run `scripts/fetch.sh {}` (`make test` does)",
                p.display(),
                self.what,
                self.fetch_target
            );
        }
        p
    }

    pub fn path(&self) -> PathBuf {
        self.join("")
    }
}

pub fn default_model() -> PathBuf {
    DEFAULT_MODEL.path()
}

pub fn gguf_py() -> PathBuf {
    GGUF_PY.path()
}

pub fn tensorboard_py() -> PathBuf {
    TENSORBOARD_PY.path()
}

pub fn openai_py() -> PathBuf {
    OPENAI_PY.path()
}

/// llama.cpp's `models/` folder, checked by one file in it.
pub fn llama_cpp_models() -> PathBuf {
    LLAMA_CPP.join("models/ggml-vocab-llama-bpe.gguf");
    LLAMA_CPP.join("models")
}

/// The numbers measured with PyTorch (`smollm2-135m.json`, `apache-2.0.txt`): `../shared/reference` beside the
/// workspace, or LOFT_REFERENCE_DIR. No package ships them, so `make test` cannot fetch them.
pub fn reference_dir() -> PathBuf {
    let dir = std::env::var_os("LOFT_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/reference"));
    if !dir.join("smollm2-135m.json").is_file() {
        panic!(
            "missing test fixture {} (the PyTorch reference numbers): point LOFT_REFERENCE_DIR at the folder holding \
             smollm2-135m.json and apache-2.0.txt",
            dir.display()
        );
    }
    dir
}

pub fn reference() -> serde_json::Value {
    let p = reference_dir().join("smollm2-135m.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// A seeded adapter whose B matrices are not zero (a fresh PEFT adapter's are), so every A gets a gradient and a
/// merge or export changes the weights.
pub fn adapter_with_nonzero_b(model: &loft::model::Llama, config: loft::lora::LoraConfig) -> loft::lora::Adapter {
    let mut a = loft::lora::Adapter::new(config, model, 11).unwrap();
    let mut rng = loft::rng::SplitMix64::new(3);
    a.for_each_tensor_mut(|name, t| {
        if matches!(name, loft::lora::TensorName::LoraB(..)) {
            t.iter_mut().for_each(|v| *v = (rng.next_f64() as f32 - 0.5) * 0.4);
        }
    });
    a
}

/// The tensors of a PEFT adapter folder (`adapter_model.safetensors`), as f32, sorted by name.
pub fn adapter_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// (‖a − b‖², ‖b‖²) over the tensors whose name `keep` accepts (a and b name the same tensors in the same order).
pub fn l2_parts(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], keep: impl Fn(&str) -> bool) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut diff, mut norm) = (0f64, 0f64);
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        if !keep(na) {
            continue;
        }
        for (x, y) in ta.iter().zip(tb) {
            diff += ((x - y) as f64).powi(2);
            norm += (*y as f64).powi(2);
        }
    }
    (diff, norm)
}

/// ‖a − b‖ / ‖b‖ over all tensors.
pub fn relative_l2(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f64 {
    let (diff, norm) = l2_parts(a, b, |_| true);
    (diff / norm).sqrt()
}

/// A random batch of B rows of T ids below `vocab`; row i trains only from position 2 + i (ragged targets).
pub fn random_batch(vocab: u32, b: usize, t: usize, seed: u64) -> loft::data::Batch {
    let mut rng = loft::rng::SplitMix64::new(seed);
    let rows: Vec<Vec<u32>> =
        (0..b).map(|_| (0..t).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()).collect();
    let labels: Vec<Vec<i32>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| r.iter().enumerate().map(|(j, &id)| if j < 2 + i { -100 } else { id as i32 }).collect())
        .collect();
    loft::data::Batch::from_rows(&rows, &labels)
}

/// The training forward's mean loss over the batch's targets, on the CPU.
pub fn mean_loss(model: &loft::model::Llama, a: &loft::lora::Adapter, batch: &loft::data::Batch) -> f64 {
    use loft::train::forward_backward::{loss_host, TrainArena};
    let mut arena = TrainArena::new(&loft::engine::Cpu, &model.config, &a.config, batch.b, batch.t, false).unwrap();
    let (sum, n) = loss_host(model, a, &mut arena, batch).unwrap();
    sum / n as f64
}

/// Merges kept in the tiny models' tokenizer: enough that common English words are one or two tokens.
pub const TINY_BPE_MERGES: usize = 2000;

/// A tiny Llama ([`tiny::bpe_config`]) with random weights and the default model's tokenizer cut to its first
/// [`TINY_BPE_MERGES`] merges ([`tiny::bpe_cut`]: specials, chat template and EOS as the default model has them),
/// written to `dir/tiny-bpe.gguf`. For tests of plumbing, where the 135M model's numbers add nothing but time.
pub fn tiny_bpe_model(dir: &Path) -> PathBuf {
    let source = gguf::GgufFile::open(default_model()).unwrap();
    let vocab = loft::tokenizer::GgufVocab::from_gguf(&source).unwrap();
    let path = dir.join("tiny-bpe.gguf");
    tiny::write_bpe_model(&path, &vocab, TINY_BPE_MERGES, 5);
    path
}

pub mod tiny;
