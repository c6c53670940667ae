//! [`Wgpu`]: `loft::engine::Backend` on a wgpu device, so the model code written once against the trait (the
//! inference forward in `loft::model::Runner`) runs on a GPU. Each call maps to the kernel of the same name in
//! [`crate::engine`]; frozen weights go up once, in their own blocks ([`GpuFrozen`]), and the work of a forward
//! is recorded without waiting: the only trip back to the host is a read ([`Backend::read`],
//! [`Backend::download`]), which for generation and eval is the logits.
//!
//! The kernels check their operands' shapes and return errors (never a panic); this layer adds only the checks a
//! kernel cannot make (an adapter against its base weight, the dropout range, head counts, a scratch's shape).
//! Legend: N = rows (tokens), C = hidden_size, T = new tokens, P = cached positions, NH/NKV = query/key-value
//! heads, D = head_dim.

use std::sync::OnceLock;

use loft::engine::cross_entropy::HEAD_CHUNK;
use loft::engine::optim::{OptimConfig, OptimKind};
use loft::engine::{Backend, FrozenMatrix, LoraDropout, LoraWeights, Vocab};
use loft::{Error, Result};

use crate::context::{Context, GpuBuffer};
use crate::device::DeviceChoice;
use crate::engine::attention::MAX_HEAD_DIM;
use crate::engine::cross_entropy::{self, CrossEntropyScratch};
use crate::engine::optim::{self, GpuMoments};
use crate::engine::{
    attention, bias, elementwise, embedding, geglu, lora, rmsnorm, rope, swiglu, GpuFrozen, GpuLoraWeights, VocabMatrix,
};

/// The wgpu backend: one opened adapter.
pub struct Wgpu {
    ctx: Context,
    /// The 8-bit optimizer's code maps, uploaded on first use.
    maps: OnceLock<GpuBuffer>,
    /// Training's saved activations are kept in f16 ([`Wgpu::with_f16_activations`]).
    f16_activations: bool,
}

impl Wgpu {
    pub fn new(ctx: Context) -> Self {
        Wgpu { ctx, maps: OnceLock::new(), f16_activations: false }
    }

    /// Keeps the training forward's saved activations (normed inputs, q/k/v, attention output, the MLP's gate,
    /// up and product) in f16, halving their memory; every kernel still computes and accumulates in f32. Err
    /// when the adapter has no SHADER_F16.
    pub fn with_f16_activations(mut self, on: bool) -> Result<Self> {
        if on && !self.ctx.has_f16() {
            let a = self.ctx.adapter();
            return Err(Error::hinted(
                format!("f16 activations: GPU #{} {} has no f16 support (SHADER_F16)", a.index, a.name),
                "leave f16_activations off on this GPU",
            ));
        }
        self.f16_activations = on;
        Ok(self)
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

/// Err unless D fits the GPU attention kernels (a hint to use the CPU) and NH is a positive multiple of NKV.
fn check_heads(call: &str, nh: usize, nkv: usize, d: usize) -> Result<()> {
    if d > MAX_HEAD_DIM {
        return Err(Error::hinted(
            format!("head_dim {d} is above the GPU attention kernel's {MAX_HEAD_DIM}"),
            "use --device cpu",
        ));
    }
    check(nkv > 0 && d > 0 && nh >= nkv && nh.is_multiple_of(nkv), call, || {
        format!("{nh} query heads are not a positive multiple of {nkv} key/value heads, or D = {d}")
    })
}

/// Err for a sliding window of 0 keys, which leaves a query nothing to attend to.
fn check_window(call: &str, window: Option<usize>) -> Result<()> {
    check(window != Some(0), call, || "a sliding window of 0 keys leaves a query nothing to attend to".into())
}

/// Err unless doc_start is [B, T] with each start at or before its own token.
fn check_docs(call: &str, doc_start: Option<&[u32]>, b: usize, t: usize) -> Result<()> {
    let Some(ds) = doc_start else { return Ok(()) };
    check(ds.len() == b * t, call, || format!("doc_start of {} values is not [{b}, {t}]", ds.len()))?;
    match ds.iter().enumerate().find(|&(i, &s)| s as usize > i % t) {
        Some((i, &s)) => Err(Error::Invalid(format!("{call}: doc_start[{i}] = {s} is after its token {}", i % t))),
        None => Ok(()),
    }
}

/// Err unless the adapter fits its base weight, and with dropout the scratch xd holds [N, I] and p is in [0, 1).
fn check_lora(
    call: &str,
    w: &GpuFrozen,
    lora: &GpuLoraWeights,
    dropout: Option<LoraDropout>,
    xd_len: usize,
    n: usize,
) -> Result<()> {
    let (i, o) = (lora.in_features, lora.out_features);
    check(w.rows == o && w.cols == i, call, || {
        format!("the base weight is [{}, {}], the adapter [{o}, {i}]", w.rows, w.cols)
    })?;
    match dropout {
        Some(dp) => check(xd_len >= n * i && (0.0..1.0).contains(&dp.p), call, || {
            format!("dropout {} is not in [0, 1), or the scratch xd of {xd_len} is smaller than [{n}, {i}]", dp.p)
        }),
        None => Ok(()),
    }
}

/// The head as the kernels take it, once h is [N, C], the head [V, C], the scratch built for C and V, and every
/// target below V; else Err.
fn check_head<'a>(
    call: &str,
    scratch: &CrossEntropyScratch,
    h: &GpuBuffer,
    head: Vocab<'a, GpuFrozen, GpuBuffer>,
    targets: &[i32],
    c: usize,
) -> Result<VocabMatrix<'a>> {
    let head = match head {
        Vocab::Frozen(m) => VocabMatrix::Frozen(m),
        Vocab::Trained(w) => VocabMatrix::Trained(w),
    };
    let cols_ok = match head {
        VocabMatrix::Frozen(m) => m.cols == c,
        VocabMatrix::Trained(w) => c > 0 && w.len().is_multiple_of(c),
    };
    let n = targets.len();
    check(cols_ok && h.len() == n * c, call, || {
        format!("h of {} values is not [{n}, {c}], or the head is not [V, {c}]", h.len())
    })?;
    let v = head.rows(c);
    check(scratch.fits(c, v), call, || format!("the scratch was built for another shape than C = {c}, V = {v}"))?;
    match targets.iter().find(|&&t| t as i64 >= v as i64) {
        Some(t) => Err(Error::Invalid(format!("{call}: target {t} is outside the vocabulary of {v}"))),
        None => Ok(head),
    }
}

