//! Health of the pooled vector during pre-training.
//!
//! Every matching, topic and fine-tuning head reads the pooled vector (`tanh` pooler; for
//! LXMERT-S the product of two). If the poolers saturate on a constant input, the vector is
//! ±1 for every example and the `tanh` passes almost no gradient: the heads on it can no
//! longer learn. LXMERT-S's visual heads are gated by this vector, and from a random init
//! (the text \[CLS\] output barely depends on the input) Adam drives the poolers into that
//! state within a few dozen updates. These two numbers, logged as `pooled.abs_mean` and
//! `pooled.batch_std` in `metrics.jsonl`, show it: a healthy vector has a batch spread well
//! above 0; a saturated one has `abs_mean` → 1 and spread → 0.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// Mean |pooled| and mean (over hidden units) of the standard deviation across the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PooledStats {
    /// Mean absolute value of every entry.
    pub abs_mean: f32,
    /// Population standard deviation of each hidden unit over the batch, averaged over units.
    pub batch_std: f32,
}

impl PooledStats {
    /// Statistics of `pooled` `[B, H]` (one host read: it runs on every training step).
    pub fn of(pooled: &Tensor) -> Result<Self> {
        let p = pooled.detach().to_dtype(DType::F32)?;
        let abs_mean = p.abs()?.mean_all()?;
        let centred = p.broadcast_sub(&p.mean_keepdim(0)?)?;
        let batch_std = centred.sqr()?.mean(0)?.sqrt()?.mean_all()?;
        let v = Tensor::stack(&[abs_mean, batch_std], 0)?.to_vec1::<f32>()?;
        Ok(Self {
            abs_mean: v[0],
            batch_std: v[1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn hand_computed_values() -> Result<()> {
        // Unit 0: 1, -1 → |x| 1, std 1. Unit 1: 0.5, 0.5 → |x| 0.5, std 0.
        let p = Tensor::new(&[[1f32, 0.5], [-1.0, 0.5]], &Device::Cpu)?;
        let s = PooledStats::of(&p)?;
        assert!((s.abs_mean - 0.75).abs() < 1e-6, "{s:?}");
        assert!((s.batch_std - 0.5).abs() < 1e-6, "{s:?}");
        Ok(())
    }

    #[test]
    fn saturated_constant_vector_has_no_spread() -> Result<()> {
        let p = Tensor::new(&[[1f32, -1.0, 1.0]; 4], &Device::Cpu)?;
        let s = PooledStats::of(&p)?;
        assert_eq!(s.abs_mean, 1.0);
        assert_eq!(s.batch_std, 0.0);
        Ok(())
    }
}
