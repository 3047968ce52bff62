//! The `[finetune]` table of a preset: the LXMERT-S fine-tuning protocol (lr 5e-5, batch
//! 32, BertAdam with 10 % warm-up, clipping at 5; epochs VQA 6, GQA 5, NLVR2 8, retrieval
//! 8), with optional caps that presets use to fit a CPU budget.

use std::path::Path;

use msp_curriculum::{OptimizerConfig, OptimizerKind};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, EvalError, Result};

/// One task's schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSchedule {
    /// Passes over the training examples.
    pub epochs: usize,
    /// Batch size (default: the table's `batch_size`).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Learning rate (default: the table's `lr`).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Use only this many training examples (a seeded subset), to fit a time budget.
    #[serde(default)]
    pub max_train: Option<usize>,
    /// σ of this task's new head (default: the table's `head_init_std`).
    #[serde(default)]
    pub head_init_std: Option<f64>,
}

impl TaskSchedule {
    fn epochs(epochs: usize) -> Self {
        Self {
            epochs,
            batch_size: None,
            lr: None,
            max_train: None,
            head_init_std: None,
        }
    }
}

/// Where the retrieval fine-tuning's match head starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetrievalHead {
    /// A copy of the pre-trained ITM head (LXMERT-S).
    #[default]
    Itm,
    /// A new head, initialised like the answer head (`head_init_std`).
    Fresh,
}

/// Fine-tuning settings shared by every downstream task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up fraction of the updates.
    pub warmup: f64,
    /// Training batch size (VQA/GQA/NLVR2 examples; retrieval: captions, each giving 4 pairs).
    pub batch_size: usize,
    /// Batch size of evaluation forward passes (pairs).
    pub eval_batch_size: usize,
    /// Word pieces per text including \[CLS\] and \[SEP\].
    pub max_len: usize,
    /// Clip the gradients' global norm (None: no clipping).
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// `bertadam` or `adamw`.
    pub optimizer: OptimizerKind,
    /// VQA.
    pub vqa: TaskSchedule,
    /// GQA.
    pub gqa: TaskSchedule,
    /// NLVR2.
    pub nlvr2: TaskSchedule,
    /// Image-text retrieval.
    pub retrieval: TaskSchedule,
    /// Evaluate retrieval on only the first this many test images (all when absent).
    #[serde(default)]
    pub retrieval_test_images: Option<usize>,
    /// σ of the N(0, σ) init of the new answer and NLVR2 heads (default: the model's
    /// `initializer_range`, 0.02 as LXMERT), and of a fresh retrieval head; a task's own
    /// `head_init_std` overrides it.
    #[serde(default)]
    pub head_init_std: Option<f64>,
    /// `itm` (default): the retrieval head starts from the pre-trained ITM head; `fresh`: a
    /// new head (for a pre-training whose ITM head stayed at chance).
    #[serde(default)]
    pub retrieval_head: RetrievalHead,
    /// Start every fine-tuning (not zero-shot retrieval) from freshly initialised poolers
    /// instead of the pre-trained ones (LXMERT-S keeps them; default false).
    #[serde(default)]
    pub reset_poolers: bool,
}

impl FinetuneConfig {
    /// LXMERT-S's settings (reference §4).
    pub fn paper() -> Self {
        Self {
            lr: 5e-5,
            warmup: 0.1,
            batch_size: 32,
            eval_batch_size: 256,
            max_len: 20,
            grad_clip: Some(5.0),
            optimizer: OptimizerKind::BertAdam,
            vqa: TaskSchedule::epochs(6),
            gqa: TaskSchedule::epochs(5),
            nlvr2: TaskSchedule::epochs(8),
            retrieval: TaskSchedule::epochs(8),
            retrieval_test_images: None,
            head_init_std: None,
            retrieval_head: RetrievalHead::Itm,
            reset_poolers: false,
        }
    }

    /// The model config that the new heads of `task` are built with: `model`'s, with the
    /// initializer range replaced by the task's `head_init_std`, else the table's, when set.
    pub fn head_config(&self, model: &msp_model::Config, task: &TaskSchedule) -> msp_model::Config {
        msp_model::Config {
            initializer_range: task
                .head_init_std
                .or(self.head_init_std)
                .unwrap_or(model.initializer_range),
            ..model.clone()
        }
    }

