//! Causal self-attention with grouped-query heads, optionally within a sliding window (Mistral): with a window of
//! W, the query at position i sees the keys j ≤ i with i − j < W, itself and the W − 1 before it (transformers'
//! and llama.cpp's rule).
//! Legend: T = new tokens, P = positions in the cache (past + new), NH = query heads, NKV = key/value heads,
//! D = head_dim, W = window. Query head h reads key/value head h / (NH / NKV).

#![forbid(unsafe_code)]

use std::cell::RefCell;

use rayon::prelude::*;

use super::attention_tiles::{
    softmax_block, softmax_block_training, tile_product, transpose, SoftmaxStep, Store, Tiles,
};

/// out[T, NH·D] = softmax(q·kᵀ/√D, causal) · v for queries at positions p0..p0+T against k, v [P, NKV·D]
/// (P ≥ p0 + T; query t sees keys 0..=p0+t, or only the last W of them with a window). One task per query row;
/// each keeps one score row.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_cached(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    p0: usize,
    window: Option<usize>,
    nh: usize,
    nkv: usize,
    d: usize,
) {
    let (qd, kvd) = (nh * d, nkv * d);
    let group = nh / nkv;
    let scale = 1.0 / (d as f32).sqrt();
    assert!(window != Some(0), "attention: a window of 0 keys");
    debug_assert!(out.len() == t * qd && q.len() == t * qd && k.len() >= (p0 + t) * kvd && v.len() >= (p0 + t) * kvd);
    // One task per (query row, head): decoding has a single row, and its heads still spread over the threads.
    out.par_chunks_mut(d).zip(q.par_chunks(d)).enumerate().for_each_init(Vec::new, |scores, (task, (oh, qh))| {
        let (ti, h) = (task / nh, task % nh);
        let seen = p0 + ti + 1;
        let first = window.map_or(0, |w| seen.saturating_sub(w));
        let g = h / group;
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for j in first..seen {
            let s = dot(qh, &k[j * kvd + g * d..j * kvd + (g + 1) * d]) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        oh.fill(0.0);
        let inv = 1.0 / sum;
        for (j, &p) in (first..seen).zip(scores.iter()) {
            let vj = &v[j * kvd + g * d..j * kvd + (g + 1) * d];
            let p = p * inv;
            for (o, &x) in oh.iter_mut().zip(vj) {
                *o += p * x;
            }
        }
    });
}

/// Dot product with eight independent accumulators, which the compiler keeps in vector registers.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

// ---------------------------------------------------------------------------------------------------------------
// Training: flash-style causal attention over a batch of sequences.
// Legend: B = batch, T = time, NH = query heads, NKV = key/value heads, D = head_dim.
// Layouts: q, out [B, T, NH·D]; k, v [B, T, NKV·D]; lse [B, NH, T]; doc_start [B, T]. A window W bounds each
// query's first key as doc_start does: query i sees max(doc_start, i + 1 − W) ≤ j ≤ i.
//
// Scores are computed one (TILE · GROUP) × KEY_TILE block at a time with an online softmax, so memory per task is
// O(TILE · GROUP · KEY_TILE) plus its head's keys (and, in the backward, values) transposed, D × T; only out and
// the row logsumexp are saved. The backward recomputes each
// block from q, k and lse. A block stacks the GROUP = NH / NKV query heads that read one key/value head: one load of
// a key/value tile serves them all, and the products are GROUP times taller (the backward's dk/dv products deeper).
// ---------------------------------------------------------------------------------------------------------------

/// Rows of queries per score block (per query head: a block stacks GROUP of them). Smaller tiles leave less masked
/// work on the diagonal blocks: 32 against 64 measured the backward 3–7 % faster (4×256, SmolLM2-135M's heads, one
/// thread), the forward the same (measured with gemm's products, before engine::attention_tiles).
pub const TILE: usize = 32;
/// Keys per score block. A block's keys stop at its last query, so wider key blocks cost no masked work, and the
/// products get wider: 256 against 64 measured the forward 15–20 % faster and the backward ~5 % (T = 256 and
/// 1024, SmolLM2-135M's heads; gemm's products, TILE 64); 512 was no faster (TILE 32).
pub const KEY_TILE: usize = 256;

/// Causal self-attention for training: out = softmax(q·kᵀ/√D + mask) · v, saving lse[b, h, i] = log Σⱼ exp(sᵢⱼ)
/// for the backward. Query (b, i) sees keys j with doc_start[b·T + i] ≤ j ≤ i (doc_start None: from 0), so packed
/// documents do not see each other, and i − j < W with a window W; positions restarting at each document is the
/// caller's job (RoPE).
/// Query head h reads key/value head h / (NH / NKV). out and lse are overwritten. The scores' exponentials are
/// [`softmax_block_training`]'s (on AVX-512, the backward's own exp).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    doc_start: Option<&[u32]>,
    window: Option<usize>,
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    d: usize,
) {
    tiled_forward(out, lse, q, k, v, doc_start, window, b, t, nh, nkv, d, softmax_block_training)
}

