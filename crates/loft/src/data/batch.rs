//! Tokenized examples → batches: a seeded train/validation split, a seeded shuffle per epoch, and rows that
//! are either padded (one example per row) or packed (several examples per row of `max_seq_length`, each
//! with its own positions and attention span, and no target that crosses from one example into the next).

use super::tokenize::{Tokenized, IGNORE};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// One micro-batch: B rows of T tokens. `targets[i]` is the token that row position i must predict (already
/// shifted; negative = no loss). `positions` restart at each packed document; `doc_start[i]` is the first
/// position (within the row) of token i's document, so attention stays inside documents.
#[derive(Clone, Debug)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub input_ids: Vec<u32>,
    pub targets: Vec<i32>,
    pub positions: Vec<u32>,
    pub doc_start: Option<Vec<u32>>,
}

impl Batch {
    /// Plain causal-LM rows (no packing): each row predicts its own next tokens; the last position of a row has
    /// no target. `labels` are transformers-style (same length as the ids, -100 = ignored), shifted here.
    pub fn from_rows(rows: &[Vec<u32>], labels: &[Vec<i32>]) -> Self {
        let (b, t) = (rows.len(), rows.first().map_or(0, |r| r.len()));
        let mut input_ids = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for (r, l) in rows.iter().zip(labels) {
            assert!(r.len() == t && l.len() == t, "Batch::from_rows: ragged rows");
            input_ids.extend_from_slice(r);
            targets.extend(l[1..].iter().copied().chain(std::iter::once(-100)));
        }
        let positions = (0..b).flat_map(|_| 0..t as u32).collect();
        Batch { b, t, input_ids, targets, positions, doc_start: None }
    }

    pub fn n_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t >= 0).count()
    }
}

/// A permutation of 0..n, fixed by (seed, epoch).
pub fn shuffled_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03)).shuffle(&mut order);
    order
}

/// Splits items into (train, validation) after a seeded shuffle: `round(n · ratio)` go to validation (at
/// least one when the ratio is positive, and at least one stays in train). Each side keeps the file order.
pub fn split_train_validation<T>(items: Vec<T>, validation_ratio: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&validation_ratio) {
        return Err(Error::Invalid(format!("validation ratio {validation_ratio}: expected 0 ≤ ratio < 1")));
    }
    let n = items.len();
    let mut n_val = (n as f64 * validation_ratio).round() as usize;
    if validation_ratio > 0.0 {
        n_val = n_val.max(1);
    }
    n_val = n_val.min(n.saturating_sub(1));
    let mut is_val = vec![false; n];
    let order = shuffled_order(n, seed, u64::MAX);
    for &i in &order[..n_val] {
        is_val[i] = true;
    }
    let (mut train, mut val) = (Vec::with_capacity(n - n_val), Vec::with_capacity(n_val));
    for (item, v) in items.into_iter().zip(is_val) {
        if v {
            val.push(item);
        } else {
            train.push(item);
        }
    }
    Ok((train, val))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// One example per row, rows padded to the batch's longest example.
    Padded,
    /// Examples laid end to end in rows of `max_seq_length` (an example never split across rows).
    Packed,
}

/// Cuts a dataset into batches, one epoch at a time.
#[derive(Debug, Clone)]
pub struct Batcher {
    pub batch_size: usize,
    pub max_seq_length: usize,
    pub packing: Packing,
    /// Padding id (the tokenizer's pad id, else its EOS); padded positions carry no target.
    pub pad_id: u32,
    pub seed: u64,
    /// Shuffle each epoch (training); `false` keeps file order (evaluation).
    pub shuffle: bool,
}

