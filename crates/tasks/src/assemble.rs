//! Loss assembly: every task's loss and accuracy from one forward pass.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use msp_model::{kept_rows, FeatRegions, LanguageRows, LxmertForPreTraining, LxmertOutput};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::error::{Result, TaskError};
use crate::ifrs::ifrs_loss;
use crate::losses::{
    argmax_accuracy, check_bn, classification_loss, feat_regression_loss_at, itm_loss,
    topic_accuracy, FeatLoss, MocRegions, VISUAL_LOSS_NORMALIZER,
};
use crate::task::Task;
use crate::topic::topic_loss;

/// Loss options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// MRFR regression loss.
    pub feat_loss: FeatLoss,
    /// Regions of the MOC loss.
    pub moc_regions: MocRegions,
    /// Scale of the visual losses (MRFR, MOC): 1 / 0.15.
    pub visual_normalizer: f64,
    /// Weight of a task's loss in the total; a task not listed weighs 1 (LXMERT sums the
    /// losses unweighted). Weights of tasks outside the batch's set have no effect.
    #[serde(default)]
    pub weights: BTreeMap<Task, f64>,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            feat_loss: FeatLoss::SmoothL1,
            moc_regions: MocRegions::All,
            visual_normalizer: VISUAL_LOSS_NORMALIZER,
            weights: BTreeMap::new(),
        }
    }
}

/// One task's loss (a scalar tensor in the graph) and accuracy.
#[derive(Debug, Clone)]
pub struct TaskLoss {
    /// Scalar f32 loss.
    pub loss: Tensor,
    /// Accuracy where it is defined: MLM (masked pieces), MOC (object labels of the regions
    /// in the loss), ITM/ITM-HS, TITP/TITS (LXMERT-S's thresholded-logit accuracy). `None`
    /// for the regression tasks (MRFR, IFRS) and when nothing was predicted.
    pub accuracy: Option<f32>,
}

/// Per-task losses and their weighted sum (weight 1 each unless
/// [`LossConfig::weights`] says otherwise, as LXMERT).
#[derive(Debug, Clone)]
pub struct TaskLosses {
    /// Loss and accuracy of each task of the batch's set (unweighted).
    pub per_task: BTreeMap<Task, TaskLoss>,
    /// Sum of the per-task losses, each times its weight.
    pub total: Tensor,
}

impl TaskLosses {
    /// Host values `task name → (loss, accuracy)` for logging.
    pub fn values(&self) -> Result<BTreeMap<String, (f32, Option<f32>)>> {
        let mut out = BTreeMap::new();
        for (t, l) in &self.per_task {
            out.insert(
                t.name().to_string(),
                (l.loss.to_scalar::<f32>()?, l.accuracy),
            );
        }
        Ok(out)
    }
}

fn zero(dev: &candle_core::Device) -> Result<Tensor> {
    Ok(Tensor::zeros((), DType::F32, dev)?)
}

/// The forward [`compute_losses`] reads, on `batch.inputs()`: the last cross layer computes
/// only the language rows the losses use (row 0 for the poolers and, with MLM, the masked
/// positions; [`LxmertForPreTraining::forward_rows_t`]). The same losses and gradients as
/// the full forward, with less work.
pub fn forward_for_losses(
    model: &LxmertForPreTraining,
    batch: &Batch,
    train: bool,
) -> Result<LxmertOutput> {
    let rows = match &batch.targets.mlm_labels {
        Some(labels) if batch.tasks.contains(Task::Mlm) => LanguageRows::from_labels(labels)?,
        _ => {
            let (b, l) = batch.input_ids.dims2()?;
            LanguageRows::pooled(b, l)?
        }
    };
    Ok(model.forward_rows_t(&batch.inputs(), &rows, train)?)
}

/// The regions the feature-regression losses read, gathered: MRFR's masked real regions and
/// IFRS's shuffled ones.
struct FeatRows {
    /// `[R]` u32 flat positions into `B·n`, ascending.
    rows: Tensor,
    /// `[R, D]` the original features at those regions (the target of both losses).
    target: Tensor,
    /// `[R]` MRFR's weight (feat mask × region mask; 0 without MRFR).
    mrfr_weight: Tensor,
    /// `[R]` IFRS's weight (the shuffle plan's mask; 0 without IFRS).
    ifrs_weight: Tensor,
    /// Real regions of the whole batch (MRFR's denominator).
    real_regions: usize,
}

