//! Twin of `loft::engine::optim` on the device: AdamW as torch computes it, 8-bit AdamW as bitsandbytes computes it
//! (blockwise dynamic quantization of both moments), and global gradient-norm clipping. The update scalars come
//! from the CPU's own [`TorchAdamW`] / [`BnbAdam`], and the state tensors carry the CPU's names, layouts and
//! bytes, so a checkpoint written from either side resumes on the other.
//!
//! Legend: N = elements of one tensor, B = [`BLOCK_SIZE`].

use loft::engine::dynamic_map::create_dynamic_map;
use loft::engine::optim::{blockwise8, BnbAdam, OptimConfig, OptimKind, TorchAdamW, BLOCK_SIZE};
use loft::Result;

use crate::context::{groups_1d, groups_for, Binding, Context, GpuBuffer, Kernel};

/// One trained tensor's moments on the device.
pub enum GpuMoments {
    /// exp_avg, exp_avg_sq: [N].
    F32 { exp_avg: GpuBuffer, exp_avg_sq: GpuBuffer },
    /// state1, state2: [N] codes, four to a word; absmax1, absmax2: [ceil(N / B)].
    Blockwise8 { len: usize, state1: GpuBuffer, absmax1: GpuBuffer, state2: GpuBuffer, absmax2: GpuBuffer },
}

/// Zero moments for a tensor of `n` values; tensors under [`loft::engine::optim::MIN_8BIT_SIZE`] keep 32-bit state in the 8-bit
/// optimizer, as on the CPU.
pub fn moments(ctx: &Context, kind: OptimKind, n: usize) -> Result<GpuMoments> {
    Ok(if blockwise8(kind, n) {
        let blocks = n.div_ceil(BLOCK_SIZE);
        GpuMoments::Blockwise8 {
            len: n,
            state1: ctx.zeros(n.div_ceil(4))?,
            absmax1: ctx.zeros(blocks)?,
            state2: ctx.zeros(n.div_ceil(4))?,
            absmax2: ctx.zeros(blocks)?,
        }
    } else {
        GpuMoments::F32 { exp_avg: ctx.zeros(n)?, exp_avg_sq: ctx.zeros(n)? }
    })
}

/// bitsandbytes' signed map then its unsigned map: [512], for the 8-bit kernel.
pub fn code_maps(ctx: &Context) -> Result<GpuBuffer> {
    let mut maps = create_dynamic_map(true).to_vec();
    maps.extend_from_slice(&create_dynamic_map(false));
    ctx.upload_f32(&maps)
}

/// One update of p [N] by its gradient g [N] at step t, as `loft::engine::optim::Moments::update` computes it;
/// `maps` is [`code_maps`].
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    ctx: &Context,
    maps: &GpuBuffer,
    p: &mut GpuBuffer,
    g: &GpuBuffer,
    m: &mut GpuMoments,
    cfg: &OptimConfig,
    lr: f32,
    t: u64,
) -> Result<()> {
    let len = p.len();
    let state_len = match m {
        GpuMoments::F32 { exp_avg, .. } => exp_avg.len(),
        GpuMoments::Blockwise8 { len, .. } => *len,
    };
    ensure!(
        g.len() == len && state_len == len,
        "adamw_update: a parameter of {len} values, its gradient of {}, moments of {state_len}",
        g.len()
    );
    let n = len as u32;
    let kernel = |file: &str, source: &'static str, entry: &'static str| Kernel {
        name: file.into(),
        source: source.into(),
        entry,
    };
    match (m, cfg.kind) {
        (GpuMoments::F32 { exp_avg, exp_avg_sq }, OptimKind::AdamW) => {
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
                &kernel("adamw", include_str!("../shaders/adamw.wgsl"), "torch"),
                &params,
                &[Binding::Write(p), Binding::Write(exp_avg), Binding::Write(exp_avg_sq), Binding::Read(g)],
                groups_1d(len, 256),
            )
        }
        (GpuMoments::F32 { exp_avg, exp_avg_sq }, OptimKind::AdamW8bit) => {
            let k = BnbAdam::new(cfg, lr, t);
            let f = [k.beta1, k.beta2, k.step_size, k.eps_hat, k.decay, 0.0, 0.0];
            let mut params = vec![n, k.apply_decay as u32];
            params.extend(f.iter().map(|x| x.to_bits()));
            params.extend([0, 0, 0]);
            ctx.dispatch(
                &kernel("adamw", include_str!("../shaders/adamw.wgsl"), "bnb"),
                &params,
                &[Binding::Write(p), Binding::Write(exp_avg), Binding::Write(exp_avg_sq), Binding::Read(g)],
                groups_1d(len, 256),
            )
        }
        (GpuMoments::Blockwise8 { state1, absmax1, state2, absmax2, .. }, _) => {
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
                &kernel("adamw_8bit", include_str!("../shaders/adamw_8bit.wgsl"), "main"),
                &params,
                &[
                    Binding::Write(p),
                    Binding::Write(state1),
                    Binding::Write(absmax1),
                    Binding::Write(state2),
                    Binding::Write(absmax2),
                    Binding::Read(g),
                    Binding::Read(maps),
                ],
                groups_for(len.div_ceil(BLOCK_SIZE)),
            )
        }
    }
}

