//! Gradient clipping by global norm and gradient accumulation over micro-batches.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use msp_model::{gradient_store, sum_gradients, take_gradients};

use crate::error::Result;

/// Clipping by the global L2 norm of all gradients (PyTorch `clip_grad_norm_`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradClipping {
    /// Maximum global norm; `None` disables clipping.
    pub max_norm: Option<f64>,
}

/// What clipping saw in the last step (logged; it is also the state record of the clipper,
/// which itself is stateless).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GradClippingState {
    /// Global norm before clipping.
    pub last_norm: f64,
    /// Factor the gradients were multiplied by (1 when not clipped).
    pub last_scale: f64,
}

/// The global L2 norm of the gradients of `vars` (variables without a gradient count as
/// zero). One host synchronisation: the squared sums stay on the device until the end.
pub fn global_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut sums: Vec<Tensor> = Vec::new();
    for v in vars {
        if let Some(g) = grads.get(v) {
            sums.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
        }
    }
    if sums.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f32>()?;
    Ok(f64::from(total).sqrt())
}

impl GradClipping {
    /// The factor to multiply the gradients by: `min(1, max_norm / (norm + 1e-6))` as PyTorch.
    /// The optimiser applies it inside its fused update, so no scaled copy is made.
    pub fn scale(&self, grads: &GradStore, vars: &[Var]) -> Result<GradClippingState> {
        let Some(max) = self.max_norm else {
            return Ok(GradClippingState {
                last_norm: f64::NAN,
                last_scale: 1.0,
            });
        };
        let norm = global_norm(grads, vars)?;
        let scale = (max / (norm + 1e-6)).min(1.0);
        Ok(GradClippingState {
            last_norm: norm,
            last_scale: scale,
        })
    }
}

/// Sums the gradients of `k` micro-batches (then step once, with the loss of each
/// micro-batch divided by `k` to average). Only the variables' gradients are kept: candle's
/// `GradStore` holds one for every tensor of a micro-batch's graph, freed as it is added.
#[derive(Debug)]
pub struct GradAccumulator {
    vars: Vec<Tensor>,
    /// The sum so far, per variable (in `vars`' order); empty before the first micro-batch.
    sum: Vec<Option<Tensor>>,
    count: usize,
}

impl GradAccumulator {
    /// An empty accumulator of the gradients of `vars`.
    pub fn new(vars: &[Var]) -> Self {
        Self {
            vars: vars.iter().map(|v| v.as_tensor().clone()).collect(),
            sum: Vec::new(),
            count: 0,
        }
    }

    /// The variables whose gradients are summed, as tensors (for
    /// [`msp_model::take_gradients`]).
    pub fn vars(&self) -> &[Tensor] {
        &self.vars
    }

    /// Adds the gradients of one micro-batch.
    pub fn add(&mut self, grads: GradStore) -> Result<()> {
        let part = take_gradients(grads, &self.vars);
        self.add_side_by_side(vec![part])
    }

    /// Adds the gradients of micro-batches run side by side, each already reduced to the
    /// variables' ([`msp_model::take_gradients`] of [`Self::vars`]): the sum so far plus
    /// each in order, as many micro-batches as parts.
    pub fn add_side_by_side(&mut self, parts: Vec<Vec<Option<Tensor>>>) -> Result<()> {
        let n = parts.len();
        let mut all = Vec::with_capacity(n + 1);
        all.push(std::mem::take(&mut self.sum));
        all.extend(parts);
        self.sum = sum_gradients(all, &self.vars)?;
        self.count += n;
        Ok(())
    }

    /// Micro-batches added since the last [`GradAccumulator::take`].
    pub fn count(&self) -> usize {
        self.count
    }

    /// The summed gradients, resetting the accumulator; `None` when nothing was added.
    pub fn take(&mut self) -> Option<GradStore> {
        if std::mem::take(&mut self.count) == 0 {
            return None;
        }
        Some(gradient_store(&self.vars, std::mem::take(&mut self.sum)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clipping_by_global_norm_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, 2.0], &dev)?;
        let b = Var::new(&[0.5f32], &dev)?;
        // loss = 3 a0 + 4 a1 + 12 b → grads (3, 4) and (12): global norm 13.
        let loss = (a
            .as_tensor()
            .mul(&Tensor::new(&[3f32, 4.0], &dev)?)?
            .sum_all()?
            + b.as_tensor().affine(12.0, 0.0)?.sum_all()?)?;
        let grads = loss.backward()?;
        let vars = [a.clone(), b.clone()];
        assert!((global_norm(&grads, &vars)? - 13.0).abs() < 1e-5);
        let st = GradClipping {
            max_norm: Some(1.0),
        }
        .scale(&grads, &vars)?;
        assert!((st.last_scale - 1.0 / (13.0 + 1e-6)).abs() < 1e-9);
        let st = GradClipping {
            max_norm: Some(100.0),
        }
        .scale(&grads, &vars)?;
        assert_eq!(st.last_scale, 1.0);
        let st = GradClipping { max_norm: None }.scale(&grads, &vars)?;
        assert_eq!(st.last_scale, 1.0);
        Ok(())
    }

    #[test]
    fn accumulation_sums_micro_batches() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, 2.0], &dev)?;
        let b = Var::new(&[5f32], &dev)?;
        let mut acc = GradAccumulator::new(&[a.clone(), b.clone()]);
        for k in [1f32, 2.0, 3.0] {
            let loss = a.as_tensor().affine(f64::from(k), 0.0)?.sum_all()?;
            acc.add(loss.backward()?)?;
        }
        // Two micro-batches side by side: 4·a and 5·a + 2·b.
        let part = |ka: f64, kb: f64| -> Result<_> {
            let loss = (a.as_tensor().affine(ka, 0.0)?.sum_all()?
                + b.as_tensor().affine(kb, 0.0)?.sum_all()?)?;
            Ok(take_gradients(loss.backward()?, acc.vars()))
        };
        let parts = vec![part(4.0, 0.0)?, part(5.0, 2.0)?];
        acc.add_side_by_side(parts)?;
        assert_eq!(acc.count(), 5);
        let sums = acc.take().unwrap();
        assert_eq!(sums.get(&a).unwrap().to_vec1::<f32>()?, vec![15.0, 15.0]);
        assert_eq!(sums.get(&b).unwrap().to_vec1::<f32>()?, vec![2.0]);
        // Only the variables' gradients are kept (the sums' own graph has none).
        assert_eq!(sums.get_ids().count(), 2);
        for k in [1f32, 2.0, 3.0] {
            let loss = a.as_tensor().affine(f64::from(k), 0.0)?.sum_all()?;
            acc.add(loss.backward()?)?;
        }
        assert_eq!(acc.count(), 3);
        let g = acc.take().and_then(|g| g.get(&a).cloned());
        assert_eq!(
            g.map(|g| g.to_vec1::<f32>()).transpose()?,
            Some(vec![6.0, 6.0])
        );
        assert_eq!(acc.count(), 0);
        assert!(acc.take().is_none());
        Ok(())
    }
}
