//! Generation of a whole world directory, its manifest (`world.json`) and reuse of a complete
//! one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use msp_features::{
    convert, ConvertOptions, FeatureStore, HardNegativePool, StoreDtype, TsvRecord, TsvWriter,
};
use msp_text::downstream::{write_flickr30k, write_gqa, write_nlvr2, write_vqa};
use msp_text::{
    write_coco_captions, write_lxmert_pretrain, write_vg_regions, write_vocab_file, AnswerVocab,
    CocoAnnotation, CocoCaptions, CocoImage, GqaQuestion, Nlvr2Example, PretrainEntry,
    RetrievalEntry, VgImage, VgRegion, VqaQuestion,
};
use rand::Rng as _;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::baseline::{recall_at, text_only_score, QaItem, TaskBaseline};
use crate::config::WorldConfig;
use crate::detector::{detect, DetectorMap, Region};
use crate::error::{io_err, SynthError};
use crate::lexicon::Lexicon;
use crate::questions::{
    annotate, counterpart_pair, gqa_questions, pair_presence, presence, statement, vqa_questions,
    Question,
};
use crate::rng::{rng_for, Stream};
use crate::scene::{Scene, Spatial};
use crate::text::{caption, phrases, Fact};

/// Version of the generator; part of the identity of a world (a change of the generator
/// that changes output must bump it).
pub const GENERATOR_VERSION: &str = "msp-synth/3";

/// Name of the manifest file inside a world directory.
pub const MANIFEST_FILE: &str = "world.json";

/// What to generate: preset name (recorded), seed and knobs.
#[derive(Clone, Debug, PartialEq)]
pub struct WorldSpec {
    /// Preset name, recorded in the manifest (informational).
    pub preset: String,
    /// The world seed.
    pub seed: u64,
    /// The knobs.
    pub config: WorldConfig,
}

/// A progress report: `done` of `total` units of the named stage.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// Stage name ("scenes", "features train", "text", "convert", …).
    pub stage: &'a str,
    /// Units done.
    pub done: u64,
    /// Units in the stage.
    pub total: u64,
}

/// One file of a world: size and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// The manifest `world.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldManifest {
    /// [`GENERATOR_VERSION`] of the generator that wrote the world.
    pub generator: String,
    /// The seed.
    pub seed: u64,
    /// The preset name.
    pub preset: String,
    /// The knobs.
    pub config: WorldConfig,
    /// Record counts per data set and split (e.g. `"vqa/train"`, `"images/test"`).
    pub sizes: BTreeMap<String, usize>,
    /// Every file (relative path with `/`) except the manifest itself.
    pub files: BTreeMap<String, FileEntry>,
    /// Text-only baseline and scene-graph oracle per downstream task and eval split.
    pub baselines: Vec<TaskBaseline>,
}

/// Relative paths of everything a world contains.
pub mod layout {
    /// BERT-style vocabulary of the world's words.
    pub const VOCAB: &str = "vocab.txt";
    /// Detector object labels, one per line (id = line index).
    pub const OBJECTS_VOCAB: &str = "objects_vocab.txt";
    /// Detector attribute labels, one per line.
    pub const ATTRIBUTES_VOCAB: &str = "attributes_vocab.txt";
    /// Split names of images, region TSVs and feature stores.
    pub const SPLITS: [&str; 3] = ["train", "val", "test"];
    /// LXMERT TSV of a split: `features/<split>_obj36.tsv`.
    pub fn tsv(split: &str) -> String {
        format!("features/{split}_obj36.tsv")
    }
    /// Feature store of a split: `features/<split>`.
    pub fn store(split: &str) -> String {
        format!("features/{split}")
    }
    /// COCO captions (train images).
    pub const CAPTIONS_TRAIN: &str = "coco/captions_train.json";
    /// COCO captions (val images).
    pub const CAPTIONS_VAL: &str = "coco/captions_val.json";
    /// LXMERT pre-training JSON (train images: captions + VQA questions).
    pub const LXMERT_TRAIN: &str = "lxmert/mscoco_train.json";
    /// LXMERT pre-training JSON (val images).
    pub const LXMERT_MINIVAL: &str = "lxmert/mscoco_minival.json";
    /// Visual Genome region descriptions (train and val images).
    pub const VG_REGIONS: &str = "vg/region_descriptions.json";
    /// VQA splits.
    pub const VQA: [&str; 3] = ["vqa/train.json", "vqa/minival.json", "vqa/test.json"];
    /// VQA answer vocabulary.
    pub const VQA_ANS2LABEL: &str = "vqa/trainval_ans2label.json";
    /// VQA answer list.
    pub const VQA_LABEL2ANS: &str = "vqa/trainval_label2ans.json";
    /// GQA splits.
    pub const GQA: [&str; 3] = ["gqa/train.json", "gqa/valid.json", "gqa/testdev.json"];
    /// GQA answer vocabulary.
    pub const GQA_ANS2LABEL: &str = "gqa/trainval_ans2label.json";
    /// GQA answer list.
    pub const GQA_LABEL2ANS: &str = "gqa/trainval_label2ans.json";
    /// NLVR2 splits.
    pub const NLVR2: [&str; 3] = ["nlvr2/train.json", "nlvr2/valid.json", "nlvr2/test.json"];
    /// Flickr30k-style retrieval, train (all train images).
    pub const FLICKR_TRAIN: &str = "flickr30k/flickr30k_train2014.json";
    /// Flickr30k-style retrieval, test (the first `retrieval_test_images` test images).
    pub const FLICKR_TEST: &str = "flickr30k/flickr30k_test2014.json";
    /// ViLBERT-style hard-negative pool over the train store (msp-features JSON).
    pub const HARD_NEGATIVES: &str = "flickr30k/hard_negative.json";
}

