//! Health of the pooled vector during pre-training.
//!
//! Every matching, topic and fine-tuning head reads the pooled vector (`tanh` pooler; for
//! LXMERT-S the product of two). If the poolers saturate on a constant input, the vector is
//! ±1 for every example and the `tanh` passes almost no gradient: the heads on it can no
//! longer learn. LXMERT-S's visual heads are gated by this vector, and from a random init
//! (the text \[CLS\] output barely depends on the input) Adam drives the poolers into that
//! state within a few dozen updates. These two numbers, logged as `pooled.abs_mean` and
//! `pooled.batch_std` in `metrics.jsonl`, show it: a healthy vector has a batch spread well
//! above 0; a saturated one has `abs_mean` → 1 and spread → 0. For LXMERT-S's product of
//! two poolers the same two numbers are logged per factor (`pooled.text.*`,
//! `pooled.visual.*`), which tells which pooler saturates.

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
        Ok(Self::of_each(&[pooled])?[0])
    }

    /// Statistics of each of `tensors` (`[B, H]` each), with one host read for all of them.
    pub fn of_each(tensors: &[&Tensor]) -> Result<Vec<Self>> {
        let mut scalars = Vec::with_capacity(2 * tensors.len());
        for t in tensors {
            let p = t.detach().to_dtype(DType::F32)?;
            scalars.push(p.abs()?.mean_all()?);
            let centred = p.broadcast_sub(&p.mean_keepdim(0)?)?;
            scalars.push(centred.sqr()?.mean(0)?.sqrt()?.mean_all()?);
        }
        let v = Tensor::stack(&scalars, 0)?.to_vec1::<f32>()?;
        Ok(v.chunks_exact(2)
            .map(|s| Self {
                abs_mean: s[0],
                batch_std: s[1],
            })
            .collect())
    }
}

/// Sums of [`PooledStats`] over the micro-batches of one update: of the pooled vector, and for
/// LXMERT-S of its text and visual factors (which of the two poolers saturates).
#[derive(Debug, Clone, Default)]
pub(crate) struct PooledSums {
    /// `[pooled, text factor, visual factor]` × `(abs_mean, batch_std)`.
    sums: [(f64, f64); 3],
    factors: bool,
}

impl PooledSums {
    /// Adds the statistics of one forward's pooled vector (and factors), read from the
    /// device once.
    pub(crate) fn add(&mut self, out: &msp_model::LxmertOutput) -> Result<()> {
        let mut tensors = vec![&out.pooled_output];
        if let Some((text, visual)) = &out.pooler_factors {
            tensors.extend([text, visual]);
            self.factors = true;
        }
        for (sum, s) in self.sums.iter_mut().zip(PooledStats::of_each(&tensors)?) {
            sum.0 += f64::from(s.abs_mean);
            sum.1 += f64::from(s.batch_std);
        }
        Ok(())
    }

    /// Adds the sums of other micro-batches.
    pub(crate) fn merge(&mut self, other: &Self) {
        for (sum, o) in self.sums.iter_mut().zip(other.sums) {
            sum.0 += o.0;
            sum.1 += o.1;
        }
        self.factors |= other.factors;
    }

    /// Writes the means over `n` micro-batches as `pooled.abs_mean`, `pooled.batch_std` and,
    /// with two poolers, `pooled.{text,visual}.{abs_mean,batch_std}`.
    pub(crate) fn insert_means(&self, m: &mut serde_json::Map<String, serde_json::Value>, n: f64) {
        let names: &[&str] = if self.factors {
            &["pooled", "pooled.text", "pooled.visual"]
        } else {
            &["pooled"]
        };
        for (name, (abs_mean, batch_std)) in names.iter().zip(self.sums) {
            m.insert(format!("{name}.abs_mean"), (abs_mean / n).into());
            m.insert(format!("{name}.batch_std"), (batch_std / n).into());
        }
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

    #[test]
    fn sums_report_each_pooler_of_a_product_pooler() -> Result<()> {
        let dev = Device::Cpu;
        let text = Tensor::new(&[[0.5f32, -0.5], [0.5, 0.5]], &dev)?;
        let visual = Tensor::new(&[[1f32, 1.0], [1.0, 1.0]], &dev)?;
        let out = msp_model::LxmertOutput {
            language_output: Tensor::zeros((2, 1, 2), DType::F32, &dev)?,
            language_rows: None,
            vision_output: Tensor::zeros((2, 1, 2), DType::F32, &dev)?,
            pooled_output: text.mul(&visual)?,
            pooler_factors: Some((text, visual)),
        };
        let mut sums = PooledSums::default();
        sums.add(&out)?;
        sums.add(&out)?;
        let mut m = serde_json::Map::new();
        sums.insert_means(&mut m, 2.0);
        let get = |k: &str| m[k].as_f64().unwrap();
        // Text: |x| 0.5 everywhere; unit 0 constant, unit 1 ±0.5 → std (0 + 0.5) / 2.
        assert!((get("pooled.text.abs_mean") - 0.5).abs() < 1e-6);
        assert!((get("pooled.text.batch_std") - 0.25).abs() < 1e-6);
        // Visual: saturated and constant.
        assert_eq!(get("pooled.visual.abs_mean"), 1.0);
        assert_eq!(get("pooled.visual.batch_std"), 0.0);
        assert!((get("pooled.abs_mean") - 0.5).abs() < 1e-6);
        assert_eq!(m.len(), 6);
        Ok(())
    }
}
