//! Choosing the next token from logits: greedy, or temperature with top-k and top-p (nucleus) filtering, from a
//! seeded generator so a run can be repeated exactly.

use crate::rng::SplitMix64;

#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities sum to at least p; 1 keeps all.
    pub top_p: f32,
    pub seed: u64,
    /// transformers' `repetition_penalty`: the logit of every token already in the prompt or the answer is divided
    /// by it when positive, multiplied when negative; 1 turns it off.
    pub repetition_penalty: f32,
    /// OpenAI's `frequency_penalty`: each logit loses this much for every time its token was already chosen in the
    /// answer; 0 turns it off.
    pub frequency_penalty: f32,
    /// OpenAI's `presence_penalty`: each logit loses this much once its token was chosen in the answer.
    pub presence_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
        }
    }
}

/// Applies `penalty` (as [`SamplingParams::repetition_penalty`]) to the logits of the tokens marked in `seen`.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[bool], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for (l, _) in logits.iter_mut().zip(seen).filter(|(_, &s)| s) {
        *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
    }
}

/// OpenAI's frequency and presence penalties (its API reference): logit[j] −= counts[j]·frequency +
/// (counts[j] > 0)·presence, counts[j] being how often token j was chosen before this position.
pub fn apply_openai_penalties(logits: &mut [f32], counts: &[u32], frequency: f32, presence: f32) {
    for (l, &c) in logits.iter_mut().zip(counts).filter(|(_, &c)| c > 0) {
        *l -= c as f32 * frequency + presence;
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = SplitMix64::new(params.seed);
        Sampler { params, rng }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature as f64;
        let mut cand: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l as f64 * inv_t)).collect();
        // Descending by logit; ties by id so the order is deterministic.
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 && self.params.top_k < cand.len() {
            cand.truncate(self.params.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let r = self.rng.next_f64();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_penalties_as_its_reference_says() {
        let mut l = vec![1.0, 1.0, 1.0];
        apply_openai_penalties(&mut l, &[0, 1, 3], 0.5, 0.25);
        assert_eq!(l, vec![1.0, 0.25, -0.75]);
    }

    #[test]
    fn repetition_penalty_as_transformers() {
        let mut l = vec![2.0, -2.0, 3.0];
        apply_repetition_penalty(&mut l, &[true, true, false], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 3.0]);
    }

    #[test]
    fn greedy_takes_argmax_and_filters_restrict_choices() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        assert_eq!(Sampler::new(SamplingParams::default()).sample(&logits), 1);
        let mut top1 = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 3,
            ..SamplingParams::default()
        });
        assert!((0..50).all(|_| top1.sample(&logits) == 1));
        let mut nucleus = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
            seed: 3,
            ..SamplingParams::default()
        });
        assert!((0..200).all(|_| matches!(nucleus.sample(&logits), 1 | 2)));
        let mut all = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 0,
            top_p: 1.0,
            seed: 9,
            ..SamplingParams::default()
        });
        let seen: std::collections::BTreeSet<u32> = (0..500).map(|_| all.sample(&logits)).collect();
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn same_seed_same_stream() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 42, ..SamplingParams::default() };
        let (mut a, mut b) = (Sampler::new(p.clone()), Sampler::new(p));
        let xa: Vec<u32> = (0..20).map(|_| a.sample(&logits)).collect();
        let xb: Vec<u32> = (0..20).map(|_| b.sample(&logits)).collect();
        assert_eq!(xa, xb);
    }
}