/// A complete world on disk.
#[derive(Clone, Debug)]
pub struct World {
    dir: PathBuf,
    manifest: WorldManifest,
}

/// Image id of global image index `i` (a decimal integer, as VG/GQA/Flickr ids are).
pub fn image_id(i: usize) -> String {
    (image_number(i)).to_string()
}

fn image_number(i: usize) -> u64 {
    1_000_000 + i as u64
}

/// Template index, claim and image indices of one written NLVR2 statement.
type StatementMeta = (usize, crate::questions::Claim, usize, usize);

/// Everything generated in memory before writing.
struct Generated {
    scenes: Vec<Scene>,
    regions: Vec<Vec<Region>>,
    captions: Vec<Vec<(String, Vec<Fact>)>>,
    retrieval: Vec<Vec<(String, Vec<Fact>)>>,
    phrases: Vec<Vec<crate::text::Phrase>>,
    vqa: Vec<Vec<(Question, BTreeMap<String, f32>)>>,
    gqa: Vec<Vec<Question>>,
}

fn split_range(cfg: &WorldConfig, split: usize) -> std::ops::Range<usize> {
    let a = cfg.train_images;
    let b = a + cfg.val_images;
    match split {
        0 => 0..a,
        1 => a..b,
        _ => b..b + cfg.test_images,
    }
}

