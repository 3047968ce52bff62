//! Stages, schedules and the `[model]` / `[pretrain]` tables of a preset.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use msp_tasks::{LossConfig, Task, TaskSet};
use serde::{Deserialize, Serialize};

use crate::error::{CurriculumError, Result};
use crate::optim::{OptimizerConfig, OptimizerKind};

/// Where a stage's text comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextSource {
    /// Token stage (T): the detector labels of the image's regions, in region order.
    Labels,
    /// Phrase stage (P): VG region descriptions without verbs, joined with ", ".
    Phrases,
    /// Sentence stage (S): captions.
    Captions,
}

impl TextSource {
    /// The schedule letter: T, P or S.
    pub fn letter(self) -> char {
        match self {
            TextSource::Labels => 'T',
            TextSource::Phrases => 'P',
            TextSource::Captions => 'S',
        }
    }

    /// The stage name used in run directories and metrics: token, phrase, sentence.
    pub fn stage_name(self) -> &'static str {
        match self {
            TextSource::Labels => "token",
            TextSource::Phrases => "phrase",
            TextSource::Captions => "sentence",
        }
    }

    /// The paper's task set of the stage (SPEC §6).
    pub fn default_tasks(self) -> TaskSet {
        match self {
            TextSource::Labels => TaskSet::token_stage(),
            TextSource::Phrases => TaskSet::phrase_stage(),
            TextSource::Captions => TaskSet::sentence_stage(),
        }
    }

    fn from_letter(c: &str) -> Option<Self> {
        match c.trim().to_ascii_uppercase().as_str() {
            "T" | "TOKEN" => Some(TextSource::Labels),
            "P" | "PHRASE" => Some(TextSource::Phrases),
            "S" | "SENTENCE" => Some(TextSource::Captions),
            _ => None,
        }
    }
}

/// A curriculum: stages one after another (`T,P,S`), or one joint stage mixing the sources
/// (`T+P+S`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// Ordered stages, each starting from the previous one's checkpoint.
    Sequential(Vec<TextSource>),
    /// One stage whose batches come from all the sources, interleaved by a seeded RNG in
    /// proportion to the number of batches of each.
    Joint(Vec<TextSource>),
}

impl FromStr for Schedule {
    type Err = CurriculumError;

    /// `T,P,S`, `T→P→S`, `T->P->S`, `S`, `P,S`, `S,P,T` …; `T+P+S` is the joint mix. A source
    /// may appear once.
    fn from_str(s: &str) -> Result<Self> {
        let err = |reason: &str| CurriculumError::Schedule {
            schedule: s.to_string(),
            reason: reason.to_string(),
        };
        let joint = s.contains('+');
        let norm = s.replace("→", ",").replace("->", ",");
        let parts: Vec<&str> = if joint {
            norm.split('+').collect()
        } else {
            norm.split(',').collect()
        };
        let mut out = Vec::new();
        for p in parts {
            let src = TextSource::from_letter(p)
                .ok_or_else(|| err(&format!("unknown stage {p:?} (expected T, P or S)")))?;
            if out.contains(&src) {
                return Err(err(&format!("stage {} appears twice", src.letter())));
            }
            out.push(src);
        }
        if out.is_empty() {
            return Err(err("no stage"));
        }
        Ok(if joint {
            Schedule::Joint(out)
        } else {
            Schedule::Sequential(out)
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (v, sep) = match self {
            Schedule::Sequential(v) => (v, ","),
            Schedule::Joint(v) => (v, "+"),
        };
        let s: Vec<String> = v.iter().map(|x| x.letter().to_string()).collect();
        f.write_str(&s.join(sep))
    }
}

/// One text source of a stage with its own tasks and batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The text source.
    pub source: TextSource,
    /// Tasks, comma-separated paper names (`"MLM,MRFR,MOC,IFRS"`).
    pub tasks: String,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Text length in word pieces including `[CLS]`/`[SEP]`.
    pub max_len: usize,
}

impl SourceConfig {
    /// The parsed task set.
    pub fn task_set(&self) -> Result<TaskSet> {
        TaskSet::parse_list(&self.tasks).map_err(|e| CurriculumError::Config {
            field: format!("{} tasks", self.source.stage_name()),
            reason: e.to_string(),
        })
    }
}

/// One stage of a run, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Name (`token`, `phrase`, `sentence`, `joint`).
    pub name: String,
    /// The sources (one for a sequential stage, several for the joint mix).
    pub sources: Vec<SourceConfig>,
    /// Passes over the stage's examples.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up fraction of the stage's updates.
    pub warmup: f64,
    /// Global-norm gradient clipping (`None`: off).
    pub grad_clip: Option<f64>,
    /// Micro-batches summed per update.
    pub accumulation: usize,
    /// Stop the stage after this many updates (a cap for quick runs; `None`: all epochs).
    pub max_steps: Option<u64>,
    /// Weights of task losses in the total, by task name; unlisted tasks weigh 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub loss_weights: BTreeMap<String, f64>,
}

