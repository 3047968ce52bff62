//! VQA and GQA: the answer head (pooled → Linear 2H, GELU, LayerNorm, Linear → answers),
//! BCE against the soft scores × the number of answers, soft-score accuracy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use msp_model::{bce_with_logits, AnswerHead, Lxmert};
use msp_synth::layout;
use msp_text::{AnswerVocab, Encoding};
use serde::{Deserialize, Serialize};

use crate::config::FinetuneConfig;
use crate::data::{model_inputs, text_batch, DownstreamData, ImageRef};
use crate::error::{EvalError, Result};
use crate::metrics::soft_accuracy;
use crate::predictions::{
    write_gqa_predictions, write_vqa_predictions, GqaPrediction, VqaPrediction,
};
use crate::train::{fit, training_subset, OnProgress, Progress, Resolved, TrainLog};

/// VQA v2 or GQA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QaKind {
    /// VQA v2: train / minival (model selection) / test.
    Vqa,
    /// GQA: train / valid (model selection) / testdev.
    Gqa,
}

impl QaKind {
    /// `vqa` or `gqa`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vqa => "vqa",
            Self::Gqa => "gqa",
        }
    }

    fn files(self) -> ([&'static str; 3], &'static str, &'static str) {
        match self {
            Self::Vqa => (layout::VQA, layout::VQA_ANS2LABEL, layout::VQA_LABEL2ANS),
            Self::Gqa => (layout::GQA, layout::GQA_ANS2LABEL, layout::GQA_LABEL2ANS),
        }
    }
}

/// One question, tokenised, with its image and gold label.
#[derive(Debug, Clone)]
pub struct QaExample {
    /// Question id (as written in predictions).
    pub key: String,
    /// The image.
    pub image: ImageRef,
    /// The question's word pieces.
    pub text: Encoding,
    /// Answer → soft score (gold).
    pub label: BTreeMap<String, f32>,
    /// The label as `(answer id, score)` for answers of the vocabulary.
    pub target: Vec<(usize, f32)>,
}

/// A QA split read from its file.
#[derive(Debug, Clone)]
pub struct QaSplit {
    /// The file.
    pub path: PathBuf,
    /// Its questions.
    pub examples: Vec<QaExample>,
}

/// The three splits and the answer vocabulary.
#[derive(Debug, Clone)]
pub struct QaData {
    /// VQA or GQA.
    pub kind: QaKind,
    /// Answers (head outputs).
    pub answers: AnswerVocab,
    /// Training split.
    pub train: QaSplit,
    /// Model-selection split.
    pub valid: QaSplit,
    /// Reported split.
    pub test: QaSplit,
}

impl QaData {
    /// Reads the splits of `kind` from the data directory and locates their images. Answers
    /// outside the vocabulary are kept in the gold labels (they score 0, as in LXMERT's
    /// evaluation) and left out of the training targets (as LXMERT's `ans2label` filter).
    pub fn read(
        kind: QaKind,
        data: &DownstreamData,
        max_len: usize,
        word_positions: bool,
    ) -> Result<Self> {
        let (splits, a2l, l2a) = kind.files();
        let answers = AnswerVocab::read(data.dir.join(a2l), data.dir.join(l2a))?;
        let read = |rel: &str| -> Result<QaSplit> {
            let path = data.dir.join(rel);
            let raw: Vec<(String, String, String, BTreeMap<String, f32>)> = match kind {
                QaKind::Vqa => msp_text::read_vqa(&path)?
                    .into_iter()
                    .map(|q| (q.question_id.to_string(), q.img_id, q.sent, q.label))
                    .collect(),
                QaKind::Gqa => msp_text::read_gqa(&path)?
                    .into_iter()
                    .map(|q| (q.question_id, q.img_id, q.sent, q.label))
                    .collect(),
            };
            let mut examples = Vec::with_capacity(raw.len());
            for (r, (key, img, sent, label)) in raw.into_iter().enumerate() {
                let target = label
                    .iter()
                    .filter_map(|(a, &s)| answers.id(a).map(|i| (i, s)))
                    .collect();
                examples.push(QaExample {
                    key,
                    image: data.locate(&img, &path, r)?,
                    text: data.encode(&sent, max_len, word_positions)?,
                    label,
                    target,
                });
            }
            Ok(QaSplit { path, examples })
        };
        Ok(Self {
            kind,
            train: read(splits[0])?,
            valid: read(splits[1])?,
            test: read(splits[2])?,
            answers,
        })
    }
}

/// Results of a VQA or GQA fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaResult {
    /// `vqa` or `gqa`.
    pub task: QaKind,
    /// Accuracy (soft score, percent) on the model-selection split, best epoch.
    pub valid_accuracy: f64,
    /// Accuracy on the reported split.
    pub test_accuracy: f64,
    /// Questions of the splits (valid, test).
    pub n: (usize, usize),
    /// Prediction files (public format) of the valid and test splits.
    pub predictions: (PathBuf, PathBuf),
    /// Training log.
    pub train: TrainLog,
}

fn logits(
    model: &Lxmert,
    head: &AnswerHead,
    data: &DownstreamData,
    batch: &[&QaExample],
    train: bool,
    device: &Device,
) -> Result<Tensor> {
    let texts: Vec<&Encoding> = batch.iter().map(|e| &e.text).collect();
    let images: Vec<ImageRef> = batch.iter().map(|e| e.image).collect();
    let t = text_batch(&texts, device)?;
    let r = data.regions(&images, device)?;
    let out = model
        .model()
        .forward_pooled_t(&model_inputs(&t, &r), train)?;
    Ok(head.forward(&out.pooled_output)?)
}