/// [`attention_forward`] for an inference prefill: the exponentials are [`softmax_block`]'s, the same bits on every
/// CPU (greedy decoding after a prefill can sit close enough to a tie to flip on an exp's rounding).
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    window: Option<usize>,
    t: usize,
    nh: usize,
    nkv: usize,
    d: usize,
) {
    tiled_forward(out, lse, q, k, v, None, window, 1, t, nh, nkv, d, softmax_block)
}

/// The training forward's and the prefill's tiles, the block's softmax step by `softmax_step`.
#[allow(clippy::too_many_arguments)]
fn tiled_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    doc_start: Option<&[u32]>,
    window: Option<usize>,
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    d: usize,
    softmax_step: SoftmaxStep,
) {
    let s = Shape::new(b, t, nh, nkv, d, doc_start, window);
    assert!(out.len() == b * t * s.qd && q.len() == b * t * s.qd, "attention_forward: q/out are not [B, T, NH·D]");
    assert!(k.len() == b * t * s.kvd && v.len() == b * t * s.kvd, "attention_forward: k/v are not [B, T, NKV·D]");
    assert_eq!(lse.len(), b * nh * t, "attention_forward: lse is not [B, NH, T]");
    if t == 0 {
        return;
    }
    let (group, gd) = (s.group, s.group * d);
    // Each task owns rows [i0, i1) of one (sequence, key/value head) for all the query heads that read it: those
    // rows' GROUP·D-wide pieces of out (gathered, as out's rows interleave the groups) and, per query head, the
    // same rows of lse [B, NH, T].
    let mut out_pieces = head_pieces(out, b, t, nkv, gd);
    let mut lse_tiles: Vec<Vec<&mut [f32]>> = lse.chunks_mut(t).map(|l| l.chunks_mut(TILE).collect()).collect();
    // Task (b, g, part) takes the tiles qt ≡ part (mod split) of (sequence b, key/value head g), split as the
    // backward's are (up to one task a tile here, up to GROUP there), and lays out the head's keys transposed once for all of them.
    let tiles = t.div_ceil(TILE);
    let split = MIN_TASKS.div_ceil(b * nkv).clamp(1, tiles);
    let mut tasks = Vec::with_capacity(b * nkv * split);
    for (bg, og) in out_pieces.iter_mut().enumerate() {
        let mut parts: Vec<Vec<_>> = (0..split).map(|_| Vec::new()).collect();
        // Later tiles (more keys) first, so that the longest come first when tasks are parts.
        for (qt, o_tile) in og.chunks_mut(TILE).enumerate().rev() {
            let lse_tile: Vec<&mut [f32]> =
                lse_tiles[bg * group..(bg + 1) * group].iter_mut().map(|h| std::mem::take(&mut h[qt])).collect();
            parts[qt % split].push((qt, o_tile, lse_tile));
        }
        tasks.extend(parts.into_iter().map(|part| (bg, part)));
    }
    let rows = TILE * group;
    let ts = s.transposed_stride();
    let sizes = [rows * KEY_TILE, rows * d, rows * d, 3 * rows, d * ts];
    tasks.into_par_iter().for_each_init(Vec::new, |keys, (bg, part)| {
        with_scratch(sizes, |[sc, qp, acc, ml, kt]| {
            let (bi, g) = (bg / nkv, bg % nkv);
            // kt[D, ts]: the keys up to the part's last query, transposed.
            let last = part.iter().map(|&(qt, ..)| ((qt + 1) * TILE).min(t)).max().unwrap_or(0);
            transpose(kt, ts, &k[s.kv_at(bi, 0, g)..], s.kvd, last, d);
            for (qt, o_tile, mut lse_tile) in part {
                let (i0, i1) = (qt * TILE, ((qt + 1) * TILE).min(t));
                // The tile's rows m = r·GROUP + hl: query i0 + r of head g·GROUP + hl.
                let m = (i1 - i0) * group;
                let (qp, acc) = (&mut qp[..m * d], &mut acc[..m * d]);
                let (mx, rest) = ml[..3 * m].split_at_mut(m);
                let (l, correction) = rest.split_at_mut(m);
                pack_group_rows(qp, q, &s, bi, i0, g);
                mx.fill(f32::NEG_INFINITY);
                l.fill(0.0);
                let first = s.first_key(bi, i0, i1);
                for j0 in (first..i1).step_by(KEY_TILE) {
                    let j1 = (j0 + KEY_TILE).min(i1);
                    let bc = j1 - j0;
                    let sc = &mut sc[..m * bc];
                    let ko = s.kv_at(bi, j0, g);
                    // sc[m, bc] = scale · q_tile · k_tileᵀ
                    let kt = &kt[j0..];
                    let a_cols = None;
                    tile_product(
                        Tiles { m, n: bc, k: d, c: sc, c_stride: bc, a: qp, a_s: (d, 1), b: kt, b_stride: ts, a_cols },
                        Store::Set(s.scale),
                    );
                    keys.clear();
                    keys.extend((0..m).map(|row| s.key_range(bi, i0 + row / group, j0, j1)));
                    softmax_step(sc, bc, keys, mx, l, correction);
                    if j0 > first {
                        for (a, &c) in acc.chunks_exact_mut(d).zip(correction.iter()) {
                            a.iter_mut().for_each(|a| *a *= c);
                        }
                    }
                    // acc[m, D] (+)= p · v_tile: the first key block sets acc, the later ones add to it.
                    let (v, a_cols) = (&v[ko..], Some(&keys[..]));
                    let store = if j0 == first { Store::Set(1.0) } else { Store::Add(1.0) };
                    tile_product(
                        Tiles {
                            m,
                            n: d,
                            k: bc,
                            c: acc,
                            c_stride: d,
                            a: sc,
                            a_s: (bc, 1),
                            b: v,
                            b_stride: s.kvd,
                            a_cols,
                        },
                        store,
                    );
                }
                for (r, orow) in o_tile.iter_mut().enumerate() {
                    for (hl, (o, a)) in
                        orow.chunks_exact_mut(d).zip(acc[r * gd..(r + 1) * gd].chunks_exact(d)).enumerate()
                    {
                        let row = r * group + hl;
                        let inv = 1.0 / l[row];
                        o.iter_mut().zip(a).for_each(|(o, &a)| *o = a * inv);
                        lse_tile[hl][r] = mx[row] + l[row].ln();
                    }
                }
            }
        })
    });
}