impl StageConfig {
    /// The loss options of this stage: LXMERT's, with the stage's task weights.
    pub fn loss_config(&self) -> Result<LossConfig> {
        Ok(LossConfig {
            weights: parse_loss_weights(&self.loss_weights, &self.name)?,
            ..LossConfig::default()
        })
    }
}

/// Task names → weights, checked: a known task name (`ITM`, `ITM-HS`, …) and a finite
/// weight ≥ 0. Errors name `pretrain.<stage>.loss_weights`.
fn parse_loss_weights(weights: &BTreeMap<String, f64>, stage: &str) -> Result<BTreeMap<Task, f64>> {
    let bad = |reason: String| CurriculumError::Config {
        field: format!("pretrain.{stage}.loss_weights"),
        reason,
    };
    weights
        .iter()
        .map(|(name, &w)| {
            let task: Task = name.parse().map_err(|e| bad(format!("{name:?}: {e}")))?;
            if !(w.is_finite() && w >= 0.0) {
                return Err(bad(format!("{name}: weight {w} must be finite and ≥ 0")));
            }
            Ok((task, w))
        })
        .collect()
}

/// Settings of one stage in a preset's `[pretrain.token]`, `[pretrain.phrase]`,
/// `[pretrain.sentence]` table; absent keys take the `[pretrain]` values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagePreset {
    /// Epochs (paper: T 10, P 20, S 20).
    pub epochs: usize,
    /// Batch size (paper: T 64, P 128, S 128).
    pub batch_size: usize,
    /// Tasks (default: the paper's set of the stage).
    #[serde(default)]
    pub tasks: Option<String>,
    /// Learning rate override.
    #[serde(default)]
    pub lr: Option<f64>,
    /// Warm-up override.
    #[serde(default)]
    pub warmup: Option<f64>,
    /// Text length override.
    #[serde(default)]
    pub max_len: Option<usize>,
    /// Cap on updates.
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Weights of task losses in the total (`{ ITM = 5.0 }`); unlisted tasks weigh 1, as
    /// LXMERT. A weight of a task the stage does not run (after `--without`) has no effect.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub loss_weights: BTreeMap<String, f64>,
}

