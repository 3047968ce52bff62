//! Every downstream task for one backbone, resumable task by task: each task's result is
//! written to `<out>/<task>/result.json` (atomically) and a finished task is not redone.

use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::config::FinetuneConfig;
use crate::data::DownstreamData;
use crate::error::{read_json, write_json, EvalError, Result};
use crate::model::Backbone;
use crate::nlvr2::{finetune_nlvr2, Nlvr2Data, Nlvr2Result};
use crate::qa::{finetune_qa, QaData, QaKind, QaResult};
use crate::retrieval::{
    finetune_retrieval, zero_shot, RetrievalData, RetrievalResult, RetrievalScores,
};
use crate::train::OnProgress;
use msp_model::Lxmert;

/// A downstream task of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownstreamTask {
    /// VQA v2.
    Vqa,
    /// GQA.
    Gqa,
    /// NLVR2.
    Nlvr2,
    /// Zero-shot image and text retrieval (pre-trained ITM head).
    ZeroShot,
    /// Fine-tuned image and text retrieval.
    Retrieval,
}

impl DownstreamTask {
    /// Every task, in the order the suite runs them.
    pub const ALL: [DownstreamTask; 5] = [
        Self::ZeroShot,
        Self::Vqa,
        Self::Gqa,
        Self::Nlvr2,
        Self::Retrieval,
    ];

    /// Directory and CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vqa => "vqa",
            Self::Gqa => "gqa",
            Self::Nlvr2 => "nlvr2",
            Self::ZeroShot => "zero-shot",
            Self::Retrieval => "retrieval",
        }
    }
}

impl std::str::FromStr for DownstreamTask {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s.to_ascii_lowercase())
            .ok_or_else(|| EvalError::Config {
                field: "task".into(),
                reason: format!("{s:?} (expected vqa, gqa, nlvr2, zero-shot or retrieval)"),
            })
    }
}

/// Results of the tasks that were run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DownstreamResults {
    /// VQA.
    pub vqa: Option<QaResult>,
    /// GQA.
    pub gqa: Option<QaResult>,
    /// NLVR2.
    pub nlvr2: Option<Nlvr2Result>,
    /// Zero-shot retrieval.
    pub zero_shot: Option<RetrievalScores>,
    /// Fine-tuned retrieval.
    pub retrieval: Option<RetrievalResult>,
}

/// The JSON at `path` when the file exists.
fn cached<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    path.exists().then(|| read_json(path)).transpose()
}

/// Records what the results in `out` are made from (`config.json`: fine-tuning table, seed,
/// backbone, data), or checks that an existing record matches, so that changed settings
/// never silently reuse stale results.
fn check_or_record(
    backbone: &Backbone,
    data: &DownstreamData,
    cfg: &FinetuneConfig,
    seed: u64,
    out: &Path,
) -> Result<()> {
    let record = serde_json::json!({
        "finetune": cfg,
        "seed": seed,
        "checkpoint": backbone.checkpoint,
        "model": backbone.config,
        "variant": backbone.variant.to_string(),
        "data": data.dir,
    });
    std::fs::create_dir_all(out).map_err(crate::error::io_err(out))?;
    let path = out.join("config.json");
    match cached::<serde_json::Value>(&path)? {
        Some(old) if old != record => Err(EvalError::Config {
            field: path.display().to_string(),
            reason: "the results in this directory were made with another configuration; \
                     use another --out or delete it"
                .into(),
        }),
        Some(_) => Ok(()),
        None => write_json(&path, &record, true),
    }
}

/// What the suite tells its caller.
#[derive(Debug)]
pub enum SuiteEvent<'a> {
    /// A task starts.
    TaskStart(DownstreamTask),
    /// A task's result was on disk.
    TaskCached(DownstreamTask),
    /// A task is done.
    TaskEnd(DownstreamTask, f64),
    /// Progress inside a task.
    Progress(&'a crate::train::Progress<'a>),
}