impl Backend for Wgpu {
    type Buf = GpuBuffer;
    type Matrix<'w> = GpuFrozen;
    type Vector<'w> = GpuBuffer;
    type Lora = GpuLoraWeights;
    type CrossEntropyScratch = CrossEntropyScratch;
    type Moments = GpuMoments;

    /// `GPU #0 NAME — vulkan, discrete`.
    fn describe(&self) -> String {
        format!("GPU {}", self.ctx.adapter().one_line())
    }

    fn allocated_bytes(&self) -> Option<u64> {
        Some(self.ctx.allocated_bytes())
    }

    fn zeros(&self, len: usize) -> Result<GpuBuffer> {
        self.ctx.zeros(len)
    }

    fn len(&self, buf: &GpuBuffer) -> usize {
        buf.len()
    }

    fn activation(&self, len: usize) -> Result<GpuBuffer> {
        if self.f16_activations {
            self.ctx.zeros_half(len)
        } else {
            self.ctx.zeros(len)
        }
    }

    fn activation_bytes(&self) -> usize {
        if self.f16_activations {
            2
        } else {
            4
        }
    }

    /// [`HEAD_CHUNK`] rows, or as many as one binding holds of [rows, V] f32 logits (Gemma 3's 262,144-word
    /// vocabulary: 127 rows in lavapipe's 128 MiB).
    fn head_chunk(&self, v: usize) -> usize {
        (self.ctx.max_buffer_bytes() / (4 * v.max(1) as u64)).clamp(1, HEAD_CHUNK as u64) as usize
    }

    fn resize(&self, buf: &mut GpuBuffer, len: usize) -> Result<()> {
        self.ctx.resize(buf, len)
    }

    fn write(&self, buf: &mut GpuBuffer, data: &[f32]) -> Result<()> {
        check(data.len() <= buf.len(), "write", || format!("{} values into a buffer of {}", data.len(), buf.len()))?;
        self.ctx.write_f32(buf, data)
    }

