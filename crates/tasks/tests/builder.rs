//! The batch builder and loss assembly on a tiny feature store, tokenizer and model.

// Reference values are computed with explicit index loops on purpose.
#![allow(clippy::needless_range_loop)]

use candle_core::{DType, Device, Tensor};
use msp_features::{
    convert, ConvertOptions, FeatureStore, HardNegativePool, StoreDtype, TsvRecord, TsvWriter,
};
use msp_model::{Config, Lxmert, Variant};
use msp_tasks::{
    compute_losses, Batch, BatchBuilder, BuilderConfig, Example, FeatLoss, LossConfig, MocRegions,
    PairSource, PreferredWords, Task, TaskSet, IGNORE_LABEL,
};
use msp_text::{write_vocab_file, BertTokenizer, LabelVocab};

const D: usize = 16;
const LABELS: [&str; 10] = [
    "dog",
    "cat",
    "man",
    "tree",
    "car",
    "hat",
    "ball",
    "grass",
    "sky",
    "traffic light",
];

struct World {
    _dir: tempfile::TempDir,
    store: FeatureStore,
    tok: BertTokenizer,
    labels: LabelVocab,
}

/// Six images; image i has 6 boxes (image 5: 4) with object labels (i + j) % 10.
fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("tiny_obj36.tsv");
    let mut w = TsvWriter::create(&tsv).unwrap();
    for i in 0..6usize {
        let n = if i == 5 { 4 } else { 6 };
        w.write(&TsvRecord {
            img_id: format!("img{i}"),
            img_h: 100,
            img_w: 100,
            objects_id: (0..n).map(|j| ((i + j) % 10) as i64).collect(),
            objects_conf: (0..n).map(|j| 0.5 + 0.05 * j as f32).collect(),
            attrs_id: (0..n).map(|j| ((i * 3 + j) % 6) as i64).collect(),
            attrs_conf: vec![0.4; n],
            boxes: (0..n)
                .map(|j| [j as f32, 0.0, 10.0 + j as f32, 20.0])
                .collect(),
            features: (0..n * D)
                .map(|k| ((i * 131 + k * 7) % 23) as f32 / 10.0)
                .collect(),
        })
        .unwrap();
    }
    w.finish().unwrap();
    let out = dir.path().join("store");
    convert(
        &ConvertOptions {
            tsv: vec![tsv],
            out: out.clone(),
            dtype: StoreDtype::F32,
            skip_bad: false,
        },
        |_| {},
    )
    .unwrap();
    let vocab = dir.path().join("vocab.txt");
    let mut words: Vec<String> = "a the and near on with two red big of traffic light"
        .split(' ')
        .map(String::from)
        .collect();
    words.extend(LABELS.iter().map(|s| s.to_string()));
    write_vocab_file(&vocab, &words).unwrap();
    World {
        store: FeatureStore::open(&out).unwrap(),
        tok: BertTokenizer::from_vocab_file(&vocab).unwrap(),
        labels: LabelVocab::from_labels(LABELS.iter().map(|s| s.to_string()).collect()).unwrap(),
        _dir: dir,
    }
}

fn examples() -> Vec<Example> {
    [
        ("a dog and a cat near the tree", 0),
        ("two men with big hats", 2),
        ("a red car on the grass", 3),
        ("the sky", 5),
    ]
    .iter()
    .map(|(t, r)| Example {
        text: t.to_string(),
        image_row: *r,
    })
    .collect()
}

fn cfg(tasks: TaskSet) -> BuilderConfig {
    let mut c = BuilderConfig::new(tasks);
    c.max_len = 12;
    c.pad_regions_to = None;
    c
}

fn all_tensors(b: &Batch) -> Vec<Vec<f32>> {
    let mut v = vec![];
    let mut push = |t: &Tensor| {
        v.push(
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        )
    };
    for t in [
        &b.input_ids,
        &b.position_ids,
        &b.visual_feats,
        &b.visual_pos,
        &b.targets.feat_mask,
    ] {
        push(t);
    }
    for t in [
        &b.targets.mlm_labels,
        &b.targets.topic,
        &b.targets.itm_labels,
    ]
    .into_iter()
    .flatten()
    {
        push(t);
    }
    if let Some(i) = &b.targets.ifrs {
        push(&i.perm);
    }
    v
}

