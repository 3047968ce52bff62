//! Flickr30k-style image and text retrieval (LXMERT-S protocol): a 2-way match head on the
//! pooled vector, initialised from the pre-trained ITM head (or fresh, `retrieval_head`);
//! each training caption gives four pairs (its image; a random other image; a caption of a
//! hard-negative image with the original image; a random other caption with the original
//! image), loss 2 × mean cross-entropy (LXMERT-S's BCE on the softmax × 2). Evaluation
//! scores every caption with every test image by P(matched).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::ops::softmax_last_dim;
use msp_features::HardNegativePool;
use msp_model::{copy_prefix, cross_entropy, Lxmert, MatchHead};
use msp_synth::layout;
use msp_text::Encoding;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{FinetuneConfig, RetrievalHead};
use crate::data::{model_inputs, text_batch, DownstreamData, ImageRef};
use crate::error::{EvalError, Result};
use crate::metrics::{Recall, ScoreMatrix};
use crate::train::{fit, training_subset, OnProgress, Progress, Resolved, TrainLog};

/// An image with its captions.
#[derive(Debug, Clone)]
pub struct RetrievalImage {
    /// Image id.
    pub img_id: String,
    /// Where its regions are.
    pub image: ImageRef,
    /// Its captions, tokenised.
    pub captions: Vec<Encoding>,
}

/// Train and test sets and the hard-negative neighbours of the training images.
#[derive(Debug, Clone)]
pub struct RetrievalData {
    /// Training images.
    pub train: Vec<RetrievalImage>,
    /// Test images (the first `retrieval_test_images` when capped).
    pub test: Vec<RetrievalImage>,
    /// For each training image, its hard-negative neighbours (indices into `train`).
    pub hard: Vec<Vec<usize>>,
}

