//! Generates the `smoke` preset and reads every file back with the project's own loaders.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use msp_features::{FeatureStore, HardNegativePool, TsvReader};
use msp_synth::{layout, SynthError, World, WorldConfig, WorldSpec};
use msp_text::{
    downstream::{read_gqa_checked, read_vqa_checked},
    for_each_vg_image, read_coco_captions, read_flickr30k, read_lxmert_pretrain, read_nlvr2,
    AnswerVocab, BertTokenizer, LabelVocab, PhraseBuilder, PositionMode, VerbLexicon,
};

fn presets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/presets")
}

fn smoke_spec(seed: u64) -> WorldSpec {
    WorldSpec {
        preset: "smoke".into(),
        seed,
        config: WorldConfig::from_preset(&presets(), "smoke").expect("smoke preset"),
    }
}

struct Shared {
    _tmp: tempfile::TempDir,
    a: World,
    b: World,
    c: World,
}

/// Two worlds with seed 1 and one with seed 2, generated once for all tests.
fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a =
            World::generate(tmp.path().join("a"), &smoke_spec(1), &mut |_| {}).expect("generate a");
        let b =
            World::generate(tmp.path().join("b"), &smoke_spec(1), &mut |_| {}).expect("generate b");
        let c =
            World::generate(tmp.path().join("c"), &smoke_spec(2), &mut |_| {}).expect("generate c");
        Shared { _tmp: tmp, a, b, c }
    })
}

#[test]
fn same_seed_is_byte_identical_and_other_seed_differs() {
    let s = shared();
    let ma = std::fs::read(s.a.path("world.json")).expect("a");
    let mb = std::fs::read(s.b.path("world.json")).expect("b");
    assert_eq!(
        ma, mb,
        "world.json differs between two runs with the same seed"
    );
    // world.json holds every file's hash; check the bytes themselves too.
    for rel in s.a.manifest().files.keys() {
        let x = std::fs::read(s.a.path(rel)).expect("read a");
        let y = std::fs::read(s.b.path(rel)).expect("read b");
        assert!(x == y, "{rel} differs");
    }
    s.a.verify().expect("hashes match");
    let mc = s.c.manifest();
    let differing =
        s.a.manifest()
            .files
            .iter()
            .filter(|(k, v)| mc.files.get(*k) != Some(v))
            .count();
    // Only the seed-independent vocabularies and store indexes (ids, width) may coincide.
    let same: Vec<&String> =
        s.a.manifest()
            .files
            .iter()
            .filter(|(k, v)| mc.files.get(*k) == Some(v))
            .map(|(k, _)| k)
            .collect();
    assert!(differing > 20, "seed 2 differs in only {differing} files");
    for k in same {
        assert!(
            k.ends_with("vocab.txt") || k.ends_with("/index.json"),
            "{k} is identical across seeds"
        );
    }
}

#[test]
fn manifest_lists_sizes_and_files() {
    let w = &shared().a;
    let m = w.manifest();
    assert_eq!(m.generator, msp_synth::GENERATOR_VERSION);
    assert_eq!(m.seed, 1);
    assert_eq!(m.preset, "smoke");
    assert_eq!(m.sizes["images/train"], 32);
    assert_eq!(m.sizes["images/val"], 8);
    assert_eq!(m.sizes["images/test"], 8);
    for rel in [
        layout::VOCAB,
        layout::OBJECTS_VOCAB,
        layout::CAPTIONS_TRAIN,
        layout::LXMERT_TRAIN,
        layout::VG_REGIONS,
        layout::VQA_ANS2LABEL,
        layout::GQA[2],
        layout::NLVR2[0],
        layout::FLICKR_TEST,
        layout::HARD_NEGATIVES,
        "features/train_obj36.tsv",
        "features/train/index.json",
    ] {
        let e = m
            .files
            .get(rel)
            .unwrap_or_else(|| panic!("{rel} not in world.json"));
        assert_eq!(e.sha256.len(), 64);
        assert_eq!(
            std::fs::metadata(w.path(rel)).expect("exists").len(),
            e.bytes
        );
    }
    assert!(!m.files.contains_key("world.json"));
    // No temporary files left behind.
    for rel in m.files.keys() {
        assert!(!rel.contains(".tmp"), "{rel}");
    }
}

