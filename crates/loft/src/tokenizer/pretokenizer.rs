//! Pre-tokenizers of byte-level BPE models, named as `tokenizer.ggml.pre` names them.
//!
//! A pre-tokenizer is a list of regexes applied in turn, as llama.cpp and Hugging Face's `Split(Isolated)` do:
//! each regex cuts every piece so far into its matches and the text between them (which is kept as pieces too).
//! The patterns are llama.cpp's (`src/llama-vocab.cpp`), with `(?i:'s|…)` spelled `'[sS]|…` as llama.cpp
//! spells it: Unicode case folding would also match `ſ` and `K` (Kelvin sign).

use fancy_regex::Regex;

const CONTRACTIONS: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// A named pre-tokenizer: its regexes and the switches llama.cpp ties to the name.
#[derive(Clone, Debug)]
pub(crate) struct PreTokenizerSpec {
    pub patterns: Vec<String>,
    /// A piece that is itself a token is taken whole, without running the merges (llama 3, tekken).
    pub ignore_merges: bool,
    /// Whether a BOS is added by default (when the file does not say).
    pub add_bos: bool,
}

impl PreTokenizerSpec {
    /// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre = name`; None if loft does not know the name.
    pub fn for_name(name: Option<&str>) -> Option<Self> {
        let llama3 = format!(
            r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        );
        let qwen2 = format!(
            r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        );
        let qwen35 = format!(
            r"{CONTRACTIONS}|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}\p{{M}}]+|\p{{N}}| ?[^\s\p{{L}}\p{{M}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        );
        let upper = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]";
        let lower = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]";
        let gpt4o = format!(
            r"[^\r\n\p{{L}}\p{{N}}]?{upper}*{lower}+{CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{upper}+{lower}*{CONTRACTIONS}?|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        );
        let tekken = format!(
            r"[^\r\n\p{{L}}\p{{N}}]?{upper}*{lower}+|[^\r\n\p{{L}}\p{{N}}]?{upper}+{lower}*|\p{{N}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        );
        let spec = |patterns: &[&str], ignore_merges: bool, add_bos: bool| PreTokenizerSpec {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            ignore_merges,
            add_bos,
        };
        Some(match name.unwrap_or("default") {
            "default" => spec(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"], false, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
            | "jina-v5-nano" => spec(&[&llama3], true, true),
            "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => spec(&[&llama3], false, false),
            "deepseek-coder" => {
                spec(&["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"], false, false)
            }
            "falcon" => spec(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"], false, false),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
                spec(&[r"\p{N}", GPT2], false, false)
            }
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0"
            | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" | "exaone4"
            | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => spec(&[GPT2], false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "stablelm2" | "hunyuan" | "megrez" | "solar-open" => {
                spec(&[&qwen2], false, false)
            }
            "qwen35" => spec(&[&qwen35], false, false),
            "poro-chat" | "bloom" | "gpt3-finnish" => spec(&[r" ?[^(\s|.,!?…。，、।۔،)]+"], false, false),
            "gpt-4o" | "llama4" | "kanana2" | "talkie" => spec(&[&gpt4o], false, false),
            "tekken" => spec(&[&tekken], true, true),
            _ => return None,
        })
    }

    pub fn compile(&self) -> Result<PreTokenizer, fancy_regex::Error> {
        let regexes = self.patterns.iter().map(|p| Regex::new(p)).collect::<Result<_, _>>()?;
        Ok(PreTokenizer { regexes })
    }
}

/// Compiled regexes of a [`PreTokenizerSpec`].
#[derive(Clone, Debug)]
pub(crate) struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    /// Cuts `text` into pieces; concatenated, the pieces are `text` again.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut start = 0;
                for m in re.find_iter(piece) {
                    // A regex that gives up (backtrack limit) leaves the rest of the piece whole.
                    let Ok(m) = m else { break };
                    if m.start() == m.end() {
                        continue;
                    }
                    if m.start() > start {
                        next.push(&piece[start..m.start()]);
                    }
                    next.push(m.as_str());
                    start = m.end();
                }
                if start < piece.len() {
                    next.push(&piece[start..]);
                }
            }
            pieces = next;
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm_isolates_digits_then_splits_words() {
        let pre = PreTokenizerSpec::for_name(Some("smollm")).and_then(|s| s.compile().ok());
        let pre = pre.expect("smollm compiles");
        assert_eq!(pre.split("Hello, world! 123  x"), ["Hello", ",", " world", "!", " ", "1", "2", "3", " ", " x"]);
    }

    #[test]
    fn every_named_pattern_compiles() {
        for name in ["default", "llama-bpe", "qwen2", "qwen35", "gpt-2", "smollm", "falcon", "deepseek-coder", "gpt-4o"]
        {
            let spec = PreTokenizerSpec::for_name(Some(name)).expect(name);
            assert!(spec.compile().is_ok(), "{name}");
        }
    }
}
