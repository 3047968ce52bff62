//! Model hyper-parameters (HF `LxmertConfig` field names) and the LXMERT / LXMERT-S switch.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Hyper-parameters of LXMERT, with the field names of HF's `config.json`.
///
/// `Default` is the paper's LXMERT-S (0 language layers, 5 cross layers, 0 relationship
/// layers, BERT-base sizes). Reading an HF `config.json` ignores keys this crate does not use
/// (`architectures`, `task_*`, ...); missing keys take the `Default` values. Always call
/// [`Config::validate`] (done by [`Config::from_json_file`]) before building a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Word-piece vocabulary size.
    pub vocab_size: usize,
    /// Hidden width of every stream.
    pub hidden_size: usize,
    /// Attention heads (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// FFN inner width.
    pub intermediate_size: usize,
    /// Language-only BERT layers (`encoder.layer.{i}`).
    pub l_layers: usize,
    /// Cross-modality layers (`encoder.x_layers.{i}`).
    pub x_layers: usize,
    /// Vision-only ("relationship") BERT layers (`encoder.r_layers.{i}`).
    pub r_layers: usize,
    /// Region feature width (2048 for BUTD features).
    pub visual_feat_dim: usize,
    /// Box width (4: x1/w, y1/h, x2/w, y2/h).
    pub visual_pos_dim: usize,
    /// Rows of the position-embedding table.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    pub type_vocab_size: usize,
    /// Dropout after embeddings, attention outputs and FFN outputs.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    pub attention_probs_dropout_prob: f64,
    /// LayerNorm epsilon (HF has no such field and hard-codes 1e-12).
    pub layer_norm_eps: f64,
    /// Activation; only `"gelu"` (exact, erf) is supported, as in BERT/LXMERT.
    pub hidden_act: String,
    /// Standard deviation of the N(0, σ) weight init.
    pub initializer_range: f64,
    /// Answers of the pre-training QA head (`answer_head`); 0 builds no QA head.
    pub num_qa_labels: usize,
    /// Object classes of the visual object head.
    pub num_object_labels: usize,
    /// Attribute classes of the visual object head.
    pub num_attr_labels: usize,
    /// Build the `obj` decoder of the visual head.
    pub visual_obj_loss: bool,
    /// Build the `attr` decoder of the visual head.
    pub visual_attr_loss: bool,
    /// Build the `feat` (regression) decoder of the visual head.
    pub visual_feat_loss: bool,
    /// Row of LXMERT-S's `bert.word_embeddings` table used as the visual \[CLS\] (the \[CLS\] id).
    pub cls_token_id: usize,
    /// Freeze row 0 of the word/position/token-type tables (PyTorch `padding_idx=0`, as LXMERT
    /// and HF do): row 0 is used in the forward but receives no gradient.
    pub freeze_padding_rows: bool,
    /// LXMERT-S only: the visual heads' decoders see transform(v) ⊙ pooled (`true`, as
    /// LXMERT-S's code) or transform(v) alone (`false`, as LXMERT). Not an HF key. From a
    /// random init the gate drives both tanh poolers to saturation (the pooled vector becomes
    /// a constant ±1), which keeps ITM at chance; `false` avoids that.
    pub gate_visual_heads: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_attention_heads: 12,
            intermediate_size: 3072,
            l_layers: 0,
            x_layers: 5,
            r_layers: 0,
            visual_feat_dim: 2048,
            visual_pos_dim: 4,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".to_string(),
            initializer_range: 0.02,
            num_qa_labels: 9500,
            num_object_labels: 1600,
            num_attr_labels: 400,
            visual_obj_loss: true,
            visual_attr_loss: true,
            visual_feat_loss: true,
            cls_token_id: 101,
            freeze_padding_rows: true,
            gate_visual_heads: true,
        }
    }
}

impl Config {
    /// The original LXMERT sizes (9 language, 5 cross, 5 relationship layers).
    pub fn lxmert() -> Self {
        Self {
            l_layers: 9,
            r_layers: 5,
            ..Self::default()
        }
    }

    /// A tiny configuration for tests and examples (hidden 32, 4 heads, 2 cross layers,
    /// vocabulary 64, visual features 16-d).
    pub fn tiny() -> Self {
        Self {
            vocab_size: 64,
            hidden_size: 32,
            num_attention_heads: 4,
            intermediate_size: 64,
            l_layers: 1,
            x_layers: 2,
            r_layers: 1,
            visual_feat_dim: 16,
            max_position_embeddings: 32,
            num_qa_labels: 5,
            num_object_labels: 10,
            num_attr_labels: 6,
            cls_token_id: 2,
            ..Self::default()
        }
    }

    /// Reads a JSON config (HF's `config.json` or one written by [`Config::to_json`]) and
    /// validates it.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::ConfigFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        // Parse and validation errors both name the file.
        let cfg = Self::from_json_str(&text).map_err(|e| ModelError::ConfigFile {
            path: path.to_path_buf(),
            reason: match e {
                ModelError::ConfigFile { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        Ok(cfg)
    }

    /// Parses and validates a JSON config.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| ModelError::ConfigFile {
            path: "<string>".into(),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// This config as pretty JSON (HF field names).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Attention head width (`hidden_size / num_attention_heads`).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Rejects configurations the model cannot be built from, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| Err(ModelError::Config { field, reason });
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("visual_feat_dim", self.visual_feat_dim),
            ("visual_pos_dim", self.visual_pos_dim),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return bad(field, "must be > 0".into());
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return bad(
                "num_attention_heads",
                format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            );
        }
        for (field, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(field, format!("{p} is not in [0, 1)"));
            }
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return bad(
                "layer_norm_eps",
                format!("{} must be a positive number", self.layer_norm_eps),
            );
        }
        if !(self.initializer_range >= 0.0 && self.initializer_range.is_finite()) {
            return bad(
                "initializer_range",
                format!("{} must be >= 0", self.initializer_range),
            );
        }
        if self.hidden_act != "gelu" {
            return bad(
                "hidden_act",
                format!(
                    "`{}` is not supported (only exact \"gelu\")",
                    self.hidden_act
                ),
            );
        }
        Ok(())
    }
}

