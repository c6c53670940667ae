//! An adapter run unmerged, so that one base model in memory serves several adapters:
//!   y = x·Wᵀ + scale · (x·Aᵀ)·Bᵀ   for every adapted module (W the base's frozen weight, never modified),
//! and the embedding and head replaced when the adapter trains them in full. [`UnmergedAdapter`] holds the trained
//! tensors on the host; [`UnmergedOnDevice`] is its copy on a backend, which [`Runner::forward_with`] takes.
//! Legend: V = vocab_size, C = hidden_size, R = rank.
//!
//! [`Runner::forward_with`]: crate::model::Runner::forward_with

use crate::engine::{Backend, FrozenMatrix, LoraWeights};
use crate::error::{Error, Result};
use crate::model::config::LlamaConfig;
use crate::model::TargetModule;

/// An adapter's trained tensors as the inference forward reads them (`lora::Adapter::into_unmerged` builds one).
pub struct UnmergedAdapter {
    /// layers[l][module.index()]: A [R, I], B [O, R] and the scale; None where the module is not adapted.
    pub layers: Vec<[Option<LoraWeights>; 7]>,
    /// [V, C], trained in full. With a tied base it is also the head, as after a merge.
    pub embed_tokens: Option<FrozenMatrix>,
    /// [V, C], trained in full (an untied head).
    pub lm_head: Option<FrozenMatrix>,
}

impl UnmergedAdapter {
    /// Checks every tensor's shape against a model of `cfg`'s shape, naming the first that does not fit.
    pub fn check(&self, cfg: &LlamaConfig) -> Result<()> {
        if self.layers.len() != cfg.num_hidden_layers {
            return Err(Error::Invalid(format!(
                "the adapter has {} layers, the model {}",
                self.layers.len(),
                cfg.num_hidden_layers
            )));
        }
        let mut rank = None;
        for (l, mods) in self.layers.iter().enumerate() {
            for (m, w) in TargetModule::ALL.iter().zip(mods) {
                let Some(w) = w else { continue };
                let (o, i) = m.shape(cfg);
                let fits = (w.out_features, w.in_features) == (o, i)
                    && w.a.len() == w.r * i
                    && w.b.len() == o * w.r
                    && *rank.get_or_insert(w.r) == w.r;
                if !fits {
                    return Err(Error::Invalid(format!(
                        "layer {l} {}: the adapter is [{}, {}] at r = {} ({} and {} values), the model's weight \
                         [{o}, {i}]{}",
                        m.name(),
                        w.out_features,
                        w.in_features,
                        w.r,
                        w.a.len(),
                        w.b.len(),
                        rank.map(|r| format!(", r = {r} elsewhere")).unwrap_or_default()
                    )));
                }
            }
        }
        let (v, c) = (cfg.vocab_size, cfg.hidden_size);
        for (name, m) in [("embed_tokens", &self.embed_tokens), ("lm_head", &self.lm_head)] {
            if let Some(m) = m.as_ref().filter(|m| (m.rows, m.cols) != (v, c)) {
                return Err(Error::Invalid(format!(
                    "the adapter's {name} is [{}, {}], the model's [{v}, {c}]",
                    m.rows, m.cols
                )));
            }
        }
        Ok(())
    }

    /// The rank shared by every adapted module (0 when none is adapted).
    pub fn rank(&self) -> usize {
        self.layers.iter().flatten().flatten().map(|w| w.r).next().unwrap_or(0)
    }
}

/// An [`UnmergedAdapter`] on a backend, checked against one model's shape ([`crate::model::Runner::adapter`]).
pub struct UnmergedOnDevice<'a, B: Backend + 'a> {
    pub(crate) layers: Vec<[Option<B::Lora>; 7]>,
    pub(crate) embed_tokens: Option<B::Matrix<'a>>,
    pub(crate) lm_head: Option<B::Matrix<'a>>,
    /// R, for the forward's scratch [T, R].
    pub(crate) rank: usize,
    /// The model it was checked against: layers, C, V (a different model is refused, not run).
    pub(crate) shape: (usize, usize, usize),
}

impl<'a, B: Backend + 'a> UnmergedOnDevice<'a, B> {
    pub(crate) fn new(backend: &'a B, host: &'a UnmergedAdapter, cfg: &LlamaConfig) -> Result<Self> {
        host.check(cfg)?;
        let mut layers = Vec::with_capacity(host.layers.len());
        for mods in &host.layers {
            let mut on_device: [Option<B::Lora>; 7] = Default::default();
            for (slot, w) in on_device.iter_mut().zip(mods) {
                *slot = w.as_ref().map(|w| backend.lora(w)).transpose()?;
            }
            layers.push(on_device);
        }
        Ok(UnmergedOnDevice {
            layers,
            embed_tokens: host.embed_tokens.as_ref().map(|m| backend.matrix("adapter embed_tokens", m)).transpose()?,
            lm_head: host.lm_head.as_ref().map(|m| backend.matrix("adapter lm_head", m)).transpose()?,
            rank: host.rank(),
            shape: (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size),
        })
    }

    pub(crate) fn lora(&self, layer: usize, m: TargetModule) -> Option<&B::Lora> {
        self.layers[layer][m.index()].as_ref()
    }
}
