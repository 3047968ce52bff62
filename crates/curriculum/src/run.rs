//! The run directory: resolved config, per-stage checkpoints and state, metrics log.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ModelPreset, PretrainPreset, StageConfig};
use crate::error::{io_err, CurriculumError, Result};
use crate::optim::OptimizerConfig;

/// Everything that determines a run; saved as `config.toml` and compared on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Preset name.
    pub preset: String,
    /// Schedule (`T,P,S`, `T+P+S`, …).
    pub schedule: String,
    /// Tasks removed from every stage.
    pub without: Vec<String>,
    /// Seed of init, data order and masks.
    pub seed: u64,
    /// Data directory.
    pub data: String,
    /// The resolved model config (vocabulary and feature sizes from the data).
    pub model: msp_model::Config,
    /// `lxmert-s` or `lxmert`.
    pub variant: String,
    /// Optimiser.
    pub optimizer: OptimizerConfig,
    /// The preset's `[pretrain]` table (for the record).
    pub pretrain: PretrainPreset,
    /// The preset's `[model]` table (for the record).
    pub model_preset: ModelPreset,
    /// The stages, resolved.
    pub stages: Vec<StageConfig>,
}

/// A stage's progress, saved as `state.json` next to its checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageState {
    /// Stage name.
    pub stage: String,
    /// Optimiser updates done.
    pub step: u64,
    /// Micro-batches done (`step × accumulation`, the loader's resume point).
    pub micro_batches: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Updates of the whole stage.
    pub total_steps: u64,
    /// The batch RNG: batch `k` uses ChaCha8 (`seed`, stream `k`); `batches_drawn` = next k.
    pub rng: msp_tasks::RngState,
    /// Model weights file (next to this one): `checkpoint-<step>.safetensors` mid-stage,
    /// `checkpoint.safetensors` once the stage is finished.
    pub checkpoint_file: String,
    /// Optimiser moments file (next to this one), named like the weights.
    pub optimizer_file: String,
    /// Training seconds so far.
    pub seconds: f64,
    /// Samples seen so far.
    pub samples: u64,
    /// True when the stage is complete.
    pub finished: bool,
}

/// Paths of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The root (`runs/NAME`).
    pub root: PathBuf,
}

/// File names inside a stage directory.
pub mod files {
    /// Model weights.
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    /// Optimiser moments.
    pub const OPTIMIZER: &str = "optimizer.safetensors";
    /// [`super::StageState`].
    pub const STATE: &str = "state.json";
    /// Marker written last when a stage is complete.
    pub const DONE: &str = "done";
    /// Resolved configuration.
    pub const CONFIG: &str = "config.toml";
    /// One JSON object per logged step.
    pub const METRICS: &str = "metrics.jsonl";
    /// Per-stage summaries of the run.
    pub const SUMMARY: &str = "summary.json";
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn first_difference(a: &toml::Value, b: &toml::Value, path: &str) -> Option<String> {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            for k in x.keys().chain(y.keys()) {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = first_difference(u, v, &p) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some(format!("{p}: {u:?} in the run, {v:?} now")),
                }
            }
            None
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} in the run, {b} now")),
    }
}

impl RunDir {
    /// A run directory at `root` (created when needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `stage-<k>-<name>`.
    pub fn stage_dir(&self, index: usize, name: &str) -> PathBuf {
        self.root.join(format!("stage-{index}-{name}"))
    }

    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join(files::METRICS)
    }

    /// `plots/<stage>.png`.
    pub fn plot(&self, stage: &str) -> PathBuf {
        self.root.join("plots").join(format!("{stage}.png"))
    }

    /// Writes `config.toml` for a new run, or checks that an existing run has the same
    /// configuration (refusing it otherwise, naming the first difference).
    pub fn prepare(&self, cfg: &RunConfig) -> Result<bool> {
        std::fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let path = self.root.join(files::CONFIG);
        let ser = |e: toml::ser::Error| CurriculumError::Toml {
            path: path.clone(),
            message: e.to_string(),
        };
        let text = toml::to_string(cfg).map_err(ser)?;
        if path.exists() {
            let old = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            let a: toml::Value = toml::from_str(&old).map_err(|e| CurriculumError::Toml {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let b: toml::Value = toml::from_str(&text).map_err(|e| CurriculumError::Toml {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if let Some(reason) = first_difference(&a, &b, "") {
                return Err(CurriculumError::ConfigMismatch {
                    path: self.root.clone(),
                    reason,
                });
            }
            return Ok(true);
        }
        write_atomic(&path, text.as_bytes())?;
        Ok(false)
    }

    /// Reads the run's `config.toml`.
    pub fn read_config(&self) -> Result<RunConfig> {
        let path = self.root.join(files::CONFIG);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        toml::from_str(&text).map_err(|e| CurriculumError::Toml {
            path,
            message: e.to_string(),
        })
    }

    /// Reads a stage's `state.json` when present.
    pub fn read_state(stage_dir: &Path) -> Result<Option<StageState>> {
        let p = stage_dir.join(files::STATE);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read(&p).map_err(io_err(&p))?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| CurriculumError::Json { path: p, source })
    }

    /// Appends metrics lines.
    pub fn append_metrics(&self, lines: &[serde_json::Value]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let p = self.metrics();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io_err(&p))?;
        let mut s = String::new();
        for l in lines {
            s.push_str(&l.to_string());
            s.push('\n');
        }
        f.write_all(s.as_bytes()).map_err(io_err(&p))
    }

    /// Every metrics line (a torn last line from a kill is skipped).
    pub fn read_metrics(&self) -> Result<Vec<serde_json::Value>> {
        let p = self.metrics();
        if !p.exists() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// On resume: drops the lines of `stage` logged after `step` (they will be logged again)
    /// and any torn line.
    pub fn truncate_metrics(&self, stage: &str, step: u64) -> Result<()> {
        let keep: Vec<serde_json::Value> = self
            .read_metrics()?
            .into_iter()
            .filter(|v| {
                v.get("stage").and_then(|s| s.as_str()) != Some(stage)
                    || v.get("step")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0)
                        <= step
            })
            .collect();
        let mut s = String::new();
        for l in &keep {
            s.push_str(&l.to_string());
            s.push('\n');
        }
        write_atomic(&self.metrics(), s.as_bytes())
    }
}