    fn fill_zero(&self, buf: &mut GpuBuffer) -> Result<()> {
        self.ctx.clear(buf)
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

    fn lora(&self, w: &LoraWeights) -> Result<GpuLoraWeights> {
        let (r, i, o) = (w.r, w.in_features, w.out_features);
        check(w.a.len() == r * i && w.b.len() == o * r, "lora", || {
            format!("A of {} and B of {} values are not [{r}, {i}] and [{o}, {r}]", w.a.len(), w.b.len())
        })?;
        GpuLoraWeights::upload(&self.ctx, w)
    }

    fn lora_weights(&self, l: &GpuLoraWeights) -> Result<LoraWeights> {
        Ok(LoraWeights {
            a: self.ctx.read_f32(&l.a)?,
            b: self.ctx.read_f32(&l.b)?,
            r: l.r,
            in_features: l.in_features,
            out_features: l.out_features,
            scale: l.scale,
        })
    }

    fn lora_parts_mut(lora: &mut GpuLoraWeights) -> (&mut GpuBuffer, &mut GpuBuffer) {
        (&mut lora.a, &mut lora.b)
    }

    fn linear_forward(
        &self,
        y: &mut GpuBuffer,
        x: &GpuBuffer,
        w: &GpuFrozen,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        w.forward(&self.ctx, y, x, n, accumulate)
    }

    fn embedding_forward(
        &self,
        out: &mut GpuBuffer,
        ids: &[u32],
        table: Vocab<'_, GpuFrozen, GpuBuffer>,
        c: usize,
    ) -> Result<()> {
        let table = match table {
            Vocab::Frozen(m) => VocabMatrix::Frozen(m),
            Vocab::Trained(w) => VocabMatrix::Trained(w),
        };
        let cols_ok = match table {
            VocabMatrix::Frozen(m) => m.cols == c,
            VocabMatrix::Trained(w) => c > 0 && w.len().is_multiple_of(c),
        };
        check(out.len() == ids.len() * c && cols_ok, "embedding_forward", || {
            format!("out [{}, {c}] is {} values, or the table is not [V, {c}]", ids.len(), out.len())
        })?;
        let rows = table.rows(c);
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= rows) {
            return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary of {rows}")));
        }
        embedding::embedding_forward(&self.ctx, out, ids, table, c)
    }

    fn bias_forward(&self, y: &mut GpuBuffer, b: &GpuBuffer, n: usize) -> Result<()> {
        bias::bias_forward(&self.ctx, y, b, n)
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
        window: Option<usize>,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()> {
        check_window("attention_forward_cached", window)?;
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
        attention::attention_forward_cached(&self.ctx, att, q, k, v, t, p0, window, nh, nkv, d)
    }

    fn swiglu_forward(&self, out: &mut GpuBuffer, gate: &GpuBuffer, up: &GpuBuffer) -> Result<()> {
        swiglu::swiglu_forward(&self.ctx, out, gate, up)
    }

    fn geglu_forward(&self, out: &mut GpuBuffer, gate: &GpuBuffer, up: &GpuBuffer) -> Result<()> {
        geglu::geglu_forward(&self.ctx, out, gate, up)
    }

    fn scale(&self, x: &mut GpuBuffer, s: f32) -> Result<()> {
        elementwise::scale_forward(&self.ctx, x, s)
    }

    fn add(&self, y: &mut GpuBuffer, x: &GpuBuffer) -> Result<()> {
        elementwise::add_forward(&self.ctx, y, x)
    }

    fn linear_backward_input(
        &self,
        dx: &mut GpuBuffer,
        dy: &GpuBuffer,
        w: &GpuFrozen,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        w.backward_input(&self.ctx, dx, dy, n, accumulate)
    }

    fn rmsnorm_forward_train(
        &self,
        y: &mut GpuBuffer,
        rstd: &mut GpuBuffer,
        x: &GpuBuffer,
        w: &GpuBuffer,
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        rmsnorm::rmsnorm_forward_train(&self.ctx, y, rstd, x, w, n, c, eps)
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut GpuBuffer,
        dw: Option<&mut GpuBuffer>,
        dy: &GpuBuffer,
        x: &GpuBuffer,
        w: &GpuBuffer,
        rstd: &GpuBuffer,
        n: usize,
        c: usize,
    ) -> Result<()> {
        rmsnorm::rmsnorm_backward(&self.ctx, dx, dw, dy, x, w, rstd, n, c)
    }

    fn rope_backward(
        &self,
        dx: &mut GpuBuffer,
        t: usize,
        h: usize,
        d: usize,
        cos: &GpuBuffer,
        sin: &GpuBuffer,
    ) -> Result<()> {
        rope::rope_backward(&self.ctx, dx, t, h, d, cos, sin)
    }

    fn swiglu_backward(
        &self,
        dgate: &mut GpuBuffer,
        dup: &mut GpuBuffer,
        dout: &GpuBuffer,
        gate: &GpuBuffer,
        up: &GpuBuffer,
    ) -> Result<()> {
        swiglu::swiglu_backward(&self.ctx, dgate, dup, dout, gate, up)
    }

    fn geglu_backward(
        &self,
        dgate: &mut GpuBuffer,
        dup: &mut GpuBuffer,
        dout: &GpuBuffer,
        gate: &GpuBuffer,
        up: &GpuBuffer,
    ) -> Result<()> {
        geglu::geglu_backward(&self.ctx, dgate, dup, dout, gate, up)
    }

    fn embedding_backward(&self, dtable: &mut GpuBuffer, dout: &GpuBuffer, ids: &[u32], c: usize) -> Result<()> {
        check(c > 0 && dout.len() == ids.len() * c && dtable.len().is_multiple_of(c), "embedding_backward", || {
            format!(
                "dout of {} values is not [{}, {c}], or dtable of {} is not [V, {c}]",
                dout.len(),
                ids.len(),
                dtable.len()
            )
        })?;
        let v = dtable.len() / c;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= v) {
            return Err(Error::Invalid(format!("embedding_backward: token id {bad} is outside the vocabulary of {v}")));
        }
        embedding::embedding_backward(&self.ctx, dtable, dout, ids, c)
    }

