//! The batch builder: all model inputs and targets of one training step.

use candle_core::{Device, Tensor};
use msp_features::{FeatureStore, HardNegativePool, RegionBuffers};
use msp_model::LxmertInputs;
use msp_text::{BertTokenizer, LabelVocab, PositionMode};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};
use crate::ifrs::{IfrsConfig, IfrsPlan, IfrsShuffler};
use crate::itm::{ItmConfig, NegativeSampler, PairSource, Pairing};
use crate::mlm::{MlmConfig, MlmMasker, PreferredWords, IGNORE_LABEL};
use crate::regions::{RegionMaskConfig, RegionMasker};
use crate::task::{Task, TaskSet};
use crate::topic::{multi_hot, topic_ids};

/// One training example: a text and the store row of its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The text (token-stage label text, phrase text or caption).
    pub text: String,
    /// Row of the image in the [`FeatureStore`].
    pub image_row: usize,
}

/// Settings of the batch builder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuilderConfig {
    /// The tasks of the stage.
    pub tasks: TaskSet,
    /// Text length with `[CLS]`/`[SEP]` (LXMERT: 20).
    pub max_len: usize,
    /// Word-level (LXMERT-S) or sequential position ids.
    pub word_positions: bool,
    /// Box slots per image: `None` pads to the largest box count of the batch.
    pub pad_regions_to: Option<usize>,
    /// MLM masking.
    pub mlm: MlmConfig,
    /// MRFR/MOC region masking.
    pub regions: RegionMaskConfig,
    /// IFRS shuffling.
    pub ifrs: IfrsConfig,
    /// ITM/ITM-HS sampling.
    pub itm: ItmConfig,
}

impl BuilderConfig {
    /// LXMERT-S defaults for a task set: length 20, word positions, 36 box slots.
    pub fn new(tasks: TaskSet) -> Self {
        Self {
            tasks,
            max_len: 20,
            word_positions: true,
            pad_regions_to: Some(36),
            mlm: MlmConfig::default(),
            regions: RegionMaskConfig::default(),
            ifrs: IfrsConfig::default(),
            itm: ItmConfig::default(),
        }
    }
}

/// The RNG state of a builder: batch `k` of a run draws from ChaCha8 seeded with `seed` on
/// stream `k`, so `(seed, batches_drawn)` restores a run exactly (serialise it with the
/// checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The run's seed.
    pub seed: u64,
    /// Batches built so far (the index of the next batch).
    pub batches_drawn: u64,
}

impl RngState {
    /// The RNG of batch `index`.
    pub fn rng_for(seed: u64, index: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index);
        rng
    }
}

/// IFRS tensors of a batch.
#[derive(Debug, Clone)]
pub struct IfrsTargets {
    /// `[B, n]` u32 permutation (give it to the model hook; identity outside shuffles).
    pub perm: Tensor,
    /// `[B, n]` f32: 1 at shuffled positions (the loss weight).
    pub shuffled: Tensor,
    /// The host-side plan.
    pub plan: IfrsPlan,
}

/// Targets of a batch (each `None` when no task of the set needs it).
#[derive(Debug, Clone)]
pub struct Targets {
    /// `[B, L]` i64: original id at MLM-selected positions, [`IGNORE_LABEL`] elsewhere.
    pub mlm_labels: Option<Tensor>,
    /// `[B, n, D]` f32: the original, unmasked, unshuffled features (MRFR and IFRS target).
    pub features: Tensor,
    /// `[B, n]` f32: 1 at masked regions (MRFR weight; MOC weight when masked-only).
    pub feat_mask: Tensor,
    /// `[B, n]` u32 object labels of the fed image.
    pub obj_labels: Tensor,
    /// `[B, n]` f32 object confidences.
    pub obj_conf: Tensor,
    /// `[B, n]` u32 attribute labels.
    pub attr_labels: Tensor,
    /// `[B, n]` f32 attribute confidences.
    pub attr_conf: Tensor,
    /// IFRS permutation and mask.
    pub ifrs: Option<IfrsTargets>,
    /// `[B, vocab]` f32 multi-hot topic targets.
    pub topic: Option<Tensor>,
    /// `[B]` u32 matching labels (1 = matched).
    pub itm_labels: Option<Tensor>,
}

