//! Loss functions of the region tasks and the matching task, and accuracies.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};

/// Default scale of the visual losses: 1 / 0.15 (LXMERT divides by the mask rate; its code
/// writes the constant as 6.67).
pub const VISUAL_LOSS_NORMALIZER: f64 = 1.0 / 0.15;

/// The feature-regression loss of MRFR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FeatLoss {
    /// Smooth-L1 (Huber, β = 1) averaged over D (LXMERT; its config calls it "l2").
    #[default]
    SmoothL1,
    /// Squared error averaged over D.
    L2,
}

/// Which regions the object/attribute classification (MOC) is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MocRegions {
    /// Every real region, weighted by the detector confidence (LXMERT).
    #[default]
    All,
    /// Only the masked regions, weighted by the detector confidence.
    MaskedOnly,
}

/// Checks that `t` is `[b, n]`.
pub(crate) fn check_bn(t: &Tensor, name: &'static str, b: usize, n: usize) -> Result<()> {
    if t.dims() != [b, n] {
        return Err(TaskError::Shape {
            name,
            got: t.dims().to_vec(),
            expected: format!("[{b}, {n}]"),
        });
    }
    Ok(())
}

/// `Σ w · per / max(Σ region_mask, 1) · normalizer`: the LXMERT reduction of a per-region
/// loss (mean over all real regions of the batch, B × n when nothing is padded).
fn visual_reduce(
    per: &Tensor,
    weight: &Tensor,
    region_mask: &Tensor,
    normalizer: f64,
) -> Result<Tensor> {
    let count = region_mask
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    let w = weight
        .to_dtype(DType::F32)?
        .mul(&region_mask.to_dtype(DType::F32)?)?;
    weighted_mean(per, &w, f64::from(count), normalizer)
}

/// `Σ w · per / max(count, 1) · normalizer`.
fn weighted_mean(per: &Tensor, w: &Tensor, count: f64, normalizer: f64) -> Result<Tensor> {
    Ok((per.mul(w)?.sum_all()? * (normalizer / count.max(1.0)))?)
}

/// MRFR loss: per region the feature loss averaged over D, weighted by `feat_mask [B, n]`,
/// summed over the batch, divided by the number of real regions (`region_mask [B, n]`) and
/// multiplied by `normalizer`. `pred` and `target` are `[B, n, D]`. No masked region → 0.
pub fn feat_regression_loss(
    pred: &Tensor,
    target: &Tensor,
    feat_mask: &Tensor,
    region_mask: &Tensor,
    kind: FeatLoss,
    normalizer: f64,
) -> Result<Tensor> {
    if pred.dims() != target.dims() || pred.rank() != 3 {
        return Err(TaskError::Shape {
            name: "feature target",
            got: target.dims().to_vec(),
            expected: format!("{:?} like the prediction", pred.dims()),
        });
    }
    let (b, n, _) = pred.dims3()?;
    check_bn(feat_mask, "feat_mask", b, n)?;
    check_bn(region_mask, "region_mask", b, n)?;
    visual_reduce(
        &feat_loss_per_region(pred, target, kind)?,
        feat_mask,
        region_mask,
        normalizer,
    )
}

/// [`feat_regression_loss`] from the predictions at some regions only: `pred` and `target`
/// `[R, D]` at those regions, `weight [R]` their feat mask (0 on a real region that is not
/// masked, and on padding), `real_regions` the number of real regions of the whole batch
/// (the denominator). Equal to [`feat_regression_loss`] when the rows hold every masked
/// region ([`msp_model::LxmertForPreTraining::visual_predictions_with`] at
/// [`msp_model::FeatRegions::At`] those regions).
pub fn feat_regression_loss_at(
    pred: &Tensor,
    target: &Tensor,
    weight: &Tensor,
    real_regions: usize,
    kind: FeatLoss,
    normalizer: f64,
) -> Result<Tensor> {
    let (r, d) = pred.dims2()?;
    if target.dims() != [r, d] || weight.dims() != [r] {
        return Err(TaskError::Shape {
            name: "feature target and weight",
            got: [target.dims(), weight.dims()].concat(),
            expected: format!("[{r}, {d}] and [{r}]"),
        });
    }
    weighted_mean(
        &feat_loss_per_region(pred, target, kind)?,
        &weight.to_dtype(DType::F32)?,
        real_regions as f64,
        normalizer,
    )
}