fn tiny_model(w: &World) -> (Config, Lxmert) {
    let mut c = Config::tiny();
    c.vocab_size = w.tok.vocab_size();
    c.visual_feat_dim = D;
    c.cls_token_id = w.tok.cls_id as usize;
    c.hidden_dropout_prob = 0.0;
    c.attention_probs_dropout_prob = 0.0;
    let m = Lxmert::new(&c, Variant::LxmertS, 3, &Device::Cpu).unwrap();
    (c, m)
}

#[test]
fn same_seed_same_batch_and_resume() {
    let w = world();
    let dev = Device::Cpu;
    let tasks = "MLM,MRFR,MOC,IFRS,TITS,ITM-HS".parse::<TaskSet>().unwrap();
    let mk = |seed| {
        BatchBuilder::new(
            cfg(tasks.clone()),
            &w.tok,
            &w.store,
            Some(&w.labels),
            None,
            seed,
        )
        .unwrap()
    };
    let mut a = mk(7);
    let mut b = mk(7);
    let a0 = all_tensors(&a.next_batch(&examples(), &dev).unwrap());
    let a1 = all_tensors(&a.next_batch(&examples(), &dev).unwrap());
    assert_eq!(a0, all_tensors(&b.next_batch(&examples(), &dev).unwrap()));
    assert_ne!(a0, a1, "consecutive batches must differ");
    // Resume from a saved state (serialised as JSON) reproduces the next batch.
    let saved = serde_json::to_string(&b.state()).unwrap();
    let mut c = mk(0);
    c.restore(serde_json::from_str(&saved).unwrap());
    assert_eq!(c.state().batches_drawn, 1);
    assert_eq!(a1, all_tensors(&c.next_batch(&examples(), &dev).unwrap()));
    assert_eq!(
        a1,
        all_tensors(&mk(7).build_at(&examples(), 1, &dev).unwrap())
    );
    assert_ne!(
        a0,
        all_tensors(&mk(8).build_at(&examples(), 0, &dev).unwrap())
    );
}

#[test]
fn batch_contents_are_consistent() {
    let w = world();
    let dev = Device::Cpu;
    let tasks = TaskSet::sentence_stage().without(&[Task::ItmHs]);
    let tasks = TaskSet::new(tasks.iter().chain([Task::Itm, Task::Ifrs])).unwrap();
    let mut bld =
        BatchBuilder::new(cfg(tasks), &w.tok, &w.store, Some(&w.labels), None, 1).unwrap();
    let ex = examples();
    let (mut negatives, mut masked_on_neg, mut padded_batches) = (0, 0, 0);
    for _ in 0..30 {
        let b = bld.next_batch(&ex, &dev).unwrap();
        // Image 5 has 4 boxes, the others 6: padding iff image 5 is fed with another one.
        let five = b.image_rows.contains(&5);
        assert_eq!(b.has_padding, five && b.image_rows.iter().any(|&r| r != 5));
        padded_batches += usize::from(b.has_padding);
        let itm: Vec<u32> = b.targets.itm_labels.as_ref().unwrap().to_vec1().unwrap();
        let mask: Vec<Vec<f32>> = b.region_mask.to_vec2().unwrap();
        let fm: Vec<Vec<f32>> = b.targets.feat_mask.to_vec2().unwrap();
        let labels: Vec<Vec<i64>> = b.targets.mlm_labels.as_ref().unwrap().to_vec2().unwrap();
        let perm: Vec<Vec<u32>> = b.targets.ifrs.as_ref().unwrap().perm.to_vec2().unwrap();
        let orig: Vec<Vec<Vec<f32>>> = b.targets.features.to_vec3().unwrap();
        let fed: Vec<Vec<Vec<f32>>> = b.visual_feats.to_vec3().unwrap();
        for i in 0..ex.len() {
            let p = b.pairings[i];
            assert_eq!(itm[i], u32::from(p.source == PairSource::Matched));
            assert_eq!(b.image_rows[i], p.image_row);
            if itm[i] == 0 {
                assert_ne!(p.image_row, ex[i].image_row, "negative is the own image");
                negatives += 1;
                masked_on_neg += labels[i].iter().filter(|&&l| l != IGNORE_LABEL).count();
            } else {
                assert_eq!(p.image_row, ex[i].image_row);
            }
            let real = w.store.num_boxes(p.image_row).unwrap();
            for j in 0..mask[i].len() {
                assert_eq!(mask[i][j], f32::from(j < real));
                if j >= real {
                    assert_eq!(fm[i][j], 0.0, "padding masked");
                    assert_eq!(perm[i][j], j as u32, "padding shuffled");
                }
                if fm[i][j] == 0.0 {
                    assert_eq!(fed[i][j], orig[i][j], "unmasked region changed");
                }
            }
            // The MRFR target is the fed image's own stored feature.
            let img = w.store.image(p.image_row).unwrap();
            assert_eq!(orig[i][0], img.features[..D].to_vec());
        }
    }
    assert!(negatives > 20, "{negatives} negatives in 120 examples");
    assert!(masked_on_neg > 0, "MLM must stay on mismatched pairs");
    assert!(padded_batches > 0);
}