/// Counts of what the randomness did in a batch (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStats {
    /// MLM-selected word pieces.
    pub masked_tokens: usize,
    /// MRFR-selected regions.
    pub masked_regions: usize,
    /// Shuffled IFRS triplets.
    pub shuffled_triplets: usize,
    /// Examples paired with a hard negative.
    pub hard_negatives: usize,
    /// Examples paired with a random negative.
    pub random_negatives: usize,
    /// Examples whose topic is empty.
    pub empty_topics: usize,
}

/// All inputs and targets of one step.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The task set the batch was built for.
    pub tasks: TaskSet,
    /// `[B, L]` u32 word-piece ids after MLM masking.
    pub input_ids: Tensor,
    /// `[B, L]` u32 attention mask.
    pub attention_mask: Tensor,
    /// `[B, L]` u32 segment ids (zeros).
    pub token_type_ids: Tensor,
    /// `[B, L]` u32 position ids (word-level or sequential).
    pub position_ids: Tensor,
    /// `[B, n, D]` f32 region features after MRFR masking (IFRS is applied in the model).
    pub visual_feats: Tensor,
    /// `[B, n, 4]` f32 normalised boxes (never masked).
    pub visual_pos: Tensor,
    /// `[B, n]` f32 region mask (1 real, 0 padding).
    pub region_mask: Tensor,
    /// Whether some slot is padding (then the model needs the visual attention mask).
    pub has_padding: bool,
    /// Store rows of the images fed, after ITM replacement.
    pub image_rows: Vec<usize>,
    /// How each example's image was chosen.
    pub pairings: Vec<Pairing>,
    /// The targets.
    pub targets: Targets,
    /// What the randomness did.
    pub stats: BatchStats,
}

impl Batch {
    /// The backbone inputs (the visual attention mask only when the batch pads regions, so
    /// unpadded batches run exactly as LXMERT), with the IFRS permutation when IFRS is active.
    pub fn inputs(&self) -> LxmertInputs<'_> {
        LxmertInputs {
            input_ids: &self.input_ids,
            attention_mask: Some(&self.attention_mask),
            token_type_ids: Some(&self.token_type_ids),
            position_ids: Some(&self.position_ids),
            visual_feats: &self.visual_feats,
            visual_pos: &self.visual_pos,
            visual_attention_mask: self.has_padding.then_some(&self.region_mask),
            visual_permutation: self.targets.ifrs.as_ref().map(|i| &i.perm),
        }
    }

    /// Batch size.
    pub fn len(&self) -> usize {
        self.image_rows.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.image_rows.is_empty()
    }
}

/// Builds batches with per-example randomness from a seeded RNG it owns.
///
/// Order of the random draws within a batch (part of the reproducibility contract): ITM
/// pairings (example order), MLM masks (example order), region masks (batch order), IFRS
/// shuffles.
pub struct BatchBuilder<'a> {
    cfg: BuilderConfig,
    tok: &'a BertTokenizer,
    store: &'a FeatureStore,
    object_labels: Option<&'a LabelVocab>,
    preferred: Option<PreferredWords>,
    mlm: MlmMasker,
    regions: RegionMasker,
    ifrs: IfrsShuffler,
    sampler: Option<NegativeSampler>,
    state: RngState,
}