/// The state tensors' bytes, read back, in `loft::engine::optim::moment_layout` order (8-bit codes trimmed to N).
pub fn read_moments(ctx: &Context, m: &GpuMoments) -> Result<Vec<Vec<u8>>> {
    Ok(match m {
        GpuMoments::F32 { exp_avg, exp_avg_sq } => vec![ctx.read_bytes(exp_avg)?, ctx.read_bytes(exp_avg_sq)?],
        GpuMoments::Blockwise8 { len, state1, absmax1, state2, absmax2 } => {
            let codes = |b: &GpuBuffer| -> Result<Vec<u8>> {
                let mut v = ctx.read_bytes(b)?;
                v.truncate(*len);
                Ok(v)
            };
            vec![codes(state1)?, ctx.read_bytes(absmax1)?, codes(state2)?, ctx.read_bytes(absmax2)?]
        }
    })
}

/// Restores what [`read_moments`] gave (each part the size the layout says).
pub fn write_moments(ctx: &Context, m: &mut GpuMoments, parts: &[&[u8]]) -> Result<()> {
    let want = read_sizes(m);
    let got: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    ensure!(want == got, "write_moments: parts of {got:?} bytes, the state holds {want:?}");
    match m {
        GpuMoments::F32 { exp_avg, exp_avg_sq } => {
            *exp_avg = ctx.upload_bytes(parts[0])?;
            *exp_avg_sq = ctx.upload_bytes(parts[1])?;
        }
        GpuMoments::Blockwise8 { state1, absmax1, state2, absmax2, .. } => {
            *state1 = ctx.upload_bytes(parts[0])?;
            *absmax1 = ctx.upload_bytes(parts[1])?;
            *state2 = ctx.upload_bytes(parts[2])?;
            *absmax2 = ctx.upload_bytes(parts[3])?;
        }
    }
    Ok(())
}

/// Bytes of each state tensor as [`read_moments`] returns them.
fn read_sizes(m: &GpuMoments) -> Vec<usize> {
    match m {
        GpuMoments::F32 { exp_avg, exp_avg_sq } => vec![4 * exp_avg.len(), 4 * exp_avg_sq.len()],
        GpuMoments::Blockwise8 { len, absmax1, absmax2, .. } => vec![*len, 4 * absmax1.len(), *len, 4 * absmax2.len()],
    }
}

/// Global L2 norm over all gradient tensors; if it is finite, `max_norm` > 0 and the norm exceeds it, scales every
/// gradient by `max_norm / (norm + 1e-6)` on the device. Returns the norm before clipping (the one value read
/// back); a non-finite norm leaves the gradients untouched.
pub fn clip_grad_norm(ctx: &Context, grads: &mut [&mut GpuBuffer], max_norm: f32) -> Result<f32> {
    const PER_GROUP: usize = 4096;
    let kernel =
        |entry| Kernel { name: "grad_norm".into(), source: include_str!("../shaders/grad_norm.wgsl").into(), entry };
    let count: usize = grads.iter().map(|g| g.len().div_ceil(PER_GROUP)).sum();
    let partials = ctx.zeros(count.max(1))?;
    let norm_buf = ctx.zeros(1)?;
    let mut off = 0;
    for g in grads.iter() {
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
    for g in grads.iter_mut() {
        let len = g.len();
        ctx.dispatch(
            &kernel("clip"),
            &[len as u32, 0, max_norm.to_bits(), 0],
            &[Binding::Write(g), Binding::Write(&norm_buf)],
            groups_1d(len, 256),
        )?;
    }
    Ok(ctx.read_f32(&norm_buf)?[0])
}