#[test]
fn topic_targets_are_text_and_image_labels() {
    let w = world();
    let dev = Device::Cpu;
    let tasks = TaskSet::phrase_stage();
    let bld = BatchBuilder::new(cfg(tasks), &w.tok, &w.store, Some(&w.labels), None, 5).unwrap();
    let b = bld.build_at(&examples(), 0, &dev).unwrap();
    let topic: Vec<Vec<f32>> = b.targets.topic.unwrap().to_vec2().unwrap();
    let ones = |row: &Vec<f32>| -> Vec<u32> {
        (0..row.len() as u32)
            .filter(|&i| row[i as usize] == 1.0)
            .collect()
    };
    let id = |s: &str| w.tok.token_id(s).unwrap();
    // Image 0: labels 0..5 = dog cat man tree car hat; text "a dog and a cat near the tree".
    let mut want = vec![id("dog"), id("cat"), id("tree")];
    want.sort();
    assert_eq!(ones(&topic[0]), want);
    // Image 2: labels 2..7 = man tree car hat ball grass; "two men with big hats" → man, hat.
    let mut want = vec![id("man"), id("hat")];
    want.sort();
    assert_eq!(ones(&topic[1]), want);
    // Image 3: labels 3..8 = tree car hat ball grass sky; "a red car on the grass".
    let mut want = vec![id("car"), id("grass")];
    want.sort();
    assert_eq!(ones(&topic[2]), want);
    // Image 5: labels 5..8 = hat ball grass sky; "the sky".
    assert_eq!(ones(&topic[3]), vec![id("sky")]);
    assert_eq!(b.stats.empty_topics, 0);
    // Without object labels the builder refuses a topic task.
    assert!(BatchBuilder::new(
        cfg(TaskSet::phrase_stage()),
        &w.tok,
        &w.store,
        None,
        None,
        5
    )
    .is_err());
}

