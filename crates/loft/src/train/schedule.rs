//! Learning-rate schedules as transformers' `get_scheduler` defines them: a linear warmup from 0, then linear
//! decay to 0, half a cosine to 0, or constant. The factor for optimizer step `s` (0-based) is what the step
//! uses: the first step of a warmed-up run has learning rate 0, as in the Hugging Face Trainer.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    Linear,
    Cosine,
    Constant,
}

impl SchedulerKind {
    /// `linear`, `cosine`, `constant` (also `constant_with_warmup`, which is the same with warmup steps).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "linear" => Some(SchedulerKind::Linear),
            "cosine" => Some(SchedulerKind::Cosine),
            "constant" | "constant_with_warmup" => Some(SchedulerKind::Constant),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: SchedulerKind,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// `warmup_steps` > 0 wins; otherwise ⌈warmup_ratio · total⌉ (TrainingArguments.get_warmup_steps).
    pub fn new(kind: SchedulerKind, total_steps: usize, warmup_steps: usize, warmup_ratio: f64) -> Self {
        let warmup = if warmup_steps > 0 { warmup_steps } else { (warmup_ratio * total_steps as f64).ceil() as usize };
        Schedule { kind, warmup_steps: warmup, total_steps }
    }

    /// The multiplier of the base learning rate at optimizer step `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        let (s, w, n) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        if step < self.warmup_steps {
            return s / w.max(1.0);
        }
        match self.kind {
            SchedulerKind::Constant => 1.0,
            SchedulerKind::Linear => ((n - s) / (n - w).max(1.0)).max(0.0),
            SchedulerKind::Cosine => {
                let progress = (s - w) / (n - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers() {
        // transformers 5: get_linear_schedule_with_warmup(opt, 2, 10) → lambdas for steps 0..10.
        let lin = Schedule::new(SchedulerKind::Linear, 10, 2, 0.0);
        let want = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (s, w) in want.iter().enumerate() {
            assert!((lin.factor(s) - w).abs() < 1e-12, "linear step {s}");
        }
        let cos = Schedule::new(SchedulerKind::Cosine, 10, 0, 0.2);
        assert_eq!(cos.warmup_steps, 2);
        assert!((cos.factor(2) - 1.0).abs() < 1e-12);
        assert!((cos.factor(6) - 0.5).abs() < 1e-12);
        let c = Schedule::new(SchedulerKind::Constant, 10, 3, 0.0);
        assert!((c.factor(1) - 1.0 / 3.0).abs() < 1e-12 && c.factor(9) == 1.0);
        assert_eq!(Schedule::new(SchedulerKind::Linear, 7, 0, 0.1).warmup_steps, 1);
    }
}