#[test]
fn features_tsv_and_stores_read_back() {
    let w = &shared().a;
    let labels = LabelVocab::read(w.path(layout::OBJECTS_VOCAB)).expect("objects vocab");
    let attrs = LabelVocab::read(w.path(layout::ATTRIBUTES_VOCAB)).expect("attributes vocab");
    assert!(labels.len() >= 100, "{} object labels", labels.len());
    assert_eq!(attrs.len(), 40);
    let mut n = 0;
    for rec in TsvReader::open(w.path(&layout::tsv("train"))).expect("open tsv") {
        let rec = rec.expect("record");
        assert_eq!(rec.num_boxes(), 36);
        assert_eq!(rec.feature_dim(), 64);
        assert!(rec.objects_id.iter().all(|&i| (i as usize) < labels.len()));
        assert!(rec.attrs_id.iter().all(|&i| (i as usize) < attrs.len()));
        n += 1;
    }
    assert_eq!(n, 32);
    for (split, len) in [("train", 32), ("val", 8), ("test", 8)] {
        let store = FeatureStore::open(w.path(&layout::store(split))).expect("store");
        assert_eq!(store.len(), len);
        assert_eq!(store.feature_dim(), 64);
        let img = store.image(0).expect("image");
        assert_eq!(img.boxes.len(), 36);
        assert!(img
            .boxes
            .iter()
            .all(|b| b.iter().all(|v| (0.0..=1.0).contains(v))));
    }
    let train = FeatureStore::open(w.path(&layout::store("train"))).expect("store");
    assert_eq!(train.ids()[0], "1000000");
    let test = FeatureStore::open(w.path(&layout::store("test"))).expect("store");
    assert_eq!(test.ids()[0], "1000040");
}

#[test]
fn feature_directions_carry_the_category() {
    // A nearest-class-mean classifier on train regions, tested on val regions, must recover
    // the detector's true-label signal far above chance (categories are strong directions).
    let w = &shared().a;
    let train = FeatureStore::open(w.path(&layout::store("train"))).expect("store");
    let val = FeatureStore::open(w.path(&layout::store("val"))).expect("store");
    let d = train.feature_dim();
    let mut sums: BTreeMap<i64, (Vec<f64>, usize)> = BTreeMap::new();
    for row in 0..train.len() {
        let img = train.image(row).expect("image");
        for (k, &label) in img.objects_id.iter().enumerate() {
            if img.objects_conf[k] > 0.7 {
                let e = sums.entry(label).or_insert_with(|| (vec![0.0; d], 0));
                for (s, x) in e.0.iter_mut().zip(&img.features[k * d..(k + 1) * d]) {
                    *s += *x as f64;
                }
                e.1 += 1;
            }
        }
    }
    let means: Vec<(i64, Vec<f64>)> = sums
        .into_iter()
        .map(|(l, (s, c))| (l, s.iter().map(|x| x / c as f64).collect()))
        .collect();
    let (mut hit, mut total) = (0, 0);
    for row in 0..val.len() {
        let img = val.image(row).expect("image");
        for (k, &label) in img.objects_id.iter().enumerate() {
            if img.objects_conf[k] <= 0.7 || !means.iter().any(|m| m.0 == label) {
                continue;
            }
            let f = &img.features[k * d..(k + 1) * d];
            let best = means
                .iter()
                .map(|(l, m)| {
                    (
                        l,
                        m.iter()
                            .zip(f)
                            .map(|(a, b)| (a - *b as f64).powi(2))
                            .sum::<f64>(),
                    )
                })
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|x| *x.0);
            total += 1;
            if best == Some(label) {
                hit += 1;
            }
        }
    }
    let acc = hit as f32 / total as f32;
    assert!(
        total > 50 && acc > 0.5,
        "nearest-mean accuracy {acc} over {total} regions"
    );
}

#[test]
fn captions_and_pretraining_json_read_back() {
    let w = &shared().a;
    let coco = read_coco_captions(w.path(layout::CAPTIONS_TRAIN)).expect("captions");
    assert_eq!(coco.images.len(), 32);
    assert_eq!(coco.annotations.len(), 32 * 5);
    let by = coco.by_image();
    assert!(by.values().all(|c| c.len() == 5));
    let val = read_coco_captions(w.path(layout::CAPTIONS_VAL)).expect("captions val");
    assert_eq!(val.images.len(), 8);
    let lx = read_lxmert_pretrain(w.path(layout::LXMERT_TRAIN)).expect("lxmert");
    assert_eq!(lx.len(), 32);
    for e in &lx {
        assert_eq!(e.sentf["mscoco"].len(), 5);
        assert_eq!(e.sentf["vqa"].len(), e.labelf["vqa"].len());
    }
    let mini = read_lxmert_pretrain(w.path(layout::LXMERT_MINIVAL)).expect("minival");
    assert_eq!(mini.len(), 8);
    // The world's tokenizer covers all caption words without [UNK].
    let tok = BertTokenizer::from_vocab_file(w.path(layout::VOCAB)).expect("vocab");
    for a in coco.annotations.iter().take(60) {
        let enc = tok
            .encode(&a.caption, 40, PositionMode::Word)
            .expect("encode");
        assert!(
            !enc.input_ids.contains(&tok.unk_id),
            "[UNK] in {}",
            a.caption
        );
    }
}