#[test]
fn hard_negatives_come_from_the_pool_rows() {
    let w = world();
    let dev = Device::Cpu;
    // Every image's only hard neighbour is the next image.
    let pool = HardNegativePool {
        image_ids: w.store.ids().to_vec(),
        pool: (0..6).map(|i| vec![(i + 1) % 6]).collect(),
    };
    let mut c = cfg(TaskSet::sentence_stage());
    c.itm.prob = 1.0;
    let bld = BatchBuilder::new(c, &w.tok, &w.store, Some(&w.labels), Some(&pool), 2).unwrap();
    let b = bld.build_at(&examples(), 0, &dev).unwrap();
    for (e, p) in examples().iter().zip(&b.pairings) {
        assert_eq!(p.source, PairSource::Hard);
        assert_eq!(p.image_row, (e.image_row + 1) % 6);
    }
    assert_eq!(b.stats.hard_negatives, 4);
    // An empty pool falls back to random other images.
    let empty = HardNegativePool {
        image_ids: vec![],
        pool: vec![],
    };
    let mut c = cfg(TaskSet::sentence_stage());
    c.itm.prob = 1.0;
    let bld = BatchBuilder::new(c, &w.tok, &w.store, Some(&w.labels), Some(&empty), 2).unwrap();
    let b = bld.build_at(&examples(), 0, &dev).unwrap();
    for (e, p) in examples().iter().zip(&b.pairings) {
        assert_eq!(p.source, PairSource::Random);
        assert_ne!(p.image_row, e.image_row);
    }
}

#[test]
fn preferred_words_raise_their_masking_rate() {
    let w = world();
    let dev = Device::Cpu;
    let mut c = cfg(TaskSet::new([Task::Mlm]).unwrap());
    c.mlm.prob = 0.0;
    c.mlm.preferred_prob = 1.0;
    let bld = BatchBuilder::new(c, &w.tok, &w.store, None, None, 2)
        .unwrap()
        .with_preferred_words(PreferredWords::new(&["red", "car"]));
    let b = bld.build_at(&examples(), 0, &dev).unwrap();
    let labels: Vec<Vec<i64>> = b.targets.mlm_labels.unwrap().to_vec2().unwrap();
    let sel: Vec<i64> = labels[2].iter().copied().filter(|&l| l >= 0).collect();
    assert_eq!(
        sel,
        vec![
            w.tok.token_id("red").unwrap() as i64,
            w.tok.token_id("car").unwrap() as i64
        ]
    );
    assert!(labels[0].iter().all(|&l| l == IGNORE_LABEL));
}

/// LXMERT's reduction of the visual losses, in f64 loops over host copies.
fn visual_reference(
    b: &Batch,
    feat: &[Vec<Vec<f32>>],
    obj: &[Vec<Vec<f32>>],
    attr: &[Vec<Vec<f32>>],
) -> (f64, f64) {
    let tg = &b.targets;
    let orig: Vec<Vec<Vec<f32>>> = tg.features.to_vec3().unwrap();
    let fm: Vec<Vec<f32>> = tg.feat_mask.to_vec2().unwrap();
    let rm: Vec<Vec<f32>> = b.region_mask.to_vec2().unwrap();
    let ol: Vec<Vec<u32>> = tg.obj_labels.to_vec2().unwrap();
    let oc: Vec<Vec<f32>> = tg.obj_conf.to_vec2().unwrap();
    let al: Vec<Vec<u32>> = tg.attr_labels.to_vec2().unwrap();
    let ac: Vec<Vec<f32>> = tg.attr_conf.to_vec2().unwrap();
    let ce = |row: &[f32], y: u32| -> f64 {
        let m = row.iter().fold(f64::MIN, |a, &x| a.max(f64::from(x)));
        let lse = m + row
            .iter()
            .map(|&x| (f64::from(x) - m).exp())
            .sum::<f64>()
            .ln();
        lse - f64::from(row[y as usize])
    };
    let (mut mrfr, mut moc, mut count) = (0.0, 0.0, 0.0);
    for i in 0..rm.len() {
        for j in 0..rm[i].len() {
            if rm[i][j] == 0.0 {
                continue;
            }
            count += 1.0;
            let mut per = 0.0;
            for k in 0..D {
                let d = f64::from(feat[i][j][k] - orig[i][j][k]);
                per += if d.abs() < 1.0 {
                    0.5 * d * d
                } else {
                    d.abs() - 0.5
                };
            }
            mrfr += per / D as f64 * f64::from(fm[i][j]);
            moc += f64::from(oc[i][j]) * ce(&obj[i][j], ol[i][j])
                + f64::from(ac[i][j]) * ce(&attr[i][j], al[i][j]);
        }
    }
    (mrfr / count / 0.15, moc / count / 0.15)
}

