//! Which micro-batches each optimizer step runs. Epoch e's batches are cut into groups of
//! `gradient_accumulation_steps` (the last group of an epoch takes what is left), and steps run on into the next
//! epoch until the run's length. With packing and shuffle, each epoch packs its own order into rows, so epochs
//! can hold different numbers of batches: each epoch is counted, never assumed equal to the first.

use std::ops::Range;

use crate::data::{Batcher, Tokenized};
use crate::error::{Error, Result};
use crate::train::config::TrainLength;

#[derive(Clone, Debug, PartialEq)]
pub struct StepPlan {
    /// Steps in each epoch the run reaches (the last may be cut short by the run's length).
    per_epoch: Vec<usize>,
    /// Micro-batches in each of those epochs.
    batches: Vec<usize>,
    accumulation: usize,
    total: usize,
}

impl StepPlan {
    pub fn new(batcher: &Batcher, examples: &[Tokenized], accumulation: usize, length: TrainLength) -> Result<Self> {
        if examples.is_empty() {
            return Err(Error::hinted(
                "no training examples are left after the validation split",
                "add data, or lower data.validation_split",
            ));
        }
        let accumulation = accumulation.max(1);
        let mut plan = StepPlan { per_epoch: Vec::new(), batches: Vec::new(), accumulation, total: 0 };
        let add_epoch = |plan: &mut StepPlan, want: Option<usize>| {
            let e = plan.per_epoch.len() as u64;
            let batches = batcher.batch_count(examples, e);
            let steps = batches.div_ceil(accumulation);
            let take = want.map_or(steps, |w| w.min(steps));
            plan.per_epoch.push(take);
            plan.batches.push(batches);
            plan.total += take;
        };
        match length {
            TrainLength::Steps(n) => {
                while plan.total < n {
                    let left = n - plan.total;
                    add_epoch(&mut plan, Some(left));
                }
            }
            TrainLength::Epochs(epochs) => {
                let whole = epochs.floor() as usize;
                for _ in 0..whole {
                    add_epoch(&mut plan, None);
                }
                let part = epochs - whole as f64;
                if part > 0.0 || plan.total == 0 {
                    let e = plan.per_epoch.len() as u64;
                    let steps = batcher.batch_count(examples, e).div_ceil(accumulation);
                    add_epoch(&mut plan, Some(((part * steps as f64).ceil() as usize).max(1)));
                }
            }
        }
        Ok(plan)
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Steps and micro-batches of the first epoch (for the plan's report).
    pub fn first_epoch(&self) -> (usize, usize) {
        let e0 = self.batches[0].div_ceil(self.accumulation);
        (e0, self.batches[0])
    }

    /// The epoch of step `step` (0-based) and the range of that epoch's batches it runs.
    pub fn step(&self, step: usize) -> (u64, Range<usize>) {
        let mut k = step;
        for (e, &n) in self.per_epoch.iter().enumerate() {
            if k < n {
                let start = k * self.accumulation;
                return (e as u64, start..(start + self.accumulation).min(self.batches[e]));
            }
            k -= n;
        }
        let e = self.per_epoch.len().saturating_sub(1);
        (e as u64, self.batches[e]..self.batches[e])
    }

    /// Epochs done after `done` steps, fractional within an epoch (the `epoch` of the logs).
    pub fn epochs_done(&self, done: usize) -> f64 {
        let mut k = done;
        for (e, &n) in self.per_epoch.iter().enumerate() {
            let full = self.batches[e].div_ceil(self.accumulation);
            if k <= n && k < full {
                return e as f64 + k as f64 / full as f64;
            }
            if k <= n {
                return (e + 1) as f64;
            }
            k -= n;
        }
        self.per_epoch.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Packing;

    /// Examples whose greedy packing gives a different row count for each shuffled order.
    fn examples() -> Vec<Tokenized> {
        (0..23).map(|i| Tokenized { ids: vec![1; 3 + (i * 11) % 29], labels: vec![1; 3 + (i * 11) % 29] }).collect()
    }

    fn batcher() -> Batcher {
        Batcher { batch_size: 1, max_seq_length: 40, packing: Packing::Packed, pad_id: 0, seed: 5, shuffle: true }
    }

    #[test]
    fn steps_follow_each_epochs_own_batch_count() {
        let (b, ex) = (batcher(), examples());
        let counts: Vec<usize> = (0..4).map(|e| b.batch_count(&ex, e)).collect();
        assert!(counts.iter().any(|&c| c.div_ceil(3) != counts[0].div_ceil(3)), "{counts:?}");
        for (e, &c) in counts.iter().enumerate() {
            assert_eq!(c, b.epoch(&ex, e as u64).len());
        }
        // Three whole epochs: every batch once, each step non-empty.
        let plan = StepPlan::new(&b, &ex, 3, TrainLength::Epochs(3.0)).unwrap();
        assert_eq!(plan.total(), counts[..3].iter().map(|c| c.div_ceil(3)).sum::<usize>());
        let mut used = vec![0usize; 3];
        for s in 0..plan.total() {
            let (e, r) = plan.step(s);
            assert!(!r.is_empty() && r.end <= counts[e as usize], "step {s}: epoch {e} {r:?}");
            assert_eq!(r.start, used[e as usize]);
            used[e as usize] = r.end;
        }
        assert_eq!(used, counts[..3]);
        assert_eq!(plan.epochs_done(plan.total()), 3.0);
        // A step count runs on into later epochs; half an epoch rounds up.
        let plan = StepPlan::new(&b, &ex, 3, TrainLength::Steps(counts[0].div_ceil(3) + 2)).unwrap();
        assert_eq!(plan.step(counts[0].div_ceil(3)), (1, 0..3));
        let plan = StepPlan::new(&b, &ex, 3, TrainLength::Epochs(0.5)).unwrap();
        assert_eq!(plan.total(), (0.5 * counts[0].div_ceil(3) as f64).ceil() as usize);
        assert!(StepPlan::new(&b, &[], 3, TrainLength::Epochs(1.0)).is_err());
    }
}
