//! `msp-synth`: the synthetic world, msp's embedded default data.
//!
//! A deterministic generator of scene graphs (3–12 objects with a category, attributes, a box,
//! spatial relations computed from the boxes and actions between compatible pairs) that
//! writes every data set of the MSP paper **in its real file format**, through the project's
//! own writers (msp-features, msp-text):
//!
//! | what | where (relative to the world directory, see [`layout`]) |
//! |---|---|
//! | detector regions, LXMERT TSV (36 boxes × D; deleted after conversion unless `keep_tsv`) and converted feature stores | `features/{train,val,test}_obj36.tsv`, `features/{train,val,test}/` |
//! | detector label vocabularies, tokenizer vocabulary | `objects_vocab.txt`, `attributes_vocab.txt`, `vocab.txt` |
//! | COCO captions (5 per image) and LXMERT pre-training JSON | `coco/captions_{train,val}.json`, `lxmert/mscoco_{train,minival}.json` |
//! | Visual Genome region descriptions (train and val images) | `vg/region_descriptions.json` |
//! | VQA (10 annotators, soft scores) with answer vocabulary | `vqa/{train,minival,test}.json`, `vqa/trainval_*.json` |
//! | GQA (compositional, one answer) | `gqa/{train,valid,testdev}.json`, `gqa/trainval_*.json` |
//! | NLVR2 (each statement over a true and a false image pair) | `nlvr2/{train,valid,test}.json` |
//! | Flickr30k-style retrieval and hard negatives | `flickr30k/flickr30k_{train,test}2014.json`, `flickr30k/hard_negative.json` |
//! | manifest: version, seed, knobs, sizes, SHA-256 of every file, baselines | `world.json` |
//!
//! Image ids are decimal integers (`1000000 + index`): the TSV `img_id`, LXMERT/VQA/GQA
//! `img_id` and NLVR2 `img0`/`img1` are that string, the COCO and VG `image_id` is that
//! integer, COCO `file_name` and Flickr `img_path` are `"<id>.jpg"`. Images are split
//! train / val / test by index; the retrieval test set is the first
//! `retrieval_test_images` test images; NLVR2 pairs are drawn within a split, and as in NLVR2
//! every sentence is written for image pairs of both truths (`train-K-0-0` true, `train-K-1-0`
//! false, or the reverse; the second pair keeps one image of the first where it can), so a
//! text-only model scores exactly 50 %.
//!
//! **Key design choice: every stage has something of its own to teach, as in real data.**
//! Categories are strong directions in the features and the detector's object labels are
//! mostly right (a confusable same-group label otherwise, with lower confidence); attributes
//! are weaker directions and their detector labels often wrong, while region phrases name them
//! reliably ("old green car"); captions mention only the 1–3 salient objects, with synonyms
//! ("guy", "couch"); counting, attribute and relation questions are about objects captions
//! rarely mention, and their answers are balanced per question form so that a text-only
//! prior stays far below the scene-graph oracle (both are computed and written to
//! `world.json`). Every knob is in the `[world]` table of a preset ([`WorldConfig`]).
//!
//! **Determinism.** Every image and every generator draws from its own ChaCha8 stream
//! derived from (seed, stream, index), so generation is parallel (rayon) yet the same seed
//! gives byte-identical files; nothing time-dependent is written. Output goes to a temporary
//! sibling directory renamed at the end; [`World::open_or_generate`] reuses a complete world
//! of the same generator version, seed and knobs.
//!
//! Measured (release, 2 shared cores): `smoke` 0.1 s; `tiny` (3000 images, 36 × 2048, f16
//! store, TSVs dropped) 15–20 s and 460 MB; text-only baselines vs oracle on `tiny`: VQA
//! minival 0.46 vs 1.00, GQA valid 0.37 vs 1.00, NLVR2 valid 0.50 vs 1.00, IR R@1 0.01
//! (chance) vs 0.77.
//!
//! Choices where the paper is silent: VQA test and GQA testdev carry labels (so local
//! evaluation is possible); VQA soft scores follow the bottom-up-attention rule LXMERT's
//! labels come from (1 → 0.3, 2 → 0.6, 3 → 0.9, ≥ 4 annotators → 1); region features are
//! Gaussian (not ReLU-sparse); retrieval captions are drawn independently of the COCO ones.
//!
//! ```
//! use msp_synth::{layout, World, WorldConfig, WorldSpec};
//!
//! let config = WorldConfig {
//!     train_images: 12,
//!     val_images: 4,
//!     test_images: 4,
//!     retrieval_test_images: 4,
//!     feature_dim: 16,
//!     ..WorldConfig::default()
//! };
//! let spec = WorldSpec { preset: "doc".into(), seed: 7, config };
//! let tmp = tempfile::tempdir()?;
//! let world = World::generate(tmp.path().join("w"), &spec, &mut |_| {})?;
//!
//! let store = msp_features::FeatureStore::open(world.path(&layout::store("train")))?;
//! assert_eq!(store.len(), 12);
//! assert_eq!(store.feature_dim(), 16);
//! let vqa = msp_text::read_vqa(world.path(layout::VQA[0]))?;
//! assert!(!vqa.is_empty());
//! assert!(world.manifest().files.contains_key("vocab.txt"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod baseline;
mod config;
mod detector;
mod error;
mod lexicon;
mod questions;
mod rng;
mod scene;
mod text;
mod vocab;
mod world;

pub use baseline::TaskBaseline;
pub use config::WorldConfig;
pub use error::SynthError;
pub use vocab::world_words;
pub use world::{
    image_id, layout, FileEntry, Progress, World, WorldManifest, WorldSpec, GENERATOR_VERSION,
    MANIFEST_FILE,
};

#[cfg(test)]
mod tests;