/// The feature loss of each region, averaged over the last dimension `D`.
fn feat_loss_per_region(pred: &Tensor, target: &Tensor, kind: FeatLoss) -> Result<Tensor> {
    let p = pred.to_dtype(DType::F32)?;
    let t = target.to_dtype(DType::F32)?;
    let elem = match kind {
        FeatLoss::SmoothL1 => msp_model::smooth_l1(&p, &t)?,
        FeatLoss::L2 => p.sub(&t)?.sqr()?,
    };
    Ok(elem.mean(D::Minus1)?)
}

/// Per-row cross-entropy `−log softmax(logits)[label]` of `logits [N, C]`, `labels [N]`.
fn per_row_ce(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = logits.to_dtype(DType::F32)?.log_sum_exp(D::Minus1)?;
    let picked = logits
        .to_dtype(DType::F32)?
        .gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    Ok(logp.sub(&picked)?)
}

/// MOC loss for one label kind (objects or attributes): per-region cross-entropy of
/// `logits [B, n, C]` against `labels [B, n]`, weighted by `weight [B, n]` (the detector
/// confidence, times the feat mask for [`MocRegions::MaskedOnly`]), reduced as
/// [`feat_regression_loss`].
pub fn classification_loss(
    logits: &Tensor,
    labels: &Tensor,
    weight: &Tensor,
    region_mask: &Tensor,
    normalizer: f64,
) -> Result<Tensor> {
    let (b, n, c) = logits.dims3()?;
    check_bn(labels, "region labels", b, n)?;
    check_bn(weight, "region weights", b, n)?;
    check_bn(region_mask, "region_mask", b, n)?;
    let max_label = labels.to_dtype(DType::U32)?.max_all()?.to_scalar::<u32>()? as usize;
    if b * n > 0 && max_label >= c {
        return Err(TaskError::Shape {
            name: "region labels",
            got: vec![max_label],
            expected: format!("labels < {c} classes"),
        });
    }
    let per = per_row_ce(&logits.reshape((b * n, c))?, &labels.flatten_all()?)?.reshape((b, n))?;
    visual_reduce(&per, weight, region_mask, normalizer)
}

/// ITM loss: 2-way cross-entropy of the match head's `logits [B, 2]` against
/// `labels [B]` (1 = matched), averaged over the batch.
pub fn itm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    if c != 2 || labels.dims() != [b] {
        return Err(TaskError::Shape {
            name: "itm labels",
            got: labels.dims().to_vec(),
            expected: format!("[{b}] for logits [{b}, 2]"),
        });
    }
    Ok(msp_model::cross_entropy(logits, labels)?)
}

/// Weighted argmax accuracy: the fraction of rows with weight > 0 whose argmax over the last
/// dim of `logits [.., C]` equals `labels [..]`; `None` when no row has weight.
pub fn argmax_accuracy(
    logits: &Tensor,
    labels: &Tensor,
    weight: Option<&Tensor>,
) -> Result<Option<f32>> {
    let c = logits.dim(D::Minus1)?;
    let rows = logits.elem_count() / c.max(1);
    let pred: Vec<u32> = logits.reshape((rows, c))?.argmax(1)?.to_vec1()?;
    let gold: Vec<u32> = labels.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let w: Vec<f32> = match weight {
        Some(w) => w.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
        None => vec![1.0; rows],
    };
    if gold.len() != rows || w.len() != rows {
        return Err(TaskError::Shape {
            name: "accuracy labels",
            got: vec![gold.len(), w.len()],
            expected: format!("{rows} rows"),
        });
    }
    let (mut hit, mut tot) = (0usize, 0usize);
    for i in 0..rows {
        if w[i] > 0.0 {
            tot += 1;
            hit += usize::from(pred[i] == gold[i]);
        }
    }
    Ok((tot > 0).then(|| hit as f32 / tot as f32))
}

