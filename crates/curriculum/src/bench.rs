//! Training-step and data-loader throughput (`cargo xtask bench train`).
//!
//! A step here is what [`crate::pretrain`] does per update: forward with dropout, losses,
//! backward, the fused optimiser update. Batches come either from one batch kept in memory
//! (no data cost) or from the prefetching loader over a generated or real data set (masking,
//! tokenisation and region reads from the memory-mapped store included), so the two timings
//! side by side show what the data path costs.

use std::time::Instant;

use candle_core::{Device, Tensor};
use msp_model::ops::GradSink;
use msp_model::{
    gradient_store, pretraining_loss, run_side_by_side, sum_gradients, take_gradients,
    with_dropout_stream, Config, Lxmert, SyntheticBatch, Variant,
};
use msp_tasks::{compute_losses, forward_for_losses, Batch, LossConfig};
use serde::Serialize;

use crate::data::PretrainData;
use crate::error::{CurriculumError, Result};
use crate::loader::{build_batch, with_loader};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::run::RunConfig;
use crate::trainer::StageBatches;

/// Median, minimum and maximum of a measured quantity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (at least one).
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let median = if v.is_empty() {
            f64::NAN
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Self {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Median seconds per step in each part of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepSplit {
    /// Waiting for the batch (0 for an in-memory batch).
    pub data_s: f64,
    /// Forward pass and losses.
    pub forward_s: f64,
    /// `backward()`.
    pub backward_s: f64,
    /// Optimiser update.
    pub optimizer_s: f64,
}

/// Timing of `steps` training steps after `warmup` untimed ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepTiming {
    /// Where the batches came from.
    pub batches: String,
    /// Examples per batch.
    pub batch_size: usize,
    /// Timed steps.
    pub steps: usize,
    /// Examples per second over the timed steps.
    pub samples_per_s: Spread,
    /// Seconds per step.
    pub step_s: Spread,
    /// Medians of the parts of a step.
    pub split: StepSplit,
}

/// How many steps to time and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainBenchOptions {
    /// Untimed steps first (the first touches of fresh memory are slow).
    pub warmup: usize,
    /// Timed steps (≥ 1).
    pub steps: usize,
    /// Update rule (the learning rate is a fixed 1e-5).
    pub optimizer: OptimizerConfig,
    /// Micro-batches a step's batch is split into, run side by side (one thread each,
    /// [`msp_model::run_side_by_side`]) and their gradients summed; 1 runs the batch whole
    /// with its products split between the threads. Random in-memory batches only
    /// ([`bench_train_synthetic`]).
    pub micro_batches: usize,
}