/// The `[pretrain]` table of a preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainPreset {
    /// Peak learning rate (paper: 1e-5).
    pub lr: f64,
    /// Warm-up fraction (LXMERT: 0.05).
    pub warmup: f64,
    /// `bertadam` or `adamw`.
    pub optimizer: OptimizerKind,
    /// Global-norm clip (LXMERT: 1.0; 0 or absent disables).
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Micro-batches per update.
    pub accumulation: usize,
    /// Text length of the phrase and sentence stages (LXMERT: 20).
    pub max_len: usize,
    /// Text length of the token stage (labels of 36 regions are long).
    pub token_max_len: usize,
    /// Phrase text cut, in whitespace words, before tokenisation.
    pub phrase_max_words: usize,
    /// Mid-stage checkpoint every this many updates.
    pub checkpoint_every: u64,
    /// Write a metrics line every this many updates.
    pub log_every: u64,
    /// Data-loader threads.
    pub workers: usize,
    /// Micro-batches of an update run at the same time, each on a thread of its own
    /// ([`msp_model::run_side_by_side`]), at most `accumulation` of them; 1 (the default)
    /// runs them one after the other, each with its products split between the threads. The
    /// update is the same either way up to rounding: the same micro-batches, dropout masks
    /// and order of the gradient sum. On a 2-core CPU the small configs train faster as 2
    /// micro-batches of half the batch side by side (bench/README.md, "Session 27").
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub side_by_side: usize,
    /// Token stage.
    pub token: StagePreset,
    /// Phrase stage.
    pub phrase: StagePreset,
    /// Sentence stage.
    pub sentence: StagePreset,
}

impl PretrainPreset {
    /// The paper's settings (SPEC §6).
    pub fn paper() -> Self {
        let st = |epochs, batch_size| StagePreset {
            epochs,
            batch_size,
            tasks: None,
            lr: None,
            warmup: None,
            max_len: None,
            max_steps: None,
            loss_weights: BTreeMap::new(),
        };
        Self {
            lr: 1e-5,
            warmup: 0.05,
            optimizer: OptimizerKind::BertAdam,
            grad_clip: Some(1.0),
            accumulation: 1,
            max_len: 20,
            token_max_len: 64,
            phrase_max_words: 20,
            checkpoint_every: 1000,
            log_every: 10,
            workers: 2,
            side_by_side: 1,
            token: st(10, 64),
            phrase: st(20, 128),
            sentence: st(20, 128),
        }
    }

    fn stage(&self, src: TextSource) -> &StagePreset {
        match src {
            TextSource::Labels => &self.token,
            TextSource::Phrases => &self.phrase,
            TextSource::Captions => &self.sentence,
        }
    }

    fn source(&self, src: TextSource, without: &[Task]) -> Result<SourceConfig> {
        let st = self.stage(src);
        let tasks = match &st.tasks {
            Some(t) => TaskSet::parse_list(t).map_err(|e| CurriculumError::Config {
                field: format!("pretrain.{}.tasks", src.stage_name()),
                reason: e.to_string(),
            })?,
            None => src.default_tasks(),
        }
        .without(without);
        if tasks.is_empty() {
            return Err(CurriculumError::Config {
                field: format!("{} tasks", src.stage_name()),
                reason: "no task left after --without".into(),
            });
        }
        let default_len = match src {
            TextSource::Labels => self.token_max_len,
            _ => self.max_len,
        };
        Ok(SourceConfig {
            source: src,
            tasks: tasks.to_string(),
            batch_size: st.batch_size,
            max_len: st.max_len.unwrap_or(default_len),
        })
    }

    /// The stages of `schedule`, with `without` removed from every task set. A joint stage
    /// takes epochs, learning rate, warm-up and loss weights of its last source (the sentence
    /// stage for `T+P+S`) and each source's own batch size and tasks.
    pub fn stages(&self, schedule: &Schedule, without: &[Task]) -> Result<Vec<StageConfig>> {
        let clip = self.grad_clip.filter(|c| *c > 0.0);
        let make = |name: String, srcs: &[TextSource]| -> Result<StageConfig> {
            let last = self.stage(srcs[srcs.len() - 1]);
            let sources = srcs
                .iter()
                .map(|&s| self.source(s, without))
                .collect::<Result<Vec<_>>>()?;
            let max_steps = srcs.iter().filter_map(|&s| self.stage(s).max_steps).max();
            Ok(StageConfig {
                name,
                sources,
                epochs: last.epochs,
                lr: last.lr.unwrap_or(self.lr),
                warmup: last.warmup.unwrap_or(self.warmup),
                grad_clip: clip,
                accumulation: self.accumulation,
                max_steps,
                loss_weights: last.loss_weights.clone(),
            })
        };
        match schedule {
            Schedule::Sequential(v) => v
                .iter()
                .map(|&s| make(s.stage_name().to_string(), &[s]))
                .collect(),
            Schedule::Joint(v) => Ok(vec![make("joint".into(), v)?]),
        }
    }

