//! Pre-training and fine-tuning heads with HF / LXMERT-S parameter names.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::{Config, Variant};
use crate::language_rows::LanguageRows;
use crate::lxmert::{LxmertInputs, LxmertModel, LxmertOutput, LxmertPooled};
use crate::nn::{gelu, DropoutRng, LayerNorm, Linear};

/// `LxmertPredictionHeadTransform`: dense → GELU → LayerNorm (`transform.{dense,LayerNorm}`).
#[derive(Debug, Clone)]
pub struct PredictionHeadTransform {
    dense: Linear,
    layer_norm: LayerNorm,
}

impl PredictionHeadTransform {
    /// Builds under `vb` (`…transform`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(
                vb.pp("dense"),
                cfg.hidden_size,
                cfg.hidden_size,
                cfg.initializer_range,
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
        })
    }
}

impl Module for PredictionHeadTransform {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.layer_norm.forward(&gelu(&self.dense.forward(x)?)?)
    }
}

/// `cls.predictions`: MLM head; the decoder is the word-embedding table (tied) plus `bias`.
#[derive(Debug, Clone)]
pub struct MlmHead {
    transform: PredictionHeadTransform,
    decoder: Tensor,
    bias: Tensor,
}

impl MlmHead {
    /// Builds under `vb` (`cls.predictions`), tied to `word_embeddings [V, H]`.
    pub fn load(vb: VarBuilder<'_>, cfg: &Config, word_embeddings: &Tensor) -> Result<Self> {
        Ok(Self {
            transform: PredictionHeadTransform::load(vb.pp("transform"), cfg)?,
            decoder: word_embeddings.clone(),
            bias: vb.get_with_hints(cfg.vocab_size, "bias", candle_nn::Init::Const(0.))?,
        })
    }

    /// Logits for rows `[N, H]` → `[N, V]` (or `[B, L, H]` → `[B, L, V]`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let h = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / h.max(1);
        let t = self.transform.forward(&x.reshape((rows, h))?)?;
        // The table `[V, H]` is the weight of a linear layer `H → V`.
        let logits = crate::ops::linear(&t, &self.decoder, Some(&self.bias))?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.decoder.dim(0)?;
        }
        logits.reshape(out)
    }
}

/// A 2-way classifier on the pooled vector: ITM (`cls.seq_relationship`) or the retrieval
/// match head (LXMERT-S fine-tuning, `seq_relationship_new`, initialised from the ITM head).
#[derive(Debug, Clone)]
pub struct MatchHead {
    linear: Linear,
}

impl MatchHead {
    /// Builds `weight [2, H]`, `bias [2]` under `vb`.
    pub fn load(vb: VarBuilder<'_>, cfg: &Config) -> Result<Self> {
        Ok(Self {
            linear: Linear::load(vb, cfg.hidden_size, 2, cfg.initializer_range)?,
        })
    }

    /// `[B, H]` → `[B, 2]` logits (index 1 = matched).
    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor> {
        self.linear.forward(pooled)
    }
}

/// Outputs of the visual object head (each absent when disabled in the config).
#[derive(Debug, Clone)]
pub struct VisualPredictions {
    /// Object-class logits `[B, N, num_object_labels]`.
    pub obj: Option<Tensor>,
    /// Attribute logits `[B, N, num_attr_labels]`.
    pub attr: Option<Tensor>,
    /// Regressed features `[B, N, visual_feat_dim]`, or `[rows, visual_feat_dim]` at the
    /// chosen regions ([`FeatRegions::At`]).
    pub feat: Option<Tensor>,
}

/// The regions the feature-regression decoder (`decoder_dict.feat`) runs on.
#[derive(Debug, Clone, Copy)]
pub enum FeatRegions<'a> {
    /// Every region: `feat` is `[B, N, visual_feat_dim]`.
    All,
    /// The flat region positions in this u32 tensor (indices into `B·N`): `feat` is
    /// `[rows, visual_feat_dim]`, row `i` the prediction for region `rows[i]`. The regression
    /// losses read only some regions (MRFR the masked ones, IFRS the shuffled ones).
    At(&'a Tensor),
    /// None: `feat` is `None` (no regression loss in the batch).
    Skip,
}

