//! NLVR2: each statement runs twice (with image 0 and with image 1); the two pooled vectors
//! are concatenated → Linear 2H, GELU, LayerNorm, Linear → 2; cross-entropy; accuracy.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use msp_model::{cross_entropy, Lxmert, Nlvr2Head};
use msp_synth::layout;
use msp_text::Encoding;
use serde::{Deserialize, Serialize};

use crate::config::FinetuneConfig;
use crate::data::{model_inputs, text_batch, DownstreamData, ImageRef};
use crate::error::Result;
use crate::metrics::percent;
use crate::predictions::{write_nlvr2_predictions, Nlvr2Prediction};
use crate::train::{fit, training_subset, OnProgress, Progress, Resolved, TrainLog};

/// One statement about a pair of images.
#[derive(Debug, Clone)]
pub struct Nlvr2Item {
    /// `identifier`.
    pub identifier: String,
    /// Image 0 and image 1.
    pub images: [ImageRef; 2],
    /// The statement's word pieces.
    pub text: Encoding,
    /// 1 = true.
    pub label: u8,
}

/// The three NLVR2 splits.
#[derive(Debug, Clone)]
pub struct Nlvr2Data {
    /// Training.
    pub train: Vec<Nlvr2Item>,
    /// Model selection (`valid`, the paper's "dev").
    pub valid: Vec<Nlvr2Item>,
    /// Reported (`test`, the paper's "test-P").
    pub test: Vec<Nlvr2Item>,
}

impl Nlvr2Data {
    /// Reads `nlvr2/{train,valid,test}.json` and locates every image.
    pub fn read(data: &DownstreamData, max_len: usize, word_positions: bool) -> Result<Self> {
        let read = |rel: &str| -> Result<Vec<Nlvr2Item>> {
            let path = data.dir.join(rel);
            msp_text::read_nlvr2(&path)?
                .into_iter()
                .enumerate()
                .map(|(r, e)| {
                    Ok(Nlvr2Item {
                        images: [
                            data.locate(&e.img0, &path, r)?,
                            data.locate(&e.img1, &path, r)?,
                        ],
                        text: data.encode(&e.sent, max_len, word_positions)?,
                        label: e.label,
                        identifier: e.identifier,
                    })
                })
                .collect()
        };
        Ok(Self {
            train: read(layout::NLVR2[0])?,
            valid: read(layout::NLVR2[1])?,
            test: read(layout::NLVR2[2])?,
        })
    }
}

/// Results of an NLVR2 fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nlvr2Result {
    /// Accuracy (percent) on `valid`, best epoch.
    pub valid_accuracy: f64,
    /// Accuracy on `test`.
    pub test_accuracy: f64,
    /// Statements (valid, test).
    pub n: (usize, usize),
    /// Prediction files (CSV) of valid and test.
    pub predictions: (PathBuf, PathBuf),
    /// Training log.
    pub train: TrainLog,
}

fn logits(
    model: &Lxmert,
    head: &Nlvr2Head,
    data: &DownstreamData,
    batch: &[&Nlvr2Item],
    train: bool,
    device: &Device,
) -> Result<Tensor> {
    // Rows 2i (image 0) and 2i+1 (image 1) share statement i.
    let texts: Vec<&Encoding> = batch.iter().flat_map(|e| [&e.text, &e.text]).collect();
    let images: Vec<ImageRef> = batch.iter().flat_map(|e| e.images).collect();
    let t = text_batch(&texts, device)?;
    let r = data.regions(&images, device)?;
    let out = model
        .model()
        .forward_pooled_t(&model_inputs(&t, &r), train)?;
    Ok(head.forward(&out.pooled_output)?)
}

#[allow(clippy::too_many_arguments)]
fn predict(
    model: &Lxmert,
    head: &Nlvr2Head,
    data: &DownstreamData,
    items: &[Nlvr2Item],
    eval_batch: usize,
    what: &str,
    device: &Device,
    on_progress: OnProgress<'_>,
) -> Result<Vec<bool>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(eval_batch.div_ceil(2)) {
        let refs: Vec<&Nlvr2Item> = chunk.iter().collect();
        let l = logits(model, head, data, &refs, false, device)?;
        out.extend(
            l.argmax(D::Minus1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|i| i == 1),
        );
        on_progress(&Progress::Eval {
            what,
            done: out.len(),
            total: items.len(),
        });
    }
    Ok(out)
}

fn accuracy(items: &[Nlvr2Item], pred: &[bool]) -> f64 {
    let correct = items
        .iter()
        .zip(pred)
        .filter(|(e, &p)| p == (e.label == 1))
        .count();
    percent(correct as f64, items.len())
}

/// Fine-tunes `model` on NLVR2 (best epoch by `valid`) and writes CSV predictions.
#[allow(clippy::too_many_arguments)]
pub fn finetune_nlvr2(
    model: &Lxmert,
    data: &DownstreamData,
    nlvr2: &Nlvr2Data,
    cfg: &FinetuneConfig,
    seed: u64,
    out: &Path,
    device: &Device,
    on_progress: OnProgress<'_>,
) -> Result<Nlvr2Result> {
    let head = Nlvr2Head::load(
        model.var_builder().pp("nlvr2_head"),
        &cfg.head_config(model.config(), &cfg.nlvr2),
    )?;
    let examples = training_subset(nlvr2.train.len(), cfg.nlvr2.max_train, seed);
    let mut loss = |idx: &[usize], _: &mut rand_chacha::ChaCha8Rng| -> Result<Tensor> {
        let batch: Vec<&Nlvr2Item> = idx.iter().map(|&i| &nlvr2.train[i]).collect();
        let labels: Vec<u32> = batch.iter().map(|e| u32::from(e.label)).collect();
        let labels = Tensor::from_vec(labels, batch.len(), device)?;
        let l = logits(model, &head, data, &batch, true, device)?;
        Ok(cross_entropy(&l, &labels)?)
    };
    let mut validate = |p: OnProgress<'_>| -> Result<Option<f64>> {
        let pred = predict(
            model,
            &head,
            data,
            &nlvr2.valid,
            cfg.eval_batch_size,
            "valid",
            device,
            p,
        )?;
        Ok(Some(accuracy(&nlvr2.valid, &pred)))
    };
    std::fs::create_dir_all(out).map_err(crate::error::io_err(out))?;
    let train = fit(
        "nlvr2",
        model,
        cfg,
        Resolved::of(cfg, &cfg.nlvr2),
        &examples,
        seed,
        &out.join("best.safetensors"),
        &mut loss,
        &mut validate,
        on_progress,
    )?;
    let mut files = Vec::new();
    let mut accs = Vec::new();
    for (items, tag) in [(&nlvr2.valid, "valid"), (&nlvr2.test, "test")] {
        let pred = predict(
            model,
            &head,
            data,
            items,
            cfg.eval_batch_size,
            tag,
            device,
            on_progress,
        )?;
        accs.push(accuracy(items, &pred));
        let file = out.join(format!("{tag}_predict.csv"));
        write_nlvr2_predictions(
            &file,
            &items
                .iter()
                .zip(&pred)
                .map(|(e, &p)| Nlvr2Prediction {
                    identifier: e.identifier.clone(),
                    label: p,
                })
                .collect::<Vec<_>>(),
        )?;
        files.push(file);
    }
    Ok(Nlvr2Result {
        valid_accuracy: accs[0],
        test_accuracy: accs[1],
        n: (nlvr2.valid.len(), nlvr2.test.len()),
        predictions: (files[0].clone(), files[1].clone()),
        train,
    })
}