impl RetrievalData {
    /// Reads `flickr30k/flickr30k_{train,test}2014.json` and the hard-negative pool
    /// (`flickr30k/hard_negative.json`; computed from the train store when absent).
    pub fn read(data: &DownstreamData, cfg: &FinetuneConfig, word_positions: bool) -> Result<Self> {
        let read = |rel: &str| -> Result<Vec<RetrievalImage>> {
            let path = data.dir.join(rel);
            let entries = msp_text::read_flickr30k(&path)?;
            let mut out = Vec::with_capacity(entries.len());
            for (r, e) in entries.into_iter().enumerate() {
                let img_id = e
                    .img_path
                    .rsplit('/')
                    .next()
                    .and_then(|f| f.split('.').next())
                    .unwrap_or_default()
                    .to_string();
                if e.sentences.is_empty() {
                    return Err(EvalError::Record {
                        path: path.clone(),
                        record: r,
                        field: "sentences".into(),
                        reason: "no caption".into(),
                    });
                }
                out.push(RetrievalImage {
                    image: data.locate(&img_id, &path, r)?,
                    captions: e
                        .sentences
                        .iter()
                        .map(|s| data.encode(s, cfg.max_len, word_positions))
                        .collect::<Result<_>>()?,
                    img_id,
                });
            }
            Ok(out)
        };
        let train = read(layout::FLICKR_TRAIN)?;
        let mut test = read(layout::FLICKR_TEST)?;
        if let Some(k) = cfg.retrieval_test_images {
            test.truncate(k);
        }
        if train.len() < 2 || test.len() < 2 {
            return Err(EvalError::Data {
                path: data.dir.join("flickr30k"),
                reason: format!(
                    "retrieval needs at least 2 train and 2 test images ({} and {})",
                    train.len(),
                    test.len()
                ),
            });
        }
        let pool = HardNegativePool::read_or_compute(
            data.dir.join(layout::HARD_NEGATIVES),
            &data.stores[train[0].image.store],
            100,
        )?;
        let by_id: HashMap<&str, usize> = train
            .iter()
            .enumerate()
            .map(|(i, t)| (t.img_id.as_str(), i))
            .collect();
        let pool_row: HashMap<&str, usize> = pool
            .image_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let hard = train
            .iter()
            .map(|t| {
                pool_row
                    .get(t.img_id.as_str())
                    .map(|&r| {
                        pool.pool[r]
                            .iter()
                            .filter_map(|&j| {
                                pool.image_ids.get(j).and_then(|id| by_id.get(id.as_str()))
                            })
                            .copied()
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        Ok(Self { train, test, hard })
    }
}

/// Retrieval metrics of one model on the test set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetrievalScores {
    /// Image retrieval (each caption ranks the images).
    pub ir: Recall,
    /// Text retrieval, standard protocol (each image ranks all captions; any of its own
    /// within the top k is a hit).
    pub tr: Recall,
    /// Text retrieval as LXMERT-S computes it (first caption of each image only).
    pub tr_first_caption: Recall,
    /// Test images.
    pub images: usize,
    /// Test captions.
    pub captions: usize,
}

/// Results of a retrieval fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalResult {
    /// Scores after fine-tuning.
    pub scores: RetrievalScores,
    /// Training log.
    pub train: TrainLog,
}

/// P(matched) of every test caption with every test image under `head` (the pre-trained
/// ITM head for zero-shot, the fine-tuned match head otherwise).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Lxmert,
    head: &MatchHead,
    data: &DownstreamData,
    test: &[RetrievalImage],
    eval_batch: usize,
    what: &str,
    device: &Device,
    on_progress: OnProgress<'_>,
) -> Result<RetrievalScores> {
    let captions: Vec<(&Encoding, usize)> = test
        .iter()
        .enumerate()
        .flat_map(|(i, t)| t.captions.iter().map(move |c| (c, i)))
        .collect();
    let (nc, ni) = (captions.len(), test.len());
    let mut scores = vec![0f32; nc * ni];
    let total = nc * ni;
    let mut done = 0;
    for (i, img) in test.iter().enumerate() {
        let regions = data.regions(&[img.image], device)?;
        for (start, chunk) in captions
            .chunks(eval_batch)
            .enumerate()
            .map(|(k, c)| (k * eval_batch, c))
        {
            let texts: Vec<&Encoding> = chunk.iter().map(|c| c.0).collect();
            let t = text_batch(&texts, device)?;
            let r = regions.repeat_each(chunk.len())?;
            let out = model
                .model()
                .forward_pooled_t(&model_inputs(&t, &r), false)?;
            let p = softmax_last_dim(&head.forward(&out.pooled_output)?)?
                .narrow(1, 1, 1)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (k, v) in p.into_iter().enumerate() {
                scores[(start + k) * ni + i] = v;
            }
            done += chunk.len();
            on_progress(&Progress::Eval { what, done, total });
        }
    }
    let m = ScoreMatrix::new(ni, captions.iter().map(|c| c.1).collect(), scores)?;
    Ok(RetrievalScores {
        ir: m.image_retrieval()?,
        tr: m.text_retrieval()?,
        tr_first_caption: m.text_retrieval_first_caption()?,
        images: ni,
        captions: nc,
    })
}

/// Zero-shot retrieval: the pre-trained ITM head, no fine-tuning.
pub fn zero_shot(
    model: &Lxmert,
    data: &DownstreamData,
    retrieval: &RetrievalData,
    cfg: &FinetuneConfig,
    device: &Device,
    on_progress: OnProgress<'_>,
) -> Result<RetrievalScores> {
    evaluate(
        model,
        &model.model().itm,
        data,
        &retrieval.test,
        cfg.eval_batch_size,
        "zero-shot",
        device,
        on_progress,
    )
}

/// The four training pairs of caption `c` of training image `i`: (caption, image, matched).
fn training_pairs<'a>(
    r: &'a RetrievalData,
    i: usize,
    c: usize,
    rng: &mut impl Rng,
) -> [(&'a Encoding, ImageRef, bool); 4] {
    let n = r.train.len();
    let other = |rng: &mut dyn rand::RngCore| {
        let j = rng.random_range(0..n - 1);
        if j >= i {
            j + 1
        } else {
            j
        }
    };
    let caption_of = |j: usize, rng: &mut dyn rand::RngCore| {
        let caps = &r.train[j].captions;
        &caps[rng.random_range(0..caps.len())]
    };
    let me = &r.train[i];
    let random_image = other(rng);
    let hard_image = if r.hard[i].is_empty() {
        other(rng)
    } else {
        r.hard[i][rng.random_range(0..r.hard[i].len())]
    };
    let random_caption_image = other(rng);
    [
        (&me.captions[c], me.image, true),
        (&me.captions[c], r.train[random_image].image, false),
        (caption_of(hard_image, rng), me.image, false),
        (caption_of(random_caption_image, rng), me.image, false),
    ]
}

/// The match head that retrieval fine-tunes (`seq_relationship_new`): a copy of the
/// pre-trained ITM head, or a new one at `head_init_std` (`cfg.retrieval_head`).
fn match_head(model: &Lxmert, cfg: &FinetuneConfig) -> Result<MatchHead> {
    let head = MatchHead::load(
        model.var_builder().pp("seq_relationship_new"),
        &cfg.head_config(model.config(), &cfg.retrieval),
    )?;
    if cfg.retrieval_head == RetrievalHead::Itm {
        copy_prefix(
            model.varmap(),
            "cls.seq_relationship",
            "seq_relationship_new",
        )?;
    }
    Ok(head)
}

/// Fine-tunes a match head (a copy of the ITM head, or fresh) and evaluates the test set
/// with it. No validation split (LXMERT-S's validation computes only a loss): the last epoch
/// is kept.
#[allow(clippy::too_many_arguments)]
pub fn finetune_retrieval(
    model: &Lxmert,
    data: &DownstreamData,
    retrieval: &RetrievalData,
    cfg: &FinetuneConfig,
    seed: u64,
    out: &Path,
    device: &Device,
    on_progress: OnProgress<'_>,
) -> Result<RetrievalResult> {
    let head = match_head(model, cfg)?;
    let items: Vec<(usize, usize)> = retrieval
        .train
        .iter()
        .enumerate()
        .flat_map(|(i, t)| (0..t.captions.len()).map(move |c| (i, c)))
        .collect();
    let examples = training_subset(items.len(), cfg.retrieval.max_train, seed);
    let mut loss = |idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng| -> Result<Tensor> {
        let mut texts = Vec::with_capacity(4 * idx.len());
        let mut images = Vec::with_capacity(4 * idx.len());
        let mut labels = Vec::with_capacity(4 * idx.len());
        for &k in idx {
            let (i, c) = items[k];
            for (t, im, m) in training_pairs(retrieval, i, c, rng) {
                texts.push(t);
                images.push(im);
                labels.push(u32::from(m));
            }
        }
        let t = text_batch(&texts, device)?;
        let r = data.regions(&images, device)?;
        let out = model
            .model()
            .forward_pooled_t(&model_inputs(&t, &r), true)?;
        let logits = head.forward(&out.pooled_output)?;
        let labels = Tensor::from_vec(labels, texts.len(), device)?;
        Ok(cross_entropy(&logits, &labels)?.affine(2.0, 0.0)?)
    };
    let mut validate = |_: OnProgress<'_>| -> Result<Option<f64>> { Ok(None) };
    std::fs::create_dir_all(out).map_err(crate::error::io_err(out))?;
    let train = fit(
        "retrieval",
        model,
        cfg,
        Resolved::of(cfg, &cfg.retrieval),
        &examples,
        seed,
        &out.join("best.safetensors"),
        &mut loss,
        &mut validate,
        on_progress,
    )?;
    let scores = evaluate(
        model,
        &head,
        data,
        &retrieval.test,
        cfg.eval_batch_size,
        "retrieval",
        device,
        on_progress,
    )?;
    Ok(RetrievalResult { scores, train })
}

#[cfg(test)]
mod tests {
    use super::*;
    use msp_model::{Config, Variant};

    fn weight(model: &Lxmert, name: &str) -> Vec<f32> {
        let data = model.varmap().data().lock().unwrap();
        data[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn match_head_copies_the_itm_head_or_starts_fresh() -> Result<()> {
        let mut cfg = FinetuneConfig::paper();
        cfg.head_init_std = Some(0.4);
        let build = || Lxmert::new(&Config::tiny(), Variant::LxmertS, 0, &Device::Cpu);
        let model = build()?;
        match_head(&model, &cfg)?;
        let itm = weight(&model, "cls.seq_relationship.weight");
        assert_eq!(weight(&model, "seq_relationship_new.weight"), itm);

        cfg.retrieval_head = RetrievalHead::Fresh;
        let model = build()?;
        match_head(&model, &cfg)?;
        let fresh = weight(&model, "seq_relationship_new.weight");
        assert_ne!(fresh, itm);
        // 2 × 32 weights drawn from N(0, 0.4): the ITM head's are N(0, 0.02).
        let std = (fresh.iter().map(|w| w * w).sum::<f32>() / fresh.len() as f32).sqrt();
        assert!((0.25..0.6).contains(&std), "σ {std}");
        assert_eq!(
            weight(&model, "seq_relationship_new.bias"),
            vec![0.0, 0.0],
            "biases start at zero"
        );
        Ok(())
    }
}
