//! Merging an adapter into the base weights: W' = W + scale · B·A for every adapted module (in f32: a quantized
//! base is dequantized first, never merged into 4-bit blocks), and the trained embedding / head copied in.
//! The result runs with the inference forward and is what `loft merge` writes.

use crate::engine::matmul::matmul_nn;
use crate::engine::FrozenMatrix;
use crate::error::{Error, Result};
use crate::lora::{Adapter, TargetModule};
use crate::model::Llama;

/// Folds `adapter` into `model` in place. Adapted matrices become f32; the others keep their storage.
pub fn merge_adapter(model: &mut Llama, adapter: &Adapter) -> Result<()> {
    let cfg = model.config.clone();
    if adapter.layers.len() != cfg.num_hidden_layers {
        return Err(Error::Invalid(format!(
            "the adapter has {} layers, the model {}",
            adapter.layers.len(),
            cfg.num_hidden_layers
        )));
    }
    for (l, mods) in adapter.layers.iter().enumerate() {
        for (i, lora) in mods.iter().enumerate() {
            let Some(lora) = lora else { continue };
            let m = TargetModule::ALL[i];
            let w = model.weights.layers[l].module_mut(m);
            if (w.rows, w.cols) != (lora.out_features, lora.in_features) {
                return Err(Error::Invalid(format!(
                    "layer {l} {}: the adapter is [{}, {}], the model's weight [{}, {}]",
                    m.name(),
                    lora.out_features,
                    lora.in_features,
                    w.rows,
                    w.cols
                )));
            }
            // W[O, I] += scale · B[O, R] · A[R, I]
            let mut merged = w.to_f32().into_owned();
            matmul_nn(&mut merged, &lora.b, &lora.a, lora.out_features, lora.r, lora.in_features, lora.scale, true);
            *w = FrozenMatrix::from_f32(lora.out_features, lora.in_features, merged);
        }
    }
    let (v, c) = (cfg.vocab_size, cfg.hidden_size);
    // A tied head keeps following the embedding, as it does in training (see `head_matrix` in train::forward_backward).
    if let Some(e) = &adapter.embed_tokens {
        model.weights.embed_tokens = FrozenMatrix::from_f32(v, c, e.clone());
    }
    if let Some(h) = &adapter.lm_head {
        model.weights.lm_head = Some(FrozenMatrix::from_f32(v, c, h.clone()));
        model.config.tie_word_embeddings = false;
    }
    Ok(())
}