/// The W-wide pieces of x [B, T, N·W] gathered by (sequence, n): element b·N + n lists the pieces x[b, i, n] for i in
/// 0..T, so that a task can own one head's (or one group of heads') rows without a head-major copy.
fn head_pieces(x: &mut [f32], b: usize, t: usize, n: usize, w: usize) -> Vec<Vec<&mut [f32]>> {
    let mut heads: Vec<Vec<&mut [f32]>> = (0..b * n).map(|_| Vec::with_capacity(t)).collect();
    for (at, piece) in x.chunks_exact_mut(w).enumerate() {
        let (row, h) = (at / n, at % n);
        heads[row / t * n + h].push(piece);
    }
    heads
}

/// dst[m, D] with m = r·GROUP + hl = x[b, i0 + r, (g·GROUP + hl)·D ..]: the query heads of group g stacked row by
/// row, for the tile's rows r (dst.len() / (GROUP·D) of them), so that one product covers the whole group.
fn pack_group_rows(dst: &mut [f32], x: &[f32], s: &Shape, b: usize, i0: usize, g: usize) {
    let gd = s.group * s.d;
    for (r, row) in dst.chunks_exact_mut(gd).enumerate() {
        let o = s.q_at(b, i0 + r, g * s.group);
        row.copy_from_slice(&x[o..o + gd]);
    }
}