impl FeatRows {
    /// `None` when no region is read (no regression task, or nothing masked or shuffled):
    /// both losses are then exactly 0.
    fn of(batch: &Batch, mrfr: bool, shuffled: Option<&Tensor>) -> Result<Option<Self>> {
        let (b, n) = batch.region_mask.dims2()?;
        let host = |t: &Tensor, name: &'static str| -> Result<Vec<f32>> {
            check_bn(t, name, b, n)?;
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        let real = host(&batch.region_mask, "region_mask")?;
        let mrfr_w = if mrfr {
            let fm = host(&batch.targets.feat_mask, "feat_mask")?;
            fm.iter().zip(&real).map(|(f, r)| f * r).collect()
        } else {
            vec![0.0; b * n]
        };
        let ifrs_w = match shuffled {
            Some(s) => host(s, "ifrs shuffled mask")?,
            None => vec![0.0; b * n],
        };
        let rows: Vec<u32> = (0..b * n)
            .filter(|&i| mrfr_w[i] != 0.0 || ifrs_w[i] != 0.0)
            .map(|i| i as u32)
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let features = &batch.targets.features;
        let (fb, fn_, d) = features.dims3()?;
        if (fb, fn_) != (b, n) {
            return Err(TaskError::Shape {
                name: "feature target",
                got: features.dims().to_vec(),
                expected: format!("[{b}, {n}, D]"),
            });
        }
        let dev = features.device();
        let pick = |w: &[f32]| -> Vec<f32> { rows.iter().map(|&i| w[i as usize]).collect() };
        let r = rows.len();
        let (mrfr_weight, ifrs_weight) = (pick(&mrfr_w), pick(&ifrs_w));
        let rows = Tensor::from_vec(rows, r, dev)?;
        Ok(Some(Self {
            target: features.reshape((b * n, d))?.index_select(&rows, 0)?,
            mrfr_weight: Tensor::from_vec(mrfr_weight, r, dev)?,
            ifrs_weight: Tensor::from_vec(ifrs_weight, r, dev)?,
            real_regions: real.iter().filter(|&&x| x != 0.0).count(),
            rows,
        }))
    }
}

