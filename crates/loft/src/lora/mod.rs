//! LoRA adapters as PEFT defines them: which modules are adapted, their A/B matrices, and the embedding and head
//! when they are trained in full (PEFT's `modules_to_save`).

pub mod device;
pub mod merge;
pub mod peft;

use std::path::PathBuf;

use crate::engine::{FrozenMatrix, LoraWeights};
use crate::error::{Error, Result};
use crate::model::config::LlamaConfig;
pub use crate::model::TargetModule;
use crate::model::{Llama, LoadOptions, LoadedModel, UnmergedAdapter};
pub use device::{DeviceAdapter, Gradients};

/// Loads a model and merges PEFT adapter folders into it in order (a CPT adapter, then the IFT adapter trained on
/// top of it); each is checked against the model as merged so far. Adapted matrices become f32.
pub fn load_merged(spec: &str, options: &LoadOptions, adapters: &[PathBuf]) -> Result<LoadedModel> {
    let mut loaded = LoadedModel::load_with(spec, options)?;
    for dir in adapters {
        let adapter = peft::load_peft_adapter(dir, &loaded.model)?;
        merge::merge_adapter(&mut loaded.model, &adapter)?;
    }
    Ok(loaded)
}

/// What to adapt and how; names follow PEFT's `LoraConfig`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f32,
    pub lora_dropout: f32,
    pub use_rslora: bool,
    pub target_modules: Vec<TargetModule>,
    /// Train the token embedding in full (PEFT `modules_to_save = ["embed_tokens"]`).
    pub train_embed_tokens: bool,
    /// Train the output head in full. With tied embeddings, the one shared matrix is trained.
    pub train_lm_head: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            use_rslora: false,
            target_modules: TargetModule::ALL.to_vec(),
            train_embed_tokens: false,
            train_lm_head: false,
        }
    }
}

