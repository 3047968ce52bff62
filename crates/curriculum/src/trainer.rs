//! The pre-training loop: stages in order, each from the previous stage's checkpoint,
//! resumable at any checkpoint.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Device;
use msp_model::ops::GradSink;
use msp_model::{run_side_by_side, take_gradients, with_dropout_stream, LoadOptions, Lxmert};
use msp_tasks::{
    compute_losses, forward_for_losses, Batch, BatchBuilder, BuilderConfig, Example, RngState,
};
use serde::{Deserialize, Serialize};

use crate::config::{Preset, Schedule, StageConfig, TextSource};
use crate::data::PretrainData;
use crate::error::{io_err, CurriculumError, Result};
use crate::grad_clipping::{GradAccumulator, GradClipping};
use crate::loader::{with_loader, StagePlan};
use crate::lr_scheduler::LinearWarmupDecay;
use crate::optim::Optimizer;
use crate::pooled_stats::PooledSums;
use crate::run::{files, write_atomic, RunConfig, RunDir, StageState};

/// What one micro-batch's forward and backward leave for the update's metrics.
struct MicroBatchRun {
    /// Per task: loss and, where the task has one, accuracy.
    losses: BTreeMap<String, (f32, Option<f32>)>,
    /// The weighted total loss.
    total: f32,
    /// Statistics of the pooled vector.
    pooled: PooledSums,
    /// Examples in the micro-batch.
    samples: usize,
}

/// What the trainer reports to its caller (progress bars, tests).
#[derive(Debug)]
pub enum Event<'a> {
    /// A stage begins (or resumes at `done_steps`).
    StageStart {
        /// Stage index.
        index: usize,
        /// Stage name.
        name: &'a str,
        /// Updates of the stage.
        total_steps: u64,
        /// Updates already done (resume).
        done_steps: u64,
    },
    /// A finished stage found on disk and skipped.
    StageSkipped {
        /// Stage index.
        index: usize,
        /// Stage name.
        name: &'a str,
    },
    /// One optimiser update.
    Step {
        /// Stage name.
        stage: &'a str,
        /// Updates done in the stage.
        step: u64,
        /// Updates of the stage.
        total_steps: u64,
        /// Total loss of the update (mean over its micro-batches).
        loss: f32,
        /// Throughput since the previous update.
        samples_per_s: f64,
    },
    /// A stage is complete.
    StageEnd {
        /// Its summary.
        summary: &'a StageSummary,
    },
}

/// How one stage went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSummary {
    /// Stage name.
    pub name: String,
    /// Updates.
    pub steps: u64,
    /// Examples seen.
    pub samples: u64,
    /// Training seconds (summed over resumed sessions).
    pub seconds: f64,
    /// `samples / seconds`.
    pub samples_per_s: f64,
    /// Mean over the last (up to 10) logged updates of every `loss.*` and `acc.*` key.
    pub final_metrics: BTreeMap<String, f64>,
    /// True when the stage was already complete on disk.
    pub skipped: bool,
}

/// How a call to [`pretrain`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// Every stage is complete.
    Finished(Vec<StageSummary>),
    /// The event callback asked to stop (as if the process had been killed: only what was
    /// checkpointed survives).
    Stopped,
}

/// The batch builders, examples and epoch plan of one stage.
pub struct StageBatches<'a> {
    /// One builder per text source of the stage.
    pub builders: Vec<BatchBuilder<'a>>,
    /// The examples of each source.
    pub examples: Vec<&'a [Example]>,
    /// Which examples make each micro-batch.
    pub plan: StagePlan,
}