/// Topic accuracy as LXMERT-S reports it: raw logits thresholded at 0.5 compared with the
/// multi-hot target, over all `B × vocab` entries.
pub fn topic_accuracy(logits: &Tensor, target: &Tensor) -> Result<Option<f32>> {
    let p = logits.to_dtype(DType::F32)?.gt(0.5)?.to_dtype(DType::F32)?;
    let t = target.to_dtype(DType::F32)?.gt(0.5)?.to_dtype(DType::F32)?;
    let n = p.elem_count();
    if n == 0 {
        return Ok(None);
    }
    let same = p
        .eq(&t)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(Some(same / n as f32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn s(t: &Tensor) -> f64 {
        f64::from(t.to_scalar::<f32>().unwrap())
    }

    fn huber(d: f64) -> f64 {
        if d.abs() < 1.0 {
            0.5 * d * d
        } else {
            d.abs() - 0.5
        }
    }

    #[test]
    fn feat_loss_matches_loops() {
        let dev = Device::Cpu;
        // B = 2, n = 2, D = 2; region (1, 1) is padding.
        let p = [[[0.5f32, 3.0], [1.0, 1.0]], [[-2.0, 0.0], [9.0, 9.0]]];
        let t = [[[0.0f32, 0.0], [1.0, 0.0]], [[0.0, 0.2], [0.0, 0.0]]];
        let fm = [[1f32, 0.], [1., 1.]];
        let rm = [[1f32, 1.], [1., 0.]];
        for kind in [FeatLoss::SmoothL1, FeatLoss::L2] {
            let mut want = 0.0;
            for b in 0..2 {
                for i in 0..2 {
                    let mut per = 0.0;
                    for d in 0..2 {
                        let diff = f64::from(p[b][i][d] - t[b][i][d]);
                        per += match kind {
                            FeatLoss::SmoothL1 => huber(diff),
                            FeatLoss::L2 => diff * diff,
                        };
                    }
                    want += per / 2.0 * f64::from(fm[b][i] * rm[b][i]);
                }
            }
            want = want / 3.0 / 0.15; // 3 real regions
            let got = feat_regression_loss(
                &Tensor::new(&p, &dev).unwrap(),
                &Tensor::new(&t, &dev).unwrap(),
                &Tensor::new(&fm, &dev).unwrap(),
                &Tensor::new(&rm, &dev).unwrap(),
                kind,
                VISUAL_LOSS_NORMALIZER,
            )
            .unwrap();
            assert!(
                (s(&got) - want).abs() < 1e-5,
                "{kind:?}: {} vs {want}",
                s(&got)
            );
        }
        // Hand value for SmoothL1: region (0,0): (0.125 + 2.5)/2 = 1.3125; region (1,0):
        // (1.5 + 0.02)/2 = 0.76 → (1.3125 + 0.76) / 3 / 0.15.
        let got = feat_regression_loss(
            &Tensor::new(&p, &dev).unwrap(),
            &Tensor::new(&t, &dev).unwrap(),
            &Tensor::new(&fm, &dev).unwrap(),
            &Tensor::new(&rm, &dev).unwrap(),
            FeatLoss::SmoothL1,
            VISUAL_LOSS_NORMALIZER,
        )
        .unwrap();
        assert!((s(&got) - 2.0725 / 3.0 / 0.15).abs() < 1e-5);
        // The same from the two masked real regions alone (flat rows 0 and 2), over the 3
        // real regions of the batch.
        let at = feat_regression_loss_at(
            &Tensor::new(&[p[0][0], p[1][0]], &dev).unwrap(),
            &Tensor::new(&[t[0][0], t[1][0]], &dev).unwrap(),
            &Tensor::new(&[1f32, 1.0], &dev).unwrap(),
            3,
            FeatLoss::SmoothL1,
            VISUAL_LOSS_NORMALIZER,
        )
        .unwrap();
        assert!((s(&at) - 2.0725 / 3.0 / 0.15).abs() < 1e-5, "{}", s(&at));
        let wrong = Tensor::new(&[1f32], &dev).unwrap();
        assert!(feat_regression_loss_at(&wrong, &wrong, &wrong, 3, FeatLoss::L2, 1.0).is_err());
    }

    #[test]
    fn no_masked_region_gives_zero() {
        let dev = Device::Cpu;
        let p = Tensor::ones((1, 3, 4), DType::F32, &dev).unwrap();
        let t = Tensor::zeros((1, 3, 4), DType::F32, &dev).unwrap();
        let z = Tensor::zeros((1, 3), DType::F32, &dev).unwrap();
        let l = feat_regression_loss(&p, &t, &z, &z, FeatLoss::SmoothL1, 6.67).unwrap();
        assert_eq!(s(&l), 0.0);
        let one = Tensor::ones((1, 3), DType::F32, &dev).unwrap();
        let l = feat_regression_loss(&p, &t, &z, &one, FeatLoss::L2, 6.67).unwrap();
        assert_eq!(s(&l), 0.0);
        assert!(
            feat_regression_loss(&p, &t, &z.narrow(1, 0, 2).unwrap(), &one, FeatLoss::L2, 1.0)
                .is_err()
        );
    }

    #[test]
    fn classification_loss_matches_loops() {
        let dev = Device::Cpu;
        let logits = [
            [[1.0f32, 2.0, 0.0], [0.0, 0.0, 0.0]],
            [[5.0, -1.0, 2.0], [0.3, 0.1, -0.2]],
        ];
        let labels = [[1u32, 2], [0, 2]];
        let conf = [[0.9f32, 0.5], [0.2, 0.7]];
        let rm = [[1f32, 1.], [1., 0.]];
        let mut want = 0.0;
        for b in 0..2 {
            for i in 0..2 {
                let row: Vec<f64> = logits[b][i].iter().map(|&x| f64::from(x)).collect();
                let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
                let ce = lse - row[labels[b][i] as usize];
                want += ce * f64::from(conf[b][i] * rm[b][i]);
            }
        }
        want = want / 3.0 / 0.15;
        let got = classification_loss(
            &Tensor::new(&logits, &dev).unwrap(),
            &Tensor::new(&labels, &dev).unwrap(),
            &Tensor::new(&conf, &dev).unwrap(),
            &Tensor::new(&rm, &dev).unwrap(),
            VISUAL_LOSS_NORMALIZER,
        )
        .unwrap();
        assert!((s(&got) - want).abs() < 1e-5, "{} vs {want}", s(&got));
        // Hand value of one term: logits (1, 2, 0), label 1 → ln(e + e² + 1) − 2 = 0.40760596.
        let one = classification_loss(
            &Tensor::new(&[[[1.0f32, 2.0, 0.0]]], &dev).unwrap(),
            &Tensor::new(&[[1u32]], &dev).unwrap(),
            &Tensor::new(&[[1f32]], &dev).unwrap(),
            &Tensor::new(&[[1f32]], &dev).unwrap(),
            1.0,
        )
        .unwrap();
        assert!((s(&one) - 0.407_605_96).abs() < 1e-6);
        let bad = Tensor::new(&[[[1.0f32, 2.0]]], &dev).unwrap();
        assert!(classification_loss(
            &bad,
            &Tensor::new(&[[2u32]], &dev).unwrap(),
            &Tensor::new(&[[1f32]], &dev).unwrap(),
            &Tensor::new(&[[1f32]], &dev).unwrap(),
            1.0
        )
        .is_err());
    }

    #[test]
    fn itm_loss_and_accuracies() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[0f32, 3f32.ln()], [2.0, 0.0]], &dev).unwrap();
        let labels = Tensor::new(&[1u32, 1], &dev).unwrap();
        // −ln(3/4) and −ln(1/(1+e²)) averaged.
        let want = ((4.0f64 / 3.0).ln() + (1.0 + 2f64.exp()).ln()) / 2.0;
        assert!((s(&itm_loss(&logits, &labels).unwrap()) - want).abs() < 1e-6);
        assert_eq!(argmax_accuracy(&logits, &labels, None).unwrap(), Some(0.5));
        let w = Tensor::new(&[0f32, 1.0], &dev).unwrap();
        assert_eq!(
            argmax_accuracy(&logits, &labels, Some(&w)).unwrap(),
            Some(0.0)
        );
        let z = Tensor::zeros(2, DType::F32, &dev).unwrap();
        assert_eq!(argmax_accuracy(&logits, &labels, Some(&z)).unwrap(), None);
        assert!(itm_loss(&logits, &Tensor::new(&[1u32], &dev).unwrap()).is_err());
        let t = Tensor::new(&[[1f32, 0.0], [0.0, 0.0]], &dev).unwrap();
        let l = Tensor::new(&[[0.6f32, 0.7], [0.1, 0.4]], &dev).unwrap();
        assert_eq!(topic_accuracy(&l, &t).unwrap(), Some(0.75));
    }
}
