//! Losses built from ops that have a backward.

use candle_core::{DType, Result, Tensor};

pub use crate::ops::cross_entropy;

/// Rows whose label is a valid class (`>= 0`); negative labels (-1 LXMERT, -100 HF) are ignored.
/// Returns (flat row indices, their labels) or `None` when every row is ignored.
pub fn kept_rows(labels: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    let v: Vec<i64> = labels.flatten_all()?.to_dtype(DType::I64)?.to_vec1()?;
    let (rows, keep): (Vec<u32>, Vec<u32>) = v
        .iter()
        .enumerate()
        .filter(|(_, &l)| l >= 0)
        .map(|(i, &l)| (i as u32, l as u32))
        .unzip();
    if rows.is_empty() {
        return Ok(None);
    }
    let dev = labels.device();
    let n = rows.len();
    Ok(Some((
        Tensor::from_vec(rows, n, dev)?,
        Tensor::from_vec(keep, n, dev)?,
    )))
}

/// Cross-entropy over the rows of `logits [N, C]` whose label is `>= 0`, averaged over those
/// rows; `None` when no row is labelled. Prefer gathering rows *before* a large projection
/// (see [`crate::LxmertForPreTraining::mlm_logits_at`]).
pub fn masked_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Option<Tensor>> {
    match kept_rows(labels)? {
        None => Ok(None),
        Some((rows, targets)) => Ok(Some(cross_entropy(
            &logits.index_select(&rows, 0)?,
            &targets,
        )?)),
    }
}

/// Element-wise binary cross-entropy with logits, in the overflow-free form
/// `max(x, 0) − x·z + log(1 + exp(−|x|))`, averaged over all elements.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let x = logits.to_dtype(DType::F32)?;
    let z = targets.to_dtype(DType::F32)?;
    let l = x
        .relu()?
        .sub(&x.mul(&z)?)?
        .add(&(x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    l.mean_all()
}

/// Smooth-L1 (Huber, β = 1) per element, no reduction (LXMERT's feature-regression loss).
pub fn smooth_l1(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let d = pred.sub(target)?;
    let a = d.abs()?;
    // 0.5 d² where |d| < 1, |d| − 0.5 elsewhere.
    let small = a.lt(1.0)?.to_dtype(d.dtype())?;
    let quad = (d.sqr()? * 0.5)?;
    let lin = (a - 0.5)?;
    quad.mul(&small)?.add(&lin.mul(&small.affine(-1.0, 1.0)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn cross_entropy_matches_hand_value() {
        // logits [0, ln 3] → p = [1/4, 3/4]; target 1 → −ln(3/4).
        let l = Tensor::new(&[[0f32, 3f32.ln()]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        assert!((scalar(&cross_entropy(&l, &t).unwrap()) - (4f32 / 3.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn masked_cross_entropy_ignores_negative_labels() {
        let l = Tensor::new(&[[0f32, 3f32.ln()], [5.0, -5.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[1i64, -1, -100], &Device::Cpu).unwrap();
        let v = masked_cross_entropy(&l, &labels).unwrap().unwrap();
        assert!((scalar(&v) - (4f32 / 3.0).ln()).abs() < 1e-6);
        let none = Tensor::new(&[-1i64, -1, -1], &Device::Cpu).unwrap();
        assert!(masked_cross_entropy(&l, &none).unwrap().is_none());
    }

    #[test]
    fn bce_with_logits_is_stable_and_correct() {
        // x = 0, z = 1 → ln 2; x = 1000, z = 0 → 1000; x = −1000, z = 0 → 0.
        let x = Tensor::new(&[0f32, 1000.0, -1000.0], &Device::Cpu).unwrap();
        let z = Tensor::new(&[1f32, 0.0, 0.0], &Device::Cpu).unwrap();
        let v = scalar(&bce_with_logits(&x, &z).unwrap());
        assert!((v - (2f32.ln() + 1000.0) / 3.0).abs() < 1e-3, "{v}");
        let g = bce_with_logits(&x, &z).unwrap().backward().unwrap();
        assert!(g.get(&x).is_none()); // x is not a variable; gradients are checked elsewhere
    }

    #[test]
    fn smooth_l1_matches_hand_values() {
        let p = Tensor::new(&[0.5f32, 3.0, -2.0], &Device::Cpu).unwrap();
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let v: Vec<f32> = smooth_l1(&p, &t).unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0.125, 2.5, 1.5]);
    }
}