/// Tasks per call below which each (sequence, key/value head) splits its query tiles among several tasks (the
/// backward's up to GROUP, each keeping its own dk/dv share, summed afterwards), so that few sequences of few
/// key/value heads (Gemma 3 270M has one) still spread over the threads. Above it a task takes all of a head's tiles
/// and lays out its keys (and values) transposed once, in cache for all of them.
const MIN_TASKS: usize = 8;

/// Backward of [`attention_forward`]. dq [B, T, NH·D], dk and dv [B, T, NKV·D] are OVERWRITTEN (dk, dv summed over
/// the query heads that share a key/value head). dk_heads, dv_heads: scratch [B, NH, T, D], of which the
/// tasks' dk/dv shares use the first [B, NKV, S, T, D] (S ≤ GROUP tasks per key/value head).
///
/// Per block, with P = exp(S − lse) and Δᵢ = Σ_d dOᵢ·Oᵢ: dV += Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − Δ),
/// dQ += dS·K/√D, dK += dSᵀ·Q/√D. Each product covers the GROUP query heads that read one key/value head.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dk_heads: &mut [f32],
    dv_heads: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    doc_start: Option<&[u32]>,
    window: Option<usize>,
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    d: usize,
) {
    let s = Shape::new(b, t, nh, nkv, d, doc_start, window);
    let (nq, nk) = (b * t * s.qd, b * t * s.kvd);
    assert!(dq.len() == nq && q.len() == nq && out.len() == nq && dout.len() == nq, "attention_backward: q shapes");
    assert!(dk.len() == nk && dv.len() == nk && k.len() == nk && v.len() == nk, "attention_backward: k/v shapes");
    assert!(dk_heads.len() == nq && dv_heads.len() == nq, "attention_backward: head scratch is not [B, NH, T, D]");
    assert_eq!(lse.len(), b * nh * t, "attention_backward: lse is not [B, NH, T]");
    if t == 0 {
        return;
    }
    let (group, gd) = (s.group, s.group * d);
    let tiles = t.div_ceil(TILE);
    let split = MIN_TASKS.div_ceil(b * nkv).clamp(1, group.min(tiles));
    // Task (b, g, part) owns the query tiles qt ≡ part (mod split) of (sequence b, key/value head g): their
    // GROUP·D-wide pieces of dq's rows, and its own dk/dv share [T, D].
    let mut tasks = Vec::with_capacity(b * nkv * split);
    let shares = dk_heads[..b * nkv * split * t * d].chunks_mut(t * d).zip(dv_heads.chunks_mut(t * d));
    let mut shares = shares.collect::<Vec<_>>().into_iter();
    // Unsplit, a task's share is all of its dk/dv, which it writes into their D-wide pieces itself once complete
    // (while in cache) instead of a pass over all the shares afterwards.
    let (dk_own, dv_own) = if split == 1 {
        (head_pieces(dk, b, t, nkv, d), head_pieces(dv, b, t, nkv, d))
    } else {
        (Vec::new(), Vec::new())
    };
    let mut owned = dk_own.into_iter().zip(dv_own);
    for (bg, dqg) in head_pieces(dq, b, t, nkv, gd).into_iter().enumerate() {
        let mut parts: Vec<Vec<&mut [f32]>> = (0..split).map(|_| Vec::with_capacity(t.div_ceil(split))).collect();
        for (i, piece) in dqg.into_iter().enumerate() {
            parts[i / TILE % split].push(piece);
        }
        for (part, dq_rows) in parts.into_iter().enumerate() {
            let (dkp, dvp) = shares.next().expect("a dk/dv share per task");
            tasks.push((bg, part, dq_rows, dkp, dvp, owned.next()));
        }
    }
    let rows = TILE * group;
    let ts = s.transposed_stride();
    let sizes = [rows * KEY_TILE, rows * KEY_TILE, rows * d, rows * d, rows * d, 2 * rows, d * ts, d * ts];
    let init = || (Vec::new(), Vec::new());
    tasks.into_par_iter().for_each_init(init, |(keys, key_rows), (bg, part, mut dq_rows, dkp, dvp, owned)| {
        with_scratch(sizes, |[p, ds, qp, dop, dq_tile, dl, kt, vt]| {
            let (bi, g) = (bg / nkv, bg % nkv);
            // kt, vt [D, ts]: the head's keys and values transposed, while the task's products read them.
            let o = s.kv_at(bi, 0, g);
            transpose(kt, ts, &k[o..], s.kvd, t, d);
            transpose(vt, ts, &v[o..], s.kvd, t, d);
            dkp.fill(0.0);
            dvp.fill(0.0);
            for (n, i0) in (part * TILE..t).step_by(split * TILE).enumerate() {
                let i1 = (i0 + TILE).min(t);
                let br = i1 - i0;
                // The tile's rows m = r·GROUP + hl: query i0 + r of head g·GROUP + hl.
                let m = br * group;
                let (qp, dop, dq_tile) = (&mut qp[..m * d], &mut dop[..m * d], &mut dq_tile[..m * d]);
                let (delta, row_lse) = dl[..2 * m].split_at_mut(m);
                pack_group_rows(qp, q, &s, bi, i0, g);
                pack_group_rows(dop, dout, &s, bi, i0, g);
                dq_tile.fill(0.0);
                for (row, (dl, rl)) in delta.iter_mut().zip(row_lse.iter_mut()).enumerate() {
                    let (r, h) = (row / group, g * group + row % group);
                    let o = s.q_at(bi, i0 + r, h);
                    *dl = dot(&dop[row * d..(row + 1) * d], &out[o..o + d]); // dop holds dout's row
                    *rl = lse[s.lse_at(bi, h, i0 + r)];
                }
                for j0 in (s.first_key(bi, i0, i1)..i1).step_by(KEY_TILE) {
                    let j1 = (j0 + KEY_TILE).min(i1);
                    let bc = j1 - j0;
                    let (p, ds) = (&mut p[..m * bc], &mut ds[..m * bc]);
                    let ko = s.kv_at(bi, j0, g);
                    // p = exp(scale · q·kᵀ − lse), zero outside the mask
                    keys.clear();
                    keys.extend((0..m).map(|row| s.key_range(bi, i0 + row / group, j0, j1)));
                    // Key j's column of p is zero in the rows before the first that sees up to j (each row's
                    // last key grows with the row), which bounds the rows pᵀ and dsᵀ multiply.
                    key_rows.clear();
                    let mut r = 0;
                    for j in 0..bc {
                        while r < m && keys[r].1 <= j {
                            r += 1;
                        }
                        key_rows.push((r, m));
                    }
                    let (kt, vt) = (&kt[j0..], &vt[j0..]);
                    let exp = Store::Exp { alpha: s.scale, shift: row_lse, keys };
                    let a_cols = None;
                    tile_product(
                        Tiles { m, n: bc, k: d, c: p, c_stride: bc, a: qp, a_s: (d, 1), b: kt, b_stride: ts, a_cols },
                        exp,
                    );
                    // dv_tile[bc, D] += pᵀ · dout_tile
                    let (dvp, dkp) = (&mut dvp[j0 * d..], &mut dkp[j0 * d..]);
                    let a_cols = Some(&key_rows[..]);
                    tile_product(
                        Tiles {
                            m: bc,
                            n: d,
                            k: m,
                            c: dvp,
                            c_stride: d,
                            a: p,
                            a_s: (1, bc),
                            b: dop,
                            b_stride: d,
                            a_cols,
                        },
                        Store::Add(1.0),
                    );
                    // ds = p ⊙ (dout_tile · v_tileᵀ − Δ) · scale
                    let grad = Store::SoftmaxGrad { alpha: s.scale, p, delta, keys };
                    let a_cols = None;
                    tile_product(
                        Tiles { m, n: bc, k: d, c: ds, c_stride: bc, a: dop, a_s: (d, 1), b: vt, b_stride: ts, a_cols },
                        grad,
                    );
                    // dq_tile[m, D] += ds · k_tile;  dk_tile[bc, D] += dsᵀ · q_tile
                    let k = &k[ko..];
                    tile_product(
                        Tiles {
                            m,
                            n: d,
                            k: bc,
                            c: dq_tile,
                            c_stride: d,
                            a: ds,
                            a_s: (bc, 1),
                            b: k,
                            b_stride: s.kvd,
                            a_cols: Some(keys),
                        },
                        Store::Add(1.0),
                    );
                    tile_product(
                        Tiles {
                            m: bc,
                            n: d,
                            k: m,
                            c: dkp,
                            c_stride: d,
                            a: ds,
                            a_s: (1, bc),
                            b: qp,
                            b_stride: d,
                            a_cols: Some(key_rows),
                        },
                        Store::Add(1.0),
                    );
                }
                for (piece, row) in dq_rows[n * TILE..n * TILE + br].iter_mut().zip(dq_tile.chunks_exact(gd)) {
                    piece.copy_from_slice(row);
                }
            }
            if let Some((dk_rows, dv_rows)) = owned {
                for ((kr, vr), (ks, vs)) in
                    dk_rows.into_iter().zip(dv_rows).zip(dkp.chunks_exact(d).zip(dvp.chunks_exact(d)))
                {
                    kr.copy_from_slice(ks);
                    vr.copy_from_slice(vs);
                }
            }
        })
    });
    if split == 1 {
        return;
    }
    // dk[b, j, g] = Σ over the parts of (b, g) of their shares' row j (and dv)
    let (dk_shares, dv_shares) = (&*dk_heads, &*dv_heads);
    let rows = dk.par_chunks_mut(s.kvd).zip(dv.par_chunks_mut(s.kvd));
    rows.enumerate().with_min_len(16).for_each(|(row, (dkr, dvr))| {
        let (bi, j) = (row / t, row % t);
        for g in 0..nkv {
            let (dkg, dvg) = (&mut dkr[g * d..(g + 1) * d], &mut dvr[g * d..(g + 1) * d]);
            let share = |part: usize| (((bi * nkv + g) * split + part) * t + j) * d;
            dkg.copy_from_slice(&dk_shares[share(0)..share(0) + d]);
            dvg.copy_from_slice(&dv_shares[share(0)..share(0) + d]);
            for part in 1..split {
                let o = share(part);
                dkg.iter_mut().zip(&dk_shares[o..o + d]).for_each(|(a, &x)| *a += x);
                dvg.iter_mut().zip(&dv_shares[o..o + d]).for_each(|(a, &x)| *a += x);
            }
        }
    });
}

