//! The optimizer over an adapter's trained tensors: one state per tensor (AdamW's moments, 32-bit or bitsandbytes'
//! 8-bit blocks), updated on the backend the tensors live on, at the LoRA or the embedding learning rate; the
//! checkpoint layout of that state (PEFT key + torch's or bitsandbytes' state name); and global gradient-norm
//! clipping as `torch.nn.utils.clip_grad_norm_`. The per-tensor update kernels live in [`crate::engine::optim`].

use std::collections::HashMap;

use crate::engine::optim::{clip_coefficient, global_norm, moment_layout, scale};
pub use crate::engine::optim::{
    dequantize_blockwise, moment_bytes, quantize_blockwise, BnbAdam, OptimConfig, OptimKind, TorchAdamW, BLOCK_SIZE,
    MIN_8BIT_SIZE,
};
use crate::engine::{Backend, Cpu};
use crate::error::{Error, Result};
use crate::lora::{Adapter, TargetModule, TensorName};

struct TensorState<B: Backend> {
    name: TensorName,
    len: usize,
    moments: B::Moments,
}

/// The optimizer's state for a list of trained tensors, on backend `B`.
pub struct Optimizer<B: Backend = Cpu> {
    config: OptimConfig,
    steps: u64,
    states: Vec<TensorState<B>>,
}

/// An optimizer's state read back to the host, as a checkpoint stores it.
#[derive(Clone, Debug)]
pub struct SavedOptimizer {
    pub kind: OptimKind,
    pub steps: u64,
    /// (name, little-endian bytes, safetensors dtype), in the optimizer's tensor order.
    pub tensors: Vec<(String, Vec<u8>, &'static str)>,
}

impl Optimizer<Cpu> {
    /// Zero moments for every tensor of `params`, step 0, on the CPU.
    pub fn new(config: OptimConfig, params: &Adapter) -> Self {
        let mut list = Vec::new();
        params.for_each_tensor(|name, t| list.push((name, t.len())));
        Optimizer::on(&Cpu, config, &list).expect("CPU moments never fail to allocate")
    }

    /// [`Optimizer::update`] of a host adapter by host gradients.
    ///
    /// Panics if `params` or `grads` is not shaped like the adapter the optimizer was built for (a programming
    /// error, not bad input).
    pub fn step(&mut self, params: &mut Adapter, grads: &Adapter, lr: f32, embedding_lr: f32) {
        let mut params: Vec<&mut Vec<f32>> = tensors_mut(params).into_iter().map(|(_, t)| t).collect();
        let grads: Vec<&Vec<f32>> = tensors(grads).into_iter().map(|(_, t)| t).collect();
        if let Err(e) = self.update(&Cpu, &mut params, &grads, lr, embedding_lr) {
            panic!("{e}");
        }
    }

    /// [`Optimizer::read_state`]'s tensors, on the CPU.
    pub fn state_tensors(&self) -> Vec<(String, Vec<u8>, &'static str)> {
        self.read_state(&Cpu).expect("CPU state reads never fail").tensors
    }

    /// [`Optimizer::restore`] on the CPU.
    pub fn load_state_tensors(&mut self, tensors: &[(String, Vec<u8>)], steps: u64) -> Result<()> {
        self.restore(&Cpu, tensors, steps)
    }
}

impl<B: Backend> Optimizer<B> {
    /// Zero moments on `backend` for `params` (name and length of each trained tensor, in the order `update` will
    /// be given them), step 0; tensors under [`MIN_8BIT_SIZE`] keep 32-bit state in the 8-bit optimizer.
    pub fn on(backend: &B, config: OptimConfig, params: &[(TensorName, usize)]) -> Result<Self> {
        let mut states = Vec::with_capacity(params.len());
        for &(name, len) in params {
            states.push(TensorState { name, len, moments: backend.moments(config.kind, len)? });
        }
        Ok(Optimizer { config, steps: 0, states })
    }

    pub fn config(&self) -> &OptimConfig {
        &self.config
    }

    pub fn steps_taken(&self) -> u64 {
        self.steps
    }