impl std::fmt::Debug for BatchBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchBuilder")
            .field("config", &self.cfg)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<'a> BatchBuilder<'a> {
    /// A builder. `object_labels` (the detector's object vocabulary) is required by
    /// TITP/TITS; `hard_pool` by ITM-HS (with `None` every negative is random, the paper's
    /// fallback for an empty pool).
    pub fn new(
        cfg: BuilderConfig,
        tok: &'a BertTokenizer,
        store: &'a FeatureStore,
        object_labels: Option<&'a LabelVocab>,
        hard_pool: Option<&HardNegativePool>,
        seed: u64,
    ) -> Result<Self> {
        if cfg.max_len < 2 {
            return Err(TaskError::Config {
                field: "max_len",
                reason: format!("{} leaves no room for [CLS] and [SEP]", cfg.max_len),
            });
        }
        if cfg.tasks.topic_task().is_some() && object_labels.is_none() {
            return Err(TaskError::Config {
                field: "object_labels",
                reason: "TITP/TITS need the object label vocabulary".into(),
            });
        }
        let sampler = match cfg.tasks.matching_task() {
            Some(Task::ItmHs) => Some(match hard_pool {
                Some(p) => NegativeSampler::hard(cfg.itm, p, store.ids())?,
                None => NegativeSampler::random(cfg.itm, store.len())?,
            }),
            Some(_) => Some(NegativeSampler::random(cfg.itm, store.len())?),
            None => None,
        };
        Ok(Self {
            mlm: MlmMasker::from_tokenizer(cfg.mlm, tok)?,
            regions: RegionMasker::new(cfg.regions)?,
            ifrs: IfrsShuffler::new(cfg.ifrs)?,
            cfg,
            tok,
            store,
            object_labels,
            preferred: None,
            sampler,
            state: RngState {
                seed,
                batches_drawn: 0,
            },
        })
    }

    /// Masks pieces of these words with [`MlmConfig::preferred_prob`] (phrase stage:
    /// attribute and category names).
    pub fn with_preferred_words(mut self, words: PreferredWords) -> Self {
        self.preferred = Some(words);
        self
    }

    /// The RNG state (save it with a checkpoint).
    pub fn state(&self) -> RngState {
        self.state
    }

    /// Restores a saved RNG state: the next batch is the one that run would have built.
    pub fn restore(&mut self, state: RngState) {
        self.state = state;
    }

    /// The configuration.
    pub fn config(&self) -> &BuilderConfig {
        &self.cfg
    }

    /// Builds the next batch and advances the state.
    pub fn next_batch(&mut self, examples: &[Example], device: &Device) -> Result<Batch> {
        let b = self.build_at(examples, self.state.batches_drawn, device)?;
        self.state.batches_drawn += 1;
        Ok(b)
    }

    /// Builds batch number `index` of this seed without changing the state (a pure
    /// function of seed, index and examples).
    pub fn build_at(&self, examples: &[Example], index: u64, device: &Device) -> Result<Batch> {
        if examples.is_empty() {
            return Err(TaskError::Config {
                field: "examples",
                reason: "a batch needs at least one example".into(),
            });
        }
        for (i, e) in examples.iter().enumerate() {
            if e.image_row >= self.store.len() {
                return Err(TaskError::Example {
                    index: i,
                    reason: format!(
                        "image row {} outside the store of {}",
                        e.image_row,
                        self.store.len()
                    ),
                });
            }
        }
        let mut rng = RngState::rng_for(self.state.seed, index);
        let tasks = &self.cfg.tasks;
        let bsz = examples.len();
        let mut stats = BatchStats::default();

        // 1. Pairing (ITM / ITM-HS).
        let pairings: Vec<Pairing> = examples
            .iter()
            .map(|e| match &self.sampler {
                Some(s) => s.sample(&mut rng, e.image_row),
                None => Pairing {
                    image_row: e.image_row,
                    source: PairSource::Matched,
                },
            })
            .collect();
        stats.hard_negatives = pairings
            .iter()
            .filter(|p| p.source == PairSource::Hard)
            .count();
        stats.random_negatives = pairings
            .iter()
            .filter(|p| p.source == PairSource::Random)
            .count();
        let rows: Vec<usize> = pairings.iter().map(|p| p.image_row).collect();

        // 2. Text and MLM.
        let l = self.cfg.max_len;
        let mode = if self.cfg.word_positions {
            PositionMode::Word
        } else {
            PositionMode::Sequential
        };
        let (mut ids, mut att, mut pos, mut labels) = (
            Vec::with_capacity(bsz * l),
            Vec::with_capacity(bsz * l),
            Vec::with_capacity(bsz * l),
            Vec::with_capacity(bsz * l),
        );
        for e in examples {
            let enc = self.tok.encode(&e.text, l, mode)?;
            if tasks.contains(Task::Mlm) {
                let pref = self.preferred.as_ref().map(|p| p.mark(&enc.tokens));
                let m = self.mlm.mask(
                    &mut rng,
                    &enc.input_ids,
                    &enc.attention_mask,
                    pref.as_deref(),
                )?;
                stats.masked_tokens += m.num_selected();
                ids.extend(m.input_ids);
                labels.extend(m.labels);
            } else {
                ids.extend_from_slice(&enc.input_ids);
                labels.extend(std::iter::repeat_n(IGNORE_LABEL, l));
            }
            att.extend(enc.attention_mask);
            pos.extend(enc.position_ids);
        }

        // 3. Regions and MRFR masking.
        let mut buf = RegionBuffers::default();
        self.store
            .gather_into(&rows, self.cfg.pad_regions_to, &mut buf)?;
        let (n, d) = (buf.boxes_per_image, buf.feature_dim);
        let (masked_feats, feat_mask) = if tasks.masks_regions() {
            let m = self
                .regions
                .mask(&mut rng, &buf.features, &buf.mask, &rows, n, d, None)?;
            stats.masked_regions = m.num_selected();
            (m.features, m.feat_mask)
        } else {
            (buf.features.clone(), vec![0.0; bsz * n])
        };

        // 4. IFRS.
        let ifrs = if tasks.contains(Task::Ifrs) {
            let plan = self.ifrs.plan(&mut rng, &buf.num_boxes, n)?;
            stats.shuffled_triplets = plan.num_shuffled_triplets;
            Some(IfrsTargets {
                perm: plan.perm_tensor(device)?,
                shuffled: plan.shuffled_tensor(device)?,
                plan,
            })
        } else {
            None
        };

        // 5. Topic (with the labels of the image actually fed).
        let topic = match (tasks.topic_task(), self.object_labels) {
            (Some(_), Some(vocab)) => {
                let mut all = Vec::with_capacity(bsz);
                for (bi, e) in examples.iter().enumerate() {
                    let k = buf.num_boxes[bi];
                    let mut names = Vec::with_capacity(k);
                    for &id in &buf.objects_id[bi * n..bi * n + k] {
                        let name = vocab.name(id as usize).ok_or_else(|| TaskError::Example {
                            index: bi,
                            reason: format!(
                                "object label {id} outside the vocabulary of {}",
                                vocab.len()
                            ),
                        })?;
                        names.push(name);
                    }
                    let t = topic_ids(self.tok, &e.text, &names);
                    stats.empty_topics += usize::from(t.is_empty());
                    all.push(t);
                }
                Some(multi_hot(&all, self.tok.vocab_size(), device)?)
            }
            _ => None,
        };

        let itm_labels = match tasks.matching_task() {
            Some(_) => {
                let v: Vec<u32> = pairings.iter().map(Pairing::label).collect();
                Some(Tensor::from_vec(v, bsz, device)?)
            }
            None => None,
        };
        let has_padding = buf.mask.contains(&0.0);
        let t2 = |v: Vec<u32>| Tensor::from_vec(v, (bsz, l), device);
        let batch = buf.into_batch(device)?;
        Ok(Batch {
            tasks: tasks.clone(),
            input_ids: t2(ids)?,
            attention_mask: t2(att)?,
            token_type_ids: Tensor::zeros((bsz, l), candle_core::DType::U32, device)?,
            position_ids: t2(pos)?,
            visual_feats: Tensor::from_vec(masked_feats, (bsz, n, d), device)?,
            visual_pos: batch.boxes,
            region_mask: batch.mask,
            has_padding,
            image_rows: rows,
            pairings,
            targets: Targets {
                mlm_labels: if tasks.contains(Task::Mlm) {
                    Some(Tensor::from_vec(labels, (bsz, l), device)?)
                } else {
                    None
                },
                features: batch.features,
                feat_mask: Tensor::from_vec(feat_mask, (bsz, n), device)?,
                obj_labels: batch.objects_id,
                obj_conf: batch.objects_conf,
                attr_labels: batch.attrs_id,
                attr_conf: batch.attrs_conf,
                ifrs,
                topic,
                itm_labels,
            },
            stats,
        })
    }
}