thread_local! {
    /// Each thread's score blocks and tiles for the training attention, kept from call to call: blocks allocated
    /// afresh each call were page-faulted in again each time (a tenth of the backward's time).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs f on this thread's scratch cut into N slices of the given lengths (contents unspecified).
fn with_scratch<const N: usize, R>(lens: [usize; N], f: impl FnOnce([&mut [f32]; N]) -> R) -> R {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let total = lens.iter().sum();
        if scratch.len() < total {
            scratch.resize(total, 0.0);
        }
        let mut rest = &mut scratch[..total];
        f(lens.map(|len| {
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            piece
        }))
    })
}

/// Sizes and offsets shared by the forward and backward.
struct Shape<'a> {
    t: usize,
    nh: usize,
    d: usize,
    qd: usize,
    kvd: usize,
    group: usize,
    scale: f32,
    doc_start: Option<&'a [u32]>,
    window: Option<usize>,
}

impl<'a> Shape<'a> {
    fn new(
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        d: usize,
        doc_start: Option<&'a [u32]>,
        window: Option<usize>,
    ) -> Self {
        assert!(
            nkv > 0 && nh >= nkv && nh.is_multiple_of(nkv) && d > 0,
            "attention: NH = {nh} is not a positive multiple of NKV = {nkv}, or D = 0"
        );
        if let Some(ds) = doc_start {
            assert_eq!(ds.len(), b * t, "attention: doc_start is not [B, T]");
            assert!(ds.iter().enumerate().all(|(i, &s)| s as usize <= i % t), "attention: doc_start after its token");
        }
        assert!(window != Some(0), "attention: a window of 0 keys");
        let scale = 1.0 / (d as f32).sqrt();
        Shape { t, nh, d, qd: nh * d, kvd: nkv * d, group: nh / nkv, scale, doc_start, window }
    }

