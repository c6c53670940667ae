//! SentencePiece BPE (`tokenizer.ggml.model = llama`), as llama.cpp runs it: symbols start as UTF-8
//! characters; the adjacent pair whose concatenation is the token with the highest score merges first
//! (leftmost on ties); a symbol that is no token falls back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The escaped space, U+2581.
pub(crate) const SPACE: &str = "\u{2581}";

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The max-heap's top is the highest score, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

/// Encodes `text` (spaces already escaped as U+2581) and appends the ids to `out`.
pub(crate) fn encode(
    text: &str,
    token_to_id: &HashMap<String, u32>,
    scores: &[f32],
    byte_token: &[Option<u32>; 256],
    unk: Option<u32>,
    out: &mut Vec<u32>,
) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let i = symbols.len();
        symbols.push(Symbol { start, len: c.len_utf8(), prev: i.wrapping_sub(1), next: i + 1 });
    }
    let Some(last) = symbols.last_mut() else { return };
    last.next = NONE;

    let score_of = |id: u32| scores.get(id as usize).copied().unwrap_or(0.0);
    let mut queue = BinaryHeap::new();
    let try_add = |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: usize, right: usize| {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (&symbols[left], &symbols[right]);
        let piece = &text[l.start..r.start + r.len];
        if let Some(&id) = token_to_id.get(piece) {
            queue.push(Bigram { score: score_of(id), left, right, size: piece.len() });
        }
    };
    for i in 1..symbols.len() {
        try_add(&mut queue, &symbols, i - 1, i);
    }
    while let Some(bigram) = queue.pop() {
        let (l, r) = (&symbols[bigram.left], &symbols[bigram.right]);
        // Stale: one side has merged since this pair was queued.
        if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
            continue;
        }
        let (right_len, right_next) = (r.len, r.next);
        symbols[bigram.left].len += right_len;
        symbols[bigram.right].len = 0;
        symbols[bigram.left].next = right_next;
        if right_next != NONE {
            symbols[right_next].prev = bigram.left;
        }
        try_add(&mut queue, &symbols, symbols[bigram.left].prev, bigram.left);
        try_add(&mut queue, &symbols, bigram.left, right_next);
    }

    let mut i = 0;
    while i != NONE {
        let s = &symbols[i];
        let piece = &text[s.start..s.start + s.len];
        match token_to_id.get(piece) {
            Some(&id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| byte_token[b as usize].or(unk))),
        }
        i = s.next;
    }
}