/// Computes every task's loss for `batch` from the model's output `out` (run on
/// `batch.inputs()`, with `batch.targets.ifrs.perm` applied by the model hook when the set
/// has IFRS). MLM and the visual losses are computed on every example, mismatched ITM pairs
/// included (LXMERT). A task with nothing to predict (no masked piece, no masked region, no
/// shuffled triplet) gets an exact 0 loss and no accuracy.
pub fn compute_losses(
    model: &LxmertForPreTraining,
    out: &LxmertOutput,
    batch: &Batch,
    cfg: &LossConfig,
) -> Result<TaskLosses> {
    let dev = out.pooled_output.device().clone();
    let tg = &batch.targets;
    let mut per_task = BTreeMap::new();
    let tasks = &batch.tasks;
    let needs_visual =
        tasks.contains(Task::Mrfr) || tasks.contains(Task::Moc) || tasks.contains(Task::Ifrs);
    let missing = |task: Task, head: &'static str| TaskError::MissingHead {
        task: task.name().into(),
        head,
    };
    let shuffled = match &tg.ifrs {
        Some(plan) => Some(&plan.shuffled),
        None if tasks.contains(Task::Ifrs) => return Err(missing(Task::Ifrs, "IFRS plan")),
        None => None,
    };
    // The feature decoder runs on the regions the regression losses read.
    let feat_rows = FeatRows::of(batch, tasks.contains(Task::Mrfr), shuffled)?;
    let vis = if needs_visual {
        let feat = match &feat_rows {
            Some(r) => FeatRegions::At(&r.rows),
            None => FeatRegions::Skip,
        };
        Some(model.visual_predictions_with(out, feat)?)
    } else {
        None
    };

    if tasks.contains(Task::Mlm) {
        let labels = tg
            .mlm_labels
            .as_ref()
            .ok_or_else(|| missing(Task::Mlm, "MLM label"))?;
        let tl = match kept_rows(labels)? {
            Some((rows, targets)) => {
                let logits = model.mlm_logits_at(out, &rows)?;
                TaskLoss {
                    loss: msp_model::cross_entropy(&logits, &targets)?,
                    accuracy: argmax_accuracy(&logits, &targets, None)?,
                }
            }
            None => TaskLoss {
                loss: zero(&dev)?,
                accuracy: None,
            },
        };
        per_task.insert(Task::Mlm, tl);
    }
    if let Some(vis) = &vis {
        if tasks.contains(Task::Mrfr) {
            let loss = match &feat_rows {
                Some(r) => feat_regression_loss_at(
                    vis.feat
                        .as_ref()
                        .ok_or_else(|| missing(Task::Mrfr, "feat"))?,
                    &r.target,
                    &r.mrfr_weight,
                    r.real_regions,
                    cfg.feat_loss,
                    cfg.visual_normalizer,
                )?,
                None => zero(&dev)?,
            };
            per_task.insert(
                Task::Mrfr,
                TaskLoss {
                    loss,
                    accuracy: None,
                },
            );
        }
        if tasks.contains(Task::Moc) {
            let obj = vis.obj.as_ref().ok_or_else(|| missing(Task::Moc, "obj"))?;
            let sel = match cfg.moc_regions {
                MocRegions::All => batch.region_mask.clone(),
                MocRegions::MaskedOnly => tg.feat_mask.mul(&batch.region_mask)?,
            };
            let mut loss = classification_loss(
                obj,
                &tg.obj_labels,
                &tg.obj_conf.mul(&sel)?,
                &batch.region_mask,
                cfg.visual_normalizer,
            )?;
            if let Some(attr) = &vis.attr {
                loss = (loss
                    + classification_loss(
                        attr,
                        &tg.attr_labels,
                        &tg.attr_conf.mul(&sel)?,
                        &batch.region_mask,
                        cfg.visual_normalizer,
                    )?)?;
            }
            let accuracy = argmax_accuracy(obj, &tg.obj_labels, Some(&sel))?;
            per_task.insert(Task::Moc, TaskLoss { loss, accuracy });
        }
        if tasks.contains(Task::Ifrs) {
            let loss = match &feat_rows {
                Some(r) => ifrs_loss(
                    &vis.feat
                        .as_ref()
                        .ok_or_else(|| missing(Task::Ifrs, "feat"))?
                        .unsqueeze(0)?,
                    &r.target.unsqueeze(0)?,
                    &r.ifrs_weight.unsqueeze(0)?,
                )?,
                None => zero(&dev)?,
            };
            per_task.insert(
                Task::Ifrs,
                TaskLoss {
                    loss,
                    accuracy: None,
                },
            );
        }
    }
    if let Some(t) = tasks.topic_task() {
        let head = model.topic.as_ref().ok_or_else(|| missing(t, "topic"))?;
        let target = tg
            .topic
            .as_ref()
            .ok_or_else(|| missing(t, "topic target"))?;
        let logits = head.forward(&out.pooled_output)?;
        per_task.insert(
            t,
            TaskLoss {
                loss: topic_loss(&logits, target)?,
                accuracy: topic_accuracy(&logits, target)?,
            },
        );
    }
    if let Some(t) = tasks.matching_task() {
        let labels = tg
            .itm_labels
            .as_ref()
            .ok_or_else(|| missing(t, "ITM label"))?;
        let logits = model.itm.forward(&out.pooled_output)?;
        per_task.insert(
            t,
            TaskLoss {
                loss: itm_loss(&logits, labels)?,
                accuracy: argmax_accuracy(&logits, labels, None)?,
            },
        );
    }
    let mut total = zero(&dev)?;
    for (t, l) in &per_task {
        total = match cfg.weights.get(t) {
            Some(&w) if w != 1.0 => (total + (&l.loss * w)?)?,
            _ => (total + &l.loss)?,
        };
    }
    Ok(TaskLosses { per_task, total })
}