impl<'a> StageBatches<'a> {
    /// Builders (masking, tokenisation, region sampling seeded by `seed`) and plan of `stage`.
    pub fn new(
        stage: &StageConfig,
        data: &'a PretrainData,
        variant: msp_model::Variant,
        seed: u64,
    ) -> Result<Self> {
        let mut builders = Vec::new();
        let mut examples: Vec<&[Example]> = Vec::new();
        for src in &stage.sources {
            let mut bc = BuilderConfig::new(src.task_set()?);
            bc.max_len = src.max_len;
            bc.word_positions = variant.word_positions();
            bc.pad_regions_to = None;
            let mut b = BatchBuilder::new(
                bc,
                &data.tokenizer,
                &data.store,
                Some(&data.objects),
                Some(&data.hard_negatives),
                seed,
            )?;
            if src.source == TextSource::Phrases {
                b = b.with_preferred_words(data.preferred.clone());
            }
            builders.push(b);
            examples.push(data.examples(src.source)?);
        }
        let plan = StagePlan::new(
            seed,
            stage
                .sources
                .iter()
                .zip(&examples)
                .map(|(s, e)| (e.len(), s.batch_size))
                .collect(),
        )?;
        Ok(Self {
            builders,
            examples,
            plan,
        })
    }
}

/// Resolves the run configuration of a preset, schedule and data set.
pub fn resolve_config(
    preset_name: &str,
    preset: &Preset,
    schedule: &Schedule,
    without: &[msp_tasks::Task],
    seed: u64,
    data: &PretrainData,
) -> Result<RunConfig> {
    let variant = preset.model.variant()?;
    let model = preset.model.model_config(&data.shape());
    model.validate()?;
    let stages = preset.pretrain.stages(schedule, without)?;
    let longest = stages
        .iter()
        .flat_map(|s| s.sources.iter().map(|x| x.max_len))
        .max()
        .unwrap_or(0);
    if model.max_position_embeddings < longest + 2 {
        return Err(CurriculumError::Config {
            field: "model.max_position_embeddings".into(),
            reason: format!(
                "{} is too small for texts of {longest} pieces",
                model.max_position_embeddings
            ),
        });
    }
    Ok(RunConfig {
        preset: preset_name.to_string(),
        schedule: schedule.to_string(),
        without: without.iter().map(|t| t.name().to_string()).collect(),
        seed,
        data: data.dir.display().to_string(),
        model,
        variant: variant.to_string(),
        optimizer: preset.pretrain.optimizer(),
        pretrain: preset.pretrain.clone(),
        model_preset: preset.model.clone(),
        stages,
    })
}

fn final_metrics(run: &RunDir, stage: &str) -> Result<BTreeMap<String, f64>> {
    let lines: Vec<serde_json::Value> = run
        .read_metrics()?
        .into_iter()
        .filter(|v| v.get("stage").and_then(|s| s.as_str()) == Some(stage))
        .collect();
    let tail = &lines[lines.len().saturating_sub(10)..];
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for l in tail {
        if let Some(o) = l.as_object() {
            for (k, v) in o {
                if let (true, Some(x)) =
                    (k.starts_with("loss.") || k.starts_with("acc."), v.as_f64())
                {
                    let e = sums.entry(k.clone()).or_default();
                    e.0 += x;
                    e.1 += 1;
                }
            }
        }
    }
    Ok(sums
        .into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect())
}

fn summary_of(run: &RunDir, st: &StageState, skipped: bool) -> Result<StageSummary> {
    Ok(StageSummary {
        name: st.stage.clone(),
        steps: st.step,
        samples: st.samples,
        seconds: st.seconds,
        samples_per_s: if st.seconds > 0.0 {
            st.samples as f64 / st.seconds
        } else {
            0.0
        },
        final_metrics: final_metrics(run, &st.stage)?,
        skipped,
    })
}

/// The device named `cpu` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let n = s
                .strip_prefix("cuda:")
                .or_else(|| (s == "cuda").then_some("0"))
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| CurriculumError::Config {
                    field: "device".into(),
                    reason: format!("{s:?} (expected cpu or cuda:N)"),
                })?;
            Ok(Device::new_cuda(n)?)
        }
    }
}