    /// The optimiser settings.
    pub fn optimizer(&self) -> OptimizerConfig {
        match self.optimizer {
            OptimizerKind::BertAdam => OptimizerConfig::bert_adam(),
            OptimizerKind::AdamW => OptimizerConfig::adamw(),
        }
    }

    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(EvalError::Config {
                field: format!("finetune.{field}"),
                reason,
            })
        };
        // An optional rate or σ that is set but not a positive finite number.
        let not_positive = |x: Option<f64>| x.is_some_and(|v| !(v > 0.0 && v.is_finite()));
        if not_positive(Some(self.lr)) {
            return bad("lr", format!("{} is not a positive number", self.lr));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return bad("warmup", format!("{} is not in [0, 1)", self.warmup));
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch_size", "batch sizes must be at least 1".into());
        }
        if self.max_len < 3 {
            return bad(
                "max_len",
                format!("{} leaves no room for a word", self.max_len),
            );
        }
        for (name, t) in [
            ("vqa", &self.vqa),
            ("gqa", &self.gqa),
            ("nlvr2", &self.nlvr2),
            ("retrieval", &self.retrieval),
        ] {
            if t.epochs == 0 {
                return bad(&format!("{name}.epochs"), "must be at least 1".into());
            }
            if t.batch_size == Some(0) || t.max_train == Some(0) {
                return bad(name, "batch_size and max_train must be at least 1".into());
            }
            for (key, value) in [("lr", t.lr), ("head_init_std", t.head_init_std)] {
                if not_positive(value) {
                    return bad(&format!("{name}.{key}"), "must be a positive number".into());
                }
            }
        }
        if not_positive(self.head_init_std) {
            return bad("head_init_std", "must be a positive number".into());
        }
        if self.retrieval_test_images.is_some_and(|n| n < 2) {
            return bad("retrieval_test_images", "need at least 2 images".into());
        }
        Ok(())
    }

    /// Parses the `[finetune]` table of a preset TOML text (required; unknown keys refused;
    /// other tables ignored).
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Tables {
            finetune: Option<toml::Value>,
        }
        let terr = |reason: String| EvalError::Config {
            field: format!("{} [finetune]", origin.display()),
            reason,
        };
        let t: Tables = toml::from_str(text).map_err(|e| terr(e.to_string()))?;
        let cfg: Self = t
            .finetune
            .ok_or_else(|| terr("no [finetune] table".into()))?
            .try_into()
            .map_err(|e: toml::de::Error| terr(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads the `[finetune]` table of `<dir>/<name>.toml`.
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Self::from_toml_str(&text, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_defaults_and_parsing() -> Result<()> {
        let p = FinetuneConfig::paper();
        p.validate()?;
        assert_eq!((p.lr, p.batch_size), (5e-5, 32));
        assert_eq!(
            (
                p.vqa.epochs,
                p.gqa.epochs,
                p.nlvr2.epochs,
                p.retrieval.epochs
            ),
            (6, 5, 8, 8)
        );
        let text = r#"
[world]
train_images = 10
[finetune]
lr = 5e-5
warmup = 0.1
batch_size = 32
eval_batch_size = 64
max_len = 20
grad_clip = 5.0
optimizer = "bertadam"
vqa = { epochs = 6, max_train = 100 }
gqa = { epochs = 5 }
nlvr2 = { epochs = 8, lr = 1e-4 }
retrieval = { epochs = 8 }
"#;
        let c = FinetuneConfig::from_toml_str(text, Path::new("p.toml"))?;
        assert_eq!(c.vqa.max_train, Some(100));
        assert_eq!(c.nlvr2.lr, Some(1e-4));
        assert_eq!(c.retrieval_head, RetrievalHead::Itm);
        let with_head = |value: &str| {
            let line = format!("retrieval_head = \"{value}\"\noptimizer =");
            FinetuneConfig::from_toml_str(&text.replace("optimizer =", &line), Path::new("p.toml"))
        };
        assert_eq!(with_head("fresh")?.retrieval_head, RetrievalHead::Fresh);
        let e = with_head("new").unwrap_err().to_string();
        assert!(e.contains("p.toml") && e.contains("fresh"), "{e}");
        let e = FinetuneConfig::from_toml_str(
            &text.replace("gqa = { epochs = 5 }", "gqa = { epochs = 5, epoch = 1 }"),
            Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("p.toml") && e.contains("epoch"), "{e}");
        let e = FinetuneConfig::from_toml_str(
            &text.replace("vqa = { epochs = 6,", "vqa = { epochs = 0,"),
            Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("finetune.vqa.epochs"), "{e}");
        assert!(FinetuneConfig::from_toml_str("[world]\n", Path::new("p.toml")).is_err());
        Ok(())
    }

    #[test]
    fn head_init_std_replaces_only_the_initializer_range() -> Result<()> {
        let model = msp_model::Config {
            hidden_size: 128,
            ..msp_model::Config::default()
        };
        let mut c = FinetuneConfig::paper();
        assert_eq!(c.head_config(&model, &c.vqa), model);
        c.head_init_std = Some(0.05);
        c.nlvr2.head_init_std = Some(0.3);
        c.validate()?;
        assert_eq!(c.head_config(&model, &c.nlvr2).initializer_range, 0.3);
        let h = c.head_config(&model, &c.vqa);
        assert_eq!((h.initializer_range, h.hidden_size), (0.05, 128));
        assert_eq!(
            msp_model::Config {
                initializer_range: 0.02,
                ..h
            },
            model
        );
        for bad in [0.0, -0.1, f64::NAN] {
            c.nlvr2.head_init_std = Some(bad);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("finetune.nlvr2.head_init_std"), "{e}");
            c.nlvr2.head_init_std = None;
            c.head_init_std = Some(bad);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("finetune.head_init_std"), "{e}");
        }
        Ok(())
    }
}