/// `obj_predict_head`: shared transform, then `decoder_dict.{obj,attr,feat}`; for LXMERT-S the
/// transformed vectors are multiplied by the pooled vector before the decoders.
#[derive(Debug, Clone)]
pub struct VisualObjHead {
    transform: PredictionHeadTransform,
    obj: Option<Linear>,
    attr: Option<Linear>,
    feat: Option<Linear>,
}

impl VisualObjHead {
    /// Builds under `vb` (`obj_predict_head`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config) -> Result<Self> {
        let d = vb.pp("decoder_dict");
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let opt = |on: bool, name: &str, n: usize| -> Result<Option<Linear>> {
            if on {
                Ok(Some(Linear::load(d.pp(name), h, n, std)?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            transform: PredictionHeadTransform::load(vb.pp("transform"), cfg)?,
            obj: opt(cfg.visual_obj_loss, "obj", cfg.num_object_labels)?,
            attr: opt(cfg.visual_attr_loss, "attr", cfg.num_attr_labels)?,
            feat: opt(cfg.visual_feat_loss, "feat", cfg.visual_feat_dim)?,
        })
    }

    /// `regions [B, N, H]` (regions only: no visual \[CLS\]); `gate [B, H]` for LXMERT-S.
    pub fn forward(&self, regions: &Tensor, gate: Option<&Tensor>) -> Result<VisualPredictions> {
        self.forward_with(regions, gate, FeatRegions::All)
    }

    /// [`Self::forward`] with the feature regression on the regions `feat` says. The object
    /// and attribute logits cover every region (their losses read all of them).
    pub fn forward_with(
        &self,
        regions: &Tensor,
        gate: Option<&Tensor>,
        feat: FeatRegions<'_>,
    ) -> Result<VisualPredictions> {
        let mut t = self.transform.forward(regions)?;
        if let Some(g) = gate {
            t = t.broadcast_mul(&g.unsqueeze(1)?)?;
        }
        let run = |l: &Option<Linear>| -> Result<Option<Tensor>> {
            l.as_ref().map(|l| l.forward(&t)).transpose()
        };
        let feat = match (&self.feat, feat) {
            (Some(l), FeatRegions::At(rows)) => {
                let (b, n, h) = t.dims3()?;
                Some(l.forward(&t.reshape((b * n, h))?.index_select(rows, 0)?)?)
            }
            (_, FeatRegions::Skip) => None,
            _ => run(&self.feat)?,
        };
        Ok(VisualPredictions {
            obj: run(&self.obj)?,
            attr: run(&self.attr)?,
            feat,
        })
    }
}

/// LXMERT-S topic head: `cls.seq_relationship_new` (H → V), GELU, `cls.LayerNorm` (V); the
/// LayerNorm output is used directly as the logits (reference §3.4).
#[derive(Debug, Clone)]
pub struct TopicHead {
    dense: Linear,
    layer_norm: LayerNorm,
}

impl TopicHead {
    /// Builds under `vb` (= `cls`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(
                vb.pp("seq_relationship_new"),
                cfg.hidden_size,
                cfg.vocab_size,
                cfg.initializer_range,
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), cfg.vocab_size, cfg.layer_norm_eps)?,
        })
    }

    /// `pooled [B, H]` → logits `[B, V]`.
    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor> {
        self.layer_norm
            .forward(&gelu(&self.dense.forward(pooled)?)?)
    }
}

/// `logit_fc`: Linear(in → hid) (`0`), GELU (`1`), LayerNorm (`2`), Linear(hid → out) (`3`).
/// The QA/VQA/GQA answer head (in = H, hid = 2H) and the NLVR2 head (in = hid = 2H, out = 2).
#[derive(Debug, Clone)]
pub struct LogitFc {
    fc0: Linear,
    ln2: LayerNorm,
    fc3: Linear,
}

