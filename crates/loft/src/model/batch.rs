//! One decoding step for several sequences at once, on the CPU (continuous batching in `loft serve`). Each
//! sequence brings its next token, its own KV cache (its own length) and its own adapter or none; the step runs
//! the base's products once over all rows, so each frozen weight is read once per step for up to
//! [`DOT_MAX_ROWS`] sequences instead of once per sequence, and adds each row's LoRA term, attention and RoPE on its
//! own. Every row's numbers are the ones [`Runner::forward_with`] computes for that sequence alone, bit for bit: the
//! quantized dot kernel gives a row the same result whatever the number of rows beside it (up to
//! [`DOT_MAX_ROWS`]); f32 and NF4 weights, whose products go through gemm, run a row at a time. The sublayers
//! themselves are the runner's ([`Runner::attention_inputs`], [`Runner::mlp`]: norms, projections, each family's
//! biases and q/k norms, RoPE, SwiGLU), so a family is written once; only the products (per-row adapters) and the
//! attention (per-row caches) are this step's own.
//! Legend: N = sequences, C = hidden_size, F = intermediate_size, V = vocab_size, NH/NKV = query/key-value heads,
//! D = head_dim, R = rank, I/O = a module's in/out features.

use crate::engine::frozen::DOT_MAX_ROWS;
use crate::engine::matmul::matmul_nt;
use crate::engine::{Backend, Cpu, FrozenMatrix, Vocab};
use crate::error::{Error, Result};
use crate::model::llama::Qkv;
use crate::model::{KvCache, Runner, TargetModule, UnmergedAdapter};

/// One sequence in a step.
pub struct Row<'a> {
    /// The token to run: the last one chosen.
    pub token: u32,
    /// The sequence's keys and values so far; the step appends the token's.
    pub cache: &'a mut KvCache<Cpu>,
    pub adapter: Option<&'a UnmergedAdapter>,
}

/// Runs each row's token at its own position, appends its keys and values to its own cache, and returns the
/// logits [N, V] of the next token of every row (through the row's adapter's head when it trains one).
pub fn decode_step(runner: &Runner<'_, Cpu>, rows: &mut [Row<'_>]) -> Result<Vec<f32>> {
    // On a thread of rayon's pool, so that the step's hundreds of parallel regions are split among the pool's
    // threads directly instead of each waking the pool from the server's thread and putting it to sleep.
    rayon::scope(|_| step(runner, rows))
}

fn step(runner: &Runner<'_, Cpu>, rows: &mut [Row<'_>]) -> Result<Vec<f32>> {
    let (cfg, be) = (runner.config(), &Cpu);
    let n = rows.len();
    let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    for row in rows.iter() {
        if row.cache.len == 0 || row.cache.len >= row.cache.capacity {
            return Err(Error::Invalid(format!(
                "a batched step needs a started sequence with room for one more token (cache {} of {})",
                row.cache.len, row.cache.capacity
            )));
        }
        if row.token as usize >= v {
            return Err(Error::Invalid(format!("token id {} is outside the vocabulary of {v}", row.token)));
        }
        if let Some(a) = row.adapter {
            a.check(cfg)?;
        }
    }
    let mut x = vec![0.0f32; n * c]; // the residual stream: [N, C]
    for (row, xr) in rows.iter().zip(x.chunks_exact_mut(c)) {
        let mut one = vec![0.0f32; c];
        match row.adapter.and_then(|a| a.embed_tokens.as_ref()) {
            Some(trained) => be.embedding_forward(&mut one, &[row.token], Vocab::Frozen(&trained), c)?,
            None => be.embedding_forward(&mut one, &[row.token], Vocab::Frozen(runner.embed_tokens()), c)?,
        }
        xr.copy_from_slice(&one);
    }
    if let Some(s) = cfg.embedding_scale() {
        be.scale(&mut x, s)?;
    }
    let positions: Vec<usize> = rows.iter().map(|r| r.cache.len).collect();
    let tables = runner.model().rope_tables(be, positions.into_iter())?; // [N, D/2] each
    let mut h = vec![0.0f32; n * c]; // normalised input of a sublayer: [N, C]
    let mut q = vec![0.0f32; n * qd]; // [N, NH·D]
    let mut k = vec![0.0f32; n * kvd]; // [N, NKV·D]
    let mut val = vec![0.0f32; n * kvd];
    let mut att = vec![0.0f32; n * qd]; // [N, NH·D]
    let mut gate = vec![0.0f32; n * f]; // [N, F]
    let mut up = vec![0.0f32; n * f];
    let mut act = vec![0.0f32; n * f];
    let mut sub = cfg.arch.sandwich_norms().then(|| vec![0.0f32; n * c]); // Gemma: a sublayer's output, [N, C]
    let adapters: Vec<Option<&UnmergedAdapter>> = rows.iter().map(|r| r.adapter).collect();
    let mut qk_raw = cfg.arch.qk_norm().then(|| (vec![0.0f32; n * qd], vec![0.0f32; n * kvd]));
    // The runner's products for one row alone: decode products (up to DOT_MAX_ROWS rows share them) unless exact.
    let decode = runner.decode_products(1);
    for l in 0..cfg.num_hidden_layers {
        let mut linear = |y: &mut Vec<f32>, x: &Vec<f32>, m: TargetModule, accumulate: bool| -> Result<()> {
            project(y, x, runner.module(l, m), &adapters, l, m, accumulate, decode);
            Ok(())
        };
        // x = x + o_proj(attention(q, k, v)), the inputs from h = rmsnorm(x) as every forward makes them; each row
        // attends over its own cache.
        let qkv = Qkv { q: &mut q, k: &mut k, v: &mut val, raw: qk_raw.as_mut() };
        let (cos, sin) = tables.layer(cfg, l);
        runner.attention_inputs(l, &x, &mut h, qkv, cos, sin, n, &mut linear)?;
        for (i, row) in rows.iter_mut().enumerate() {
            let p = row.cache.len;
            let (kc, vc) = row.cache.layer_mut(l);
            kc[p * kvd..(p + 1) * kvd].copy_from_slice(&k[i * kvd..(i + 1) * kvd]);
            vc[p * kvd..(p + 1) * kvd].copy_from_slice(&val[i * kvd..(i + 1) * kvd]);
            let (mut att_i, q_i) = (vec![0.0f32; qd], q[i * qd..(i + 1) * qd].to_vec());
            be.attention_forward_cached(&mut att_i, &q_i, kc, vc, 1, p, cfg.layer_window(l), nh, nkv, d)?;
            att[i * qd..(i + 1) * qd].copy_from_slice(&att_i);
        }
        runner.attention_output(l, &mut x, &mut h, sub.as_mut(), &att, &mut linear)?;
        runner.mlp(l, &mut x, &mut h, (&mut gate, &mut up, &mut act), sub.as_mut(), &mut linear)?;
    }
    for row in rows.iter_mut() {
        row.cache.len += 1;
    }
    be.rmsnorm_forward(&mut h, &x, runner.norm(), c, cfg.rms_norm_eps)?;

    // The head: the base's for the rows whose adapter has none, each trained head for its own rows.
    let tied = runner.model().weights.lm_head.is_none();
    let head_of = |i: usize| -> Option<&FrozenMatrix> {
        let a = adapters[i]?;
        a.lm_head.as_ref().or(a.embed_tokens.as_ref().filter(|_| tied))
    };
    let mut logits = vec![0.0f32; n * v];
    let base_rows: Vec<usize> = (0..n).filter(|&i| head_of(i).is_none()).collect();
    rows_through(&mut logits, &h, runner.head(), &base_rows, false, decode);
    for i in 0..n {
        if let Some(trained) = head_of(i) {
            rows_through(&mut logits, &h, trained, &[i], false, decode);
        }
    }
    Ok(logits)
}