impl World {
    /// The world's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &WorldManifest {
        &self.manifest
    }

    /// Absolute path of a relative path of [`layout`].
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Opens a complete world: reads `world.json` and checks every listed file exists with
    /// its recorded size (hashes are checked by [`World::verify`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<World, SynthError> {
        let dir = dir.as_ref().to_path_buf();
        let mpath = dir.join(MANIFEST_FILE);
        let text = std::fs::read(&mpath).map_err(io_err(&mpath))?;
        let manifest: WorldManifest =
            serde_json::from_slice(&text).map_err(|source| SynthError::Json {
                path: mpath.clone(),
                source,
            })?;
        for (rel, entry) in &manifest.files {
            let p = dir.join(rel);
            let meta = std::fs::metadata(&p).map_err(io_err(&p))?;
            if meta.len() != entry.bytes {
                return Err(SynthError::Corrupt {
                    path: p,
                    message: format!(
                        "size {} differs from the recorded {}",
                        meta.len(),
                        entry.bytes
                    ),
                });
            }
        }
        Ok(World { dir, manifest })
    }

    /// Recomputes every file's SHA-256 and compares it with the manifest.
    pub fn verify(&self) -> Result<(), SynthError> {
        for (rel, entry) in &self.manifest.files {
            let p = self.dir.join(rel);
            let (bytes, sha) = hash_file(&p)?;
            if bytes != entry.bytes || sha != entry.sha256 {
                return Err(SynthError::Corrupt {
                    path: p,
                    message: "content differs from world.json".into(),
                });
            }
        }
        Ok(())
    }

    /// Reuses `dir` when it holds a complete world of the same generator version, seed and
    /// knobs; generates it when `dir` does not exist; refuses any other directory.
    pub fn open_or_generate(
        dir: impl AsRef<Path>,
        spec: &WorldSpec,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<World, SynthError> {
        let dir = dir.as_ref();
        if dir.exists() {
            let world = World::open(dir)?;
            let m = &world.manifest;
            let reason = if m.generator != GENERATOR_VERSION {
                Some(format!("generator {} ≠ {GENERATOR_VERSION}", m.generator))
            } else if m.seed != spec.seed {
                Some(format!("seed {} ≠ {}", m.seed, spec.seed))
            } else if m.config != spec.config {
                Some(format!(
                    "the [world] knobs differ from preset {}",
                    spec.preset
                ))
            } else {
                None
            };
            return match reason {
                Some(reason) => Err(SynthError::Mismatch {
                    path: dir.to_path_buf(),
                    reason,
                }),
                None => Ok(world),
            };
        }
        World::generate(dir, spec, progress)
    }

    /// Generates a world into `dir` (which must not exist). Everything is written under a
    /// temporary sibling directory renamed to `dir` at the end, so an interrupted run never
    /// leaves a directory that looks complete.
    pub fn generate(
        dir: impl AsRef<Path>,
        spec: &WorldSpec,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<World, SynthError> {
        let dir = dir.as_ref().to_path_buf();
        spec.config
            .validate()
            .map_err(|message| SynthError::Preset {
                path: PathBuf::from(format!("<preset {}>", spec.preset)),
                message,
            })?;
        if dir.exists() {
            return Err(SynthError::Mismatch {
                path: dir,
                reason: "the directory already exists".into(),
            });
        }
        let tmp = msp_features::fresh_temp_sibling(&dir).map_err(io_err(&dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let result = write_world(&tmp, spec, progress).and_then(|manifest| {
            msp_features::pause_point("synth.world.rename");
            std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
            Ok(manifest)
        });
        match result {
            Ok(manifest) => Ok(World { dir, manifest }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }
}

fn hash_file(path: &Path) -> Result<(u64, String), SynthError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    let digest = h.finalize();
    Ok((total, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), SynthError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io_err(dir)))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            list_files(root, &p, out)?;
        } else {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(rel.join("/"));
        }
    }
    Ok(())
}

fn mkdirs(root: &Path) -> Result<(), SynthError> {
    for d in [
        "features",
        "coco",
        "lxmert",
        "vg",
        "vqa",
        "gqa",
        "nlvr2",
        "flickr30k",
    ] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    Ok(())
}

fn generate_in_memory(
    spec: &WorldSpec,
    lex: &Lexicon,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Generated {
    let cfg = &spec.config;
    let seed = spec.seed;
    let n = cfg.total_images();
    progress(Progress {
        stage: "scenes",
        done: 0,
        total: n as u64,
    });
    let scenes: Vec<Scene> = (0..n)
        .into_par_iter()
        .map(|i| Scene::generate(&mut rng_for(seed, Stream::Scene, i as u64), cfg, lex))
        .collect();
    let regions: Vec<Vec<Region>> = scenes
        .par_iter()
        .enumerate()
        .map(|(i, s)| detect(&mut rng_for(seed, Stream::Detector, i as u64), cfg, lex, s))
        .collect();
    progress(Progress {
        stage: "scenes",
        done: n as u64,
        total: n as u64,
    });
    progress(Progress {
        stage: "text",
        done: 0,
        total: n as u64,
    });
    let prior = presence(lex, &scenes);
    let captions = scenes
        .par_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut rng = rng_for(seed, Stream::Captions, i as u64);
            distinct(|| caption(&mut rng, cfg, lex, s), cfg.captions_per_image)
        })
        .collect();
    let retrieval = scenes
        .par_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut rng = rng_for(seed, Stream::RetrievalCaptions, i as u64);
            distinct(|| caption(&mut rng, cfg, lex, s), 5)
        })
        .collect();
    let phrases = scenes
        .par_iter()
        .enumerate()
        .map(|(i, s)| phrases(&mut rng_for(seed, Stream::Phrases, i as u64), cfg, lex, s))
        .collect();
    let vqa = scenes
        .par_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut rng = rng_for(seed, Stream::Vqa, i as u64);
            let qs = vqa_questions(&mut rng, cfg, lex, &prior, s, cfg.vqa_per_image);
            qs.into_iter()
                .map(|q| {
                    let label = annotate(&mut rng, cfg, &q);
                    (q, label)
                })
                .collect()
        })
        .collect();
    let gqa = scenes
        .par_iter()
        .enumerate()
        .map(|(i, s)| {
            gqa_questions(
                &mut rng_for(seed, Stream::Gqa, i as u64),
                cfg,
                lex,
                &prior,
                s,
                cfg.gqa_per_image,
            )
        })
        .collect();
    progress(Progress {
        stage: "text",
        done: n as u64,
        total: n as u64,
    });
    Generated {
        scenes,
        regions,
        captions,
        retrieval,
        phrases,
        vqa,
        gqa,
    }
}

/// Draws `n` captions, avoiding exact repeats where the scene allows.
fn distinct(mut draw: impl FnMut() -> (String, Vec<Fact>), n: usize) -> Vec<(String, Vec<Fact>)> {
    let mut out: Vec<(String, Vec<Fact>)> = Vec::with_capacity(n);
    let mut tries = 0;
    while out.len() < n {
        let c = draw();
        tries += 1;
        if tries > 10 * n || out.iter().all(|x| x.0 != c.0) {
            out.push(c);
        }
    }
    out
}

