//! The pre-training data: examples of each text source over one feature store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use msp_features::{FeatureStore, HardNegativePool};
use msp_synth::layout;
use msp_tasks::{Example, PreferredWords};
use msp_text::{BertTokenizer, LabelVocab, PhraseBuilder, VerbLexicon};

use crate::config::{DataShape, TextSource};
use crate::error::{CurriculumError, Result};

/// A data directory in the layout `cargo xtask synth` writes (and real data can be put in):
/// `vocab.txt`, `objects_vocab.txt`, `attributes_vocab.txt`, the feature store
/// `features/train/`, captions `coco/captions_train.json` (or LXMERT's
/// `lxmert/mscoco_train.json`), `vg/region_descriptions.json`, and optionally the
/// hard-negative pool `flickr30k/hard_negative.json` (computed from the store when absent).
/// Captions and region descriptions may be absent when no stage of the run needs them.
pub struct PretrainData {
    /// The data directory.
    pub dir: PathBuf,
    /// Word pieces.
    pub tokenizer: BertTokenizer,
    /// Region features of the training images.
    pub store: FeatureStore,
    /// Detector object labels.
    pub objects: LabelVocab,
    /// Detector attribute labels.
    pub attributes: LabelVocab,
    /// ITM-HS pool over the store.
    pub hard_negatives: HardNegativePool,
    /// Token stage examples (one per image).
    pub labels: Vec<Example>,
    /// Phrase stage examples (one per image with a verb-free phrase).
    pub phrases: Vec<Example>,
    /// Sentence stage examples (one per caption).
    pub captions: Vec<Example>,
    /// Words whose pieces the phrase stage masks preferentially (labels and attributes).
    pub preferred: PreferredWords,
}

impl std::fmt::Debug for PretrainData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PretrainData")
            .field("dir", &self.dir)
            .field("images", &self.store.len())
            .field("labels", &self.labels.len())
            .field("phrases", &self.phrases.len())
            .field("captions", &self.captions.len())
            .finish_non_exhaustive()
    }
}

fn data_err(path: &Path, reason: impl Into<String>) -> CurriculumError {
    CurriculumError::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl PretrainData {
    /// Opens a data directory. `phrase_max_words` cuts the joined phrase text (SPEC: 20).
    pub fn open(dir: &Path, phrase_max_words: usize) -> Result<Self> {
        let p = |rel: &str| dir.join(rel);
        let tokenizer = BertTokenizer::from_vocab_file(p(layout::VOCAB))?;
        let store = FeatureStore::open(p(&layout::store("train")))?;
        if store.is_empty() {
            return Err(data_err(
                &p(&layout::store("train")),
                "the store has no image",
            ));
        }
        let objects = LabelVocab::read(p(layout::OBJECTS_VOCAB))?;
        let attributes = LabelVocab::read(p(layout::ATTRIBUTES_VOCAB))?;
        let hard_negatives =
            HardNegativePool::read_or_compute(p(layout::HARD_NEGATIVES), &store, 100)?;

        // Token stage: the detector labels of every region, in region order.
        let mut labels = Vec::with_capacity(store.len());
        for row in 0..store.len() {
            let img = store.image(row)?;
            let text = objects.token_text(&img.objects_id)?;
            if !text.is_empty() {
                labels.push(Example {
                    text,
                    image_row: row,
                });
            }
        }

        // Phrase stage: verb-free region descriptions of the store's images.
        let lexicon = VerbLexicon::load_default()?;
        let builder = PhraseBuilder {
            lexicon: &lexicon,
            max_words: phrase_max_words,
        };
        let vg = p(layout::VG_REGIONS);
        let mut phrases = Vec::new();
        // A missing file leaves the source empty: only a stage that uses it fails
        // (`examples`), so e.g. a caption-only data set can run the `S` schedule.
        if vg.exists() {
            msp_text::for_each_vg_image(&vg, |img| {
                if let Some(row) = store.row(&img.id.to_string()) {
                    let ph: Vec<&str> = img.regions.iter().map(|r| r.phrase.as_str()).collect();
                    let text = builder.build(&ph);
                    if !text.is_empty() {
                        phrases.push(Example {
                            text,
                            image_row: row,
                        });
                    }
                }
                Ok(())
            })?;
        }
        phrases.sort_by_key(|e| e.image_row);

        // Sentence stage: COCO captions, else LXMERT's pre-training JSON (caption sources).
        let coco = p(layout::CAPTIONS_TRAIN);
        let lx = p(layout::LXMERT_TRAIN);
        let mut captions = Vec::new();
        if coco.exists() {
            let c = msp_text::read_coco_captions(&coco)?;
            let by: BTreeMap<u64, Vec<&str>> = c.by_image();
            for (id, caps) in by {
                if let Some(row) = store.row(&id.to_string()) {
                    captions.extend(caps.into_iter().map(|t| Example {
                        text: t.to_string(),
                        image_row: row,
                    }));
                }
            }
        } else if lx.exists() {
            for e in msp_text::read_lxmert_pretrain(&lx)? {
                let Some(row) = store.row(&e.img_id) else {
                    continue;
                };
                for (src, sents) in &e.sentf {
                    if src == "mscoco" || src == "vg" {
                        captions.extend(sents.iter().map(|t| Example {
                            text: t.clone(),
                            image_row: row,
                        }));
                    }
                }
            }
        }
        let mut names = objects.names();
        names.extend(attributes.names());
        Ok(Self {
            dir: dir.to_path_buf(),
            preferred: PreferredWords::new(&names),
            tokenizer,
            store,
            objects,
            attributes,
            hard_negatives,
            labels,
            phrases,
            captions,
        })
    }

    /// The examples of a source; an error names the source when it has none.
    pub fn examples(&self, source: TextSource) -> Result<&[Example]> {
        let v = match source {
            TextSource::Labels => &self.labels,
            TextSource::Phrases => &self.phrases,
            TextSource::Captions => &self.captions,
        };
        if v.is_empty() {
            return Err(data_err(
                &self.dir,
                format!("no example for the {} stage", source.stage_name()),
            ));
        }
        Ok(v)
    }

    /// Vocabulary, feature width and label counts (what the model needs).
    pub fn shape(&self) -> DataShape {
        DataShape {
            vocab_size: self.tokenizer.vocab_size(),
            feature_dim: self.store.feature_dim(),
            num_objects: self.objects.len(),
            num_attributes: self.attributes.len(),
            cls_token_id: self.tokenizer.cls_id as usize,
        }
    }
}