    /// Offset of q[b, i, h, 0] (also of out, dq, dout).
    fn q_at(&self, b: usize, i: usize, h: usize) -> usize {
        (b * self.t + i) * self.qd + h * self.d
    }

    /// Offset of k[b, j, g, 0] (also of v).
    fn kv_at(&self, b: usize, j: usize, g: usize) -> usize {
        (b * self.t + j) * self.kvd + g * self.d
    }

    fn lse_at(&self, b: usize, h: usize, i: usize) -> usize {
        (b * self.nh + h) * self.t + i
    }

    /// Row stride of the transposed heads [D, T]: T rounded up to 16 plus 16, so that the rows do not fall 1, 2, 4 KiB
    /// apart (T = 256, 512, 1024), where a block's rows would share a few cache sets and evict each other.
    fn transposed_stride(&self) -> usize {
        self.t.next_multiple_of(16) + 16
    }

    /// The first key query (b, i) sees: its document's start, or the window's, whichever is later.
    fn first_seen(&self, b: usize, i: usize) -> usize {
        let doc = self.doc_start.map_or(0, |ds| ds[b * self.t + i] as usize);
        let window = self.window.map_or(0, |w| (i + 1).saturating_sub(w));
        doc.max(window)
    }

    /// The first key any query of rows [i0, i1) may see.
    fn first_key(&self, b: usize, i0: usize, i1: usize) -> usize {
        (i0..i1).map(|i| self.first_seen(b, i)).min().unwrap_or(0)
    }

    /// Keys of the block [j0, j1) that query i sees, as indices into the block: [ja, jb) (empty when ja ≥ jb).
    fn key_range(&self, b: usize, i: usize, j0: usize, j1: usize) -> (usize, usize) {
        let lo = self.first_seen(b, i).max(j0);
        let hi = (i + 1).min(j1);
        (lo.saturating_sub(j0), hi.saturating_sub(j0))
    }
}