    fn cross_entropy_scratch(&self, chunk: usize, c: usize, v: usize) -> Result<CrossEntropyScratch> {
        check(chunk > 0, "cross_entropy_scratch", || "the chunk must be at least one row".into())?;
        CrossEntropyScratch::new(&self.ctx, chunk, c, v)
    }

    fn cross_entropy_forward(
        &self,
        scratch: &mut CrossEntropyScratch,
        h: &GpuBuffer,
        head: Vocab<'_, GpuFrozen, GpuBuffer>,
        targets: &[i32],
        c: usize,
    ) -> Result<(f64, usize)> {
        let head = check_head("cross_entropy_forward", scratch, h, head, targets, c)?;
        cross_entropy::cross_entropy_forward(&self.ctx, scratch, h, head, targets, c)
    }

    fn cross_entropy_forward_backward(
        &self,
        dh: &mut GpuBuffer,
        dhead: Option<&mut GpuBuffer>,
        scratch: &mut CrossEntropyScratch,
        h: &GpuBuffer,
        head: Vocab<'_, GpuFrozen, GpuBuffer>,
        targets: &[i32],
        c: usize,
        grad_scale: f32,
    ) -> Result<(f64, usize)> {
        let call = "cross_entropy_forward_backward";
        let head = check_head(call, scratch, h, head, targets, c)?;
        let v = head.rows(c);
        let dhead_ok = dhead.as_ref().is_none_or(|d| d.len() == v * c);
        check(dh.len() == h.len() && dhead_ok, call, || {
            format!("dh of {} values is not [{}, {c}], or dhead is not [{v}, {c}]", dh.len(), targets.len())
        })?;
        cross_entropy::cross_entropy_forward_backward(&self.ctx, dh, dhead, scratch, h, head, targets, c, grad_scale)
    }

    fn lora_forward(
        &self,
        y: &mut GpuBuffer,
        xa: &mut GpuBuffer,
        xd: &mut GpuBuffer,
        x: &GpuBuffer,
        w: &GpuFrozen,
        lora: &GpuLoraWeights,
        dropout: Option<LoraDropout>,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (i, o, r) = (lora.in_features, lora.out_features, lora.r);
        check_lora("lora_forward", w, lora, dropout, xd.len(), n)?;
        check(y.len() == n * o && x.len() == n * i && xa.len() == n * r, "lora_forward", || {
            format!(
                "y, x and xa of {}, {} and {} values are not [{n}, {o}], [{n}, {i}] and [{n}, {r}]",
                y.len(),
                x.len(),
                xa.len()
            )
        })?;
        lora::lora_forward(&self.ctx, y, xa, xd, x, w, lora, dropout, n, accumulate)
    }

    fn lora_backward(
        &self,
        dx: &mut GpuBuffer,
        da: &mut GpuBuffer,
        db: &mut GpuBuffer,
        dxa: &mut GpuBuffer,
        xd: &mut GpuBuffer,
        dy: &GpuBuffer,
        x: &GpuBuffer,
        xa: &GpuBuffer,
        w: &GpuFrozen,
        lora: &GpuLoraWeights,
        dropout: Option<LoraDropout>,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (i, o, r) = (lora.in_features, lora.out_features, lora.r);
        check_lora("lora_backward", w, lora, dropout, xd.len(), n)?;
        let rows_ok = dx.len() == n * i && dy.len() == n * o && x.len() == n * i && xa.len() == n * r;
        check(rows_ok && dxa.len() == n * r && da.len() == r * i && db.len() == o * r, "lora_backward", || {
            format!(
                "dx, dy, x, xa and dxa of {}, {}, {}, {} and {} values are not [{n}, {i}], [{n}, {o}], [{n}, {i}], \
                 [{n}, {r}] and [{n}, {r}], or dA and dB of {} and {} are not [{r}, {i}] and [{o}, {r}]",
                dx.len(),
                dy.len(),
                x.len(),
                xa.len(),
                dxa.len(),
                da.len(),
                db.len()
            )
        })?;
        lora::lora_backward(&self.ctx, dx, da, db, dxa, xd, dy, x, xa, w, lora, dropout, n, accumulate)
    }