    /// The optimiser of this preset.
    pub fn optimizer(&self) -> OptimizerConfig {
        match self.optimizer {
            OptimizerKind::BertAdam => OptimizerConfig::bert_adam(),
            OptimizerKind::AdamW => OptimizerConfig::adamw(),
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: &str| {
            Err(CurriculumError::Config {
                field: format!("pretrain.{field}"),
                reason: reason.into(),
            })
        };
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be positive");
        }
        if !(0.0..=1.0).contains(&self.warmup) {
            return bad("warmup", "must lie in [0, 1]");
        }
        if self.accumulation == 0 {
            return bad("accumulation", "must be ≥ 1");
        }
        if !(1..=self.accumulation).contains(&self.side_by_side) {
            return bad("side_by_side", "must lie in [1, accumulation]");
        }
        if self.checkpoint_every == 0 || self.log_every == 0 {
            return bad("checkpoint_every/log_every", "must be ≥ 1");
        }
        if self.max_len < 3 || self.token_max_len < 3 {
            return bad("max_len", "must be ≥ 3");
        }
        for (n, s) in [
            ("token", &self.token),
            ("phrase", &self.phrase),
            ("sentence", &self.sentence),
        ] {
            if s.epochs == 0 || s.batch_size == 0 {
                return bad(n, "epochs and batch_size must be ≥ 1");
            }
            parse_loss_weights(&s.loss_weights, n)?;
        }
        Ok(())
    }
}

/// The `[model]` table of a preset: the sizes; vocabulary, feature width and label counts
/// come from the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPreset {
    /// `lxmert-s` (default) or `lxmert`.
    #[serde(default = "default_variant")]
    pub variant: String,
    /// Hidden width.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Language layers.
    #[serde(default)]
    pub l_layers: usize,
    /// Cross-modality layers.
    pub x_layers: usize,
    /// Relationship layers.
    #[serde(default)]
    pub r_layers: usize,
    /// Position-table rows (≥ the longest text + 2 for word positions).
    pub max_position_embeddings: usize,
    /// Dropout (0.1 as BERT).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// LXMERT-S's visual heads gated by the pooled vector (default `true`, as LXMERT-S); see
    /// [`msp_model::Config::gate_visual_heads`].
    #[serde(default = "default_gate_visual_heads")]
    pub gate_visual_heads: bool,
    /// σ of the N(0, σ) weight init (default 0.02, as BERT and LXMERT); see
    /// [`msp_model::Config::initializer_range`].
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
}

/// The `[model]` key a model-config field comes from (both dropouts are `dropout`).
fn preset_field(field: &str) -> &str {
    match field {
        "hidden_dropout_prob" | "attention_probs_dropout_prob" => "dropout",
        other => other,
    }
}

/// `side_by_side`'s default: micro-batches one after the other.
fn one() -> usize {
    1
}

/// Whether `side_by_side` is the default (left out of a run's `config.toml`, which then
/// matches one written before the option existed).
fn is_one(n: &usize) -> bool {
    *n == 1
}

fn default_variant() -> String {
    "lxmert-s".into()
}

fn default_dropout() -> f64 {
    0.1
}

fn default_gate_visual_heads() -> bool {
    true
}

/// The model's own default (BERT's 0.02), so the two cannot drift apart.
fn default_initializer_range() -> f64 {
    msp_model::Config::default().initializer_range
}

