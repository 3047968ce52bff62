//! Loss assembly: every task's loss and accuracy from one forward pass.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use msp_model::{kept_rows, LanguageRows, LxmertForPreTraining, LxmertOutput};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::error::{Result, TaskError};
use crate::ifrs::ifrs_loss;
use crate::losses::{
    argmax_accuracy, classification_loss, feat_regression_loss, itm_loss, topic_accuracy, FeatLoss,
    MocRegions, VISUAL_LOSS_NORMALIZER,
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
    let vis = if needs_visual {
        Some(model.visual_predictions(out)?)
    } else {
        None
    };
    let missing = |task: Task, head: &'static str| TaskError::MissingHead {
        task: task.name().into(),
        head,
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
            let feat = vis
                .feat
                .as_ref()
                .ok_or_else(|| missing(Task::Mrfr, "feat"))?;
            let loss = feat_regression_loss(
                feat,
                &tg.features,
                &tg.feat_mask,
                &batch.region_mask,
                cfg.feat_loss,
                cfg.visual_normalizer,
            )?;
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
            let feat = vis
                .feat
                .as_ref()
                .ok_or_else(|| missing(Task::Ifrs, "feat"))?;
            let ifrs = tg
                .ifrs
                .as_ref()
                .ok_or_else(|| missing(Task::Ifrs, "IFRS plan"))?;
            let loss = ifrs_loss(feat, &tg.features, &ifrs.shuffled)?;
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