    fn attention_forward(
        &self,
        out: &mut GpuBuffer,
        lse: &mut GpuBuffer,
        q: &GpuBuffer,
        k: &GpuBuffer,
        v: &GpuBuffer,
        doc_start: Option<&[u32]>,
        window: Option<usize>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()> {
        let call = "attention_forward";
        check_window(call, window)?;
        check_heads(call, nh, nkv, d)?;
        let (nq, nk) = (b * t * nh * d, b * t * nkv * d);
        check(
            out.len() == nq && q.len() == nq && k.len() == nk && v.len() == nk && lse.len() == b * nh * t,
            call,
            || {
                format!(
                    "q and out of {} and {} values are not [{b}, {t}, {nh}·{d}], k and v of {} and {} are not \
                     [{b}, {t}, {nkv}·{d}], or lse of {} is not [{b}, {nh}, {t}]",
                    q.len(),
                    out.len(),
                    k.len(),
                    v.len(),
                    lse.len()
                )
            },
        )?;
        check_docs(call, doc_start, b, t)?;
        attention::attention_forward(&self.ctx, out, lse, q, k, v, doc_start, window, b, t, nh, nkv, d)
    }

    fn attention_backward(
        &self,
        dq: &mut GpuBuffer,
        dk: &mut GpuBuffer,
        dv: &mut GpuBuffer,
        dk_heads: &mut GpuBuffer,
        dv_heads: &mut GpuBuffer,
        dout: &GpuBuffer,
        q: &GpuBuffer,
        k: &GpuBuffer,
        v: &GpuBuffer,
        out: &GpuBuffer,
        lse: &GpuBuffer,
        doc_start: Option<&[u32]>,
        window: Option<usize>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        d: usize,
    ) -> Result<()> {
        let call = "attention_backward";
        check_window(call, window)?;
        check_heads(call, nh, nkv, d)?;
        let (nq, nk) = (b * t * nh * d, b * t * nkv * d);
        let q_ok = [dq.len(), q.len(), out.len(), dout.len(), dk_heads.len(), dv_heads.len()].iter().all(|&l| l == nq);
        let k_ok = [dk.len(), dv.len(), k.len(), v.len()].iter().all(|&l| l == nk);
        check(q_ok && k_ok && lse.len() == b * nh * t, call, || {
            format!(
                "dq, q, out, dout and the head scratch must be [{b}, {t}, {nh}·{d}] ({nq} values), dk, dv, k and v \
                 [{b}, {t}, {nkv}·{d}] ({nk}), lse [{b}, {nh}, {t}]; lse has {}",
                lse.len()
            )
        })?;
        check_docs(call, doc_start, b, t)?;
        attention::attention_backward(
            &self.ctx, dq, dk, dv, dk_heads, dv_heads, dout, q, k, v, out, lse, doc_start, window, b, t, nh, nkv, d,
        )
    }

    fn moments(&self, kind: OptimKind, len: usize) -> Result<GpuMoments> {
        optim::moments(&self.ctx, kind, len)
    }

    fn adamw_update(
        &self,
        p: &mut GpuBuffer,
        g: &GpuBuffer,
        moments: &mut GpuMoments,
        config: &OptimConfig,
        lr: f32,
        t: u64,
    ) -> Result<()> {
        let maps = match self.maps.get() {
            Some(m) => m,
            None => {
                let m = optim::code_maps(&self.ctx)?;
                self.maps.get_or_init(|| m)
            }
        };
        optim::adamw_update(&self.ctx, maps, p, g, moments, config, lr, t)
    }

    fn read_moments(&self, moments: &GpuMoments) -> Result<Vec<Vec<u8>>> {
        optim::read_moments(&self.ctx, moments)
    }

    fn write_moments(&self, moments: &mut GpuMoments, parts: &[&[u8]]) -> Result<()> {
        optim::write_moments(&self.ctx, moments, parts)
    }

    fn clip_grad_norm(&self, grads: &mut [&mut GpuBuffer], max_norm: f32) -> Result<f32> {
        optim::clip_grad_norm(&self.ctx, grads, max_norm)
    }
}