impl ModelPreset {
    /// The paper's LXMERT-S sizes.
    pub fn paper() -> Self {
        Self {
            variant: default_variant(),
            hidden_size: 768,
            num_attention_heads: 12,
            intermediate_size: 3072,
            l_layers: 0,
            x_layers: 5,
            r_layers: 0,
            max_position_embeddings: 512,
            dropout: 0.1,
            gate_visual_heads: true,
            initializer_range: default_initializer_range(),
        }
    }

    /// The variant.
    pub fn variant(&self) -> Result<msp_model::Variant> {
        self.variant
            .parse()
            .map_err(|reason| CurriculumError::Config {
                field: "model.variant".into(),
                reason,
            })
    }

    /// Checks the sizes and dropout with the model's own rules (heads divide the hidden
    /// width, sizes positive, dropout in [0, 1)), before any data is read. The data-dependent
    /// fields get a placeholder shape of ones, so only this table's values can fail.
    pub fn validate(&self) -> Result<()> {
        self.variant()?;
        let placeholder = DataShape {
            vocab_size: 1,
            feature_dim: 1,
            num_objects: 1,
            num_attributes: 1,
            cls_token_id: 0,
        };
        self.model_config(&placeholder)
            .validate()
            .map_err(|e| match e {
                msp_model::ModelError::Config { field, reason } => CurriculumError::Config {
                    field: format!("model.{}", preset_field(field)),
                    reason,
                },
                other => other.into(),
            })
    }

    /// The model config for data with this vocabulary, feature width and label counts.
    pub fn model_config(&self, data: &DataShape) -> msp_model::Config {
        msp_model::Config {
            vocab_size: data.vocab_size,
            hidden_size: self.hidden_size,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            l_layers: self.l_layers,
            x_layers: self.x_layers,
            r_layers: self.r_layers,
            visual_feat_dim: data.feature_dim,
            max_position_embeddings: self.max_position_embeddings,
            hidden_dropout_prob: self.dropout,
            attention_probs_dropout_prob: self.dropout,
            num_qa_labels: 0,
            num_object_labels: data.num_objects,
            num_attr_labels: data.num_attributes,
            cls_token_id: data.cls_token_id,
            gate_visual_heads: self.gate_visual_heads,
            initializer_range: self.initializer_range,
            ..msp_model::Config::default()
        }
    }
}

/// What the model needs to know about the data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataShape {
    /// Word-piece vocabulary size (`vocab.txt`).
    pub vocab_size: usize,
    /// Region feature width.
    pub feature_dim: usize,
    /// Object label vocabulary size.
    pub num_objects: usize,
    /// Attribute label vocabulary size.
    pub num_attributes: usize,
    /// Id of `[CLS]`.
    pub cls_token_id: usize,
}

/// The curriculum's tables of a preset file (`[world]` belongs to msp-synth and is ignored
/// here; other tables are ignored too, so other crates can add theirs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    /// `[model]`.
    pub model: ModelPreset,
    /// `[pretrain]`.
    pub pretrain: PretrainPreset,
}

#[derive(Deserialize)]
struct PresetTables {
    model: Option<toml::Value>,
    pretrain: Option<toml::Value>,
}

