//! The backbone a fine-tuning starts from: a model configuration and, unless it is the
//! "vanilla" row of the ablation, a pre-training checkpoint.

use std::path::{Path, PathBuf};

use candle_core::Device;
use msp_curriculum::{files, RunDir};
use msp_model::{Config, LoadOptions, LoadReport, Lxmert, Variant};

use crate::error::{EvalError, Result};

/// What fine-tuning starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct Backbone {
    /// Model configuration.
    pub config: Config,
    /// LXMERT-S or LXMERT.
    pub variant: Variant,
    /// Weights (HF / LXMERT names); `None`: random init (no pre-training).
    pub checkpoint: Option<PathBuf>,
    /// Refuse missing or unexpected tensors (our own runs); external checkpoints may lack
    /// heads.
    pub strict: bool,
}

impl Backbone {
    /// The last stage of a finished pre-training run (`runs/NAME`).
    pub fn from_run(run: &Path) -> Result<Self> {
        let run_dir = RunDir::new(run);
        let cfg = run_dir.read_config()?;
        let cfg_path = run.join(files::CONFIG);
        let variant = cfg.variant.parse().map_err(|reason| EvalError::Data {
            path: cfg_path.clone(),
            reason,
        })?;
        let k = cfg
            .stages
            .len()
            .checked_sub(1)
            .ok_or_else(|| EvalError::Data {
                path: cfg_path.clone(),
                reason: "the run has no stage".into(),
            })?;
        let stage = run_dir.stage_dir(k, &cfg.stages[k].name);
        if !stage.join(files::DONE).exists() {
            return Err(EvalError::Data {
                path: stage,
                reason:
                    "the last pre-training stage is not finished (run pretrain again to resume it)"
                        .into(),
            });
        }
        Ok(Self {
            config: cfg.model,
            variant,
            checkpoint: Some(stage.join(files::CHECKPOINT)),
            strict: true,
        })
    }

    /// A randomly initialised backbone of `config` (the ablation's "vanilla" row).
    pub fn random(config: Config, variant: Variant) -> Self {
        Self {
            config,
            variant,
            checkpoint: None,
            strict: true,
        }
    }

    /// Builds the model (pre-training heads included, so the ITM head is there for
    /// zero-shot retrieval and as the match head's initialisation) and loads the weights.
    pub fn build(&self, seed: u64, device: &Device) -> Result<(Lxmert, Option<LoadReport>)> {
        let model = Lxmert::new(&self.config, self.variant, seed, device)?;
        let report = match &self.checkpoint {
            Some(p) => {
                let opts = if self.strict {
                    LoadOptions::strict()
                } else {
                    LoadOptions::lenient()
                };
                Some(model.load_checkpoint(p, opts.with_cls_token_id(self.config.cls_token_id))?)
            }
            None => None,
        };
        Ok((model, report))
    }
}