fn write_features(
    root: &Path,
    spec: &WorldSpec,
    lex: &Lexicon,
    gen: &Generated,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(), SynthError> {
    let cfg = &spec.config;
    let map = DetectorMap::new(&mut rng_for(spec.seed, Stream::DetectorMap, 0), cfg, lex);
    let total = cfg.total_images() as u64;
    let mut done = 0u64;
    for (s, split) in layout::SPLITS.iter().enumerate() {
        let path = root.join(layout::tsv(split));
        let mut writer = TsvWriter::create(&path)?;
        let range = split_range(cfg, s);
        let idx: Vec<usize> = range.collect();
        for chunk in idx.chunks(32) {
            let records: Vec<TsvRecord> = chunk
                .par_iter()
                .map(|&i| {
                    let scene = &gen.scenes[i];
                    let regs = &gen.regions[i];
                    let mut rng = rng_for(spec.seed, Stream::Features, i as u64);
                    let d = cfg.feature_dim;
                    let mut features = vec![0f32; regs.len() * d];
                    for (r, out) in regs.iter().zip(features.chunks_mut(d)) {
                        map.features(
                            &mut rng,
                            cfg,
                            r,
                            scene.width as f32,
                            scene.height as f32,
                            out,
                        );
                    }
                    TsvRecord {
                        img_id: image_id(i),
                        img_h: scene.height,
                        img_w: scene.width,
                        objects_id: regs.iter().map(|r| r.obj_label as i64).collect(),
                        objects_conf: regs.iter().map(|r| r.obj_conf).collect(),
                        attrs_id: regs.iter().map(|r| r.attr_label as i64).collect(),
                        attrs_conf: regs.iter().map(|r| r.attr_conf).collect(),
                        boxes: regs.iter().map(|r| r.bbox).collect(),
                        features,
                    }
                })
                .collect();
            for r in &records {
                writer.write(r)?;
            }
            done += chunk.len() as u64;
            progress(Progress {
                stage: "features",
                done,
                total,
            });
        }
        writer.finish()?;
    }
    let dtype = if cfg.store_dtype == "f32" {
        StoreDtype::F32
    } else {
        StoreDtype::F16
    };
    for split in layout::SPLITS {
        let stage = format!("convert {split}");
        let opts = ConvertOptions {
            tsv: vec![root.join(layout::tsv(split))],
            out: root.join(layout::store(split)),
            dtype,
            skip_bad: false,
        };
        progress(Progress {
            stage: &stage,
            done: 0,
            total: 1,
        });
        convert(&opts, |_| {})?;
        progress(Progress {
            stage: &stage,
            done: 1,
            total: 1,
        });
        if !cfg.keep_tsv {
            let p = root.join(layout::tsv(split));
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

fn write_world(
    root: &Path,
    spec: &WorldSpec,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<WorldManifest, SynthError> {
    let cfg = &spec.config;
    let lex = Lexicon::new(cfg.thing_categories, cfg.attributes);
    std::fs::create_dir_all(root).map_err(io_err(root))?;
    mkdirs(root)?;
    let gen = generate_in_memory(spec, &lex, progress);
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();

    // Vocabularies.
    write_vocab_file(root.join(layout::VOCAB), &crate::vocab::world_words())?;
    let labels: Vec<&str> = (0..lex.num_categories()).map(|c| lex.label(c)).collect();
    write_lines(&root.join(layout::OBJECTS_VOCAB), &labels)?;
    let attrs: Vec<&str> = (0..lex.num_attributes())
        .map(|a| lex.attr_word(a))
        .collect();
    write_lines(&root.join(layout::ATTRIBUTES_VOCAB), &attrs)?;
    msp_features::pause_point("synth.world.vocab");
    sizes.insert("labels/objects".into(), labels.len());
    sizes.insert("labels/attributes".into(), attrs.len());

    for (s, split) in layout::SPLITS.iter().enumerate() {
        sizes.insert(format!("images/{split}"), split_range(cfg, s).len());
    }

    // COCO captions and LXMERT pre-training JSON.
    for (s, path, lx_path) in [
        (0, layout::CAPTIONS_TRAIN, layout::LXMERT_TRAIN),
        (1, layout::CAPTIONS_VAL, layout::LXMERT_MINIVAL),
    ] {
        let range = split_range(cfg, s);
        let mut images = Vec::new();
        let mut annotations = Vec::new();
        let mut entries = Vec::new();
        for i in range {
            let sc = &gen.scenes[i];
            let num = image_number(i);
            images.push(CocoImage {
                id: num,
                file_name: format!("{num}.jpg"),
                height: Some(sc.height),
                width: Some(sc.width),
            });
            for (k, (c, _)) in gen.captions[i].iter().enumerate() {
                annotations.push(CocoAnnotation {
                    image_id: num,
                    id: num * 10 + k as u64,
                    caption: c.clone(),
                });
            }
            let mut sentf = BTreeMap::new();
            let mut labelf = BTreeMap::new();
            sentf.insert(
                "mscoco".to_string(),
                gen.captions[i].iter().map(|c| c.0.clone()).collect(),
            );
            sentf.insert(
                "vqa".to_string(),
                gen.vqa[i].iter().map(|q| q.0.sent.clone()).collect(),
            );
            labelf.insert(
                "vqa".to_string(),
                gen.vqa[i].iter().map(|q| q.1.clone()).collect(),
            );
            entries.push(PretrainEntry {
                img_id: image_id(i),
                sentf,
                labelf,
            });
        }
        sizes.insert(
            path.trim_end_matches(".json").to_string(),
            annotations.len(),
        );
        sizes.insert(lx_path.trim_end_matches(".json").to_string(), entries.len());
        write_coco_captions(
            root.join(path),
            &CocoCaptions {
                images,
                annotations,
            },
        )?;
        write_lxmert_pretrain(root.join(lx_path), &entries)?;
    }

    // Visual Genome region descriptions (train + val images).
    let mut vg = Vec::new();
    let mut n_phrases = 0;
    for i in 0..cfg.train_images + cfg.val_images {
        let num = image_number(i);
        let regions = gen.phrases[i]
            .iter()
            .enumerate()
            .map(|(k, p)| VgRegion {
                region_id: num * 100 + k as u64,
                image_id: num,
                phrase: p.text.clone(),
                x: p.bbox[0].round() as i64,
                y: p.bbox[1].round() as i64,
                width: (p.bbox[2] - p.bbox[0]).round() as i64,
                height: (p.bbox[3] - p.bbox[1]).round() as i64,
            })
            .collect::<Vec<_>>();
        n_phrases += regions.len();
        vg.push(VgImage { id: num, regions });
    }
    sizes.insert("vg/images".into(), vg.len());
    sizes.insert("vg/phrases".into(), n_phrases);
    // How many phrases the phrase stage's verb filter (msp-text, committed lexicon) drops.
    let verbs = msp_text::VerbLexicon::load_default()?;
    let with_verb = vg
        .iter()
        .flat_map(|im| &im.regions)
        .filter(|r| verbs.phrase_has_verb(&r.phrase))
        .count();
    sizes.insert("vg/phrases_with_verbs".into(), with_verb);
    write_vg_regions(root.join(layout::VG_REGIONS), &vg)?;

    // VQA.
    let mut vqa_sets: Vec<Vec<VqaQuestion>> = Vec::new();
    for (s, path) in layout::VQA.iter().enumerate() {
        let mut qs = Vec::new();
        for i in split_range(cfg, s) {
            for (k, (q, label)) in gen.vqa[i].iter().enumerate() {
                qs.push(VqaQuestion {
                    question_id: image_number(i) * 100 + k as u64,
                    img_id: image_id(i),
                    sent: q.sent.clone(),
                    label: label.clone(),
                    answer_type: q.answer_type.to_string(),
                    question_type: q.question_type.clone(),
                });
            }
        }
        sizes.insert(path.trim_end_matches(".json").to_string(), qs.len());
        write_vqa(root.join(path), &qs)?;
        vqa_sets.push(qs);
    }
    let vqa_vocab = answer_vocab(vqa_sets[..2].iter().flatten().map(|q| &q.label))?;
    vqa_vocab.write(
        root.join(layout::VQA_ANS2LABEL),
        root.join(layout::VQA_LABEL2ANS),
    )?;
    sizes.insert("vqa/answers".into(), vqa_vocab.len());

    // GQA.
    let mut gqa_sets: Vec<Vec<GqaQuestion>> = Vec::new();
    let mut gqa_types: Vec<Vec<String>> = Vec::new();
    for (s, path) in layout::GQA.iter().enumerate() {
        let mut qs = Vec::new();
        let mut types = Vec::new();
        for i in split_range(cfg, s) {
            for (k, q) in gen.gqa[i].iter().enumerate() {
                let mut label = BTreeMap::new();
                label.insert(q.answer.clone(), 1.0f32);
                qs.push(GqaQuestion {
                    question_id: format!("{}{:02}", image_number(i), k),
                    img_id: image_id(i),
                    sent: q.sent.clone(),
                    label,
                });
                types.push(q.question_type.clone());
            }
        }
        sizes.insert(path.trim_end_matches(".json").to_string(), qs.len());
        write_gqa(root.join(path), &qs)?;
        gqa_sets.push(qs);
        gqa_types.push(types);
    }
    let gqa_vocab = answer_vocab(gqa_sets[..2].iter().flatten().map(|q| &q.label))?;
    gqa_vocab.write(
        root.join(layout::GQA_ANS2LABEL),
        root.join(layout::GQA_LABEL2ANS),
    )?;
    sizes.insert("gqa/answers".into(), gqa_vocab.len());

    // NLVR2: each statement is written for two image pairs of opposite truth (NLVR2 pairs
    // every sentence with images that make it true and false), so its text alone says nothing.
    let lex_ref = &lex;
    let mut nlvr2_sets: Vec<(Vec<Nlvr2Example>, Vec<StatementMeta>)> = Vec::new();
    let split_names = ["train", "dev", "test"];
    for (s, path) in layout::NLVR2.iter().enumerate() {
        let range: Vec<usize> = split_range(cfg, s).collect();
        let count = (range.len() as f32 * cfg.nlvr2_per_image).round() as usize;
        let mut pair_rng = rng_for(spec.seed, Stream::Pairs, s as u64);
        let pairs: Vec<(usize, usize, bool)> = (0..count.div_ceil(2))
            .map(|_| {
                let a = range[pair_rng.random_range(0..range.len())];
                let cats = gen.scenes[a].categories();
                let mut b = a;
                for t in 0..6 {
                    let cand = range[pair_rng.random_range(0..range.len())];
                    if cand == a {
                        continue;
                    }
                    b = cand;
                    if t < 5
                        && gen.scenes[cand]
                            .categories()
                            .iter()
                            .any(|c| cats.contains(c))
                    {
                        break;
                    }
                }
                if b == a {
                    b = range[(range.iter().position(|&x| x == a).unwrap_or(0) + 1) % range.len()];
                }
                (a, b, pair_rng.random::<bool>())
            })
            .collect();
        let scene_pairs: Vec<(&Scene, &Scene)> = pairs
            .iter()
            .map(|&(a, b, _)| (&gen.scenes[a], &gen.scenes[b]))
            .collect();
        let pair_prior = pair_presence(&lex, &scene_pairs);
        let base = s as u64 * 10_000_000;
        let stmts: Vec<Option<(crate::questions::Statement, (usize, usize))>> = pairs
            .par_iter()
            .enumerate()
            .map(|(k, &(a, b, want))| {
                let mut rng = rng_for(spec.seed, Stream::Nlvr2, base + k as u64);
                let st = statement(
                    &mut rng,
                    cfg,
                    lex_ref,
                    &pair_prior,
                    &gen.scenes[a],
                    &gen.scenes[b],
                    want,
                )?;
                let other =
                    counterpart_pair(&mut rng, &gen.scenes, &range, &st.claim, (a, b), !want)?;
                Some((st, other))
            })
            .collect();
        let mut examples = Vec::new();
        let mut templates = Vec::new();
        for ((a, b, _), found) in pairs.iter().zip(stmts) {
            let Some((st, (c, d))) = found else { continue };
            let k = templates.len() / 2;
            for (p, (x, y), label) in [(0, (*a, *b), st.label), (1, (c, d), !st.label)] {
                examples.push(Nlvr2Example {
                    identifier: format!("{}-{k}-{p}-0", split_names[s]),
                    img0: image_id(x),
                    img1: image_id(y),
                    sent: st.sent.clone(),
                    label: u8::from(label),
                    uid: format!("nlvr2_{}_{}", split_names[s], examples.len()),
                });
                templates.push((st.template, st.claim, x, y));
            }
        }
        sizes.insert(path.trim_end_matches(".json").to_string(), examples.len());
        write_nlvr2(root.join(path), &examples)?;
        nlvr2_sets.push((examples, templates));
    }

    // Flickr30k-style retrieval.
    let flickr = |range: std::ops::Range<usize>| -> Vec<RetrievalEntry> {
        range
            .map(|i| RetrievalEntry {
                img_path: format!("{}.jpg", image_number(i)),
                sentences: gen.retrieval[i].iter().map(|c| c.0.clone()).collect(),
            })
            .collect()
    };
    let train = flickr(split_range(cfg, 0));
    let test_start = split_range(cfg, 2).start;
    let test_range = test_start..test_start + cfg.retrieval_test_images;
    let test = flickr(test_range.clone());
    sizes.insert("flickr30k/train".into(), train.len());
    sizes.insert("flickr30k/test".into(), test.len());
    write_flickr30k(root.join(layout::FLICKR_TRAIN), &train)?;
    write_flickr30k(root.join(layout::FLICKR_TEST), &test)?;

    // Features, stores and hard negatives.
    write_features(root, spec, &lex, &gen, progress)?;
    let store = FeatureStore::open(root.join(layout::store("train")))?;
    let top = cfg.hard_negatives.min(store.len().saturating_sub(1)).max(1);
    progress(Progress {
        stage: "hard negatives",
        done: 0,
        total: 1,
    });
    let pool = HardNegativePool::compute(&store, top)?;
    drop(store);
    pool.write_json(root.join(layout::HARD_NEGATIVES))?;
    progress(Progress {
        stage: "hard negatives",
        done: 1,
        total: 1,
    });

    // Baselines.
    let mut baselines = Vec::new();
    let vqa_items = |qs: &[VqaQuestion]| -> Vec<(String, String, BTreeMap<String, f32>)> {
        qs.iter()
            .map(|q| (q.sent.clone(), q.question_type.clone(), q.label.clone()))
            .collect()
    };
    let vqa_truth: Vec<Vec<String>> = (0..3)
        .map(|s| {
            split_range(cfg, s)
                .flat_map(|i| gen.vqa[i].iter().map(|q| q.0.answer.clone()))
                .collect()
        })
        .collect();
    let train_items = vqa_items(&vqa_sets[0]);
    for s in 1..3 {
        let eval = vqa_items(&vqa_sets[s]);
        let oracle = mean(
            eval.iter()
                .zip(&vqa_truth[s])
                .map(|(q, t)| q.2.get(t).copied().unwrap_or(0.0)),
        );
        baselines.push(TaskBaseline {
            task: "vqa".into(),
            split: ["train", "minival", "test"][s].into(),
            examples: eval.len(),
            metric: "vqa soft score".into(),
            text_only: qa_baseline(&train_items, &eval),
            oracle,
        });
    }
    let gqa_items = |s: usize| -> Vec<(String, String, BTreeMap<String, f32>)> {
        gqa_sets[s]
            .iter()
            .zip(&gqa_types[s])
            .map(|(q, t)| (q.sent.clone(), t.clone(), q.label.clone()))
            .collect()
    };
    let gqa_train = gqa_items(0);
    for s in 1..3 {
        let eval = gqa_items(s);
        let truth: Vec<String> = split_range(cfg, s)
            .flat_map(|i| gen.gqa[i].iter().map(|q| q.answer.clone()))
            .collect();
        let oracle = mean(
            eval.iter()
                .zip(&truth)
                .map(|(q, t)| q.2.get(t).copied().unwrap_or(0.0)),
        );
        baselines.push(TaskBaseline {
            task: "gqa".into(),
            split: ["train", "valid", "testdev"][s].into(),
            examples: eval.len(),
            metric: "accuracy".into(),
            text_only: qa_baseline(&gqa_train, &eval),
            oracle,
        });
    }
    let nlvr2_items = |s: usize| -> Vec<(String, String, BTreeMap<String, f32>)> {
        let (ex, tpl) = &nlvr2_sets[s];
        ex.iter()
            .zip(tpl)
            .map(|(e, t)| {
                let mut label = BTreeMap::new();
                label.insert(if e.label == 1 { "true" } else { "false" }.to_string(), 1.0);
                (e.sent.clone(), t.0.to_string(), label)
            })
            .collect()
    };
    let nlvr2_train = nlvr2_items(0);
    for s in 1..3 {
        let eval = nlvr2_items(s);
        // The oracle evaluates each statement's claim on the two true scene graphs.
        let (ex, meta) = &nlvr2_sets[s];
        let oracle = mean(ex.iter().zip(meta).map(|(e, (_, claim, a, b))| {
            let said = claim.holds(&gen.scenes[*a], &gen.scenes[*b]);
            if u8::from(said) == e.label {
                1.0
            } else {
                0.0
            }
        }));
        baselines.push(TaskBaseline {
            task: "nlvr2".into(),
            split: ["train", "valid", "test"][s].into(),
            examples: eval.len(),
            metric: "accuracy".into(),
            text_only: qa_baseline(&nlvr2_train, &eval),
            oracle,
        });
    }
    let rows: Vec<usize> = test_range.collect();
    baselines.extend(retrieval_oracle(&lex, &gen, &rows));
    sizes.insert("captions/per_image".into(), cfg.captions_per_image);

    // Manifest.
    let mut files = Vec::new();
    list_files(root, root, &mut files)?;
    progress(Progress {
        stage: "hash",
        done: 0,
        total: files.len() as u64,
    });
    let hashed: Vec<Result<(String, FileEntry), SynthError>> = files
        .par_iter()
        .map(|rel| {
            let (bytes, sha256) = hash_file(&root.join(rel))?;
            Ok((rel.clone(), FileEntry { bytes, sha256 }))
        })
        .collect();
    let mut file_map = BTreeMap::new();
    for h in hashed {
        let (k, v) = h?;
        file_map.insert(k, v);
    }
    progress(Progress {
        stage: "hash",
        done: files.len() as u64,
        total: files.len() as u64,
    });
    let manifest = WorldManifest {
        generator: GENERATOR_VERSION.into(),
        seed: spec.seed,
        preset: spec.preset.clone(),
        config: cfg.clone(),
        sizes,
        files: file_map,
        baselines,
    };
    let mpath = root.join(MANIFEST_FILE);
    let mut text = serde_json::to_vec_pretty(&manifest).map_err(|source| SynthError::Json {
        path: mpath.clone(),
        source,
    })?;
    text.push(b'\n');
    std::fs::write(&mpath, text).map_err(io_err(&mpath))?;
    Ok(manifest)
}

fn mean(it: impl Iterator<Item = f32>) -> f32 {
    let (mut s, mut n) = (0.0f64, 0usize);
    for x in it {
        s += x as f64;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        (s / n as f64) as f32
    }
}

fn qa_baseline(
    train: &[(String, String, BTreeMap<String, f32>)],
    eval: &[(String, String, BTreeMap<String, f32>)],
) -> f32 {
    let t: Vec<QaItem<'_>> = train
        .iter()
        .map(|(s, q, l)| QaItem {
            sent: s,
            qtype: q,
            label: l,
        })
        .collect();
    let e: Vec<QaItem<'_>> = eval
        .iter()
        .map(|(s, q, l)| QaItem {
            sent: s,
            qtype: q,
            label: l,
        })
        .collect();
    text_only_score(&t, &e)
}

fn answer_vocab<'a>(
    labels: impl Iterator<Item = &'a BTreeMap<String, f32>>,
) -> Result<AnswerVocab, SynthError> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for l in labels {
        for a in l.keys() {
            *counts.entry(a.as_str()).or_default() += 1;
        }
    }
    let mut answers: Vec<(&str, usize)> = counts.into_iter().collect();
    answers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    Ok(AnswerVocab::new(
        answers.into_iter().map(|(a, _)| a.to_string()).collect(),
    )?)
}

/// Every fact that holds in a scene.
fn scene_facts(lex: &Lexicon, scene: &Scene) -> HashSet<Fact> {
    let mut f = HashSet::new();
    f.insert(Fact::Place(scene.scene_type));
    for c in scene.categories() {
        f.insert(Fact::Has(c));
        f.insert(Fact::Count(c, scene.count(c)));
    }
    for (i, o) in scene.objects.iter().enumerate() {
        for &a in &o.attrs {
            f.insert(Fact::HasAttr(o.cat, a));
        }
        for (j, p) in scene.objects.iter().enumerate() {
            for rel in Spatial::ALL {
                if scene.spatial(lex, rel, i, j) {
                    f.insert(Fact::Spatial(o.cat, rel, p.cat));
                }
            }
        }
    }
    for &(a, act, b) in &scene.actions {
        f.insert(Fact::Action(
            scene.objects[a].cat,
            act,
            scene.objects[b].cat,
        ));
    }
    f
}

/// Scene-graph oracle for retrieval: a caption's score for an image is the number of its
/// facts that hold there; recall is the expected recall under random tie-breaking. Image
/// retrieval uses all captions of each test image; text retrieval the first caption only
/// (LXMERT-S's protocol). The image-blind baseline is chance.
fn retrieval_oracle(lex: &Lexicon, gen: &Generated, rows: &[usize]) -> Vec<TaskBaseline> {
    let facts: Vec<HashSet<Fact>> = rows
        .iter()
        .map(|&i| scene_facts(lex, &gen.scenes[i]))
        .collect();
    let score = |cap: &[Fact], img: usize| -> usize {
        cap.iter().filter(|f| facts[img].contains(f)).count()
    };
    let n = rows.len();
    let ks = [1usize, 5, 10];
    // Image retrieval.
    let ir: Vec<[f32; 3]> = rows
        .par_iter()
        .enumerate()
        .flat_map_iter(|(gt, &i)| {
            gen.retrieval[i].iter().map(move |(_, cap)| {
                let s_gt = score(cap, gt);
                let (mut greater, mut ties) = (0, 0);
                for j in 0..n {
                    if j != gt {
                        let s = score(cap, j);
                        if s > s_gt {
                            greater += 1;
                        } else if s == s_gt {
                            ties += 1;
                        }
                    }
                }
                ks.map(|k| recall_at(greater, ties, k))
            })
        })
        .collect();
    // Text retrieval: each image ranks the first captions of all test images.
    let tr: Vec<[f32; 3]> = (0..n)
        .into_par_iter()
        .map(|img| {
            let s_gt = score(&gen.retrieval[rows[img]][0].1, img);
            let (mut greater, mut ties) = (0, 0);
            for (j, &r) in rows.iter().enumerate() {
                if j != img {
                    let s = score(&gen.retrieval[r][0].1, img);
                    if s > s_gt {
                        greater += 1;
                    } else if s == s_gt {
                        ties += 1;
                    }
                }
            }
            ks.map(|k| recall_at(greater, ties, k))
        })
        .collect();
    let mut out = Vec::new();
    for (name, vals, examples) in [
        ("flickr30k IR", &ir, ir.len()),
        ("flickr30k TR", &tr, tr.len()),
    ] {
        for (ki, k) in ks.iter().enumerate() {
            out.push(TaskBaseline {
                task: name.into(),
                split: "test".into(),
                examples,
                metric: format!("recall@{k}"),
                text_only: (*k as f32 / n as f32).min(1.0),
                oracle: mean(vals.iter().map(|v| v[ki])),
            });
        }
    }
    out
}

fn write_lines(path: &Path, lines: &[&str]) -> Result<(), SynthError> {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).map_err(io_err(path))
}
