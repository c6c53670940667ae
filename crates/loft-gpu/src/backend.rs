//! [`Wgpu`]: `loft::engine::Backend` on a wgpu device, so the model code written once against the trait (the
//! inference forward in `loft::model::Runner`) runs on a GPU. Each call maps to the kernel of the same name in
//! [`crate::engine`]; frozen weights go up once, in their own blocks ([`GpuFrozen`]), and the work of a forward
//! is recorded without waiting: the only trip back to the host is a read ([`Backend::read`],
//! [`Backend::download`]), which for generation and eval is the logits.
//!
//! The kernels assert their shapes; this layer checks them first and returns an error, so a caller's mistake is
//! never a panic.
//! Legend: N = rows (tokens), C = hidden_size, T = new tokens, P = cached positions, NH/NKV = query/key-value
//! heads, D = head_dim.

use loft::engine::{Backend, FrozenMatrix};
use loft::{Error, Result};

use crate::context::{Context, GpuBuffer};
use crate::device::DeviceChoice;
use crate::engine::attention::MAX_HEAD_DIM;
use crate::engine::{attention, embedding, rmsnorm, rope, swiglu, GpuFrozen, VocabMatrix};

/// The wgpu backend: one opened adapter.
pub struct Wgpu {
    ctx: Context,
}

impl Wgpu {
    pub fn new(ctx: Context) -> Self {
        Wgpu { ctx }
    }

    /// Opens the adapter `choice` picks; Ok(None) when it picks the CPU (`cpu`, or `auto` without a hardware GPU).
    pub fn open(choice: &DeviceChoice) -> Result<Option<Wgpu>> {
        if *choice == DeviceChoice::Cpu {
            return Ok(None);
        }
        Ok(Context::open(choice)?.map(Wgpu::new))
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

/// Err naming the call and what its operands should be, unless `ok`.
fn check(ok: bool, call: &str, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{call}: {}", what())))
    }
}

impl Backend for Wgpu {
    type Buf = GpuBuffer;
    type Matrix<'w> = GpuFrozen;
    type Vector<'w> = GpuBuffer;

    /// `GPU #0 NAME — vulkan, discrete`.
    fn describe(&self) -> String {
        format!("GPU {}", self.ctx.adapter().one_line())
    }

    fn zeros(&self, len: usize) -> Result<GpuBuffer> {
        self.ctx.zeros(len)
    }

    fn upload(&self, data: &[f32]) -> Result<GpuBuffer> {
        self.ctx.upload_f32(data)
    }

    fn read(&self, buf: &GpuBuffer, at: usize, len: usize) -> Result<Vec<f32>> {
        self.ctx.read_f32_range(buf, at, len)
    }

    fn download(&self, buf: GpuBuffer) -> Result<Vec<f32>> {
        self.ctx.read_f32(&buf)
    }

    fn copy(&self, src: &GpuBuffer, src_at: usize, dst: &mut GpuBuffer, dst_at: usize, len: usize) -> Result<()> {
        let fits = |at: usize, buf: &GpuBuffer| at.checked_add(len).is_some_and(|end| end <= buf.len());
        check(fits(src_at, src) && fits(dst_at, dst), "copy", || {
            format!("{len} values from {src_at} of {} into {dst_at} of {}", src.len(), dst.len())
        })?;
        self.ctx.copy(src, src_at, dst, dst_at, len)
    }

    fn matrix<'w>(&'w self, name: &str, m: &'w FrozenMatrix) -> Result<GpuFrozen> {
        GpuFrozen::upload(&self.ctx, m, name)
    }

    fn vector<'w>(&'w self, v: &'w [f32]) -> Result<GpuBuffer> {
        self.ctx.upload_f32(v)
    }

    fn linear_forward(
        &self,
        y: &mut GpuBuffer,
        x: &GpuBuffer,
        w: &GpuFrozen,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        check(y.len() >= n * w.rows && x.len() >= n * w.cols, "linear_forward", || {
            format!("y [{n}, {}] and x [{n}, {}] in buffers of {} and {}", w.rows, w.cols, y.len(), x.len())
        })?;
        w.forward(&self.ctx, y, x, n, accumulate)
    }

    fn embedding_forward(&self, out: &mut GpuBuffer, ids: &[u32], table: &GpuFrozen, c: usize) -> Result<()> {
        check(out.len() == ids.len() * c && table.cols == c, "embedding_forward", || {
            format!("out [{}, {c}] is {} values; the table is [{}, {}]", ids.len(), out.len(), table.rows, table.cols)
        })?;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary of {}", table.rows)));
        }
        embedding::embedding_forward(&self.ctx, out, ids, VocabMatrix::Frozen(table), c)
    }

    fn rmsnorm_forward(&self, y: &mut GpuBuffer, x: &GpuBuffer, w: &GpuBuffer, c: usize, eps: f32) -> Result<()> {
        check(c > 0 && x.len().is_multiple_of(c) && y.len() == x.len() && w.len() == c, "rmsnorm_forward", || {
            format!("x and y of {} and {} values are not [N, {c}], or w of {} is not [{c}]", x.len(), y.len(), w.len())
        })?;
        rmsnorm::rmsnorm_forward(&self.ctx, y, x, w, c, eps)
    }

    fn rope_forward(
        &self,
        x: &mut GpuBuffer,
        t: usize,
        h: usize,
        d: usize,
        cos: &GpuBuffer,
        sin: &GpuBuffer,
    ) -> Result<()> {
        let half = t * (d / 2);
        check(x.len() == t * h * d && cos.len() >= half && sin.len() >= half, "rope_forward", || {
            format!("x of {} values is not [{t}, {h}·{d}], or the tables are shorter than [{t}, {}]", x.len(), d / 2)
        })?;
        rope::rope_forward(&self.ctx, x, t, h, d, cos, sin)
    }

    fn attention_forward_cached(
        &self,
        att: &mut GpuBuffer,
        q: &GpuBuffer,
        k: &GpuBuffer,
        v: &GpuBuffer,
        t: usize,
        p0: usize,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()> {
        if d > MAX_HEAD_DIM {
            return Err(Error::hinted(
                format!("head_dim {d} is above the GPU attention kernel's {MAX_HEAD_DIM}"),
                "use --device cpu",
            ));
        }
        let (qd, kvd) = (nh * d, nkv * d);
        let heads_ok = nkv > 0 && d > 0 && nh.is_multiple_of(nkv);
        let cache = (p0 + t) * kvd;
        check(
            heads_ok && att.len() == t * qd && q.len() == t * qd && k.len() >= cache && v.len() >= cache,
            "attention_forward_cached",
            || {
                format!(
                    "{nh} heads over {nkv}, D = {d}: q and att of {} and {} values are not [{t}, {qd}], or the cache \
                     of {} and {} is shorter than [{}, {kvd}]",
                    q.len(),
                    att.len(),
                    k.len(),
                    v.len(),
                    p0 + t
                )
            },
        )?;
        attention::attention_forward_cached(&self.ctx, att, q, k, v, t, p0, nh, nkv, d)
    }

    fn swiglu_forward(&self, out: &mut GpuBuffer, gate: &GpuBuffer, up: &GpuBuffer) -> Result<()> {
        check(out.len() == gate.len() && up.len() == gate.len(), "swiglu_forward", || {
            format!("out, gate and up have {}, {} and {} values", out.len(), gate.len(), up.len())
        })?;
        swiglu::swiglu_forward(&self.ctx, out, gate, up)
    }
}
