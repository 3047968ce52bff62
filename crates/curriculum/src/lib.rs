//! The MSP curriculum ("Multi-stage Pre-training over Simplified Multimodal Pre-training
//! Models"): stages, schedules, the resumable pre-training loop of LXMERT-S, its optimisers,
//! checkpoints, metrics log and loss plots.
//!
//! - [`TextSource`], [`Schedule`], [`StageConfig`]: a stage is a text source (region labels T,
//!   verb-free VG phrases P, captions S) with a task set, epochs, batch size, learning rate,
//!   warm-up and optional loss weights (`loss_weights = { ITM = 5.0 }`; every task weighs 1
//!   otherwise, as LXMERT); a schedule is an ordered list (`T,P,S`, `P,S`, `S,P,T` …) or the
//!   joint mix `T+P+S`. [`Preset`] reads the `[model]` and `[pretrain]` tables of
//!   `data/presets/<name>.toml` (unknown keys refused).
//! - [`Optimizer`]: LXMERT's BertAdam (no bias correction, ε 1e-6, decoupled weight decay
//!   0.01 on every parameter) and AdamW, updating candle `Var`s in place with moments that
//!   are saved as safetensors; [`LinearWarmupDecay`] (BERT's `warmup_linear`),
//!   [`GradClipping`] by global norm (one host sync), [`GradAccumulator`].
//! - [`PretrainData`]: the examples of each source from a data directory in the layout of
//!   `cargo xtask synth`; [`StagePlan`] / [`with_loader`]: seeded epoch plans and worker
//!   threads that build batches ahead of the step.
//! - [`pretrain`]: every stage in order into a [`RunDir`] (`config.toml`,
//!   `stage-<k>-<name>/{checkpoint.safetensors, optimizer.safetensors, state.json, done}`,
//!   `metrics.jsonl`, `plots/<stage>.png`, `summary.json`). Each metrics line has every
//!   task's loss and accuracy, and [`PooledStats`] of the pooled vector (`pooled.abs_mean`,
//!   `pooled.batch_std`; for LXMERT-S also of each pooler, `pooled.text.*` and
//!   `pooled.visual.*`), which shows when and which poolers saturate.
//!
//! **Key design choice: a run is a pure function of its configuration and the batch index.**
//! Batch `k` of a stage depends only on `(seed, k)` (the epoch order is a seeded shuffle of
//! epoch `k / batches_per_epoch`, the masks come from msp-tasks' ChaCha8 stream `k`), so the
//! loader threads can build batches in any timing and still deliver them in one order, and
//! resuming needs only the update count, the weights and the optimiser moments. A killed run
//! started again with the same command resumes from the last checkpoint (every
//! `checkpoint_every` updates, and at the end of each stage); stages with a `done` marker
//! are never redone; a run directory of another configuration is refused.
//!
//! Choices where the paper is silent: each stage starts a fresh optimiser and schedule from the
//! previous stage's full checkpoint (LXMERT's `--load`); a joint stage takes the epochs,
//! learning rate, warm-up and loss weights of its last source and each source's own batch size
//! and tasks, and each of its batches comes from one source; the last, smaller batch of an
//! epoch is kept; the learning rate factor is evaluated before the update counter increments
//! for both optimisers (so the first update has lr 0 with warm-up, as LXMERT); a variable with
//! no gradient in a stage (a head the stage does not train) is not updated, not even by weight
//! decay (PyTorch skips `grad is None`). Dropout draws from a stream seeded by the stage and
//! the micro-batch index, so a resumed stage redoes the updates since its last checkpoint
//! with the same batches and masks and ends with the uninterrupted run's weights, bit for bit
//! on the same machine and thread count (test `a_resumed_stage_ends_with_the_uninterrupted_weights`).
//!
//! **Speed on a CPU.** A micro-batch's matrix products are split between the threads of the
//! current rayon pool; `[pretrain] side_by_side = N` instead runs N of an update's
//! `accumulation` micro-batches at once, one thread each (the same update up to rounding;
//! small configs on 2 cores, +14–29 % in the trainer). On x86-64 the pool's threads may
//! flush denormal floats to zero ([`msp_model::ops::set_flush_denormals`], as `cargo xtask`
//! does on each of its threads): on Intel cores each denormal costs a microcode assist.
//!
//! ```
//! use msp_curriculum::{LinearWarmupDecay, PretrainPreset, Schedule, TextSource};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let schedule: Schedule = "T,P,S".parse()?;
//! let stages = PretrainPreset::paper().stages(&schedule, &["TITP".parse()?])?;
//! assert_eq!(stages[0].sources[0].source, TextSource::Labels);
//! assert_eq!((stages[0].epochs, stages[0].sources[0].batch_size), (10, 64));
//! assert_eq!(stages[1].sources[0].tasks, "MLM,MRFR,MOC"); // TITP removed
//! assert_eq!(stages[2].sources[0].tasks, "MLM,MRFR,MOC,TITS,ITM-HS");
//!
//! // BERT's warm-up then linear decay: 10 updates, 20 % warm-up.
//! let lr = LinearWarmupDecay { base_lr: 1e-4, warmup: 0.2, total_steps: 10 };
//! assert_eq!(lr.lr(0), 0.0);
//! assert_eq!(lr.lr(2), 1e-4);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod bench;
mod config;
mod data;
mod error;
mod grad_clipping;
mod loader;
mod lr_scheduler;
mod optim;
mod plot;
mod pooled_stats;
mod run;
mod trainer;

pub use bench::{
    bench_loader, bench_train_data, bench_train_synthetic, LoaderThroughput, Spread, StepSplit,
    StepTiming, TrainBenchOptions,
};
pub use config::{
    DataShape, ModelPreset, Preset, PretrainPreset, Schedule, SourceConfig, StageConfig,
    StagePreset, TextSource,
};
pub use data::PretrainData;
pub use error::{CurriculumError, Result};
pub use grad_clipping::{global_norm, GradAccumulator, GradClipping, GradClippingState};
pub use loader::{build_batch, with_loader, BatchPlan, StagePlan};
pub use lr_scheduler::{warmup_linear, LinearWarmupDecay, LrSchedulerState};
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind};
pub use plot::{plot_losses, plot_series, plot_stage};
pub use pooled_stats::PooledStats;
pub use run::{files, write_atomic, RunConfig, RunDir, StageState};
pub use trainer::{
    parse_device, pretrain, resolve_config, Event, RunOutcome, StageBatches, StageSummary,
};