#[test]
fn vg_phrases_through_the_verb_filter() {
    let w = &shared().a;
    let lexicon = VerbLexicon::load_default().expect("verb lexicon");
    let (mut total, mut dropped, mut images) = (0usize, 0usize, 0usize);
    for_each_vg_image(w.path(layout::VG_REGIONS), |img| {
        images += 1;
        for r in &img.regions {
            total += 1;
            if lexicon.phrase_has_verb(&r.phrase) {
                dropped += 1;
            }
        }
        let builder = PhraseBuilder {
            lexicon: &lexicon,
            max_words: 64,
        };
        let phrases: Vec<&str> = img.regions.iter().map(|r| r.phrase.as_str()).collect();
        let text = builder.build(&phrases);
        assert!(!text.is_empty());
        Ok(())
    })
    .expect("vg");
    assert_eq!(images, 40);
    let frac = dropped as f32 / total as f32;
    assert!(dropped > 0, "no phrase was dropped by the verb filter");
    assert!(frac < 0.3, "{dropped} of {total} phrases dropped");
    let sizes = &w.manifest().sizes;
    assert_eq!(sizes["vg/phrases"], total);
    assert_eq!(sizes["vg/phrases_with_verbs"], dropped);
}

#[test]
fn downstream_sets_read_back() {
    let w = &shared().a;
    let vocab = AnswerVocab::read(w.path(layout::VQA_ANS2LABEL), w.path(layout::VQA_LABEL2ANS))
        .expect("vqa vocab");
    let train = read_vqa_checked(w.path(layout::VQA[0]), Some(&vocab)).expect("vqa train");
    let minival = read_vqa_checked(w.path(layout::VQA[1]), Some(&vocab)).expect("vqa minival");
    let test = msp_text::read_vqa(w.path(layout::VQA[2])).expect("vqa test");
    assert_eq!(train.len(), 32 * 6);
    assert_eq!(minival.len(), 8 * 6);
    assert_eq!(test.len(), 8 * 6);
    let types: HashSet<&str> = train.iter().map(|q| q.answer_type.as_str()).collect();
    assert_eq!(types.len(), 3, "{types:?}");
    let ids: HashSet<u64> = train
        .iter()
        .chain(&minival)
        .chain(&test)
        .map(|q| q.question_id)
        .collect();
    assert_eq!(
        ids.len(),
        train.len() + minival.len() + test.len(),
        "question ids are unique"
    );

    let gvocab = AnswerVocab::read(w.path(layout::GQA_ANS2LABEL), w.path(layout::GQA_LABEL2ANS))
        .expect("gqa vocab");
    let g = read_gqa_checked(w.path(layout::GQA[0]), Some(&gvocab)).expect("gqa");
    assert!(g.len() > 32 * 4);
    assert!(g
        .iter()
        .all(|q| q.label.len() == 1 && q.label.values().all(|s| *s == 1.0)));
    let testdev = msp_text::read_gqa(w.path(layout::GQA[2])).expect("gqa testdev");
    assert!(!testdev.is_empty());

    let train_ids: HashSet<String> = (0..32).map(msp_synth::image_id).collect();
    let n = read_nlvr2(w.path(layout::NLVR2[0])).expect("nlvr2");
    // 64 statements drawn, each written for two pairs; the few with no counterpart are dropped.
    assert!((100..=128).contains(&n.len()), "{} examples", n.len());
    assert_eq!(n.len() % 2, 0);
    assert!(n
        .iter()
        .all(|e| train_ids.contains(&e.img0) && train_ids.contains(&e.img1) && e.img0 != e.img1));
    // NLVR2's design: every sentence comes with a true and a false image pair (identifiers
    // `train-K-0-0` and `train-K-1-0`), so the sentence alone does not tell the label.
    for (k, two) in n.chunks(2).enumerate() {
        assert_eq!(two[0].identifier, format!("train-{k}-0-0"));
        assert_eq!(two[1].identifier, format!("train-{k}-1-0"));
        assert_eq!(two[0].sent, two[1].sent);
        assert_ne!(two[0].label, two[1].label, "{}", two[0].sent);
        assert_ne!((&two[0].img0, &two[0].img1), (&two[1].img0, &two[1].img1));
    }
    let by_sentence = n
        .iter()
        .fold(BTreeMap::<&str, [usize; 2]>::new(), |mut m, e| {
            m.entry(e.sent.as_str()).or_default()[usize::from(e.label)] += 1;
            m
        });
    assert!(
        by_sentence.values().all(|c| c[0] == c[1]),
        "{by_sentence:?}"
    );

    let ft = read_flickr30k(w.path(layout::FLICKR_TRAIN)).expect("flickr train");
    let fte = read_flickr30k(w.path(layout::FLICKR_TEST)).expect("flickr test");
    assert_eq!(ft.len(), 32);
    assert_eq!(fte.len(), 8);
    assert!(fte.iter().all(|e| e.sentences.len() == 5));
    assert_eq!(fte[0].image_number(), Some(1_000_040));

    let pool = HardNegativePool::read_json(w.path(layout::HARD_NEGATIVES)).expect("hard negatives");
    assert_eq!(pool.image_ids.len(), 32);
    assert_eq!(pool.pool.len(), 32);
    assert!(pool.pool.iter().all(|p| p.len() == 31));
}

