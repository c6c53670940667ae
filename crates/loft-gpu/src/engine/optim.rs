//! Twin of `loft::train::optim` on the device: AdamW as torch computes it, 8-bit AdamW as bitsandbytes computes it
//! (blockwise dynamic quantization of both moments), and global gradient-norm clipping. The update scalars come
//! from the CPU's own [`TorchAdamW`] / [`BnbAdam`], and the state tensors carry the CPU's names, layouts and
//! bytes, so a checkpoint written from either side resumes on the other.
//!
//! Legend: N = elements of one tensor, B = [`BLOCK_SIZE`].

use loft::engine::dynamic_map::create_dynamic_map;
use loft::lora::TensorName;
use loft::train::optim::{BnbAdam, OptimConfig, OptimKind, TorchAdamW, BLOCK_SIZE, MIN_8BIT_SIZE};
use loft::{Error, Result};

use crate::context::{groups_1d, groups_for, Binding, Context, GpuBuffer, Kernel};

/// One trained tensor's moments on the device.
enum Moments {
    /// exp_avg, exp_avg_sq: [N].
    F32 { exp_avg: GpuBuffer, exp_avg_sq: GpuBuffer },
    /// state1, state2: [N] codes, four to a word; absmax1, absmax2: [ceil(N / B)].
    Blockwise8 { state1: GpuBuffer, absmax1: GpuBuffer, state2: GpuBuffer, absmax2: GpuBuffer },
}

struct TensorState {
    name: TensorName,
    len: usize,
    moments: Moments,
}

/// The optimizer's state for a list of trained tensors, all on the device.
pub struct Optimizer {
    config: OptimConfig,
    steps: u64,
    states: Vec<TensorState>,
    /// bitsandbytes' signed map then its unsigned map: [512].
    maps: GpuBuffer,
}

impl Optimizer {
    /// Zero moments for `params` (name and length of each trained tensor, in the order `step` will be given them),
    /// step 0; tensors under [`MIN_8BIT_SIZE`] keep 32-bit state in the 8-bit optimizer, as on the CPU.
    pub fn new(ctx: &Context, config: OptimConfig, params: &[(TensorName, usize)]) -> Result<Self> {
        let mut states = Vec::with_capacity(params.len());
        for &(name, n) in params {
            let moments = if config.kind == OptimKind::AdamW8bit && n >= MIN_8BIT_SIZE {
                let blocks = n.div_ceil(BLOCK_SIZE);
                Moments::Blockwise8 {
                    state1: ctx.zeros(n.div_ceil(4))?,
                    absmax1: ctx.zeros(blocks)?,
                    state2: ctx.zeros(n.div_ceil(4))?,
                    absmax2: ctx.zeros(blocks)?,
                }
            } else {
                Moments::F32 { exp_avg: ctx.zeros(n)?, exp_avg_sq: ctx.zeros(n)? }
            };
            states.push(TensorState { name, len: n, moments });
        }
        let mut maps = create_dynamic_map(true).to_vec();
        maps.extend_from_slice(&create_dynamic_map(false));
        Ok(Optimizer { config, steps: 0, states, maps: ctx.upload_f32(&maps)? })
    }

    pub fn steps_taken(&self) -> u64 {
        self.steps
    }