    /// One update of every tensor (decoupled weight decay, bias-corrected Adam, see [`crate::engine::optim`]):
    /// `lr` for LoRA tensors, `embedding_lr` for [`TensorName::is_embedding`] tensors (Unsloth's
    /// `embedding_learning_rate`). params and grads in the order given to [`Optimizer::on`].
    pub fn update(
        &mut self,
        backend: &B,
        params: &mut [&mut B::Buf],
        grads: &[&B::Buf],
        lr: f32,
        embedding_lr: f32,
    ) -> Result<()> {
        if params.len() != self.states.len() || grads.len() != self.states.len() {
            return Err(Error::Invalid(format!(
                "optimizer built for {} tensors, given {} parameters and {} gradients",
                self.states.len(),
                params.len(),
                grads.len()
            )));
        }
        for (s, (p, g)) in self.states.iter().zip(params.iter().zip(grads)) {
            let (pl, gl) = (backend.len(p), backend.len(g));
            if pl != s.len || gl != s.len {
                return Err(Error::Invalid(format!(
                    "optimizer state {} [{}] given a parameter of {pl} and a gradient of {gl} values",
                    s.name.peft_key(),
                    s.len
                )));
            }
        }
        self.steps += 1;
        let tensors = self.states.iter_mut().zip(params.iter_mut().zip(grads)).map(|(s, (p, g))| {
            let lr = if s.name.is_embedding() { embedding_lr } else { lr };
            (&mut **p, *g, &mut s.moments, lr)
        });
        backend.adamw_update_all(tensors.collect(), &self.config, self.steps)
    }

    /// Bytes held by the moments (codes and block scales for 8-bit state).
    pub fn state_bytes(&self) -> usize {
        self.states.iter().map(|s| moment_bytes(self.config.kind, s.len)).sum()
    }

    /// Every state tensor, read back to the host, as (name, little-endian bytes, safetensors dtype) for
    /// checkpoints. Names are the parameter's PEFT key plus torch's (`exp_avg`, `exp_avg_sq`) or bitsandbytes'
    /// (`state1`, `absmax1`, `state2`, `absmax2`) state name.
    pub fn read_state(&self, backend: &B) -> Result<SavedOptimizer> {
        let mut tensors = Vec::new();
        for s in &self.states {
            let key = s.name.peft_key();
            let parts = backend.read_moments(&s.moments)?;
            for ((suffix, _, dtype), bytes) in moment_layout(self.config.kind, s.len).into_iter().zip(parts) {
                tensors.push((format!("{key}.{suffix}"), bytes, dtype));
            }
        }
        Ok(SavedOptimizer { kind: self.config.kind, steps: self.steps, tensors })
    }