#[test]
fn answers_need_the_image() {
    let m = shared().a.manifest();
    let find = |task: &str, split: &str, metric: &str| {
        m.baselines
            .iter()
            .find(|b| b.task == task && b.split == split && b.metric == metric)
            .unwrap_or_else(|| panic!("no baseline for {task} {split} {metric}"))
    };
    for (task, split, metric) in [
        ("vqa", "minival", "vqa soft score"),
        ("vqa", "test", "vqa soft score"),
        ("gqa", "valid", "accuracy"),
        ("gqa", "testdev", "accuracy"),
        ("nlvr2", "valid", "accuracy"),
        ("nlvr2", "test", "accuracy"),
        ("flickr30k IR", "test", "recall@1"),
        ("flickr30k TR", "test", "recall@1"),
    ] {
        let b = find(task, split, metric);
        assert!(b.examples > 0);
        assert!(
            b.oracle > b.text_only + 0.25,
            "{task} {split}: text-only {} vs oracle {}",
            b.text_only,
            b.oracle
        );
    }
    assert!(find("vqa", "minival", "vqa soft score").oracle > 0.9);
    assert!(find("nlvr2", "valid", "accuracy").oracle == 1.0);
    // Each sentence is in a split once true and once false, so any answer that depends on the
    // text alone is right on exactly half.
    for split in ["valid", "test"] {
        assert_eq!(find("nlvr2", split, "accuracy").text_only, 0.5, "{split}");
    }
}

#[test]
fn reuse_and_refusal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("w");
    let spec = WorldSpec {
        preset: "mini".into(),
        seed: 5,
        config: WorldConfig {
            train_images: 6,
            val_images: 2,
            test_images: 2,
            retrieval_test_images: 2,
            feature_dim: 8,
            ..WorldConfig::default()
        },
    };
    let mut calls = 0;
    World::open_or_generate(&dir, &spec, &mut |_| calls += 1).expect("generate");
    assert!(calls > 0);
    let before = std::fs::read(dir.join("world.json")).expect("manifest");
    let mut calls2 = 0;
    let w = World::open_or_generate(&dir, &spec, &mut |_| calls2 += 1).expect("reuse");
    assert_eq!(calls2, 0, "a complete world is reused, not regenerated");
    assert_eq!(
        std::fs::read(w.path("world.json")).expect("manifest"),
        before
    );

    let other = WorldSpec {
        seed: 6,
        ..spec.clone()
    };
    assert!(matches!(
        World::open_or_generate(&dir, &other, &mut |_| {}),
        Err(SynthError::Mismatch { .. })
    ));
    assert!(matches!(
        World::generate(&dir, &spec, &mut |_| {}),
        Err(SynthError::Mismatch { .. })
    ));

    // A directory without a manifest (e.g. someone else's) is refused, not overwritten.
    let junk = tmp.path().join("junk");
    std::fs::create_dir_all(&junk).expect("mkdir");
    assert!(matches!(
        World::open_or_generate(&junk, &spec, &mut |_| {}),
        Err(SynthError::Io { .. })
    ));

    // A truncated file is noticed on open.
    let f = dir.join(layout::VQA[0]);
    let text = std::fs::read(&f).expect("read");
    std::fs::write(&f, &text[..text.len() / 2]).expect("truncate");
    assert!(matches!(World::open(&dir), Err(SynthError::Corrupt { .. })));

    // Bad knobs are refused before anything is written.
    let bad = WorldSpec {
        config: WorldConfig {
            min_objects: 0,
            ..spec.config.clone()
        },
        ..spec
    };
    let err = World::generate(tmp.path().join("bad"), &bad, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("min_objects"), "{err}");
    assert!(!tmp.path().join("bad").exists());
}