/// y[N, O] = (accumulate ? y : 0) + x·Wᵀ, plus scale · (x·Aᵀ)·Bᵀ for each row whose adapter adapts module `m` of
/// layer `l` — the same operations, in the same order, as `lora_forward` on that row alone.
#[allow(clippy::too_many_arguments)]
fn project(
    y: &mut [f32],
    x: &[f32],
    w: &FrozenMatrix,
    adapters: &[Option<&UnmergedAdapter>],
    l: usize,
    m: TargetModule,
    accumulate: bool,
    decode: bool,
) {
    let all: Vec<usize> = (0..adapters.len()).collect();
    rows_through(y, x, w, &all, accumulate, decode);
    let (i, o) = (w.cols, w.rows);
    for (row, a) in adapters.iter().enumerate() {
        let Some(lora) = a.and_then(|a| a.layers[l][m.index()].as_ref()) else { continue };
        let mut xa = vec![0.0f32; lora.r]; // [1, R]
        matmul_nt(&mut xa, &x[row * i..(row + 1) * i], &lora.a, 1, i, lora.r, 1.0, false);
        matmul_nt(&mut y[row * o..(row + 1) * o], &xa, &lora.b, 1, lora.r, o, lora.scale, true);
    }
}

/// y[row] = (accumulate ? y[row] : 0) + x[row]·Wᵀ for the listed rows: consecutive runs of up to [`DOT_MAX_ROWS`]
/// rows share one pass over a quantized W; f32 and NF4 weights take a row at a time. `decode`: through
/// [`FrozenMatrix::decode_forward`] (8-bit activations), as the runner's decode products.
fn rows_through(y: &mut [f32], x: &[f32], w: &FrozenMatrix, rows: &[usize], accumulate: bool, decode: bool) {
    let (i, o) = (w.cols, w.rows);
    let at_once = match w.dtype() {
        Some(t) if t != gguf::GgmlType::F32 => DOT_MAX_ROWS,
        _ => 1,
    };
    let mut start = 0;
    while start < rows.len() {
        // A run of consecutive rows, at most `at_once` long.
        let mut end = start + 1;
        while end < rows.len() && end - start < at_once && rows[end] == rows[end - 1] + 1 {
            end += 1;
        }
        let (r0, r1) = (rows[start], rows[end - 1] + 1);
        let (y, x) = (&mut y[r0 * o..r1 * o], &x[r0 * i..r1 * i]);
        match decode {
            true => w.decode_forward(y, x, r1 - r0, accumulate),
            false => w.forward(y, x, r1 - r0, accumulate),
        }
        start = end;
    }
}