#[test]
fn losses_on_a_real_forward() {
    let w = world();
    let dev = Device::Cpu;
    let (_, model) = tiny_model(&w);
    let m = model.model();
    let tasks = "MLM,MRFR,MOC,IFRS,TITS,ITM".parse::<TaskSet>().unwrap();
    let mut c = cfg(tasks.clone());
    c.regions.prob = 0.5; // make sure some regions are masked
    c.ifrs.p_shuffle = 1.0;
    let bld = BatchBuilder::new(c, &w.tok, &w.store, Some(&w.labels), None, 4).unwrap();
    let b = bld.build_at(&examples(), 0, &dev).unwrap();
    assert!(b.stats.masked_regions > 0 && b.stats.shuffled_triplets > 0);
    let out = m.forward_t(&b.inputs(), true).unwrap();
    let losses = compute_losses(m, &out, &b, &LossConfig::default()).unwrap();
    let keys: Vec<Task> = losses.per_task.keys().copied().collect();
    assert_eq!(keys, tasks.iter().collect::<Vec<_>>());
    let mut sum = 0.0;
    for (t, l) in &losses.per_task {
        let v: f32 = l.loss.to_scalar().unwrap();
        assert!(v.is_finite() && v > 0.0, "{t}: {v}");
        sum += f64::from(v);
    }
    let total: f32 = losses.total.to_scalar().unwrap();
    assert!((f64::from(total) - sum).abs() < 1e-4 * sum.max(1.0));
    // Weights scale their task's term of the total only (ITM-HS is not in the set: no
    // effect); the per-task values stay unweighted.
    let weighted = LossConfig {
        weights: [(Task::Itm, 5.0), (Task::Moc, 0.5), (Task::ItmHs, 9.0)].into(),
        ..LossConfig::default()
    };
    let wl = compute_losses(m, &out, &b, &weighted).unwrap();
    let v = |t: Task| f64::from(losses.per_task[&t].loss.to_scalar::<f32>().unwrap());
    let want = sum + 4.0 * v(Task::Itm) - 0.5 * v(Task::Moc);
    let got_total = f64::from(wl.total.to_scalar::<f32>().unwrap());
    assert!(
        (got_total - want).abs() < 1e-4 * want.max(1.0),
        "{got_total} vs {want}"
    );
    assert_eq!(
        wl.per_task[&Task::Itm].loss.to_scalar::<f32>().unwrap(),
        losses.per_task[&Task::Itm].loss.to_scalar::<f32>().unwrap()
    );
    assert!(losses.per_task[&Task::Mrfr].accuracy.is_none());
    let acc = losses.per_task[&Task::Itm].accuracy.unwrap();
    assert!((0.0..=1.0).contains(&acc));

    // The visual losses agree with explicit f64 loops over the head outputs.
    let vis = m.visual_predictions(&out).unwrap();
    let feat: Vec<Vec<Vec<f32>>> = vis.feat.as_ref().unwrap().to_vec3().unwrap();
    // IFRS: squared error at shuffled positions against the pre-shuffle stored feature of
    // that position (read back from the store, not from the batch).
    let plan = &b.targets.ifrs.as_ref().unwrap().plan;
    let n = plan.regions;
    let (mut ifrs, mut cnt) = (0.0f64, 0.0f64);
    for (i, &row) in b.image_rows.iter().enumerate() {
        let img = w.store.image(row).unwrap();
        for j in 0..n {
            if plan.shuffled[i * n + j] == 1 {
                cnt += 1.0;
                let t = &img.features[j * D..(j + 1) * D];
                ifrs += (0..D)
                    .map(|k| f64::from(feat[i][j][k] - t[k]).powi(2))
                    .sum::<f64>()
                    / D as f64;
            }
        }
    }
    ifrs /= cnt;
    let (mrfr, moc) = visual_reference(
        &b,
        &feat,
        &vis.obj.unwrap().to_vec3().unwrap(),
        &vis.attr.unwrap().to_vec3().unwrap(),
    );
    let got = |t: Task| f64::from(losses.per_task[&t].loss.to_scalar::<f32>().unwrap());
    assert!(
        (got(Task::Mrfr) - mrfr).abs() < 1e-4 * mrfr.max(1.0),
        "{} vs {mrfr}",
        got(Task::Mrfr)
    );
    assert!(
        (got(Task::Moc) - moc).abs() < 1e-4 * moc.max(1.0),
        "{} vs {moc}",
        got(Task::Moc)
    );
    assert!(
        (got(Task::Ifrs) - ifrs).abs() < 1e-4 * ifrs.max(1.0),
        "{} vs {ifrs}",
        got(Task::Ifrs)
    );

    // Every trainable variable used by these heads gets a gradient through the total.
    let grads = losses.total.backward().unwrap();
    for (name, var) in model.named_vars() {
        if name.starts_with("answer_head") {
            continue; // QA is not an MSP task
        }
        let g = grads
            .get(&var)
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}");
    }
}