/// Which model is built: HF's LXMERT, or LXMERT-S as released by its authors.
///
/// LXMERT-S switches on, together (reference §2.2): word-level position ids (fed by the caller
/// as `position_ids`; the model itself only reads them), a learned visual \[CLS\] feature with
/// box (0,0,1,1) prepended to the regions, the product of two tanh poolers, visual heads gated
/// by the pooled vector, and the topic head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// HF `LxmertModel` / `LxmertForPreTraining`: every switch off.
    Lxmert,
    /// LXMERT-S: every switch on.
    #[default]
    LxmertS,
}

impl Variant {
    /// Position ids are word-level (the caller supplies them; sequential when absent).
    pub fn word_positions(self) -> bool {
        self == Variant::LxmertS
    }
    /// A learned visual \[CLS\] region is prepended (vision stream n+1 long).
    pub fn visual_cls(self) -> bool {
        self == Variant::LxmertS
    }
    /// pooled = tanh(text pooler) ⊙ tanh(visual pooler).
    pub fn product_pooler(self) -> bool {
        self == Variant::LxmertS
    }
    /// Visual head decoders see transform(v) ⊙ pooled (unless `Config::gate_visual_heads` is off).
    pub fn gated_visual_heads(self) -> bool {
        self == Variant::LxmertS
    }
    /// The topic head (`cls.seq_relationship_new`, `cls.LayerNorm`) exists.
    pub fn topic_head(self) -> bool {
        self == Variant::LxmertS
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "lxmert" => Ok(Variant::Lxmert),
            "lxmert-s" | "lxmert_s" | "lxmerts" => Ok(Variant::LxmertS),
            other => Err(format!(
                "unknown variant `{other}` (expected lxmert or lxmert-s)"
            )),
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::Lxmert => "lxmert",
            Variant::LxmertS => "lxmert-s",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_papers_lxmert_s() {
        let c = Config::default();
        assert_eq!(
            (c.hidden_size, c.num_attention_heads, c.intermediate_size),
            (768, 12, 3072)
        );
        assert_eq!((c.l_layers, c.x_layers, c.r_layers), (0, 5, 0));
        assert_eq!(
            (c.vocab_size, c.max_position_embeddings, c.type_vocab_size),
            (30522, 512, 2)
        );
        assert_eq!((c.visual_feat_dim, c.visual_pos_dim), (2048, 4));
        assert_eq!((c.num_object_labels, c.num_attr_labels), (1600, 400));
        assert_eq!(c.hidden_dropout_prob, 0.1);
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(c.hidden_act, "gelu");
        assert!(c.validate().is_ok());
        assert_eq!(Variant::default(), Variant::LxmertS);
    }

    #[test]
    fn reads_hf_config_and_ignores_unknown_keys() {
        let json = r#"{"architectures": ["LxmertForPreTraining"], "hidden_size": 64,
            "num_attention_heads": 8, "l_layers": 9, "x_layers": 5, "r_layers": 5,
            "num_hidden_layers": {"vision": 5, "cross_encoder": 5, "language": 9},
            "task_qa": true, "visual_loss_normalizer": 6.67, "num_qa_labels": 9500}"#;
        let c = Config::from_json_str(json).unwrap();
        assert_eq!(
            (c.hidden_size, c.num_attention_heads, c.l_layers, c.r_layers),
            (64, 8, 9, 5)
        );
        assert_eq!(c.head_dim(), 8);
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        let e = Config {
            hidden_size: 770,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            matches!(
                e,
                ModelError::Config {
                    field: "num_attention_heads",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("not divisible"));
        let e = Config {
            hidden_dropout_prob: 1.0,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(matches!(
            e,
            ModelError::Config {
                field: "hidden_dropout_prob",
                ..
            }
        ));
        let e = Config {
            hidden_act: "relu".into(),
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(matches!(
            e,
            ModelError::Config {
                field: "hidden_act",
                ..
            }
        ));
        let e = Config {
            visual_feat_dim: 0,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(matches!(
            e,
            ModelError::Config {
                field: "visual_feat_dim",
                ..
            }
        ));
        let e = Config::from_json_str("{\"hidden_size\": \"big\"}").unwrap_err();
        assert!(matches!(e, ModelError::ConfigFile { .. }));
    }

    #[test]
    fn config_file_errors_name_the_path() {
        let e = Config::from_json_file(Path::new("/nonexistent/config.json")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/config.json"), "{e}");
    }

    #[test]
    fn variant_parses() {
        assert_eq!("lxmert".parse::<Variant>().unwrap(), Variant::Lxmert);
        assert_eq!("lxmert-s".parse::<Variant>().unwrap(), Variant::LxmertS);
        assert!("bert".parse::<Variant>().is_err());
        assert!(Variant::LxmertS.visual_cls() && !Variant::Lxmert.product_pooler());
    }
}
