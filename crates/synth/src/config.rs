//! The `[world]` table of a preset file: every knob of the synthetic world.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::SynthError;
use crate::lexicon::{ATTRIBUTES, CATEGORIES};

/// Every knob of the synthetic world (the `[world]` table of `data/presets/<name>.toml`).
///
/// Field names are the TOML keys; unknown keys are rejected so a typo cannot silently fall
/// back to a default. [`WorldConfig::default`] is the `tiny` preset's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldConfig {
    /// Images of the train split (pre-training, downstream training, retrieval train).
    pub train_images: usize,
    /// Images of the val split (LXMERT minival, VQA minival, GQA valid, NLVR2 valid).
    pub val_images: usize,
    /// Images of the test split (VQA test, GQA testdev, NLVR2 test, retrieval test).
    pub test_images: usize,
    /// Images of the test split used for Flickr30k-style retrieval (≤ `test_images`).
    pub retrieval_test_images: usize,
    /// Detector regions per image (36 as in LXMERT).
    pub regions_per_image: usize,
    /// Region feature width (2048 as in LXMERT).
    pub feature_dim: usize,
    /// Fewest objects in a scene.
    pub min_objects: usize,
    /// Most objects in a scene.
    pub max_objects: usize,
    /// Thing categories in use (≤ 83; stuff and part categories are always used).
    pub thing_categories: usize,
    /// Attributes in use (≤ 40).
    pub attributes: usize,
    /// Signal-to-noise of the category direction along itself (strong).
    pub category_signal: f32,
    /// Signal-to-noise of each attribute direction (weaker than a category's). At 2.0 (before
    /// msp-synth/2) Hugging Face's LXMERT of the tiny size learned no colour question in a CPU
    /// budget; at 6.0 it does (measured; see the README).
    pub attribute_signal: f32,
    /// Signal-to-noise of the box encoding.
    pub box_signal: f32,
    /// Per-dimension standard deviation of the feature noise.
    pub feature_noise: f32,
    /// Cosine similarity of categories of the same super-category (confusability).
    pub group_similarity: f32,
    /// Probability the detector's object label is the true category.
    pub object_label_accuracy: f32,
    /// Probability the detector's attribute label is a true attribute.
    pub attribute_label_accuracy: f32,
    /// Fraction of filler regions that are jittered duplicates of objects.
    pub duplicate_fraction: f32,
    /// Fraction of filler regions that are parts of objects (the rest is background stuff).
    pub part_fraction: f32,
    /// Captions per image (COCO has 5).
    pub captions_per_image: usize,
    /// Probability that a caption names an object with a synonym instead of its label.
    pub synonym_rate: f32,
    /// Probability that a caption gives a mentioned object one attribute.
    pub caption_attribute_rate: f32,
    /// Fewest region phrases per image.
    pub min_phrases: usize,
    /// Most region phrases per image.
    pub max_phrases: usize,
    /// VQA questions per image.
    pub vqa_per_image: usize,
    /// GQA questions per image.
    pub gqa_per_image: usize,
    /// Simulated annotators per VQA question (VQA has 10).
    pub annotators: usize,
    /// Probability an annotator gives the true answer.
    pub annotator_accuracy: f32,
    /// NLVR2 examples (image pairs) per image of a split, drawn within the split. Each
    /// statement is written for two pairs of opposite truth, so this is twice the statements.
    pub nlvr2_per_image: f32,
    /// Neighbours per image in the hard-negative pool (ViLBERT uses 100).
    pub hard_negatives: usize,
    /// Storage dtype of the converted feature store: "f16" or "f32".
    pub store_dtype: String,
    /// Keep the LXMERT TSV files after converting them to feature stores.
    pub keep_tsv: bool,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            train_images: 2400,
            val_images: 300,
            test_images: 300,
            retrieval_test_images: 100,
            regions_per_image: 36,
            feature_dim: 2048,
            min_objects: 3,
            max_objects: 12,
            thing_categories: 83,
            attributes: 40,
            category_signal: 8.0,
            attribute_signal: 6.0,
            box_signal: 2.0,
            feature_noise: 1.0,
            group_similarity: 0.5,
            object_label_accuracy: 0.85,
            attribute_label_accuracy: 0.45,
            duplicate_fraction: 0.3,
            part_fraction: 0.45,
            captions_per_image: 5,
            synonym_rate: 0.45,
            caption_attribute_rate: 0.3,
            min_phrases: 6,
            max_phrases: 16,
            vqa_per_image: 6,
            gqa_per_image: 6,
            annotators: 10,
            annotator_accuracy: 0.9,
            nlvr2_per_image: 1.0,
            hard_negatives: 100,
            store_dtype: "f16".to_string(),
            keep_tsv: true,
        }
    }
}

#[derive(Deserialize)]
struct PresetFile {
    world: Option<toml::Value>,
}

