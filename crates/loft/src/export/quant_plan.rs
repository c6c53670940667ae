//! Which block type each weight matrix of an exported GGUF gets: one type for the plain exports, or llama.cpp's
//! Q4_K_M mix (`llama_tensor_get_type_impl` and `tensor_type_fallback` in llama.cpp's src/llama-quant.cpp):
//!
//! - `output.weight`, and `token_embd.weight` when the head is tied to it: Q6_K (Q8_0 when its rows are not whole
//!   256-value blocks);
//! - `attn_v` and `ffn_down` of the "more bits" layers (the first and last eighth, and every third layer between):
//!   Q6_K;
//! - every other matrix: Q4_K.
//!
//! A K-quant needs rows that are whole 256-value blocks; where they are not, llama.cpp falls back (Q4_K → Q5_0,
//! Q6_K → Q8_0, then F16 if even 32 does not divide the row), and so does this plan, with a note naming the tensor.
//! Vectors (norms, rope_freqs) stay F32 in every export.

use gguf::GgmlType;

/// The element type of the exported weight matrices (norms stay F32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufQuant {
    F32,
    F16,
    Q8_0,
    Q4_0,
    /// llama.cpp's Q4_K_M mix of Q4_K and Q6_K.
    Q4KM,
}

impl GgufQuant {
    /// The spellings `--quant` accepts.
    pub const NAMES: &'static str = "f32, f16, q8_0, q4_0 or q4_k_m";

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(GgufQuant::F32),
            "f16" => Some(GgufQuant::F16),
            "q8_0" => Some(GgufQuant::Q8_0),
            "q4_0" => Some(GgufQuant::Q4_0),
            "q4_k_m" => Some(GgufQuant::Q4KM),
            _ => None,
        }
    }

    /// llama.cpp's `llama_ftype` number for `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            GgufQuant::F32 => 0,
            GgufQuant::F16 => 1,
            GgufQuant::Q4_0 => 2,
            GgufQuant::Q8_0 => 7,
            GgufQuant::Q4KM => 15,
        }
    }

    /// The block type of the 2-D tensor `name` (llama.cpp's name, e.g. `blk.3.attn_v.weight`) with rows of
    /// `row_len` values, in a model of `n_layers` blocks whose head is `tied` to the embedding; with a note when
    /// the rows forced a fallback.
    pub fn matrix_type(self, name: &str, row_len: usize, n_layers: usize, tied: bool) -> (GgmlType, Option<String>) {
        let wanted = match self {
            GgufQuant::F32 => GgmlType::F32,
            GgufQuant::F16 => GgmlType::F16,
            GgufQuant::Q8_0 => GgmlType::Q8_0,
            GgufQuant::Q4_0 => GgmlType::Q4_0,
            GgufQuant::Q4KM => {
                let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
                if is_output && !fits(GgmlType::Q6K, row_len) && fits(GgmlType::Q8_0, row_len) {
                    // llama.cpp picks Q8_0 for an output matrix whose rows a K-quant cannot hold (not a "fallback"
                    // in its log, but the same cause).
                    let note = fallback_note(name, row_len, GgmlType::Q6K, GgmlType::Q8_0);
                    return (GgmlType::Q8_0, Some(note));
                }
                q4_k_m_choice(name, n_layers, is_output)
            }
        };
        if fits(wanted, row_len) {
            return (wanted, None);
        }
        let fallback = match wanted {
            GgmlType::Q4K => GgmlType::Q5_0,
            GgmlType::Q5K => GgmlType::Q5_1,
            GgmlType::Q6K => GgmlType::Q8_0,
            _ => GgmlType::F16,
        };
        let fallback = if fits(fallback, row_len) { fallback } else { GgmlType::F16 };
        (fallback, Some(fallback_note(name, row_len, wanted, fallback)))
    }
}

fn fits(dtype: GgmlType, row_len: usize) -> bool {
    row_len.is_multiple_of(dtype.block_size())
}

fn fallback_note(name: &str, row_len: usize, wanted: GgmlType, got: GgmlType) -> String {
    format!("{name}: rows of {row_len} are not whole {}-value {wanted} blocks; written as {got}", wanted.block_size())
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third layer in between.
pub fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2
}

/// Q4_K_M before any fallback.
fn q4_k_m_choice(name: &str, n_layers: usize, is_output: bool) -> GgmlType {
    if is_output {
        return GgmlType::Q6K;
    }
    let Some((layer, rest)) = name.strip_prefix("blk.").and_then(|s| s.split_once('.')) else {
        return GgmlType::Q4K;
    };
    let Ok(layer) = layer.parse::<usize>() else { return GgmlType::Q4K };
    let more_bits_kind = rest == "attn_v.weight" || rest == "ffn_down.weight";
    if more_bits_kind && use_more_bits(layer, n_layers) {
        GgmlType::Q6K
    } else {
        GgmlType::Q4K
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_of_a_30_layer_model() {
        let layers: Vec<usize> = (0..30).filter(|&l| use_more_bits(l, 30)).collect();
        assert_eq!(layers, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        let layers: Vec<usize> = (0..32).filter(|&l| use_more_bits(l, 32)).collect();
        assert_eq!(layers, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
    }

    #[test]
    fn q4_k_m_with_whole_blocks() {
        let q = GgufQuant::Q4KM;
        let t = |name: &str, tied: bool| q.matrix_type(name, 512, 32, tied);
        assert_eq!(t("output.weight", false), (GgmlType::Q6K, None));
        assert_eq!(t("token_embd.weight", false), (GgmlType::Q4K, None));
        assert_eq!(t("token_embd.weight", true), (GgmlType::Q6K, None));
        assert_eq!(t("blk.3.attn_v.weight", false), (GgmlType::Q6K, None));
        assert_eq!(t("blk.4.attn_v.weight", false), (GgmlType::Q4K, None));
        assert_eq!(t("blk.6.ffn_down.weight", false), (GgmlType::Q6K, None));
        assert_eq!(t("blk.7.ffn_down.weight", false), (GgmlType::Q4K, None));
        assert_eq!(t("blk.0.attn_q.weight", false), (GgmlType::Q4K, None));
        assert_eq!(t("blk.0.ffn_gate.weight", false), (GgmlType::Q4K, None));
    }

    #[test]
    fn q4_k_m_falls_back_as_llama_cpp_does() {
        let q = GgufQuant::Q4KM;
        let (t, note) = q.matrix_type("blk.4.attn_q.weight", 576, 30, true);
        assert_eq!(t, GgmlType::Q5_0);
        assert_eq!(
            note.as_deref(),
            Some("blk.4.attn_q.weight: rows of 576 are not whole 256-value Q4_K blocks; written as Q5_0")
        );
        assert_eq!(q.matrix_type("blk.5.attn_v.weight", 576, 30, true).0, GgmlType::Q8_0);
        assert_eq!(q.matrix_type("token_embd.weight", 576, 30, true).0, GgmlType::Q8_0);
        assert_eq!(q.matrix_type("blk.4.ffn_down.weight", 1536, 30, true), (GgmlType::Q4K, None));
        assert_eq!(q.matrix_type("blk.5.ffn_down.weight", 1536, 30, true), (GgmlType::Q6K, None));
        assert_eq!(q.matrix_type("blk.5.ffn_down.weight", 40, 30, true).0, GgmlType::F16);
        assert_eq!(GgufQuant::Q8_0.matrix_type("blk.0.attn_q.weight", 40, 2, true).0, GgmlType::F16);
        assert_eq!(GgufQuant::F16.matrix_type("blk.0.attn_q.weight", 40, 2, true), (GgmlType::F16, None));
    }
}