/// Times `warmup + steps` steps, drawing each batch with `next`. With `parts` > 1 the loss
/// of part `i` of a batch is `loss(batch, i)`, the parts run side by side and their
/// gradients are summed; the split then reports the slowest part's forward and, as the
/// backward, the rest of the side-by-side run (the other parts' remaining time and the sum).
fn time_steps<T: Sync>(
    model: &Lxmert,
    opts: &TrainBenchOptions,
    label: &str,
    parts: usize,
    mut next: impl FnMut() -> Result<T>,
    loss: impl Fn(&T, usize) -> Result<Tensor> + Sync,
    len: impl Fn(&T) -> usize,
) -> Result<StepTiming> {
    let vars: Vec<Tensor> = model
        .named_vars()
        .into_iter()
        .map(|(_, v)| v.as_tensor().clone())
        .collect();
    let mut opt = Optimizer::new(opts.optimizer, model.named_vars())?;
    let device = vars
        .first()
        .ok_or_else(|| CurriculumError::Config {
            field: "model".into(),
            reason: "no variables".into(),
        })?
        .device();
    let mut rows: Vec<[f64; 4]> = Vec::new();
    let mut sizes = Vec::new();
    for s in 0..opts.warmup + opts.steps.max(1) {
        let t0 = Instant::now();
        let batch = next()?;
        let t1 = Instant::now();
        // Part i's forward (ended at the returned instant) and backward.
        let step = |i: usize| -> Result<_> {
            let sink = GradSink::new();
            let l = sink.collect(|| loss(&batch, i))?;
            l.to_scalar::<f32>()?;
            Ok((Instant::now(), sink.backward(&l)?))
        };
        let (t2, grads) = if parts <= 1 {
            step(0)?
        } else {
            let done = run_side_by_side(parts, |i| {
                with_dropout_stream((s * parts + i) as u64, || {
                    step(i).map(|(forward, g)| (forward, take_gradients(g, &vars)))
                })
            })?
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
            let t2 = done.iter().map(|d| d.0).max().unwrap_or(t1);
            let stores = done.into_iter().map(|d| d.1).collect();
            (t2, gradient_store(&vars, sum_gradients(stores, &vars)?))
        };
        let t3 = Instant::now();
        opt.step(&grads, 1e-5, 1.0)?;
        device.synchronize()?;
        let t4 = Instant::now();
        if s >= opts.warmup {
            rows.push([
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t3 - t2).as_secs_f64(),
                (t4 - t3).as_secs_f64(),
            ]);
            sizes.push(len(&batch));
        }
    }
    let col = |i: usize| Spread::of(&rows.iter().map(|r| r[i]).collect::<Vec<_>>()).median;
    let step: Vec<f64> = rows.iter().map(|r| r.iter().sum()).collect();
    let sps: Vec<f64> = step
        .iter()
        .zip(&sizes)
        .map(|(s, &n)| n as f64 / s)
        .collect();
    Ok(StepTiming {
        batches: label.to_string(),
        batch_size: sizes.first().copied().unwrap_or(0),
        steps: rows.len(),
        samples_per_s: Spread::of(&sps),
        step_s: Spread::of(&step),
        split: StepSplit {
            data_s: col(0),
            forward_s: col(1),
            backward_s: col(2),
            optimizer_s: col(3),
        },
    })
}

/// Training steps of `cfg` on one random in-memory batch with every HF pre-training head
/// (MLM, ITM, object, attribute, feature, QA: [`pretraining_loss`]), the workload of
/// `bench/torch_lxmert.py`.
pub fn bench_train_synthetic(
    cfg: &Config,
    variant: Variant,
    (batch_size, text_len, regions): (usize, usize, usize),
    opts: &TrainBenchOptions,
    device: &Device,
) -> Result<StepTiming> {
    let model = Lxmert::new(cfg, variant, 1, device)?;
    let parts = opts.micro_batches.clamp(1, batch_size.max(1));
    // Part i: examples [i·B/parts, (i+1)·B/parts), its loss weighted by its share of B (the
    // loss of gradient accumulation over those micro-batches); one part is the whole batch.
    let bounds: Vec<usize> = (0..=parts).map(|i| i * batch_size / parts).collect();
    let batches = bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            SyntheticBatch::new(cfg, w[1] - w[0], text_len, regions, 2 + i as u64, device)
        })
        .collect::<msp_model::Result<Vec<_>>>()?;
    time_steps(
        &model,
        opts,
        &match parts {
            1 => "random in-memory batch (HF heads)".to_string(),
            n => format!("random in-memory batch (HF heads), {n} micro-batches side by side"),
        },
        parts,
        || Ok(()),
        |_, i| {
            let share = (bounds[i + 1] - bounds[i]) as f64 / batch_size as f64;
            Ok(pretraining_loss(&model, &batches[i], true)?.affine(share, 0.0)?)
        },
        |_| batch_size,
    )
}

/// The variant, name and batches of stage `stage` of `run`, every source at `batch_size`.
fn stage_batches<'a>(
    run: &RunConfig,
    data: &'a PretrainData,
    stage: usize,
    batch_size: usize,
) -> Result<(Variant, String, StageBatches<'a>)> {
    let variant = run.model_preset.variant()?;
    let mut st = run
        .stages
        .get(stage)
        .cloned()
        .ok_or_else(|| CurriculumError::Config {
            field: "stage".into(),
            reason: format!("the run has {} stages, not {}", run.stages.len(), stage + 1),
        })?;
    for s in &mut st.sources {
        s.batch_size = batch_size;
    }
    let sb = StageBatches::new(&st, data, variant, run.seed)?;
    Ok((variant, st.name, sb))
}

