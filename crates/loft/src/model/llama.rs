//! The Llama forward pass for inference, with a KV cache, and what the other families add to its block (Qwen2's
//! q/k/v biases, Qwen3's per-head q/k norm, Gemma 3's scaled embedding, sandwich norms, GeGLU, query scale and
//! local layers with their own RoPE; see [`crate::model::config::Arch`]). Legend: T = new tokens,
//! C = hidden_size, F = intermediate_size, V = vocab_size, NH/NKV = query/key-value heads, D = head_dim.

use crate::engine::frozen::DOT_MAX_ROWS;
use crate::engine::rope::Rope;
use crate::engine::{Backend, Cpu, Vocab};
use crate::error::{Error, Result};
use crate::model::config::LlamaConfig;
use crate::model::unmerged::{UnmergedAdapter, UnmergedOnDevice};
use crate::model::weights::{LlamaWeights, TargetModule};

pub struct Llama {
    pub config: LlamaConfig,
    pub weights: LlamaWeights,
    /// The global layers' RoPE (every layer's, but for Gemma's local layers).
    pub rope: Rope,
    /// Gemma 3's local layers' RoPE (their own base, no scaling).
    pub rope_local: Option<Rope>,
}

/// Keys and values of every layer for the positions seen so far: per layer [capacity, NKV·D], on the backend.
pub struct KvCache<B: Backend = Cpu> {
    k: Vec<B::Buf>,
    v: Vec<B::Buf>,
    pub len: usize,
    pub capacity: usize,
}

impl KvCache<Cpu> {
    pub fn new(cfg: &LlamaConfig, capacity: usize) -> Self {
        let per_layer = capacity * cfg.kv_dim();
        KvCache {
            k: (0..cfg.num_hidden_layers).map(|_| vec![0.0; per_layer]).collect(),
            v: (0..cfg.num_hidden_layers).map(|_| vec![0.0; per_layer]).collect(),
            len: 0,
            capacity,
        }
    }
}

impl<B: Backend> KvCache<B> {
    /// An empty cache of `capacity` positions on `backend`.
    pub fn on(backend: &B, cfg: &LlamaConfig, capacity: usize) -> Result<Self> {
        let per_layer = capacity * cfg.kv_dim();
        let mut k = Vec::with_capacity(cfg.num_hidden_layers);
        let mut v = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            k.push(backend.zeros(per_layer)?);
            v.push(backend.zeros(per_layer)?);
        }
        Ok(KvCache { k, v, len: 0, capacity })
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Room for at least `capacity` positions: larger buffers on `backend` with the first `len` positions copied
    /// over (nothing happens when the cache already has the room).
    pub fn reserve(&mut self, backend: &B, cfg: &LlamaConfig, capacity: usize) -> Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        let kvd = cfg.kv_dim();
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            let mut bigger = backend.zeros(capacity * kvd)?;
            backend.copy(buf, 0, &mut bigger, 0, self.len * kvd)?;
            *buf = bigger;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Layer `l`'s keys and values, each [capacity, NKV·D] (a batched decode writes each sequence's own).
    pub fn layer_mut(&mut self, l: usize) -> (&mut B::Buf, &mut B::Buf) {
        (&mut self.k[l], &mut self.v[l])
    }

    /// Bytes the keys and values of `capacity` positions take in f32.
    pub fn bytes(cfg: &LlamaConfig, capacity: usize) -> usize {
        2 * cfg.num_hidden_layers * capacity * cfg.kv_dim() * 4
    }
}

/// One block's frozen weights as a backend holds them (field names as the checkpoint's).
struct DeviceLayer<'w, B: Backend + 'w> {
    input_layernorm: B::Vector<'w>,
    q_proj: B::Matrix<'w>,
    k_proj: B::Matrix<'w>,
    v_proj: B::Matrix<'w>,
    o_proj: B::Matrix<'w>,
    attention_bias: Option<DeviceAttentionBias<'w, B>>,
    qk_norm: Option<DeviceQkNorm<'w, B>>,
    post_attention_layernorm: B::Vector<'w>,
    sandwich: Option<DeviceSandwich<'w, B>>,
    gate_proj: B::Matrix<'w>,
    up_proj: B::Matrix<'w>,
    down_proj: B::Matrix<'w>,
}

