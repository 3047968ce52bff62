//! Linear warm-up then linear decay of the learning rate (BERT's `warmup_linear`).

use serde::{Deserialize, Serialize};

/// `lr(step) = base_lr × warmup_linear(step / total_steps, warmup)`, with
/// `warmup_linear(x, w) = x / w` for `x < w`, else `max((x − 1) / (w − 1), 0)`
/// (pytorch-pretrained-bert, used by LXMERT's BertAdam). The factor is evaluated at the
/// number of updates done *before* the current one, so the first update has lr 0 when
/// `warmup > 0` (LXMERT's behaviour, reference §3.7).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearWarmupDecay {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Warm-up as a fraction of `total_steps` (LXMERT: 0.05).
    pub warmup: f64,
    /// Total number of optimiser updates of the stage.
    pub total_steps: u64,
}

/// The resumable state of a [`LinearWarmupDecay`]: the number of updates done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LrSchedulerState {
    /// Updates done so far.
    pub step: u64,
}

/// BERT's `warmup_linear(x, warmup)`.
pub fn warmup_linear(x: f64, warmup: f64) -> f64 {
    if x < warmup {
        x / warmup
    } else if warmup >= 1.0 {
        // Degenerate (warm-up over the whole stage): x ≥ 1 here, keep the peak.
        1.0
    } else {
        ((x - 1.0) / (warmup - 1.0)).max(0.0)
    }
}

impl LinearWarmupDecay {
    /// The multiplier of `base_lr` after `step` updates.
    pub fn factor(&self, step: u64) -> f64 {
        if self.total_steps == 0 {
            return 1.0;
        }
        warmup_linear(step as f64 / self.total_steps as f64, self.warmup)
    }

    /// The learning rate of the update that follows `step` done updates.
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }

    /// The learning rate of the next update for a saved state.
    pub fn lr_at(&self, state: LrSchedulerState) -> f64 {
        self.lr(state.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_decay_by_hand() {
        // 10 updates, warm-up 0.2 → 2 warm-up updates.
        let s = LinearWarmupDecay {
            base_lr: 1e-4,
            warmup: 0.2,
            total_steps: 10,
        };
        // x = 0, 0.1 → 0, 0.5 of the peak; x = 0.2 → (0.2-1)/(0.2-1) = 1; x = 0.6 → 0.5;
        // x = 0.9 → 0.125; x = 1 → 0.
        let expect = [
            (0, 0.0),
            (1, 0.5),
            (2, 1.0),
            (6, 0.5),
            (9, 0.125),
            (10, 0.0),
            (12, 0.0),
        ];
        for (step, f) in expect {
            assert!((s.factor(step) - f).abs() < 1e-12, "step {step}");
            assert!((s.lr(step) - 1e-4 * f).abs() < 1e-18);
        }
        assert_eq!(s.lr_at(LrSchedulerState { step: 1 }), s.lr(1));
    }

    #[test]
    fn no_warm_up_starts_at_the_peak() {
        let s = LinearWarmupDecay {
            base_lr: 2.0,
            warmup: 0.0,
            total_steps: 4,
        };
        assert_eq!(s.lr(0), 2.0);
        assert_eq!(s.lr(2), 1.0);
        assert_eq!(s.lr(4), 0.0);
    }
}