impl LoraConfig {
    /// Parses PEFT-style module names, naming the bad one with the valid list.
    pub fn parse_targets(names: &[String]) -> Result<Vec<TargetModule>> {
        let mut out = Vec::new();
        for n in names {
            let t = TargetModule::parse(n).ok_or_else(|| {
                let valid: Vec<&str> = TargetModule::ALL.iter().map(|t| t.name()).collect();
                Error::hinted(format!("unknown target module '{n}'"), format!("valid modules: {}", valid.join(", ")))
            })?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn scale(&self) -> f32 {
        crate::engine::lora::lora_scale(self.lora_alpha, self.r, self.use_rslora)
    }

    /// Checks the numbers against a model of `cfg`'s shape, before anything of size r is allocated: r at least 1
    /// and at most the smaller side of every adapted module (B·A cannot have a higher rank, so a larger r adds
    /// parameters and no capacity; the bound also keeps an adapter no larger than the layers it adapts), a finite
    /// lora_alpha, and lora_dropout in [0, 1).
    pub fn check(&self, cfg: &LlamaConfig) -> std::result::Result<(), LoraConfigProblem> {
        let problem = |field, message: String, hint: String| Err(LoraConfigProblem { field, message, hint });
        let r = self.r;
        if r == 0 {
            return problem("r", "r = 0 is not a rank".into(), "r is the adapter rank; use e.g. 8, 16 or 32".into());
        }
        let smallest = self.target_modules.iter().map(|&t| (t, t.shape(cfg))).min_by_key(|(_, (o, i))| (*o).min(*i));
        if let Some((t, (o, i))) = smallest {
            if r > o.min(i) {
                return problem(
                    "r",
                    format!(
                        "r = {r} is larger than {} [{o}, {i}] can use (its rank is at most {})",
                        t.name(),
                        o.min(i)
                    ),
                    format!("use r ≤ {}; 8, 16 or 32 are usual", o.min(i)),
                );
            }
        }
        if !self.lora_alpha.is_finite() {
            return problem(
                "lora_alpha",
                format!("lora_alpha = {} is not a finite number", self.lora_alpha),
                "lora_alpha scales the update by lora_alpha / r; use e.g. 2·r".into(),
            );
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return problem(
                "lora_dropout",
                format!("lora_dropout = {} is out of range", self.lora_dropout),
                "use 0 ≤ p < 1 (0 turns dropout off)".into(),
            );
        }
        Ok(())
    }
}

/// Why a [`LoraConfig`] does not fit a model: the field at fault, a message that starts with it (`r = 0 is …`),
/// and a hint. The caller adds where the value came from (a file, a config section).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfigProblem {
    pub field: &'static str,
    pub message: String,
    pub hint: String,
}

/// The trained tensors: per layer, an optional LoRA pair for each of the seven modules; the embedding and head
/// when trained in full. The same type holds gradients and optimizer moments (same shapes).
#[derive(Clone, Debug)]
pub struct Adapter {
    pub config: LoraConfig,
    /// layers[l][module.index()]
    pub layers: Vec<[Option<LoraWeights>; 7]>,
    /// [V, C], trained in full. With tied embeddings and `train_lm_head`, this one matrix is also the head.
    pub embed_tokens: Option<Vec<f32>>,
    /// [V, C], trained in full; only for untied models.
    pub lm_head: Option<Vec<f32>>,
}

impl Adapter {
    /// A fresh adapter as PEFT initialises one: B = 0, A Kaiming-uniform (seeded), full copies of the embedding and
    /// head when they are trained.
    pub fn new(config: LoraConfig, model: &Llama, seed: u64) -> Result<Self> {
        let cfg = &model.config;
        config.check(cfg).map_err(|p| Error::hinted(format!("lora.{}", p.message), p.hint))?;
        // Refused before allocating when the LoRA matrices alone would not fit (the trainer checks gradients,
        // optimizer state and activations on top, once the adapter exists).
        let per_layer: usize = config.target_modules.iter().map(|t| t.shape(cfg)).map(|(o, i)| o + i).sum();
        let bytes = per_layer.saturating_mul(config.r).saturating_mul(cfg.num_hidden_layers).saturating_mul(4);
        if let Some(available) = crate::memory::available_bytes().filter(|&a| bytes > a) {
            return Err(Error::hinted(
                format!(
                    "lora.r = {}: the LoRA matrices alone need {}, and {} of memory are available",
                    config.r,
                    crate::memory::human(bytes),
                    crate::memory::human(available)
                ),
                "use a smaller r (8, 16 or 32 are usual)",
            ));
        }
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let mut mods: [Option<LoraWeights>; 7] = Default::default();
            for &t in &config.target_modules {
                let (o, i) = t.shape(cfg);
                let mut w = LoraWeights::zeros(config.r, i, o, config.lora_alpha, config.use_rslora);
                w.init(seed ^ ((l as u64) << 8 | t.index() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                mods[t.index()] = Some(w);
            }
            layers.push(mods);
        }
        let tied = cfg.tie_word_embeddings;
        let embed_tokens = (config.train_embed_tokens || (tied && config.train_lm_head))
            .then(|| model.weights.embed_tokens.to_f32().into_owned());
        let lm_head = (config.train_lm_head && !tied).then(|| model.weights.head().to_f32().into_owned());
        Ok(Adapter { config, layers, embed_tokens, lm_head })
    }

    /// The same shapes, all zeros (gradients, optimizer moments).
    pub fn zeros_like(&self) -> Self {
        let mut z = self.clone();
        z.for_each_tensor_mut(|_, t| t.fill(0.0));
        z
    }

    /// Visits every trained tensor in a fixed order with a stable name (PEFT's key stem) and whether it belongs to
    /// the embedding group (trained at `embedding_learning_rate`).
    pub fn for_each_tensor_mut(&mut self, mut f: impl FnMut(TensorName, &mut [f32])) {
        for (l, mods) in self.layers.iter_mut().enumerate() {
            for (m, w) in mods.iter_mut().enumerate() {
                if let Some(w) = w {
                    f(TensorName::LoraA(l, TargetModule::ALL[m]), &mut w.a);
                    f(TensorName::LoraB(l, TargetModule::ALL[m]), &mut w.b);
                }
            }
        }
        if let Some(e) = &mut self.embed_tokens {
            f(TensorName::EmbedTokens, e);
        }
        if let Some(h) = &mut self.lm_head {
            f(TensorName::LmHead, h);
        }
    }

    /// Read-only twin of [`Adapter::for_each_tensor_mut`].
    pub fn for_each_tensor<'a>(&'a self, mut f: impl FnMut(TensorName, &'a [f32])) {
        for (l, mods) in self.layers.iter().enumerate() {
            for (m, w) in mods.iter().enumerate() {
                if let Some(w) = w {
                    f(TensorName::LoraA(l, TargetModule::ALL[m]), &w.a);
                    f(TensorName::LoraB(l, TargetModule::ALL[m]), &w.b);
                }
            }
        }
        if let Some(e) = &self.embed_tokens {
            f(TensorName::EmbedTokens, e);
        }
        if let Some(h) = &self.lm_head {
            f(TensorName::LmHead, h);
        }
    }

    /// The adapter as the inference forward runs it unmerged ([`crate::model::Runner::forward_with`]), checked
    /// against a model of `cfg`'s shape. The trained embedding and head move, not copied.
    pub fn into_unmerged(self, cfg: &LlamaConfig) -> Result<UnmergedAdapter> {
        let (v, c) = (cfg.vocab_size, cfg.hidden_size);
        let full = |name: &str, m: Option<Vec<f32>>| -> Result<Option<FrozenMatrix>> {
            match m {
                Some(m) if m.len() != v * c => Err(Error::Invalid(format!(
                    "the adapter's {name} has {} values, the model's is [{v}, {c}]",
                    m.len()
                ))),
                m => Ok(m.map(|m| FrozenMatrix::from_f32(v, c, m))),
            }
        };
        let unmerged = UnmergedAdapter {
            embed_tokens: full("embed_tokens", self.embed_tokens)?,
            lm_head: full("lm_head", self.lm_head)?,
            layers: self.layers,
        };
        unmerged.check(cfg)?;
        Ok(unmerged)
    }

    pub fn num_parameters(&self) -> usize {
        let mut n = 0;
        self.for_each_tensor(|_, t| n += t.len());
        n
    }
}

/// A trained tensor's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorName {
    LoraA(usize, TargetModule),
    LoraB(usize, TargetModule),
    EmbedTokens,
    LmHead,
}

impl TensorName {
    /// Trained at the embedding learning rate.
    pub fn is_embedding(self) -> bool {
        matches!(self, TensorName::EmbedTokens | TensorName::LmHead)
    }

    /// PEFT's state-dict key for this tensor.
    pub fn peft_key(self) -> String {
        match self {
            TensorName::LoraA(l, t) => format!("base_model.model.model.layers.{l}.{}.lora_A.weight", t.path()),
            TensorName::LoraB(l, t) => format!("base_model.model.model.layers.{l}.{}.lora_B.weight", t.path()),
            TensorName::EmbedTokens => "base_model.model.model.embed_tokens.weight".into(),
            TensorName::LmHead => "base_model.model.lm_head.weight".into(),
        }
    }
}