/// Qwen2's frozen q/k/v biases on a backend: [Q], [KV], [KV].
pub struct DeviceAttentionBias<'w, B: Backend + 'w> {
    pub q_proj: B::Vector<'w>,
    pub k_proj: B::Vector<'w>,
    pub v_proj: B::Vector<'w>,
}

/// Qwen3's per-head q/k RMSNorm weights on a backend: [D] each.
pub struct DeviceQkNorm<'w, B: Backend + 'w> {
    pub q_norm: B::Vector<'w>,
    pub k_norm: B::Vector<'w>,
}

/// Gemma's MLP input and output norms on a backend: [C] each.
pub struct DeviceSandwich<'w, B: Backend + 'w> {
    pub pre_feedforward_layernorm: B::Vector<'w>,
    pub post_feedforward_layernorm: B::Vector<'w>,
}

/// A model on a backend: the host model's config and RoPE, and the backend's copy of its weights (borrowed on the
/// CPU; uploaded once, in their own block types, on a GPU). The inference forward is written once, here.
pub struct Runner<'w, B: Backend + 'w> {
    backend: &'w B,
    model: &'w Llama,
    embed_tokens: B::Matrix<'w>,
    layers: Vec<DeviceLayer<'w, B>>,
    norm: B::Vector<'w>,
    /// None when tied to the embedding.
    lm_head: Option<B::Matrix<'w>>,
    /// Whether products of a few rows (decoding) go through [`Backend::decode_linear_forward`].
    decode_products: bool,
}