impl Preset {
    /// Parses the `[model]` and `[pretrain]` tables of a preset TOML text (both required,
    /// unknown keys refused) and validates them; every error names `origin`.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self> {
        let terr = |message: String| CurriculumError::Toml {
            path: origin.to_path_buf(),
            message,
        };
        let t: PresetTables = toml::from_str(text).map_err(|e| terr(e.to_string()))?;
        let model: ModelPreset = t
            .model
            .ok_or_else(|| terr("no [model] table".into()))?
            .try_into()
            .map_err(|e: toml::de::Error| terr(format!("[model]: {e}")))?;
        let pretrain: PretrainPreset = t
            .pretrain
            .ok_or_else(|| terr("no [pretrain] table".into()))?
            .try_into()
            .map_err(|e: toml::de::Error| terr(format!("[pretrain]: {e}")))?;
        pretrain
            .validate()
            .and_then(|()| model.validate())
            .map_err(|e| terr(e.to_string()))?;
        Ok(Self { model, pretrain })
    }

    /// Reads `<dir>/<name>.toml`.
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).map_err(crate::error::io_err(&path))?;
        Self::from_toml_str(&text, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse() -> Result<()> {
        use TextSource::*;
        assert_eq!(
            "T,P,S".parse::<Schedule>()?,
            Schedule::Sequential(vec![Labels, Phrases, Captions])
        );
        assert_eq!("T→P→S".parse::<Schedule>()?, "T,P,S".parse::<Schedule>()?);
        assert_eq!("s,p,t".parse::<Schedule>()?.to_string(), "S,P,T");
        assert_eq!(
            "T+P+S".parse::<Schedule>()?,
            Schedule::Joint(vec![Labels, Phrases, Captions])
        );
        assert!(matches!(
            "T,X".parse::<Schedule>(),
            Err(CurriculumError::Schedule { .. })
        ));
        assert!(matches!(
            "T,T".parse::<Schedule>(),
            Err(CurriculumError::Schedule { .. })
        ));
        Ok(())
    }

    #[test]
    fn paper_stages_and_without() -> Result<()> {
        let p = PretrainPreset::paper();
        let st = p.stages(&"T,P,S".parse()?, &[])?;
        let got: Vec<(&str, usize, usize, &str)> = st
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.epochs,
                    s.sources[0].batch_size,
                    s.sources[0].tasks.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("token", 10, 64, "MLM,MRFR,MOC,IFRS"),
                ("phrase", 20, 128, "MLM,MRFR,MOC,TITP"),
                ("sentence", 20, 128, "MLM,MRFR,MOC,TITS,ITM-HS"),
            ]
        );
        assert!(st.iter().all(|s| s.lr == 1e-5));
        let st = p.stages(&"P,S".parse()?, &[Task::Titp, Task::ItmHs])?;
        assert_eq!(st[0].sources[0].tasks, "MLM,MRFR,MOC");
        assert_eq!(st[1].sources[0].tasks, "MLM,MRFR,MOC,TITS");
        let joint = p.stages(&"T+P+S".parse()?, &[])?;
        assert_eq!(joint.len(), 1);
        assert_eq!(joint[0].sources.len(), 3);
        assert_eq!(joint[0].epochs, 20);
        Ok(())
    }

    #[test]
    fn preset_tables_deny_unknown_keys() {
        let good = r#"
[world]
anything = 1
[model]
hidden_size = 64
num_attention_heads = 4
intermediate_size = 128
x_layers = 2
max_position_embeddings = 64
[pretrain]
lr = 1e-4
warmup = 0.1
optimizer = "bertadam"
grad_clip = 1.0
accumulation = 1
max_len = 20
token_max_len = 32
phrase_max_words = 20
checkpoint_every = 10
log_every = 1
workers = 1
token = { epochs = 1, batch_size = 8 }
phrase = { epochs = 1, batch_size = 8 }
sentence = { epochs = 1, batch_size = 8, max_steps = 3 }
"#;
        let p = Preset::from_toml_str(good, Path::new("p.toml"));
        assert!(p.is_ok(), "{p:?}");
        let shape = DataShape {
            vocab_size: 50,
            feature_dim: 16,
            num_objects: 7,
            num_attributes: 5,
            cls_token_id: 2,
        };
        // LXMERT-S's gated visual heads and BERT's init σ unless the preset changes them.
        let default_config = p.unwrap().model.model_config(&shape);
        assert!(default_config.gate_visual_heads);
        assert_eq!(default_config.initializer_range, 0.02);
        let changed = good.replace(
            "x_layers = 2",
            "x_layers = 2\ngate_visual_heads = false\ninitializer_range = 0.05",
        );
        let p = Preset::from_toml_str(&changed, Path::new("p.toml")).unwrap();
        assert!(!p.model.model_config(&shape).gate_visual_heads);
        assert_eq!(p.model.model_config(&shape).initializer_range, 0.05);
        let negative = good.replace("x_layers = 2", "x_layers = 2\ninitializer_range = -1.0");
        let e = Preset::from_toml_str(&negative, Path::new("p.toml"));
        assert!(
            matches!(&e, Err(CurriculumError::Toml { message, .. })
                if message.contains("model.initializer_range")),
            "{e:?}"
        );
        // Loss weights by task name, per stage; errors name the stage's key.
        let weighted = good.replace(
            "max_steps = 3 }",
            "loss_weights = { ITM = 5.0, MOC = 0.5 } }",
        );
        let p = Preset::from_toml_str(&weighted, Path::new("p.toml")).unwrap();
        let stages = p.pretrain.stages(&"T,P,S".parse().unwrap(), &[]).unwrap();
        assert!(stages[0].loss_config().unwrap().weights.is_empty());
        assert_eq!(
            stages[2].loss_config().unwrap().weights,
            [(Task::Itm, 5.0), (Task::Moc, 0.5)].into()
        );
        for (weights, what) in [("{ ITN = 5.0 }", "ITN"), ("{ ITM = -1.0 }", "ITM")] {
            let bad = good.replace("max_steps = 3 }", &format!("loss_weights = {weights} }}"));
            let e = Preset::from_toml_str(&bad, Path::new("p.toml"));
            assert!(
                matches!(&e, Err(CurriculumError::Toml { message, .. })
                    if message.contains("pretrain.sentence.loss_weights") && message.contains(what)),
                "{e:?}"
            );
        }
        let bad = good.replace("x_layers = 2", "x_layers = 2\nlayers = 3");
        let e = Preset::from_toml_str(&bad, Path::new("p.toml"));
        assert!(
            matches!(&e, Err(CurriculumError::Toml { message, .. }) if message.contains("layers"))
        );
        let bad = good.replace("lr = 1e-4", "lr = -1.0");
        let e = Preset::from_toml_str(&bad, Path::new("p.toml"));
        assert!(
            matches!(&e, Err(CurriculumError::Toml { path, message }) if path == Path::new("p.toml") && message.contains("pretrain.lr")),
            "{e:?}"
        );
        // Micro-batches side by side: 1 unless set, at most `accumulation`.
        assert_eq!(
            Preset::from_toml_str(good, Path::new("p.toml"))
                .unwrap()
                .pretrain
                .side_by_side,
            1
        );
        let two = good.replace("workers = 1", "workers = 1\nside_by_side = 2");
        let p = Preset::from_toml_str(
            &two.replace("accumulation = 1", "accumulation = 2"),
            Path::new("p.toml"),
        );
        assert_eq!(p.unwrap().pretrain.side_by_side, 2);
        let e = Preset::from_toml_str(&two, Path::new("p.toml"));
        assert!(
            matches!(&e, Err(CurriculumError::Toml { message, .. }) if message.contains("pretrain.side_by_side")),
            "{e:?}"
        );
        let bad = good.replace("hidden_size = 64", "hidden_size = 66");
        let e = Preset::from_toml_str(&bad, Path::new("p.toml"));
        assert!(
            matches!(&e, Err(CurriculumError::Toml { message, .. }) if message.contains("model.num_attention_heads")),
            "{e:?}"
        );
        let bad = good.replace("x_layers = 2", "x_layers = 2\ndropout = 1.0");
        let e = Preset::from_toml_str(&bad, Path::new("p.toml"));
        assert!(
            matches!(&e, Err(CurriculumError::Toml { message, .. }) if message.contains("model.dropout")),
            "{e:?}"
        );
    }
}