/// Saves weights, optimiser moments and `state.json` as one checkpoint. Mid-stage the files
/// carry the step in their names and `state.json`, renamed into place last, names them: that
/// rename is the commit point, so a kill at any moment leaves either the previous complete
/// checkpoint or the new one, never new weights with old state. Older generations are
/// removed after the commit. A finished stage's files get the plain names
/// (`checkpoint.safetensors`), which the next stage and fine-tuning read.
fn save_stage(
    model: &Lxmert,
    opt: &Optimizer,
    dir: &std::path::Path,
    state: &mut StageState,
) -> Result<()> {
    let (ckpt, moments) = if state.finished {
        (files::CHECKPOINT.to_string(), files::OPTIMIZER.to_string())
    } else {
        (
            format!("checkpoint-{}.safetensors", state.step),
            format!("optimizer-{}.safetensors", state.step),
        )
    };
    model.save(&dir.join(&ckpt))?;
    opt.save(&dir.join(&moments))?;
    msp_features::pause_point("pretrain.checkpoint.weights");
    state.checkpoint_file = ckpt;
    state.optimizer_file = moments;
    let json = serde_json::to_vec_pretty(state).map_err(|source| CurriculumError::Json {
        path: dir.join(files::STATE),
        source,
    })?;
    write_atomic(&dir.join(files::STATE), &json)?;
    msp_features::pause_point("pretrain.checkpoint.committed");
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let generation = (name.starts_with("checkpoint-") || name.starts_with("optimizer-"))
            && name.ends_with(".safetensors");
        if generation && name != state.checkpoint_file && name != state.optimizer_file {
            std::fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
        }
    }
    Ok(())
}