impl<'w, B: Backend + 'w> Runner<'w, B> {
    pub fn new(backend: &'w B, model: &'w Llama) -> Result<Self> {
        let w = &model.weights;
        let mut layers = Vec::with_capacity(w.layers.len());
        for (i, l) in w.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            layers.push(DeviceLayer {
                input_layernorm: backend.vector(&l.input_layernorm)?,
                q_proj: backend.matrix(&format!("{p}.self_attn.q_proj.weight"), &l.q_proj)?,
                k_proj: backend.matrix(&format!("{p}.self_attn.k_proj.weight"), &l.k_proj)?,
                v_proj: backend.matrix(&format!("{p}.self_attn.v_proj.weight"), &l.v_proj)?,
                o_proj: backend.matrix(&format!("{p}.self_attn.o_proj.weight"), &l.o_proj)?,
                attention_bias: match &l.attention_bias {
                    Some(b) => Some(DeviceAttentionBias {
                        q_proj: backend.vector(&b.q_proj)?,
                        k_proj: backend.vector(&b.k_proj)?,
                        v_proj: backend.vector(&b.v_proj)?,
                    }),
                    None => None,
                },
                qk_norm: match &l.qk_norm {
                    Some(n) => {
                        Some(DeviceQkNorm { q_norm: backend.vector(&n.q_norm)?, k_norm: backend.vector(&n.k_norm)? })
                    }
                    None => None,
                },
                post_attention_layernorm: backend.vector(&l.post_attention_layernorm)?,
                sandwich: match &l.sandwich {
                    Some(s) => Some(DeviceSandwich {
                        pre_feedforward_layernorm: backend.vector(&s.pre_feedforward_layernorm)?,
                        post_feedforward_layernorm: backend.vector(&s.post_feedforward_layernorm)?,
                    }),
                    None => None,
                },
                gate_proj: backend.matrix(&format!("{p}.mlp.gate_proj.weight"), &l.gate_proj)?,
                up_proj: backend.matrix(&format!("{p}.mlp.up_proj.weight"), &l.up_proj)?,
                down_proj: backend.matrix(&format!("{p}.mlp.down_proj.weight"), &l.down_proj)?,
            });
        }
        Ok(Runner {
            backend,
            model,
            embed_tokens: backend.matrix("model.embed_tokens.weight", &w.embed_tokens)?,
            layers,
            norm: backend.vector(&w.norm)?,
            lm_head: w.lm_head.as_ref().map(|h| backend.matrix("lm_head.weight", h)).transpose()?,
            decode_products: true,
        })
    }

    /// This runner with the exact products everywhere: decoding steps too multiply f32 activations (the
    /// reference a backend's parity is checked against), instead of the backend's decode products.
    pub fn with_exact_products(mut self) -> Self {
        self.decode_products = false;
        self
    }

    /// Whether a few rows (up to [`DOT_MAX_ROWS`], a decoding step) go through the backend's decode products
    /// ([`Backend::decode_linear_forward`]: 8-bit activations over the legacy, K-quant and NF4 blocks on the CPU).
    pub fn decode_products(&self, n: usize) -> bool {
        self.decode_products && n <= DOT_MAX_ROWS
    }

    pub fn backend(&self) -> &B {
        self.backend
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.model.config
    }

    /// The host model (config, RoPE tables, the host copy of the weights).
    pub fn model(&self) -> &'w Llama {
        self.model
    }

    /// The frozen matrix of module `m` in layer `l`, on the backend.
    pub fn module(&self, l: usize, m: TargetModule) -> &B::Matrix<'w> {
        let layer = &self.layers[l];
        match m {
            TargetModule::QProj => &layer.q_proj,
            TargetModule::KProj => &layer.k_proj,
            TargetModule::VProj => &layer.v_proj,
            TargetModule::OProj => &layer.o_proj,
            TargetModule::GateProj => &layer.gate_proj,
            TargetModule::UpProj => &layer.up_proj,
            TargetModule::DownProj => &layer.down_proj,
        }
    }

    /// Layer `l`'s sublayer input norms: (the attention's, the MLP's) = (input_layernorm, Llama's
    /// post_attention_layernorm or Gemma's pre_feedforward_layernorm).
    pub fn layer_norms(&self, l: usize) -> (&B::Vector<'w>, &B::Vector<'w>) {
        let layer = &self.layers[l];
        let mlp = layer.sandwich.as_ref().map_or(&layer.post_attention_layernorm, |s| &s.pre_feedforward_layernorm);
        (&layer.input_layernorm, mlp)
    }

    /// Gemma's sublayer output norms of layer `l`: (post_attention_layernorm, post_feedforward_layernorm), applied
    /// to the attention's and the MLP's outputs before each residual add.
    pub fn output_norms(&self, l: usize) -> Option<(&B::Vector<'w>, &B::Vector<'w>)> {
        let layer = &self.layers[l];
        layer.sandwich.as_ref().map(|s| (&layer.post_attention_layernorm, &s.post_feedforward_layernorm))
    }

    /// Layer `l`'s q/k/v biases (Qwen2), added after the projections.
    pub fn attention_bias(&self, l: usize) -> Option<&DeviceAttentionBias<'w, B>> {
        self.layers[l].attention_bias.as_ref()
    }

    /// Layer `l`'s per-head q/k norms (Qwen3), applied after the projections (and biases) and before RoPE.
    pub fn qk_norm(&self, l: usize) -> Option<&DeviceQkNorm<'w, B>> {
        self.layers[l].qk_norm.as_ref()
    }

    /// The final norm.
    pub fn norm(&self) -> &B::Vector<'w> {
        &self.norm
    }

    pub fn embed_tokens(&self) -> &B::Matrix<'w> {
        &self.embed_tokens
    }

    /// The output head: lm_head, or the embedding when tied.
    pub fn head(&self) -> &B::Matrix<'w> {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// An empty KV cache of `capacity` positions on this runner's backend.
    pub fn cache(&self, capacity: usize) -> Result<KvCache<B>> {
        KvCache::on(self.backend, &self.model.config, capacity)
    }

    /// Grows `cache` (one of this runner's) to at least `capacity` positions, keeping what it holds.
    pub fn reserve(&self, cache: &mut KvCache<B>, capacity: usize) -> Result<()> {
        cache.reserve(self.backend, &self.model.config, capacity)
    }

    /// `host` on this runner's backend, checked against its model, for [`Runner::forward_with`].
    pub fn adapter<'a>(&self, host: &'a UnmergedAdapter) -> Result<UnmergedOnDevice<'a, B>>
    where
        'w: 'a,
    {
        UnmergedOnDevice::new(self.backend, host, &self.model.config)
    }

    /// Runs `tokens` at positions cache.len.. and appends their keys and values to the cache. Returns the final
    /// normalised hidden states [T, C]; [`Runner::logits`] turns rows of it into logits.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache<B>) -> Result<B::Buf> {
        self.forward_with(tokens, cache, None)
    }

    /// [`Runner::forward`] with `adapter` applied unmerged: each adapted projection adds scale · (h·Aᵀ)·Bᵀ to the
    /// base's h·Wᵀ, and a trained embedding replaces the base's. The base weights are shared, not modified.
    pub fn forward_with(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<B>,
        adapter: Option<&UnmergedOnDevice<'_, B>>,
    ) -> Result<B::Buf> {
        let (cfg, be) = (&self.model.config, self.backend);
        self.check_adapter(adapter)?;
        let (t, c, f) = (tokens.len(), cfg.hidden_size, cfg.intermediate_size);
        let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let p0 = cache.len;
        if p0 + t > cache.capacity {
            return Err(Error::hinted(
                format!("{} tokens do not fit the context: {} already used of {}", t, p0, cache.capacity),
                "shorten the prompt or lower --max-new-tokens",
            ));
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab_size)));
        }
        let mut x = be.zeros(t * c)?; // the residual stream: [T, C]
        match adapter.and_then(|a| a.embed_tokens.as_ref()) {
            Some(trained) => be.embedding_forward(&mut x, tokens, Vocab::Frozen(trained), c)?,
            None => be.embedding_forward(&mut x, tokens, Vocab::Frozen(&self.embed_tokens), c)?,
        }
        if let Some(s) = cfg.embedding_scale() {
            be.scale(&mut x, s)?;
        }
        let tables = self.model.rope_tables(be, p0..p0 + t)?; // [T, D/2] each
        let mut h = be.zeros(t * c)?; // normalised input of a sublayer: [T, C]
        let mut q = be.zeros(t * qd)?; // [T, NH·D]
        let mut k = be.zeros(t * kvd)?; // [T, NKV·D], new positions only
        let mut v = be.zeros(t * kvd)?;
        let mut att = be.zeros(t * qd)?; // [T, NH·D]
                                         // Qwen3: the projections before their per-head norm (the norm writes q and k).
        let mut qk_raw = match cfg.arch.qk_norm() {
            true => Some((be.zeros(t * qd)?, be.zeros(t * kvd)?)), // [T, NH·D], [T, NKV·D]
            false => None,
        };
        let mut gate = be.zeros(t * f)?; // [T, F]
        let mut up = be.zeros(t * f)?; // [T, F]
        let mut act = be.zeros(t * f)?; // [T, F]
                                        // Gemma: a sublayer's output before its norm and residual add: [T, C].
        let mut sub = match cfg.arch.sandwich_norms() {
            true => Some(be.zeros(t * c)?),
            false => None,
        };
        let mut lora_scratch = match adapter {
            Some(a) => Some(LoraScratch { xa: be.zeros(t * a.rank)?, xd: be.zeros(0)? }), // xa: [T, R]
            None => None,
        };
        let layers = cache.k.iter_mut().zip(cache.v.iter_mut());
        for (l, (kc, vc)) in layers.enumerate() {
            let adapted = |m: TargetModule| adapter.and_then(|a| a.lora(l, m));
            let mut linear = |y: &mut B::Buf, x: &B::Buf, m: TargetModule, accumulate: bool| {
                self.project(y, x, self.module(l, m), adapted(m), lora_scratch.as_mut(), t, accumulate)
            };
            // x = x + o_proj(attention(q, k, v)) with q, k, v from h = rmsnorm(x)
            let qkv = Qkv { q: &mut q, k: &mut k, v: &mut v, raw: qk_raw.as_mut() };
            let (cos, sin) = tables.layer(cfg, l);
            self.attention_inputs(l, &x, &mut h, qkv, cos, sin, t, &mut linear)?;
            be.copy(&k, 0, kc, p0 * kvd, t * kvd)?;
            be.copy(&v, 0, vc, p0 * kvd, t * kvd)?;
            be.attention_forward_cached(&mut att, &q, kc, vc, t, p0, cfg.layer_window(l), nh, nkv, d)?;
            self.attention_output(l, &mut x, &mut h, sub.as_mut(), &att, &mut linear)?;
            self.mlp(l, &mut x, &mut h, (&mut gate, &mut up, &mut act), sub.as_mut(), &mut linear)?;
        }
        cache.len = p0 + t;
        be.rmsnorm_forward(&mut h, &x, &self.norm, c, cfg.rms_norm_eps)?;
        Ok(h)
    }

    /// logits[rows, V] of hidden rows row0..row0+rows, on the host.
    pub fn logits(&self, hidden: &B::Buf, row0: usize, rows: usize) -> Result<Vec<f32>> {
        self.logits_with(hidden, row0, rows, None)
    }

    /// [`Runner::logits`] through `adapter`'s head when it trains one (a trained embedding is also the head of a
    /// tied model, as after a merge).
    pub fn logits_with(
        &self,
        hidden: &B::Buf,
        row0: usize,
        rows: usize,
        adapter: Option<&UnmergedOnDevice<'_, B>>,
    ) -> Result<Vec<f32>> {
        self.head_logits(hidden, row0, rows, adapter, self.decode_products(rows))
    }

    /// [`Runner::logits_with`], through the decode products or the exact ones.
    fn head_logits(
        &self,
        hidden: &B::Buf,
        row0: usize,
        rows: usize,
        adapter: Option<&UnmergedOnDevice<'_, B>>,
        decode: bool,
    ) -> Result<Vec<f32>> {
        self.check_adapter(adapter)?;
        let (be, c, v) = (self.backend, self.model.config.hidden_size, self.model.config.vocab_size);
        let mut x = be.zeros(rows * c)?;
        be.copy(hidden, row0 * c, &mut x, 0, rows * c)?;
        let mut logits = be.zeros(rows * v)?;
        let tied = self.lm_head.is_none();
        let base = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        match (adapter.and_then(|a| a.lm_head.as_ref().or(a.embed_tokens.as_ref().filter(|_| tied))), decode) {
            (Some(trained), true) => be.decode_linear_forward(&mut logits, &x, trained, rows, false)?,
            (Some(trained), false) => be.linear_forward(&mut logits, &x, trained, rows, false)?,
            (None, true) => be.decode_linear_forward(&mut logits, &x, base, rows, false)?,
            (None, false) => be.linear_forward(&mut logits, &x, base, rows, false)?,
        }
        be.download(logits)
    }

    /// The attention sublayer's inputs for N rows of the residual stream x, written once for every forward (one
    /// sequence here, several in `model::batch`): h = rmsnorm(x), q, k, v = the projections of h (through
    /// `linear`, which applies the base weight and any adapter), plus Qwen2's biases, Qwen3's and Gemma's
    /// per-head norm of q and k (projected into `raw` first), RoPE at the rows' positions (cos, sin: [N, D/2], the
    /// layer's own: [`RopeTables::layer`]), and Gemma's query scale.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_inputs(
        &self,
        l: usize,
        x: &B::Buf,
        h: &mut B::Buf,
        qkv: Qkv<'_, B>,
        cos: &B::Buf,
        sin: &B::Buf,
        n: usize,
        linear: &mut impl FnMut(&mut B::Buf, &B::Buf, TargetModule, bool) -> Result<()>,
    ) -> Result<()> {
        let (cfg, be, layer) = (&self.model.config, self.backend, &self.layers[l]);
        let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let Qkv { q, k, v, mut raw } = qkv;
        be.rmsnorm_forward(h, x, &layer.input_layernorm, cfg.hidden_size, cfg.rms_norm_eps)?;
        {
            let (q_out, k_out) = match raw.as_mut() {
                Some((q_raw, k_raw)) => (q_raw, k_raw),
                None => (&mut *q, &mut *k),
            };
            linear(q_out, h, TargetModule::QProj, false)?;
            linear(k_out, h, TargetModule::KProj, false)?;
            linear(v, h, TargetModule::VProj, false)?;
            if let Some(b) = &layer.attention_bias {
                be.bias_forward(q_out, &b.q_proj, n)?;
                be.bias_forward(k_out, &b.k_proj, n)?;
                be.bias_forward(v, &b.v_proj, n)?;
            }
        }
        if let (Some(norm), Some((q_raw, k_raw))) = (&layer.qk_norm, raw) {
            be.rmsnorm_forward(q, q_raw, &norm.q_norm, d, cfg.rms_norm_eps)?; // rows N·NH of width D
            be.rmsnorm_forward(k, k_raw, &norm.k_norm, d, cfg.rms_norm_eps)?; // rows N·NKV of width D
        }
        be.rope_forward(q, n, nh, d, cos, sin)?;
        be.rope_forward(k, n, nkv, d, cos, sin)?;
        if let Some(s) = cfg.query_scale() {
            be.scale(q, s)?;
        }
        Ok(())
    }

    /// The attention's output projection and residual add over N rows: x += o_proj(att), or for Gemma
    /// x += rmsnorm(o_proj(att)) (post_attention_layernorm), the projection made in `sub` [N, C] and normed in h.
    pub(crate) fn attention_output(
        &self,
        l: usize,
        x: &mut B::Buf,
        h: &mut B::Buf,
        sub: Option<&mut B::Buf>,
        att: &B::Buf,
        linear: &mut impl FnMut(&mut B::Buf, &B::Buf, TargetModule, bool) -> Result<()>,
    ) -> Result<()> {
        self.sublayer_output(x, h, sub, att, TargetModule::OProj, self.output_norms(l).map(|n| n.0), linear)
    }

    /// The MLP sublayer of layer `l` over N rows: x += down_proj(act(gate_proj(h)) · up_proj(h)), h = rmsnorm(x)
    /// with the MLP's input norm, act = SiLU (SwiGLU) or GELU (Gemma's GeGLU), and for Gemma the output normed
    /// (post_feedforward_layernorm) before the add, as [`Runner::attention_output`]; through `linear` as
    /// [`Runner::attention_inputs`]; (gate, up, act) are scratch [N, F].
    pub(crate) fn mlp(
        &self,
        l: usize,
        x: &mut B::Buf,
        h: &mut B::Buf,
        (gate, up, act): (&mut B::Buf, &mut B::Buf, &mut B::Buf),
        sub: Option<&mut B::Buf>,
        linear: &mut impl FnMut(&mut B::Buf, &B::Buf, TargetModule, bool) -> Result<()>,
    ) -> Result<()> {
        let (cfg, be) = (&self.model.config, self.backend);
        be.rmsnorm_forward(h, x, self.layer_norms(l).1, cfg.hidden_size, cfg.rms_norm_eps)?;
        linear(gate, h, TargetModule::GateProj, false)?;
        linear(up, h, TargetModule::UpProj, false)?;
        match cfg.arch.gelu_mlp() {
            true => be.geglu_forward(act, gate, up)?,
            false => be.swiglu_forward(act, gate, up)?,
        }
        self.sublayer_output(x, h, sub, act, TargetModule::DownProj, self.output_norms(l).map(|n| n.1), linear)
    }

    /// x += m(input), or with an output norm x += rmsnorm(m(input)), m projected into `sub` and normed into h.
    #[allow(clippy::too_many_arguments)]
    fn sublayer_output(
        &self,
        x: &mut B::Buf,
        h: &mut B::Buf,
        sub: Option<&mut B::Buf>,
        input: &B::Buf,
        m: TargetModule,
        norm: Option<&B::Vector<'w>>,
        linear: &mut impl FnMut(&mut B::Buf, &B::Buf, TargetModule, bool) -> Result<()>,
    ) -> Result<()> {
        let (cfg, be) = (&self.model.config, self.backend);
        match (norm, sub) {
            (Some(norm), Some(sub)) => {
                linear(sub, input, m, false)?;
                be.rmsnorm_forward(h, sub, norm, cfg.hidden_size, cfg.rms_norm_eps)?;
                be.add(x, h)
            }
            (Some(_), None) => Err(Error::Invalid("a sublayer with an output norm needs its scratch".into())),
            (None, _) => linear(x, input, m, true),
        }
    }

    /// y[N, O] = (accumulate ? y : 0) + x·Wᵀ, plus scale · (x·Aᵀ)·Bᵀ when the module is adapted.
    #[allow(clippy::too_many_arguments)]
    fn project(
        &self,
        y: &mut B::Buf,
        x: &B::Buf,
        w: &B::Matrix<'w>,
        lora: Option<&B::Lora>,
        scratch: Option<&mut LoraScratch<B>>,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        match (lora, scratch, self.decode_products(n)) {
            (Some(lora), Some(s), false) => {
                self.backend.lora_forward(y, &mut s.xa, &mut s.xd, x, w, lora, None, n, accumulate)
            }
            (Some(lora), Some(s), true) => {
                self.backend.decode_lora_forward(y, &mut s.xa, &mut s.xd, x, w, lora, n, accumulate)
            }
            (_, _, false) => self.backend.linear_forward(y, x, w, n, accumulate),
            (_, _, true) => self.backend.decode_linear_forward(y, x, w, n, accumulate),
        }
    }

    /// Refuses an adapter checked against a model of another shape.
    fn check_adapter(&self, adapter: Option<&UnmergedOnDevice<'_, B>>) -> Result<()> {
        let cfg = &self.model.config;
        match adapter {
            Some(a) if a.shape != (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) => {
                Err(Error::Invalid(format!(
                    "the adapter was loaded for a model of {} layers, C = {}, V = {}; this one has {}, {}, {}",
                    a.shape.0, a.shape.1, a.shape.2, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
                )))
            }
            _ => Ok(()),
        }
    }

    /// Negative log-likelihood of each next token: nll[i] = -log p(tokens[i+1] | tokens[..=i]), for i < T-1.
    /// Logits are computed a chunk of rows at a time, so memory stays at chunk × V.
    pub fn next_token_nll(&self, tokens: &[u32]) -> Result<Vec<f64>> {
        let mut cache = self.cache(tokens.len())?;
        let hidden = self.forward(tokens, &mut cache)?;
        let n = tokens.len().saturating_sub(1);
        let v = self.model.config.vocab_size;
        let mut nll = Vec::with_capacity(n);
        const CHUNK: usize = 64;
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let logits = self.head_logits(&hidden, start, end - start, None, false)?; // exact, whatever the tail
            for (i, row) in logits.chunks_exact(v).enumerate() {
                let target = tokens[start + i + 1] as usize;
                nll.push(log_sum_exp(row) - row[target] as f64);
            }
        }
        Ok(nll)
    }
}