impl LogitFc {
    /// Builds under `vb` (… `logit_fc`).
    pub fn load(
        vb: VarBuilder<'_>,
        cfg: &Config,
        in_dim: usize,
        hid: usize,
        out: usize,
    ) -> Result<Self> {
        Ok(Self {
            fc0: Linear::load(vb.pp("0"), in_dim, hid, cfg.initializer_range)?,
            ln2: LayerNorm::load(vb.pp("2"), hid, cfg.layer_norm_eps)?,
            fc3: Linear::load(vb.pp("3"), hid, out, cfg.initializer_range)?,
        })
    }

    /// `[B, in]` → `[B, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc3
            .forward(&self.ln2.forward(&gelu(&self.fc0.forward(x)?)?)?)
    }
}

/// `answer_head` (pre-training QA) or a VQA/GQA fine-tuning head: pooled → answers.
#[derive(Debug, Clone)]
pub struct AnswerHead {
    logit_fc: LogitFc,
}

impl AnswerHead {
    /// Builds under `vb` (`answer_head`), `num_answers` outputs.
    pub fn load(vb: VarBuilder<'_>, cfg: &Config, num_answers: usize) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            logit_fc: LogitFc::load(vb.pp("logit_fc"), cfg, h, 2 * h, num_answers)?,
        })
    }

    /// `[B, H]` → `[B, num_answers]`.
    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor> {
        self.logit_fc.forward(pooled)
    }
}

/// NLVR2 head (LXMERT's `NLVR2Model.logit_fc`): each example is run twice (image 0, image 1,
/// interleaved rows 2i, 2i+1); the two pooled vectors are concatenated → 2-way logits.
#[derive(Debug, Clone)]
pub struct Nlvr2Head {
    logit_fc: LogitFc,
}

impl Nlvr2Head {
    /// Builds under `vb` (… `logit_fc` is appended).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config) -> Result<Self> {
        let h2 = 2 * cfg.hidden_size;
        Ok(Self {
            logit_fc: LogitFc::load(vb.pp("logit_fc"), cfg, h2, h2, 2)?,
        })
    }

    /// `pooled [2B, H]` (pairs on consecutive rows) → `[B, 2]`.
    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor> {
        let (n, h) = pooled.dims2()?;
        if n % 2 != 0 {
            return Err(candle_core::Error::Msg(format!(
                "NLVR2 head needs an even number of rows, got {n}"
            )));
        }
        self.logit_fc.forward(&pooled.reshape((n / 2, 2 * h))?)
    }
}

/// `LxmertForPreTraining` (HF) / `LXRTPretraining` (LXMERT-S): backbone plus pre-training heads.
///
/// Variable names: `lxmert.*`, `cls.predictions.*`, `cls.seq_relationship.*`,
/// `obj_predict_head.*`, `answer_head.*` (when `num_qa_labels > 0`), and for LXMERT-S
/// `cls.seq_relationship_new.*`, `cls.LayerNorm.*`.
#[derive(Debug, Clone)]
pub struct LxmertForPreTraining {
    /// The backbone.
    pub lxmert: LxmertModel,
    /// MLM head.
    pub mlm: MlmHead,
    /// ITM head (`cls.seq_relationship`).
    pub itm: MatchHead,
    /// Visual object head.
    pub obj_predict_head: VisualObjHead,
    /// Topic head (LXMERT-S).
    pub topic: Option<TopicHead>,
    /// Pre-training QA head.
    pub answer_head: Option<AnswerHead>,
    variant: Variant,
    /// The visual heads are gated by the pooled vector (LXMERT-S with `gate_visual_heads`).
    gated: bool,
}

