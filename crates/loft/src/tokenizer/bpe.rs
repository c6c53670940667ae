//! Byte-level BPE (`tokenizer.ggml.model = gpt2`): pre-tokenize, map each byte to a printable character
//! (GPT-2's table), then merge adjacent symbols lowest rank first (leftmost on ties), as llama.cpp and
//! Hugging Face's `BPE` model do.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::pretokenizer::PreTokenizer;

/// GPT-2's byte → character table: printable Latin-1 bytes stand for themselves, the others are moved to
/// U+0100 and up, in byte order.
pub(crate) fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// Where a `"left right"` merge splits: the first space after the first character (a token may be " ").
pub(crate) fn split_merge(merge: &str) -> Option<usize> {
    let first = merge.chars().next()?.len_utf8();
    merge[first..].find(' ').map(|p| p + first)
}

/// Merge table and pre-tokenizer of one vocabulary.
#[derive(Debug)]
pub(crate) struct Bpe {
    /// (left id, right id) → (rank, merged id).
    ranks: HashMap<(u32, u32), (u32, u32)>,
    /// The token of each single byte's character, if the vocabulary has one.
    byte_token: [Option<u32>; 256],
    byte_char: [char; 256],
    pre: PreTokenizer,
    ignore_merges: bool,
}

impl Bpe {
    /// `merges` are `"left right"` strings by rank. Merges naming a string that is not a token can never
    /// apply to token symbols and are dropped.
    pub fn new(token_to_id: &HashMap<String, u32>, merges: &[String], pre: PreTokenizer, ignore_merges: bool) -> Self {
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            let Some(pos) = split_merge(merge) else { continue };
            let (left, right) = (&merge[..pos], &merge[pos + 1..]);
            let (Some(&l), Some(&r), Some(&m)) =
                (token_to_id.get(left), token_to_id.get(right), token_to_id.get(&format!("{left}{right}")))
            else {
                continue;
            };
            ranks.entry((l, r)).or_insert((rank as u32, m));
        }
        let byte_char = byte_to_char();
        let byte_token = std::array::from_fn(|b| token_to_id.get(byte_char[b].to_string().as_str()).copied());
        Bpe { ranks, byte_token, byte_char, pre, ignore_merges }
    }

    pub fn encode(&self, text: &str, token_to_id: &HashMap<String, u32>, out: &mut Vec<u32>) {
        for word in self.pre.split(text) {
            if self.ignore_merges {
                let encoded: String = word.bytes().map(|b| self.byte_char[b as usize]).collect();
                if let Some(&id) = token_to_id.get(&encoded) {
                    out.push(id);
                    continue;
                }
            }
            self.merge_word(word.as_bytes(), out);
        }
    }

    /// One pre-tokenized word: symbols start as single bytes and merge pairwise by rank.
    fn merge_word(&self, word: &[u8], out: &mut Vec<u32>) {
        if let [b] = word {
            out.extend(self.byte_token[*b as usize]);
            return;
        }
        // A doubly linked list of symbols; a merged-away symbol has `alive = false`.
        struct Symbol {
            id: Option<u32>,
            prev: usize,
            next: usize,
            alive: bool,
        }
        const NONE: usize = usize::MAX;
        let n = word.len();
        let mut symbols: Vec<Symbol> = word
            .iter()
            .enumerate()
            .map(|(i, &b)| Symbol {
                id: self.byte_token[b as usize],
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
                alive: true,
            })
            .collect();
        // (rank, left index) smallest first; the ids are kept to notice stale entries.
        let mut queue: BinaryHeap<Reverse<(u32, usize, u32, u32)>> = BinaryHeap::new();
        let push = |queue: &mut BinaryHeap<_>, symbols: &[Symbol], left: usize| {
            if left == NONE || symbols[left].next == NONE {
                return;
            }
            let right = symbols[left].next;
            if let (Some(l), Some(r)) = (symbols[left].id, symbols[right].id) {
                if let Some(&(rank, _)) = self.ranks.get(&(l, r)) {
                    queue.push(Reverse((rank, left, l, r)));
                }
            }
        };
        for i in 0..n {
            push(&mut queue, &symbols, i);
        }
        while let Some(Reverse((_, left, l, r))) = queue.pop() {
            let right = symbols[left].next;
            if !symbols[left].alive || right == NONE || symbols[left].id != Some(l) || symbols[right].id != Some(r) {
                continue;
            }
            let merged = self.ranks[&(l, r)].1;
            symbols[left].id = Some(merged);
            symbols[right].alive = false;
            let after = symbols[right].next;
            symbols[left].next = after;
            if after != NONE {
                symbols[after].prev = left;
            }
            push(&mut queue, &symbols, symbols[left].prev);
            push(&mut queue, &symbols, left);
        }
        // A byte whose character is not a token is dropped, as llama.cpp drops it.
        out.extend(symbols.iter().filter(|s| s.alive).filter_map(|s| s.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = byte_to_char();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń');
    }
}