impl WorldConfig {
    /// Reads the `[world]` table of a preset TOML text (other tables are ignored; a missing
    /// `[world]` table gives the defaults).
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<WorldConfig, SynthError> {
        let file: PresetFile = toml::from_str(text).map_err(|e| SynthError::Preset {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        let config = match file.world {
            Some(value) => value
                .try_into()
                .map_err(|e: toml::de::Error| SynthError::Preset {
                    path: origin.to_path_buf(),
                    message: format!("[world]: {e}"),
                })?,
            None => WorldConfig::default(),
        };
        config.validate().map_err(|message| SynthError::Preset {
            path: origin.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Reads the `[world]` table of a preset file.
    pub fn from_preset_file(path: &Path) -> Result<WorldConfig, SynthError> {
        let text = std::fs::read_to_string(path).map_err(|source| SynthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        WorldConfig::from_toml_str(&text, path)
    }

    /// Reads `<presets_dir>/<name>.toml`.
    pub fn from_preset(presets_dir: &Path, name: &str) -> Result<WorldConfig, SynthError> {
        WorldConfig::from_preset_file(&presets_dir.join(format!("{name}.toml")))
    }

    /// Total images of the world.
    pub fn total_images(&self) -> usize {
        self.train_images + self.val_images + self.test_images
    }

    /// Checks ranges; returns a message naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let things = CATEGORIES
            .iter()
            .filter(|c| {
                !matches!(
                    c.sup,
                    crate::lexicon::Super::Stuff | crate::lexicon::Super::Part
                )
            })
            .count();
        let prob = |name: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} = {v} is not a probability in [0, 1]"))
            }
        };
        if self.train_images < 4 {
            return Err(format!(
                "train_images = {} (need at least 4)",
                self.train_images
            ));
        }
        if self.val_images < 2 || self.test_images < 2 {
            return Err("val_images and test_images must be at least 2".into());
        }
        if self.retrieval_test_images < 2 || self.retrieval_test_images > self.test_images {
            return Err(format!(
                "retrieval_test_images = {} must be in 2..=test_images ({})",
                self.retrieval_test_images, self.test_images
            ));
        }
        if self.min_objects < 1 || self.min_objects > self.max_objects {
            return Err(format!(
                "min_objects = {} must be in 1..=max_objects ({})",
                self.min_objects, self.max_objects
            ));
        }
        if self.regions_per_image < self.max_objects + 1 {
            return Err(format!(
                "regions_per_image = {} must exceed max_objects = {}",
                self.regions_per_image, self.max_objects
            ));
        }
        if self.feature_dim < 8 {
            return Err(format!(
                "feature_dim = {} (need at least 8)",
                self.feature_dim
            ));
        }
        if self.thing_categories < 14 || self.thing_categories > things {
            return Err(format!(
                "thing_categories = {} must be in 14..={things}",
                self.thing_categories
            ));
        }
        if self.attributes < 8 || self.attributes > ATTRIBUTES.len() {
            return Err(format!(
                "attributes = {} must be in 8..={}",
                self.attributes,
                ATTRIBUTES.len()
            ));
        }
        prob("object_label_accuracy", self.object_label_accuracy)?;
        prob("attribute_label_accuracy", self.attribute_label_accuracy)?;
        prob("duplicate_fraction", self.duplicate_fraction)?;
        prob("part_fraction", self.part_fraction)?;
        prob("synonym_rate", self.synonym_rate)?;
        prob("caption_attribute_rate", self.caption_attribute_rate)?;
        prob("annotator_accuracy", self.annotator_accuracy)?;
        prob("group_similarity", self.group_similarity)?;
        if self.duplicate_fraction + self.part_fraction > 1.0 {
            return Err("duplicate_fraction + part_fraction must not exceed 1".into());
        }
        for (name, v) in [
            ("category_signal", self.category_signal),
            ("attribute_signal", self.attribute_signal),
            ("box_signal", self.box_signal),
            ("feature_noise", self.feature_noise),
            ("nlvr2_per_image", self.nlvr2_per_image),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} = {v} must be finite and ≥ 0"));
            }
        }
        if self.captions_per_image < 1 {
            return Err("captions_per_image must be at least 1".into());
        }
        if self.min_phrases < 1 || self.min_phrases > self.max_phrases {
            return Err("min_phrases must be in 1..=max_phrases".into());
        }
        if self.annotators < 1 {
            return Err("annotators must be at least 1".into());
        }
        if self.hard_negatives < 1 {
            return Err("hard_negatives must be at least 1".into());
        }
        if self.store_dtype != "f16" && self.store_dtype != "f32" {
            return Err(format!(
                "store_dtype = {:?} (expected \"f16\" or \"f32\")",
                self.store_dtype
            ));
        }
        Ok(())
    }
}
