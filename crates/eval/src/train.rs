//! The fine-tuning loop shared by every task: seeded epochs over the training examples,
//! BertAdam with warm-up and linear decay, clipping, validation after each epoch and the
//! best epoch's weights kept.

use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use msp_curriculum::{GradClipping, LinearWarmupDecay, Optimizer};
use msp_model::ops::GradSink;
use msp_model::{LoadOptions, Lxmert};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{FinetuneConfig, TaskSchedule};
use crate::error::{EvalError, Result};

/// Progress of a fine-tuning, for progress bars.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// Training starts: `total` updates.
    Start {
        /// Task name.
        task: &'a str,
        /// Updates in all.
        total: u64,
    },
    /// One update.
    Step {
        /// Updates done.
        step: u64,
        /// Loss of the update.
        loss: f32,
    },
    /// An epoch ended.
    Epoch(&'a EpochLog),
    /// Evaluation of `done` of `total` items.
    Eval {
        /// What is evaluated.
        what: &'a str,
        /// Done.
        done: usize,
        /// Total.
        total: usize,
    },
}

/// A progress callback.
pub type OnProgress<'a> = &'a mut dyn FnMut(&Progress<'_>);

/// One epoch of fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Validation metric (percent), when the task has a validation split.
    pub valid: Option<f64>,
    /// Seconds of training and validation.
    pub seconds: f64,
    /// Training examples per second.
    pub samples_per_s: f64,
}

/// How a fine-tuning went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainLog {
    /// Per-epoch log.
    pub epochs: Vec<EpochLog>,
    /// The epoch whose weights were kept (best validation, else the last).
    pub best_epoch: usize,
    /// Training examples used.
    pub train_examples: usize,
    /// Updates.
    pub steps: u64,
    /// Seconds in all.
    pub seconds: f64,
}

/// A task's resolved schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
}

impl Resolved {
    /// The task schedule with the table's defaults.
    pub fn of(cfg: &FinetuneConfig, t: &TaskSchedule) -> Self {
        Self {
            epochs: t.epochs,
            batch_size: t.batch_size.unwrap_or(cfg.batch_size),
            lr: t.lr.unwrap_or(cfg.lr),
        }
    }
}

/// The training examples used: all, or a seeded subset of `max` (in their original order).
pub fn training_subset(n: usize, max: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if let Some(m) = max.filter(|&m| m < n) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5b5e7);
        idx.shuffle(&mut rng);
        idx.truncate(m);
        idx.sort_unstable();
    }
    idx
}

/// Trains `model` (its variables, heads included) on `examples` (indices into the task's
/// training set). `loss` builds a batch and returns its loss; `validate` returns the
/// validation metric (higher is better) or `None`. The best epoch's weights are saved to
/// `best` (atomically) and loaded back at the end.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    task: &str,
    model: &Lxmert,
    cfg: &FinetuneConfig,
    sched: Resolved,
    examples: &[usize],
    seed: u64,
    best: &Path,
    loss: &mut dyn FnMut(&[usize], &mut ChaCha8Rng) -> Result<Tensor>,
    validate: &mut dyn FnMut(OnProgress<'_>) -> Result<Option<f64>>,
    on_progress: OnProgress<'_>,
) -> Result<TrainLog> {
    if examples.is_empty() {
        return Err(EvalError::Config {
            field: format!("finetune.{task}"),
            reason: "no training example".into(),
        });
    }
    let start = Instant::now();
    let bpe = examples.len().div_ceil(sched.batch_size) as u64;
    let total = bpe * sched.epochs as u64;
    let lr = LinearWarmupDecay {
        base_lr: sched.lr,
        warmup: cfg.warmup,
        total_steps: total,
    };
    let clip = GradClipping {
        max_norm: cfg.grad_clip,
    };
    let mut opt = Optimizer::new(cfg.optimizer(), model.named_vars())?;
    let vars = opt.vars();
    on_progress(&Progress::Start { task, total });
    let mut log = Vec::new();
    let mut best_score: Option<f64> = None;
    let mut best_epoch = 0;
    let mut step = 0u64;
    for epoch in 1..=sched.epochs {
        let t0 = Instant::now();
        let mut order = examples.to_vec();
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch as u64 * 0x9e37_79b9));
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for batch in order.chunks(sched.batch_size) {
            // The fused ops write the weight gradients straight into `sink`.
            let sink = GradSink::new();
            let l = sink.collect(|| loss(batch, &mut rng))?;
            let value = l.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(EvalError::NonFinite {
                    task: task.into(),
                    epoch,
                    step,
                    value,
                });
            }
            let grads = sink.backward(&l)?;
            let c = clip.scale(&grads, &vars)?;
            opt.step(&grads, lr.lr(step), c.last_scale)?;
            step += 1;
            sum += f64::from(value);
            on_progress(&Progress::Step { step, loss: value });
        }
        let train_s = t0.elapsed().as_secs_f64();
        let valid = validate(on_progress)?;
        let e = EpochLog {
            epoch,
            loss: sum / bpe as f64,
            valid,
            seconds: t0.elapsed().as_secs_f64(),
            samples_per_s: order.len() as f64 / train_s.max(1e-9),
        };
        on_progress(&Progress::Epoch(&e));
        // Keep the best validation epoch; without validation, the last epoch.
        let better = match (valid, best_score) {
            (Some(v), Some(b)) => v > b,
            (Some(_), None) => true,
            (None, _) => true,
        };
        if better {
            best_score = valid;
            best_epoch = epoch;
            model.save(best)?;
        }
        log.push(e);
    }
    model.load_checkpoint(
        best,
        LoadOptions::strict().with_cls_token_id(model.config().cls_token_id),
    )?;
    Ok(TrainLog {
        epochs: log,
        best_epoch,
        train_examples: examples.len(),
        steps: step,
        seconds: start.elapsed().as_secs_f64(),
    })
}