/// Pre-trains every stage of `cfg` into `run`, resuming from what is on disk: finished
/// stages (a `done` marker) are skipped, a stage with a `state.json` continues from its
/// last checkpoint, and a new stage starts from the previous stage's checkpoint with a fresh
/// optimiser (LXMERT's `--load`). A run directory of another configuration is refused.
pub fn pretrain(
    cfg: &RunConfig,
    data: &PretrainData,
    run: &RunDir,
    device: &Device,
    on_event: &mut dyn FnMut(&Event<'_>) -> ControlFlow<()>,
) -> Result<RunOutcome> {
    let resumed = run.prepare(cfg)?;
    if !resumed && run.metrics().exists() {
        std::fs::remove_file(run.metrics()).map_err(io_err(&run.metrics()))?;
    }
    let variant: msp_model::Variant =
        cfg.variant
            .parse()
            .map_err(|reason| CurriculumError::Config {
                field: "variant".into(),
                reason,
            })?;
    let model = Lxmert::new(&cfg.model, variant, cfg.seed, device)?;
    let load_opts = LoadOptions::strict().with_cls_token_id(cfg.model.cls_token_id);
    let mut last_checkpoint: Option<std::path::PathBuf> = None;
    let mut summaries = Vec::new();

    for (si, st) in cfg.stages.iter().enumerate() {
        let dir = run.stage_dir(si, &st.name);
        if dir.join(files::DONE).exists() {
            let state = RunDir::read_state(&dir)?.ok_or_else(|| CurriculumError::State {
                path: dir.join(files::STATE),
                reason: "stage marked done without state.json".into(),
            })?;
            summaries.push(summary_of(run, &state, true)?);
            last_checkpoint = Some(dir.join(files::CHECKPOINT));
            if on_event(&Event::StageSkipped {
                index: si,
                name: &st.name,
            })
            .is_break()
            {
                return Ok(RunOutcome::Stopped);
            }
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let saved = RunDir::read_state(&dir)?;
        if let Some(s) = &saved {
            model.load_checkpoint(&dir.join(&s.checkpoint_file), load_opts)?;
        } else if let Some(prev) = &last_checkpoint {
            model.load_checkpoint(prev, load_opts)?;
        }

        // Batches.
        let stage_seed = cfg.seed.wrapping_add(0x9e37_79b9 * (si as u64 + 1));
        let StageBatches {
            builders,
            examples,
            plan,
        } = StageBatches::new(st, data, variant, stage_seed)?;
        let bpe = plan.batches_per_epoch();
        let accum = st.accumulation.max(1) as u64;
        let mut total_micro = bpe * st.epochs as u64;
        if let Some(m) = st.max_steps {
            total_micro = total_micro.min(m * accum);
        }
        let total_steps = total_micro.div_ceil(accum);
        let sched = LinearWarmupDecay {
            base_lr: st.lr,
            warmup: st.warmup,
            total_steps,
        };
        let clip = GradClipping {
            max_norm: st.grad_clip,
        };
        let mut opt = Optimizer::new(cfg.optimizer, model.named_vars())?;
        let vars = opt.vars();
        let mut state = StageState {
            stage: st.name.clone(),
            step: 0,
            micro_batches: 0,
            epoch: 0,
            total_steps,
            rng: RngState {
                seed: stage_seed,
                batches_drawn: 0,
            },
            checkpoint_file: String::new(),
            optimizer_file: String::new(),
            seconds: 0.0,
            samples: 0,
            finished: false,
        };
        if let Some(s) = saved {
            if s.total_steps != total_steps || s.rng.seed != stage_seed {
                return Err(CurriculumError::State {
                    path: dir.join(files::STATE),
                    reason: "the saved stage does not match the configuration".into(),
                });
            }
            opt.load(&dir.join(&s.optimizer_file), s.step)?;
            state = s;
            run.truncate_metrics(&st.name, state.step)?;
        }
        if on_event(&Event::StageStart {
            index: si,
            name: &st.name,
            total_steps,
            done_steps: state.step,
        })
        .is_break()
        {
            return Ok(RunOutcome::Stopped);
        }

        let loss_cfg = st.loss_config()?;
        let log_every = cfg.pretrain.log_every;
        let ckpt_every = cfg.pretrain.checkpoint_every;
        let workers = cfg.pretrain.workers;
        let start_micro = state.micro_batches;
        let side_by_side = cfg.pretrain.side_by_side.clamp(1, accum as usize);
        // One micro-batch's forward and backward (loss ÷ accumulation), its dropout drawn
        // from stream `seed`: the gradients and what the metrics need of it.
        let micro_batch = |batch: &Batch, seed: u64, step: u64| -> Result<_> {
            with_dropout_stream(seed, || {
                // The fused ops write the weight gradients straight into `sink`.
                let sink = GradSink::new();
                let (out, losses) = sink.collect(|| -> Result<_> {
                    let out = forward_for_losses(model.model(), batch, true)?;
                    let losses = compute_losses(model.model(), &out, batch, &loss_cfg)?;
                    Ok((out, losses))
                })?;
                let total = losses.total.to_scalar::<f32>()?;
                if !total.is_finite() {
                    return Err(CurriculumError::NonFinite {
                        stage: st.name.clone(),
                        step,
                        value: total,
                    });
                }
                let grads = sink.backward(&losses.total.affine(1.0 / accum as f64, 0.0)?)?;
                let mut pooled = PooledSums::default();
                pooled.add(&out)?;
                let run = MicroBatchRun {
                    losses: losses.values()?,
                    total,
                    pooled,
                    samples: batch.len(),
                };
                Ok((grads, run))
            })
        };
        let outcome = with_loader(
            &plan,
            &builders,
            &examples,
            device,
            start_micro..total_micro,
            workers,
            |next| -> Result<bool> {
                let mut acc = GradAccumulator::new(&vars);
                let mut sums: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
                let mut total_sum = 0f64;
                // Sums of the pooled vector's statistics (and of its two factors, LXMERT-S)
                // over the update's micro-batches.
                let mut pooled_sum = PooledSums::default();
                let mut window_samples = 0u64;
                let mut window_start = Instant::now();
                let mut step_samples = 0u64;
                let mut k = start_micro;
                let mut last = Instant::now();
                let mut group = Vec::with_capacity(side_by_side);
                loop {
                    // The next micro-batches to run together, none past the update's end.
                    group.clear();
                    let room = side_by_side.min(accum as usize - acc.count());
                    while group.len() < room {
                        match next() {
                            Some(batch) => group.push(batch?),
                            None => break,
                        }
                    }
                    if group.is_empty() {
                        break;
                    }
                    // Dropout masks are a function of (stage, micro-batch): a resumed run
                    // draws the masks the uninterrupted run drew.
                    let seed =
                        |i: usize| stage_seed ^ (k + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    let runs = if let [batch] = group.as_slice() {
                        let (grads, run) = micro_batch(batch, seed(0), state.step)?;
                        acc.add(grads)?;
                        vec![run]
                    } else {
                        let vars = acc.vars();
                        let done = run_side_by_side(group.len(), |i| {
                            micro_batch(&group[i], seed(i), state.step)
                                .map(|(grads, run)| (take_gradients(grads, vars), run))
                        })?
                        .into_iter()
                        .collect::<Result<Vec<_>>>()?;
                        let (parts, runs): (Vec<_>, Vec<_>) = done.into_iter().unzip();
                        acc.add_side_by_side(parts)?;
                        runs
                    };
                    for run in runs {
                        for (name, (l, a)) in run.losses {
                            let e = sums.entry(name).or_insert((0.0, 0.0, 0));
                            e.0 += f64::from(l);
                            if let Some(a) = a {
                                e.1 += f64::from(a);
                                e.2 += 1;
                            }
                        }
                        total_sum += f64::from(run.total);
                        pooled_sum.merge(&run.pooled);
                        step_samples += run.samples as u64;
                    }
                    k += group.len() as u64;
                    if acc.count() as u64 == accum || k == total_micro {
                        let n = acc.count() as f64;
                        let Some(g) = acc.take() else { continue };
                        let clip_state = clip.scale(&g, &vars)?;
                        let lr = sched.lr(state.step);
                        opt.step(&g, lr, clip_state.last_scale)?;
                        drop(g);
                        state.step += 1;
                        state.micro_batches = k;
                        state.epoch = (k.saturating_sub(1)) / bpe;
                        state.rng.batches_drawn = k;
                        state.samples += step_samples;
                        window_samples += step_samples;
                        step_samples = 0;
                        let now = Instant::now();
                        state.seconds += now.duration_since(last).as_secs_f64();
                        last = now;
                        let loss = (total_sum / n) as f32;
                        if state.step % log_every == 0 || state.step == total_steps {
                            let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                            let sps = window_samples as f64 / secs;
                            let mut m = serde_json::Map::new();
                            m.insert("stage".into(), st.name.clone().into());
                            m.insert("step".into(), state.step.into());
                            m.insert("epoch".into(), state.epoch.into());
                            m.insert("lr".into(), lr.into());
                            m.insert("samples_per_s".into(), sps.into());
                            m.insert("grad_norm".into(), clip_state.last_norm.into());
                            for (name, (l, a, na)) in &sums {
                                m.insert(format!("loss.{name}"), (l / n).into());
                                if *na > 0 {
                                    m.insert(format!("acc.{name}"), (a / *na as f64).into());
                                }
                            }
                            m.insert("loss.total".into(), (total_sum / n).into());
                            pooled_sum.insert_means(&mut m, n);
                            run.append_metrics(&[serde_json::Value::Object(m)])?;
                            if on_event(&Event::Step {
                                stage: &st.name,
                                step: state.step,
                                total_steps,
                                loss,
                                samples_per_s: sps,
                            })
                            .is_break()
                            {
                                return Ok(false);
                            }
                            window_samples = 0;
                            window_start = Instant::now();
                        }
                        sums.clear();
                        total_sum = 0.0;
                        pooled_sum = PooledSums::default();
                        msp_features::pause_point("pretrain.step");
                        if state.step % ckpt_every == 0 && state.step < total_steps {
                            save_stage(&model, &opt, &dir, &mut state)?;
                            // Checkpoint time counts neither in the stage's training time
                            // nor in the throughput window.
                            last = Instant::now();
                            window_start = last;
                        }
                    }
                }
                Ok(true)
            },
        )?;
        if !outcome {
            return Ok(RunOutcome::Stopped);
        }
        state.finished = true;
        save_stage(&model, &opt, &dir, &mut state)?;
        crate::plot::plot_stage(run, &st.name)?;
        msp_features::pause_point("pretrain.stage.done");
        write_atomic(&dir.join(files::DONE), b"done\n")?;
        last_checkpoint = Some(dir.join(files::CHECKPOINT));
        let summary = summary_of(run, &state, false)?;
        if on_event(&Event::StageEnd { summary: &summary }).is_break() {
            return Ok(RunOutcome::Stopped);
        }
        summaries.push(summary);
    }
    let json = serde_json::to_vec_pretty(&summaries).map_err(|source| CurriculumError::Json {
        path: run.root.join(files::SUMMARY),
        source,
    })?;
    write_atomic(&run.root.join(files::SUMMARY), &json)?;
    Ok(RunOutcome::Finished(summaries))
}