/// The LoRA forward's scratch: xa [T, R] (x·Aᵀ, which inference does not keep) and xd (dropout's, unused).
/// The attention's projections of N rows: q [N, NH·D], k and v [N, NKV·D], and, for a family that norms q and k
/// per head (Qwen3), the projections before that norm.
pub(crate) struct Qkv<'a, B: Backend> {
    pub q: &'a mut B::Buf,
    pub k: &'a mut B::Buf,
    pub v: &'a mut B::Buf,
    pub raw: Option<&'a mut (B::Buf, B::Buf)>,
}

struct LoraScratch<B: Backend> {
    xa: B::Buf,
    xd: B::Buf,
}

/// RoPE tables at a forward's positions on a backend: the global layers' and (Gemma) the local layers', each
/// cos and sin [T, D/2].
pub(crate) struct RopeTables<B: Backend> {
    global: (B::Buf, B::Buf),
    local: Option<(B::Buf, B::Buf)>,
}

impl<B: Backend> RopeTables<B> {
    /// Layer `l`'s tables.
    pub(crate) fn layer(&self, cfg: &LlamaConfig, l: usize) -> (&B::Buf, &B::Buf) {
        match (&self.local, cfg.is_local(l)) {
            (Some((cos, sin)), true) => (cos, sin),
            _ => (&self.global.0, &self.global.1),
        }
    }
}