    /// Restores what [`Optimizer::read_state`] gave, and the step count. Every expected tensor must be there with
    /// the expected size and nothing else; on error the state is left unchanged.
    pub fn restore(&mut self, backend: &B, tensors: &[(String, Vec<u8>)], steps: u64) -> Result<()> {
        const HINT: &str =
            "the optimizer state was saved for a different adapter shape or optimizer; resume with the same config";
        let kind = self.config.kind;
        let mut given: HashMap<&str, &[u8]> = HashMap::with_capacity(tensors.len());
        for (name, bytes) in tensors {
            if given.insert(name.as_str(), bytes.as_slice()).is_some() {
                return Err(Error::hinted(format!("optimizer state tensor '{name}' appears twice"), HINT));
            }
        }
        // Check everything before changing anything.
        let mut per_state = Vec::with_capacity(self.states.len());
        for s in &self.states {
            let key = s.name.peft_key();
            let mut parts = Vec::new();
            for (suffix, want, dtype) in moment_layout(kind, s.len) {
                let name = format!("{key}.{suffix}");
                let got = given.remove(name.as_str()).ok_or_else(|| {
                    Error::hinted(format!("optimizer state tensor '{name}' is missing ({})", kind.name()), HINT)
                })?;
                if got.len() != want {
                    let width = if dtype == "F32" { 4 } else { 1 };
                    return Err(Error::hinted(
                        format!(
                            "optimizer state tensor '{name}' has {} bytes, expected {want} ({} × {dtype})",
                            got.len(),
                            want / width
                        ),
                        HINT,
                    ));
                }
                parts.push(got);
            }
            per_state.push(parts);
        }
        if let Some(name) = given.keys().min() {
            return Err(Error::hinted(
                format!("unexpected optimizer state tensor '{name}' ({} has no such state)", kind.name()),
                HINT,
            ));
        }
        for (s, parts) in self.states.iter_mut().zip(per_state) {
            backend.write_moments(&mut s.moments, &parts)?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// Global L2 norm over all gradient tensors of a host adapter; if `max_norm` > 0 and the norm exceeds it, scales
/// every gradient by `max_norm / (norm + 1e-6)` (as `torch.nn.utils.clip_grad_norm_`). Returns the norm before
/// clipping. A non-finite norm is an error naming the first tensor that holds a NaN or infinity, and leaves the
/// gradients untouched.
pub fn clip_grad_norm(grads: &mut Adapter, max_norm: f32) -> Result<f32> {
    let mut tensors = tensors_mut(grads);
    let norm = global_norm(&tensors.iter().map(|(_, t)| t.as_slice()).collect::<Vec<_>>());
    if !norm.is_finite() {
        let named: Vec<(TensorName, Vec<f32>)> = tensors.iter().map(|(n, t)| (*n, t.to_vec())).collect();
        return Err(non_finite_gradient(named.iter().map(|(n, t)| (*n, t.as_slice()))));
    }
    if let Some(coef) = clip_coefficient(norm, max_norm) {
        for (_, t) in tensors.iter_mut() {
            scale(t, coef);
        }
    }
    Ok(norm)
}

/// The error for a non-finite gradient norm: the first tensor holding a NaN or infinity, by name and element.
pub fn non_finite_gradient<'a>(tensors: impl Iterator<Item = (TensorName, &'a [f32])>) -> Error {
    for (name, t) in tensors {
        if let Some(i) = t.iter().position(|x| !x.is_finite()) {
            return Error::hinted(
                format!("gradient of '{}' holds {} (element {i}); the step is skipped", name.peft_key(), t[i]),
                "training diverged or overflowed: lower the learning rate, or check the batch that produced it",
            );
        }
    }
    Error::hinted("the gradient norm overflows f32; the step is skipped", "training diverged: lower the learning rate")
}

/// The adapter's tensors in [`Adapter::for_each_tensor`] order, as slices that can go to rayon together.
fn tensors(a: &Adapter) -> Vec<(TensorName, &Vec<f32>)> {
    let mut out = Vec::new();
    for (l, mods) in a.layers.iter().enumerate() {
        for (m, w) in mods.iter().enumerate() {
            if let Some(w) = w {
                out.push((TensorName::LoraA(l, TargetModule::ALL[m]), &w.a));
                out.push((TensorName::LoraB(l, TargetModule::ALL[m]), &w.b));
            }
        }
    }
    if let Some(e) = &a.embed_tokens {
        out.push((TensorName::EmbedTokens, e));
    }
    if let Some(h) = &a.lm_head {
        out.push((TensorName::LmHead, h));
    }
    out
}

/// Mutable twin of [`tensors`].
fn tensors_mut(a: &mut Adapter) -> Vec<(TensorName, &mut Vec<f32>)> {
    let mut out = Vec::new();
    for (l, mods) in a.layers.iter_mut().enumerate() {
        for (m, w) in mods.iter_mut().enumerate() {
            if let Some(w) = w {
                out.push((TensorName::LoraA(l, TargetModule::ALL[m]), &mut w.a));
                out.push((TensorName::LoraB(l, TargetModule::ALL[m]), &mut w.b));
            }
        }
    }
    if let Some(e) = &mut a.embed_tokens {
        out.push((TensorName::EmbedTokens, e));
    }
    if let Some(h) = &mut a.lm_head {
        out.push((TensorName::LmHead, h));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LoraWeights;
    use crate::lora::LoraConfig;

    #[test]
    fn tensor_lists_follow_for_each_tensor() {
        let mut layers: Vec<[Option<LoraWeights>; 7]> = vec![Default::default(), Default::default()];
        layers[0][TargetModule::QProj.index()] = Some(LoraWeights::zeros(2, 3, 4, 4.0, false));
        layers[1][TargetModule::DownProj.index()] = Some(LoraWeights::zeros(2, 5, 3, 4.0, false));
        layers[1][TargetModule::KProj.index()] = Some(LoraWeights::zeros(2, 3, 2, 4.0, false));
        let mut a = Adapter {
            config: LoraConfig::default(),
            layers,
            embed_tokens: Some(vec![0.0; 6]),
            lm_head: Some(vec![0.0; 7]),
        };
        let mut visited = Vec::new();
        a.for_each_tensor(|n, t| visited.push((n, t.len())));
        let listed: Vec<_> = tensors(&a).into_iter().map(|(n, t)| (n, t.len())).collect();
        assert_eq!(listed, visited);
        let listed_mut: Vec<_> = tensors_mut(&mut a).into_iter().map(|(n, t)| (n, t.len())).collect();
        assert_eq!(listed_mut, visited);
    }
}
