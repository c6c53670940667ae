//! An adapter's trained tensors on a backend, and their gradients: each layer's LoRA pairs, and the embedding and
//! head when they are trained in full. They go up once when a run starts (or resumes) and stay on the device for
//! the whole run; they come back to the host only when a checkpoint or the final adapter is written.

use crate::engine::Backend;
use crate::error::Result;
use crate::lora::{Adapter, LoraConfig, TargetModule, TensorName};

/// The trained tensors of an [`Adapter`] on backend `B`.
pub struct DeviceAdapter<B: Backend> {
    pub config: LoraConfig,
    pub layers: Vec<[Option<B::Lora>; 7]>,
    /// [V, C], when the embedding is trained (or the tied head).
    pub embed_tokens: Option<B::Buf>,
    /// [V, C], when an untied head is trained.
    pub lm_head: Option<B::Buf>,
}

impl<B: Backend> DeviceAdapter<B> {
    pub fn upload(backend: &B, adapter: &Adapter) -> Result<Self> {
        let mut layers = Vec::with_capacity(adapter.layers.len());
        for mods in &adapter.layers {
            let mut out: [Option<B::Lora>; 7] = Default::default();
            for (o, w) in out.iter_mut().zip(mods) {
                *o = w.as_ref().map(|w| backend.lora(w)).transpose()?;
            }
            layers.push(out);
        }
        Ok(DeviceAdapter {
            config: adapter.config.clone(),
            layers,
            embed_tokens: adapter.embed_tokens.as_deref().map(|e| backend.upload(e)).transpose()?,
            lm_head: adapter.lm_head.as_deref().map(|h| backend.upload(h)).transpose()?,
        })
    }

    /// The adapter back on the host (for checkpoints and the final adapter).
    pub fn download(&self, backend: &B) -> Result<Adapter> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for mods in &self.layers {
            let mut out: [Option<crate::engine::LoraWeights>; 7] = Default::default();
            for (o, w) in out.iter_mut().zip(mods) {
                *o = w.as_ref().map(|w| backend.lora_weights(w)).transpose()?;
            }
            layers.push(out);
        }
        let read = |b: &Option<B::Buf>| b.as_ref().map(|b| backend.read(b, 0, backend.len(b))).transpose();
        Ok(Adapter {
            config: self.config.clone(),
            layers,
            embed_tokens: read(&self.embed_tokens)?,
            lm_head: read(&self.lm_head)?,
        })
    }

    /// The trained tensors, in [`Adapter::for_each_tensor`] order (the optimizer's order).
    pub fn tensors_mut(&mut self) -> Vec<(TensorName, &mut B::Buf)> {
        let mut out = Vec::new();
        for (l, mods) in self.layers.iter_mut().enumerate() {
            for (m, w) in mods.iter_mut().enumerate() {
                if let Some(w) = w {
                    let (a, b) = B::lora_parts_mut(w);
                    out.push((TensorName::LoraA(l, TargetModule::ALL[m]), a));
                    out.push((TensorName::LoraB(l, TargetModule::ALL[m]), b));
                }
            }
        }
        out.extend(self.embed_tokens.as_mut().map(|e| (TensorName::EmbedTokens, e)));
        out.extend(self.lm_head.as_mut().map(|h| (TensorName::LmHead, h)));
        out
    }
}

/// The gradients of one adapted module: (dA [R, I], dB [O, R]).
pub type LoraGrads<B> = (<B as Backend>::Buf, <B as Backend>::Buf);

/// Gradients shaped like an adapter, on backend `B`: (dA, dB) of each adapted module, and the embedding's and
/// head's when they are trained.
pub struct Gradients<B: Backend> {
    pub layers: Vec<[Option<LoraGrads<B>>; 7]>,
    pub embed_tokens: Option<B::Buf>,
    pub lm_head: Option<B::Buf>,
}

impl<B: Backend> Gradients<B> {
    /// Zero gradients for `adapter`'s tensors.
    pub fn zeros(backend: &B, adapter: &Adapter) -> Result<Self> {
        let mut layers = Vec::with_capacity(adapter.layers.len());
        for mods in &adapter.layers {
            let mut out: [Option<LoraGrads<B>>; 7] = Default::default();
            for (o, w) in out.iter_mut().zip(mods) {
                if let Some(w) = w {
                    *o = Some((backend.zeros(w.a.len())?, backend.zeros(w.b.len())?));
                }
            }
            layers.push(out);
        }
        let zeros = |t: &Option<Vec<f32>>| t.as_ref().map(|t| backend.zeros(t.len())).transpose();
        Ok(Gradients { layers, embed_tokens: zeros(&adapter.embed_tokens)?, lm_head: zeros(&adapter.lm_head)? })
    }

    /// Sets every gradient to 0 (before a step's first micro-batch).
    pub fn zero(&mut self, backend: &B) -> Result<()> {
        for (_, g) in self.tensors_mut() {
            backend.fill_zero(g)?;
        }
        Ok(())
    }

    /// In [`Adapter::for_each_tensor`] order.
    pub fn tensors_mut(&mut self) -> Vec<(TensorName, &mut B::Buf)> {
        let mut out = Vec::new();
        for (l, mods) in self.layers.iter_mut().enumerate() {
            for (m, g) in mods.iter_mut().enumerate() {
                if let Some((da, db)) = g {
                    out.push((TensorName::LoraA(l, TargetModule::ALL[m]), da));
                    out.push((TensorName::LoraB(l, TargetModule::ALL[m]), db));
                }
            }
        }
        out.extend(self.embed_tokens.as_mut().map(|e| (TensorName::EmbedTokens, e)));
        out.extend(self.lm_head.as_mut().map(|h| (TensorName::LmHead, h)));
        out
    }

    /// In [`Adapter::for_each_tensor`] order.
    pub fn tensors(&self) -> Vec<(TensorName, &B::Buf)> {
        let mut out = Vec::new();
        for (l, mods) in self.layers.iter().enumerate() {
            for (m, g) in mods.iter().enumerate() {
                if let Some((da, db)) = g {
                    out.push((TensorName::LoraA(l, TargetModule::ALL[m]), da));
                    out.push((TensorName::LoraB(l, TargetModule::ALL[m]), db));
                }
            }
        }
        out.extend(self.embed_tokens.as_ref().map(|e| (TensorName::EmbedTokens, e)));
        out.extend(self.lm_head.as_ref().map(|h| (TensorName::LmHead, h)));
        out
    }

    /// The gradients on the host, as an adapter-shaped value (`like` gives the LoRA shapes and config).
    pub fn download(&self, backend: &B, like: &Adapter) -> Result<Adapter> {
        let mut host = like.clone();
        let mut read = Vec::new();
        for (_, g) in self.tensors() {
            read.push(backend.read(g, 0, backend.len(g))?);
        }
        let mut values = read.into_iter();
        let mut short = false;
        host.for_each_tensor_mut(|_, t| match values.next() {
            Some(v) if v.len() == t.len() => t.copy_from_slice(&v),
            _ => short = true,
        });
        if short || values.next().is_some() {
            return Err(crate::Error::Invalid("the gradients are not shaped like the adapter".into()));
        }
        Ok(host)
    }
}