/// The model a fine-tuning starts from: `backbone`, with fresh poolers when
/// `cfg.reset_poolers`.
fn finetune_start(
    backbone: &Backbone,
    cfg: &FinetuneConfig,
    seed: u64,
    device: &Device,
) -> Result<Lxmert> {
    let (model, _) = backbone.build(seed, device)?;
    if cfg.reset_poolers {
        model.reset_poolers()?;
    }
    Ok(model)
}

/// Fine-tunes and evaluates every task of `tasks` from `backbone` (a fresh copy of it per
/// task), writing predictions and `result.json` under `out/<task>/`.
#[allow(clippy::too_many_arguments)]
pub fn run_suite(
    backbone: &Backbone,
    data: &DownstreamData,
    cfg: &FinetuneConfig,
    tasks: &[DownstreamTask],
    seed: u64,
    out: &Path,
    device: &Device,
    on_event: &mut dyn FnMut(&SuiteEvent<'_>),
) -> Result<DownstreamResults> {
    let wp = backbone.variant.word_positions();
    check_or_record(backbone, data, cfg, seed, out)?;
    let mut res = DownstreamResults::default();
    for &task in tasks {
        let dir = out.join(task.name());
        let result_path = dir.join("result.json");
        macro_rules! run_or_cache {
            ($slot:expr, $body:expr) => {{
                if let Some(v) = cached(&result_path)? {
                    on_event(&SuiteEvent::TaskCached(task));
                    $slot = Some(v);
                } else {
                    on_event(&SuiteEvent::TaskStart(task));
                    let t0 = std::time::Instant::now();
                    let v = {
                        let mut p =
                            |x: &crate::train::Progress<'_>| on_event(&SuiteEvent::Progress(x));
                        let progress: OnProgress<'_> = &mut p;
                        #[allow(clippy::redundant_closure_call)]
                        ($body)(progress)?
                    };
                    write_json(&result_path, &v, true)?;
                    // The best epoch's weights were only needed to reload them.
                    let best = dir.join("best.safetensors");
                    if best.exists() {
                        std::fs::remove_file(&best).map_err(crate::error::io_err(&best))?;
                    }
                    on_event(&SuiteEvent::TaskEnd(task, t0.elapsed().as_secs_f64()));
                    $slot = Some(v);
                }
            }};
        }
        let task_seed = seed.wrapping_add(task as u64 * 7919);
        match task {
            DownstreamTask::Vqa | DownstreamTask::Gqa => {
                let kind = if task == DownstreamTask::Vqa {
                    QaKind::Vqa
                } else {
                    QaKind::Gqa
                };
                let slot: Option<QaResult>;
                run_or_cache!(slot, |progress: OnProgress<'_>| {
                    let qa = QaData::read(kind, data, cfg.max_len, wp)?;
                    let model = finetune_start(backbone, cfg, task_seed, device)?;
                    finetune_qa(&model, data, &qa, cfg, task_seed, &dir, device, progress)
                });
                match kind {
                    QaKind::Vqa => res.vqa = slot,
                    QaKind::Gqa => res.gqa = slot,
                }
            }
            DownstreamTask::Nlvr2 => run_or_cache!(res.nlvr2, |progress: OnProgress<'_>| {
                let d = Nlvr2Data::read(data, cfg.max_len, wp)?;
                let model = finetune_start(backbone, cfg, task_seed, device)?;
                finetune_nlvr2(&model, data, &d, cfg, task_seed, &dir, device, progress)
            }),
            DownstreamTask::ZeroShot => run_or_cache!(res.zero_shot, |progress: OnProgress<'_>| {
                let r = RetrievalData::read(data, cfg, wp)?;
                let (model, _) = backbone.build(task_seed, device)?;
                std::fs::create_dir_all(&dir).map_err(crate::error::io_err(&dir))?;
                zero_shot(&model, data, &r, cfg, device, progress)
            }),
            DownstreamTask::Retrieval => {
                run_or_cache!(res.retrieval, |progress: OnProgress<'_>| {
                    let r = RetrievalData::read(data, cfg, wp)?;
                    let model = finetune_start(backbone, cfg, task_seed, device)?;
                    finetune_retrieval(&model, data, &r, cfg, task_seed, &dir, device, progress)
                })
            }
        }
    }
    Ok(res)
}