/// Predicted answer ids (argmax) of a split.
#[allow(clippy::too_many_arguments)]
fn predict(
    model: &Lxmert,
    head: &AnswerHead,
    data: &DownstreamData,
    split: &QaSplit,
    eval_batch: usize,
    what: &str,
    device: &Device,
    on_progress: OnProgress<'_>,
) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(split.examples.len());
    for chunk in split.examples.chunks(eval_batch) {
        let refs: Vec<&QaExample> = chunk.iter().collect();
        let l = logits(model, head, data, &refs, false, device)?;
        out.extend(
            l.argmax(D::Minus1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|i| i as usize),
        );
        on_progress(&Progress::Eval {
            what,
            done: out.len(),
            total: split.examples.len(),
        });
    }
    Ok(out)
}

fn accuracy(split: &QaSplit, answers: &AnswerVocab, pred: &[usize]) -> f64 {
    soft_accuracy(
        split
            .examples
            .iter()
            .zip(pred)
            .map(|(e, &p)| (&e.label, answers.answer(p))),
    )
}

/// Fine-tunes `model` on VQA or GQA, keeps the best epoch by the validation split, and
/// writes predictions of the validation and test splits into `out`.
#[allow(clippy::too_many_arguments)]
pub fn finetune_qa(
    model: &Lxmert,
    data: &DownstreamData,
    qa: &QaData,
    cfg: &FinetuneConfig,
    seed: u64,
    out: &Path,
    device: &Device,
    on_progress: OnProgress<'_>,
) -> Result<QaResult> {
    let name = qa.kind.name();
    let schedule = match qa.kind {
        QaKind::Vqa => &cfg.vqa,
        QaKind::Gqa => &cfg.gqa,
    };
    let head = AnswerHead::load(
        model.var_builder().pp(format!("{name}_head")),
        &cfg.head_config(model.config(), schedule),
        qa.answers.len(),
    )?;
    let n_answers = qa.answers.len();
    let examples = training_subset(qa.train.examples.len(), schedule.max_train, seed);
    let mut loss = |idx: &[usize], _: &mut rand_chacha::ChaCha8Rng| -> Result<Tensor> {
        let batch: Vec<&QaExample> = idx.iter().map(|&i| &qa.train.examples[i]).collect();
        let mut target = vec![0f32; batch.len() * n_answers];
        for (b, e) in batch.iter().enumerate() {
            for &(a, s) in &e.target {
                target[b * n_answers + a] = s;
            }
        }
        let target = Tensor::from_vec(target, (batch.len(), n_answers), device)?;
        let l = logits(model, &head, data, &batch, true, device)?;
        // LXMERT: BCEWithLogits (mean) × num_answers.
        Ok(bce_with_logits(&l, &target)?.affine(n_answers as f64, 0.0)?)
    };
    let mut validate = |p: OnProgress<'_>| -> Result<Option<f64>> {
        let pred = predict(
            model,
            &head,
            data,
            &qa.valid,
            cfg.eval_batch_size,
            "valid",
            device,
            p,
        )?;
        Ok(Some(accuracy(&qa.valid, &qa.answers, &pred)))
    };
    std::fs::create_dir_all(out).map_err(crate::error::io_err(out))?;
    let train = fit(
        name,
        model,
        cfg,
        Resolved::of(cfg, schedule),
        &examples,
        seed,
        &out.join("best.safetensors"),
        &mut loss,
        &mut validate,
        on_progress,
    )?;
    let mut files = Vec::new();
    let mut accs = Vec::new();
    for (split, tag) in [(&qa.valid, "valid"), (&qa.test, "test")] {
        let pred = predict(
            model,
            &head,
            data,
            split,
            cfg.eval_batch_size,
            tag,
            device,
            on_progress,
        )?;
        accs.push(accuracy(split, &qa.answers, &pred));
        let file = out.join(format!("{tag}_predict.json"));
        let answer = |p: usize| qa.answers.answer(p).unwrap_or_default().to_string();
        match qa.kind {
            QaKind::Vqa => write_vqa_predictions(
                &file,
                &split
                    .examples
                    .iter()
                    .zip(&pred)
                    .enumerate()
                    .map(|(r, (e, &p))| {
                        Ok(VqaPrediction {
                            question_id: e.key.parse().map_err(|_| EvalError::Record {
                                path: split.path.clone(),
                                record: r,
                                field: "question_id".into(),
                                reason: format!("{:?} is not an integer", e.key),
                            })?,
                            answer: answer(p),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            )?,
            QaKind::Gqa => write_gqa_predictions(
                &file,
                &split
                    .examples
                    .iter()
                    .zip(&pred)
                    .map(|(e, &p)| GqaPrediction {
                        question_id: e.key.clone(),
                        prediction: answer(p),
                    })
                    .collect::<Vec<_>>(),
            )?,
        }
        files.push(file);
    }
    Ok(QaResult {
        task: qa.kind,
        valid_accuracy: accs[0],
        test_accuracy: accs[1],
        n: (qa.valid.examples.len(), qa.test.examples.len()),
        predictions: (files[0].clone(), files[1].clone()),
        train,
    })
}