/// Training steps of stage `stage` of `run` on `data` with that stage's tasks and losses:
/// first on its first batch kept in memory, then on batches from the prefetching loader
/// (`workers` threads). The stage's batch size is replaced by `batch_size`.
pub fn bench_train_data(
    run: &RunConfig,
    data: &PretrainData,
    stage: usize,
    batch_size: usize,
    workers: usize,
    opts: &TrainBenchOptions,
    device: &Device,
) -> Result<[StepTiming; 2]> {
    let (variant, name, sb) = stage_batches(run, data, stage, batch_size)?;
    let model = Lxmert::new(&run.model, variant, run.seed, device)?;
    let loss_cfg = LossConfig::default();
    let loss = |b: &Batch| -> Result<Tensor> {
        let out = forward_for_losses(model.model(), b, true)?;
        Ok(compute_losses(model.model(), &out, b, &loss_cfg)?.total)
    };
    let mut cache = None;
    let first = build_batch(&sb.plan, &mut cache, &sb.builders, &sb.examples, 0, device)?;
    let label = format!("{name} stage");
    let in_memory = time_steps(
        &model,
        opts,
        &format!("{label}: first batch kept in memory"),
        1,
        || Ok(()),
        |_, _| loss(&first),
        |_| first.len(),
    )?;
    let total = (opts.warmup + opts.steps.max(1)) as u64;
    let loaded = with_loader(
        &sb.plan,
        &sb.builders,
        &sb.examples,
        device,
        0..total,
        workers,
        |next| {
            time_steps(
                &model,
                opts,
                &format!("{label}: loader, {workers} worker(s)"),
                1,
                || {
                    next().unwrap_or_else(|| {
                        Err(CurriculumError::Config {
                            field: "bench".into(),
                            reason: "the loader ended early".into(),
                        })
                    })
                },
                |b, _| loss(b),
                Batch::len,
            )
        },
    )?;
    Ok([in_memory, loaded])
}

/// Data-path throughput: batches of stage `stage` built by the loader (`workers` threads)
/// and discarded, no model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoaderThroughput {
    /// Batches drawn.
    pub batches: usize,
    /// Loader threads.
    pub workers: usize,
    /// Batches per second.
    pub batches_per_s: f64,
    /// Examples per second.
    pub samples_per_s: f64,
}

/// Measures [`LoaderThroughput`] over `batches` batches of `batch_size`.
pub fn bench_loader(
    run: &RunConfig,
    data: &PretrainData,
    stage: usize,
    batch_size: usize,
    workers: usize,
    batches: usize,
    device: &Device,
) -> Result<LoaderThroughput> {
    let (_, _, sb) = stage_batches(run, data, stage, batch_size)?;
    let t = Instant::now();
    let samples = with_loader(
        &sb.plan,
        &sb.builders,
        &sb.examples,
        device,
        0..batches as u64,
        workers,
        |next| -> Result<usize> {
            let mut n = 0;
            while let Some(b) = next() {
                n += b?.len();
            }
            Ok(n)
        },
    )?;
    let secs = t.elapsed().as_secs_f64().max(1e-9);
    Ok(LoaderThroughput {
        batches,
        workers,
        batches_per_s: batches as f64 / secs,
        samples_per_s: samples as f64 / secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }

    #[test]
    fn synthetic_steps_are_timed_and_split() {
        let opts = TrainBenchOptions {
            warmup: 1,
            steps: 2,
            optimizer: OptimizerConfig::adamw(),
            micro_batches: 1,
        };
        let t = bench_train_synthetic(
            &Config::tiny(),
            Variant::Lxmert,
            (3, 6, 4),
            &opts,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!((t.steps, t.batch_size), (2, 3));
        let sp = t.split;
        assert!(sp.forward_s > 0.0 && sp.backward_s > 0.0 && sp.optimizer_s > 0.0);
        // With two steps every median is a mean, so the parts add up to the median step.
        let parts = sp.data_s + sp.forward_s + sp.backward_s + sp.optimizer_s;
        assert!(
            (parts - t.step_s.median).abs() < 1e-9,
            "{parts} vs {:?}",
            t.step_s
        );
        assert!((t.samples_per_s.min - 3.0 / t.step_s.max).abs() < 1e-9);
    }
}