#[test]
fn nothing_to_predict_gives_exact_zero_losses() {
    let w = world();
    let dev = Device::Cpu;
    let (_, model) = tiny_model(&w);
    let m = model.model();
    let tasks = "MLM,MRFR,MOC,IFRS,TITP".parse::<TaskSet>().unwrap();
    let mut c = cfg(tasks);
    c.mlm.prob = 0.0;
    c.regions.prob = 0.0;
    c.ifrs.p_shuffle = 0.0;
    let bld = BatchBuilder::new(c, &w.tok, &w.store, Some(&w.labels), None, 4).unwrap();
    // Texts that share no word with any image label: empty topics.
    let ex: Vec<Example> = (0..3)
        .map(|i| Example {
            text: "the big red a".into(),
            image_row: i,
        })
        .collect();
    let b = bld.build_at(&ex, 0, &dev).unwrap();
    assert_eq!(b.stats.empty_topics, 3);
    assert_eq!(
        (
            b.stats.masked_tokens,
            b.stats.masked_regions,
            b.stats.shuffled_triplets
        ),
        (0, 0, 0)
    );
    let out = m.forward_t(&b.inputs(), false).unwrap();
    for moc in [MocRegions::All, MocRegions::MaskedOnly] {
        let lc = LossConfig {
            feat_loss: FeatLoss::L2,
            moc_regions: moc,
            ..LossConfig::default()
        };
        let l = compute_losses(m, &out, &b, &lc).unwrap();
        let v = |t: Task| l.per_task[&t].loss.to_scalar::<f32>().unwrap();
        assert_eq!(v(Task::Mlm), 0.0);
        assert!(l.per_task[&Task::Mlm].accuracy.is_none());
        assert_eq!(v(Task::Mrfr), 0.0);
        assert_eq!(v(Task::Ifrs), 0.0);
        match moc {
            MocRegions::All => assert!(v(Task::Moc) > 0.0),
            MocRegions::MaskedOnly => assert_eq!(v(Task::Moc), 0.0),
        }
        // Empty topic: an all-zero target, BCE still finite and positive.
        let topic = v(Task::Titp);
        assert!(topic.is_finite() && topic > 0.0);
        assert!(l.total.to_scalar::<f32>().unwrap().is_finite());
    }
}

#[test]
fn bad_examples_are_errors() {
    let w = world();
    let bld =
        BatchBuilder::new(cfg(TaskSet::token_stage()), &w.tok, &w.store, None, None, 0).unwrap();
    let bad = [Example {
        text: "a dog".into(),
        image_row: 99,
    }];
    assert!(matches!(
        bld.build_at(&bad, 0, &Device::Cpu),
        Err(msp_tasks::TaskError::Example { index: 0, .. })
    ));
    assert!(bld.build_at(&[], 0, &Device::Cpu).is_err());
}