impl LxmertForPreTraining {
    /// Builds at the root of `vb`.
    pub fn load(
        vb: VarBuilder<'_>,
        cfg: &Config,
        variant: Variant,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let lxmert = LxmertModel::load(vb.pp("lxmert"), cfg, variant, rng)?;
        let cls = vb.pp("cls");
        Ok(Self {
            mlm: MlmHead::load(cls.pp("predictions"), cfg, lxmert.word_embeddings())?,
            itm: MatchHead::load(cls.pp("seq_relationship"), cfg)?,
            obj_predict_head: VisualObjHead::load(vb.pp("obj_predict_head"), cfg)?,
            topic: if variant.topic_head() {
                Some(TopicHead::load(cls.clone(), cfg)?)
            } else {
                None
            },
            answer_head: if cfg.num_qa_labels > 0 {
                Some(AnswerHead::load(
                    vb.pp("answer_head"),
                    cfg,
                    cfg.num_qa_labels,
                )?)
            } else {
                None
            },
            lxmert,
            variant,
            gated: variant.gated_visual_heads() && cfg.gate_visual_heads,
        })
    }

    /// Runs the backbone.
    pub fn forward_t(&self, inputs: &LxmertInputs<'_>, train: bool) -> crate::Result<LxmertOutput> {
        self.lxmert.forward_t(inputs, train)
    }

    /// Runs the backbone with the last cross layer computing only the language rows `rows`
    /// ([`LxmertModel::forward_rows_t`]).
    pub fn forward_rows_t(
        &self,
        inputs: &LxmertInputs<'_>,
        rows: &LanguageRows,
        train: bool,
    ) -> crate::Result<LxmertOutput> {
        self.lxmert.forward_rows_t(inputs, rows, train)
    }

    /// The backbone's pooled output alone ([`LxmertModel::forward_pooled_t`]).
    pub fn forward_pooled_t(
        &self,
        inputs: &LxmertInputs<'_>,
        train: bool,
    ) -> crate::Result<LxmertPooled> {
        self.lxmert.forward_pooled_t(inputs, train)
    }

    /// The region part of the vision output (drops the visual \[CLS\] for LXMERT-S).
    pub fn regions(&self, out: &LxmertOutput) -> Result<Tensor> {
        if self.variant.visual_cls() {
            let n = out.vision_output.dim(1)?;
            out.vision_output.narrow(1, 1, n - 1)
        } else {
            Ok(out.vision_output.clone())
        }
    }

    /// Visual head predictions on the regions (gated by the pooled vector for LXMERT-S unless
    /// the config's `gate_visual_heads` is off).
    pub fn visual_predictions(&self, out: &LxmertOutput) -> Result<VisualPredictions> {
        self.visual_predictions_with(out, FeatRegions::All)
    }

    /// [`Self::visual_predictions`] with the feature regression on the regions `feat` says
    /// ([`VisualObjHead::forward_with`]).
    pub fn visual_predictions_with(
        &self,
        out: &LxmertOutput,
        feat: FeatRegions<'_>,
    ) -> Result<VisualPredictions> {
        let gate = if self.gated {
            Some(&out.pooled_output)
        } else {
            None
        };
        self.obj_predict_head
            .forward_with(&self.regions(out)?, gate, feat)
    }

    /// MLM logits at the flat positions `rows` (u32 indices into `B·L`) → `[rows, V]`.
    /// Only these rows are projected onto the vocabulary. After
    /// [`LxmertModel::forward_rows_t`] every position must be among the computed rows.
    pub fn mlm_logits_at(&self, out: &LxmertOutput, rows: &Tensor) -> crate::Result<Tensor> {
        let (b, l, h) = out.language_output.dims3()?;
        let flat = out.language_output.reshape((b * l, h))?;
        let rows = match &out.language_rows {
            Some(computed) => computed.slots_of(rows)?,
            None => rows.clone(),
        };
        Ok(self.mlm.forward(&flat.index_select(&rows, 0)?)?)
    }
}