    /// One update of every tensor, as `loft::train::optim::Optimizer::step`: `lr` for LoRA tensors,
    /// `embedding_lr` for embedding tensors. params and grads in the order given to [`Optimizer::new`].
    pub fn step(
        &mut self,
        ctx: &Context,
        params: &mut [&mut GpuBuffer],
        grads: &[&GpuBuffer],
        lr: f32,
        embedding_lr: f32,
    ) -> Result<()> {
        ensure!(
            params.len() == self.states.len() && grads.len() == self.states.len(),
            "optimizer built for {} tensors, given {} parameters and {} gradients",
            self.states.len(),
            params.len(),
            grads.len()
        );
        self.steps += 1;
        let (cfg, t) = (&self.config, self.steps);
        let adamw =
            Kernel { name: "adamw".into(), source: include_str!("../shaders/adamw.wgsl").into(), entry: "torch" };
        let bnb = Kernel { name: "adamw".into(), source: include_str!("../shaders/adamw.wgsl").into(), entry: "bnb" };
        let bnb8 = Kernel {
            name: "adamw_8bit".into(),
            source: include_str!("../shaders/adamw_8bit.wgsl").into(),
            entry: "main",
        };
        for ((s, p), g) in self.states.iter_mut().zip(params.iter_mut()).zip(grads) {
            ensure!(
                p.len() == s.len && g.len() == s.len,
                "optimizer state {:?} [{}] given [{}] and [{}]",
                s.name,
                s.len,
                p.len(),
                g.len()
            );
            let lr = if s.name.is_embedding() { embedding_lr } else { lr };
            let n = s.len as u32;
            match (&mut s.moments, cfg.kind) {
                (Moments::F32 { exp_avg, exp_avg_sq }, OptimKind::AdamW) => {
                    let k = TorchAdamW::new(cfg, lr, t);
                    let f = [
                        k.decay,
                        k.one_minus_beta1,
                        k.beta2,
                        k.one_minus_beta2,
                        k.bias_correction2_sqrt,
                        k.neg_step_size,
                        k.eps,
                    ];
                    let mut params = vec![n, k.apply_decay as u32];
                    params.extend(f.iter().map(|x| x.to_bits()));
                    params.extend([0, 0, 0]);
                    ctx.dispatch(
                        &adamw,
                        &params,
                        &[Binding::Write(p), Binding::Write(exp_avg), Binding::Write(exp_avg_sq), Binding::Read(g)],
                        groups_1d(s.len, 256),
                    )?;
                }
                (Moments::F32 { exp_avg, exp_avg_sq }, OptimKind::AdamW8bit) => {
                    let k = BnbAdam::new(cfg, lr, t);
                    let f = [k.beta1, k.beta2, k.step_size, k.eps_hat, k.decay, 0.0, 0.0];
                    let mut params = vec![n, k.apply_decay as u32];
                    params.extend(f.iter().map(|x| x.to_bits()));
                    params.extend([0, 0, 0]);
                    ctx.dispatch(
                        &bnb,
                        &params,
                        &[Binding::Write(p), Binding::Write(exp_avg), Binding::Write(exp_avg_sq), Binding::Read(g)],
                        groups_1d(s.len, 256),
                    )?;
                }
                (Moments::Blockwise8 { state1, absmax1, state2, absmax2 }, _) => {
                    let k = BnbAdam::new(cfg, lr, t);
                    let params = [
                        n,
                        k.apply_decay as u32,
                        k.beta1.to_bits(),
                        k.beta2.to_bits(),
                        k.step_size.to_bits(),
                        k.eps_hat.to_bits(),
                        k.decay.to_bits(),
                        0,
                    ];
                    ctx.dispatch(
                        &bnb8,
                        &params,
                        &[
                            Binding::Write(p),
                            Binding::Write(state1),
                            Binding::Write(absmax1),
                            Binding::Write(state2),
                            Binding::Write(absmax2),
                            Binding::Read(g),
                            Binding::Read(&self.maps),
                        ],
                        groups_for(s.len.div_ceil(BLOCK_SIZE)),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Every state tensor as `loft::train::optim::Optimizer::state_tensors` names and encodes it (read back from
    /// the device): torch's `exp_avg`/`exp_avg_sq` or bitsandbytes' `state1`/`absmax1`/`state2`/`absmax2`.
    pub fn state_tensors(&self, ctx: &Context) -> Result<Vec<(String, Vec<u8>, &'static str)>> {
        let mut out = Vec::new();
        for s in &self.states {
            let key = s.name.peft_key();
            match &s.moments {
                Moments::F32 { exp_avg, exp_avg_sq } => {
                    out.push((format!("{key}.exp_avg"), ctx.read_bytes(exp_avg)?, "F32"));
                    out.push((format!("{key}.exp_avg_sq"), ctx.read_bytes(exp_avg_sq)?, "F32"));
                }
                Moments::Blockwise8 { state1, absmax1, state2, absmax2 } => {
                    let codes = |b: &GpuBuffer| -> Result<Vec<u8>> {
                        let mut v = ctx.read_bytes(b)?;
                        v.truncate(s.len);
                        Ok(v)
                    };
                    out.push((format!("{key}.state1"), codes(state1)?, "U8"));
                    out.push((format!("{key}.absmax1"), ctx.read_bytes(absmax1)?, "F32"));
                    out.push((format!("{key}.state2"), codes(state2)?, "U8"));
                    out.push((format!("{key}.absmax2"), ctx.read_bytes(absmax2)?, "F32"));
                }
            }
        }
        Ok(out)
    }
}

/// Global L2 norm over all gradient tensors; if `max_norm` > 0 and the norm exceeds it, scales every gradient by
/// `max_norm / (norm + 1e-6)` on the device. Returns the norm before clipping (the one value read back). A
/// non-finite norm is an error naming the first tensor that holds a NaN or infinity, and leaves the gradients
/// untouched.
pub fn clip_grad_norm(ctx: &Context, grads: &mut [(TensorName, &mut GpuBuffer)], max_norm: f32) -> Result<f32> {
    const PER_GROUP: usize = 4096;
    let kernel =
        |entry| Kernel { name: "grad_norm".into(), source: include_str!("../shaders/grad_norm.wgsl").into(), entry };
    let count: usize = grads.iter().map(|(_, g)| g.len().div_ceil(PER_GROUP)).sum();
    let partials = ctx.zeros(count.max(1))?;
    let norm_buf = ctx.zeros(1)?;
    let mut off = 0;
    for (_, g) in grads.iter() {
        let groups = g.len().div_ceil(PER_GROUP);
        ctx.dispatch(
            &kernel("partial"),
            &[g.len() as u32, off as u32, 0, 0],
            &[Binding::Write(g), Binding::Write(&partials)],
            groups_for(groups),
        )?;
        off += groups;
    }
    ctx.dispatch(
        &kernel("total"),
        &[count as u32, 0, 0, 0],
        &[Binding::Write(&partials), Binding::Write(&norm_buf)],
        [1, 1, 1],
    )?;
    for (_, g) in grads.iter_mut() {
        let len = g.len();
        ctx.dispatch(
            &kernel("clip"),
            &[len as u32, 0, max_norm.to_bits(), 0],
            &[Binding::Write(g), Binding::Write(&norm_buf)],
            groups_1d(len, 256),
        )?;
    }
    let norm = ctx.read_f32(&norm_buf)?[0];
    if !norm.is_finite() {
        for (name, g) in grads.iter() {
            let values = ctx.read_f32(g)?;
            if let Some(i) = values.iter().position(|x| !x.is_finite()) {
                return Err(Error::hinted(
                    format!("gradient of '{}' holds {} (element {i}); the step is skipped", name.peft_key(), values[i]),
                    "training diverged or overflowed: lower the learning rate, or check the batch that produced it",
                ));
            }
        }
        return Err(Error::hinted(
            "the gradient norm overflows f32; the step is skipped",
            "training diverged: lower the learning rate",
        ));
    }
    Ok(norm)
}