impl Batcher {
    /// The batches of one epoch; the last may hold fewer rows.
    pub fn epoch(&self, examples: &[Tokenized], epoch: u64) -> Vec<Batch> {
        let order = self.order(examples.len(), epoch);
        let batch_size = self.batch_size.max(1);
        match self.packing {
            Packing::Padded => order
                .chunks(batch_size)
                .map(|chunk| {
                    let rows: Vec<&Tokenized> = chunk.iter().map(|&i| &examples[i]).collect();
                    self.padded(&rows)
                })
                .collect(),
            Packing::Packed => {
                let rows = self.pack_rows(examples, &order);
                rows.chunks(batch_size).map(|chunk| self.packed(examples, chunk)).collect()
            }
        }
    }

    /// How many batches `epoch` holds, without building them.
    pub fn batch_count(&self, examples: &[Tokenized], epoch: u64) -> usize {
        let rows = match self.packing {
            Packing::Padded => examples.len(),
            Packing::Packed => self.pack_rows(examples, &self.order(examples.len(), epoch)).len(),
        };
        rows.div_ceil(self.batch_size.max(1))
    }

    fn order(&self, n: usize, epoch: u64) -> Vec<usize> {
        if self.shuffle {
            shuffled_order(n, self.seed, epoch)
        } else {
            (0..n).collect()
        }
    }

    /// Rows padded at the end to the longest one, then `Batch::from_rows` shifts the labels into targets.
    fn padded(&self, rows: &[&Tokenized]) -> Batch {
        let t = rows.iter().map(|r| r.ids.len().min(self.max_seq_length)).max().unwrap_or(0);
        let (mut ids, mut labels) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        for r in rows {
            let n = r.ids.len().min(t);
            let mut row = r.ids[..n].to_vec();
            let mut lab = r.labels[..n].to_vec();
            row.resize(t, self.pad_id);
            lab.resize(t, IGNORE);
            ids.push(row);
            labels.push(lab);
        }
        Batch::from_rows(&ids, &labels)
    }

    /// Greedy packing in epoch order: an example goes into the current row if it fits, else starts a new one.
    fn pack_rows(&self, examples: &[Tokenized], order: &[usize]) -> Vec<Vec<usize>> {
        let mut rows: Vec<Vec<usize>> = Vec::new();
        let mut used = usize::MAX;
        for &i in order {
            let len = examples[i].ids.len().min(self.max_seq_length);
            if used.saturating_add(len) > self.max_seq_length {
                rows.push(Vec::new());
                used = 0;
            }
            if let Some(row) = rows.last_mut() {
                row.push(i);
            }
            used += len;
        }
        rows
    }

    /// Packed rows of `max_seq_length`: positions restart at 0 and `doc_start` moves at each example, the last
    /// token of each example has no target, and the padding at the end of a row is a document of its own.
    fn packed(&self, examples: &[Tokenized], rows: &[Vec<usize>]) -> Batch {
        let (b, t) = (rows.len(), self.max_seq_length);
        let mut input_ids = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        let mut positions = Vec::with_capacity(b * t);
        let mut doc_start = Vec::with_capacity(b * t);
        for row in rows {
            let mut used = 0usize;
            for &i in row {
                let ex = &examples[i];
                let n = ex.ids.len().min(t - used);
                if n == 0 {
                    continue;
                }
                input_ids.extend_from_slice(&ex.ids[..n]);
                targets.extend(ex.labels[1..n].iter().copied().chain(std::iter::once(IGNORE)));
                positions.extend(0..n as u32);
                doc_start.extend(std::iter::repeat_n(used as u32, n));
                used += n;
            }
            let pad = t - used;
            input_ids.extend(std::iter::repeat_n(self.pad_id, pad));
            targets.extend(std::iter::repeat_n(IGNORE, pad));
            positions.extend(0..pad as u32);
            doc_start.extend(std::iter::repeat_n(used as u32, pad));
        }
        Batch { b, t, input_ids, targets, positions, doc_start: Some(doc_start) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation() {
        let mut o = shuffled_order(100, 7, 3);
        assert_ne!(o, (0..100).collect::<Vec<_>>());
        o.sort();
        assert_eq!(o, (0..100).collect::<Vec<_>>());
    }
}