impl Llama {
    pub fn new(config: LlamaConfig, weights: LlamaWeights) -> Self {
        let rope = Rope::new(config.head_dim, config.rope_theta, config.rope_scaling.as_ref());
        let rope_local = config.local_layers.as_ref().map(|s| Rope::new(config.head_dim, s.rope_theta, None));
        Llama { config, weights, rope, rope_local }
    }

    /// The RoPE tables at `positions` on `be`: [`RopeTables`].
    pub(crate) fn rope_tables<B: Backend>(
        &self,
        be: &B,
        positions: impl Iterator<Item = usize> + Clone,
    ) -> Result<RopeTables<B>> {
        let (cos, sin) = self.rope.tables(positions.clone());
        let local = match &self.rope_local {
            Some(r) => {
                let (cos, sin) = r.tables(positions);
                Some((be.upload(&cos)?, be.upload(&sin)?))
            }
            None => None,
        };
        Ok(RopeTables { global: (be.upload(&cos)?, be.upload(&sin)?), local })
    }

    /// [`Runner::forward`] on the CPU: the final normalised hidden states [T, C].
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        Runner::new(&Cpu, self)?.forward(tokens, cache)
    }

    /// logits[N, V] for hidden rows [N, C], on the CPU.
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        let c = self.config.hidden_size;
        let n = hidden.len() / c;
        let head = self.weights.head();
        let mut logits = vec![0.0f32; n * head.rows];
        head.forward(&mut logits, hidden, n, false);
        logits
    }

    /// [`Runner::next_token_nll`] on the CPU.
    pub fn next_token_nll(&self, tokens: &[u32]) -> Result<Vec<f64>> {
        Runner::new(&Cpu, self)?.next_token_nll(tokens)
    }
}

/// log Σ exp(row), in f64 for a stable mean over thousands of positions.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max as f64 + sum.ln()
}
