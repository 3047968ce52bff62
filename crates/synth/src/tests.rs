//! Unit tests of the generators (scene invariants, text, questions, baselines, config).

use std::collections::BTreeMap;
use std::path::Path;

use crate::baseline::{recall_at, text_only_score, QaItem};
use crate::config::WorldConfig;
use crate::detector::{detect, Source};
use crate::lexicon::{plural, Lexicon, Super, ATTRIBUTES, CATEGORIES};
use crate::questions::{
    annotate, counterpart_pair, gqa_questions, pair_presence, presence, statement, vqa_questions,
    vqa_score,
};
use crate::rng::{rng_for, Stream};
use crate::scene::{Scene, Spatial};
use crate::text::{caption, phrases};
use crate::vocab::{basic_words, world_words};

fn cfg() -> WorldConfig {
    WorldConfig {
        feature_dim: 32,
        ..WorldConfig::default()
    }
}

fn scenes(n: usize, seed: u64) -> (WorldConfig, Lexicon, Vec<Scene>) {
    let c = cfg();
    let lex = Lexicon::new(c.thing_categories, c.attributes);
    let s = (0..n)
        .map(|i| Scene::generate(&mut rng_for(seed, Stream::Scene, i as u64), &c, &lex))
        .collect();
    (c, lex, s)
}

#[test]
fn lexicon_sizes_and_groups() {
    let things = CATEGORIES
        .iter()
        .filter(|c| !matches!(c.sup, Super::Stuff | Super::Part))
        .count();
    assert_eq!(things, 83);
    assert!(CATEGORIES.len() >= 100, "{} categories", CATEGORIES.len());
    assert_eq!(ATTRIBUTES.len(), 40);
    // Labels are unique (they are the detector vocabulary).
    let mut labels: Vec<&str> = CATEGORIES.iter().map(|c| c.words[0]).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), CATEGORIES.len());
    // A reduced lexicon keeps every group and all stuff/parts.
    let lex = Lexicon::new(14, 8);
    assert_eq!(lex.num_categories(), 14 + CATEGORIES.len() - things);
    assert_eq!(lex.num_attributes(), 8);
    for g in [
        Super::Person,
        Super::Animal,
        Super::Vehicle,
        Super::Furniture,
        Super::Food,
        Super::Clothing,
        Super::Thing,
    ] {
        assert_eq!(
            (0..lex.num_categories())
                .filter(|&c| lex.cat(c).sup == g)
                .count(),
            2,
            "{g:?}"
        );
    }
}

#[test]
fn plurals() {
    assert_eq!(plural("man"), "men");
    assert_eq!(plural("bus"), "buses");
    assert_eq!(plural("hot dog"), "hot dogs");
    assert_eq!(plural("bench"), "benches");
    assert_eq!(plural("sheep"), "sheep");
    assert_eq!(plural("knife"), "knives");
    assert_eq!(plural("car"), "cars");
}

#[test]
fn scenes_respect_the_knobs() {
    let (c, lex, all) = scenes(300, 1);
    let mut with_action = 0;
    let mut with_on = 0;
    for s in &all {
        assert!(
            s.objects.len() >= c.min_objects && s.objects.len() <= c.max_objects,
            "{}",
            s.objects.len()
        );
        for o in &s.objects {
            assert!(!o.attrs.is_empty() || lex.allowed[o.cat].is_empty());
            assert!(o.attrs.len() <= 2);
            let b = o.bbox;
            assert!(
                b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= s.width as f32 && b[3] <= s.height as f32
            );
            assert!(b[2] > b[0] && b[3] > b[1]);
            assert!(!matches!(lex.cat(o.cat).sup, Super::Stuff | Super::Part));
        }
        if !s.actions.is_empty() {
            with_action += 1;
        }
        let n = s.objects.len();
        if (0..n).any(|i| (0..n).any(|j| s.spatial(&lex, Spatial::On, i, j))) {
            with_on += 1;
        }
        for &(a, _, b) in &s.actions {
            assert_ne!(a, b);
        }
    }
    assert!(
        with_action > 150,
        "{with_action} of 300 scenes have an action"
    );
    assert!(
        with_on > 30,
        "{with_on} of 300 scenes have an `on` relation"
    );
}

#[test]
fn spatial_relations_follow_the_boxes() {
    let (_, lex, all) = scenes(50, 2);
    for s in &all {
        let n = s.objects.len();
        for i in 0..n {
            for j in 0..n {
                let l = s.spatial(&lex, Spatial::LeftOf, i, j);
                let r = s.spatial(&lex, Spatial::RightOf, j, i);
                assert_eq!(l, r, "left-of and right-of must be converse");
                if l {
                    assert!(s.objects[i].bbox[2] < s.objects[j].bbox[0]);
                }
            }
            assert!(!s.spatial(&lex, Spatial::Near, i, i));
        }
    }
}

#[test]
fn same_stream_same_scene_other_index_other_scene() {
    let (_, _, a) = scenes(5, 9);
    let (_, _, b) = scenes(5, 9);
    let (_, _, c) = scenes(5, 10);
    let key = |s: &Scene| {
        format!(
            "{:?}",
            (
                s.width,
                s.height,
                s.objects
                    .iter()
                    .map(|o| (o.cat, o.bbox))
                    .collect::<Vec<_>>()
            )
        )
    };
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(key(x), key(y));
    }
    assert!(a.iter().zip(&c).any(|(x, y)| key(x) != key(y)));
    assert_ne!(key(&a[0]), key(&a[1]));
}

#[test]
fn detector_regions() {
    let (c, lex, all) = scenes(100, 3);
    let (mut correct, mut total, mut attr_correct, mut attr_total) = (0, 0, 0, 0);
    let (mut conf_right, mut conf_wrong, mut n_right, mut n_wrong) = (0.0, 0.0, 0, 0);
    let mut kinds = [0usize; 4];
    for (i, s) in all.iter().enumerate() {
        let regions = detect(&mut rng_for(3, Stream::Detector, i as u64), &c, &lex, s);
        assert_eq!(regions.len(), 36);
        // Every object is a region.
        for k in 0..s.objects.len() {
            assert!(regions.iter().any(|r| r.source == Source::Object(k)));
        }
        for w in regions.windows(2) {
            assert!(
                w[0].obj_conf >= w[1].obj_conf,
                "regions are sorted by confidence"
            );
        }
        for r in &regions {
            kinds[match r.source {
                Source::Object(_) => 0,
                Source::Duplicate(_) => 1,
                Source::Part { .. } => 2,
                Source::Stuff(_) => 3,
            }] += 1;
            total += 1;
            if r.obj_label == r.cat {
                correct += 1;
                conf_right += r.obj_conf;
                n_right += 1;
            } else {
                assert_eq!(
                    lex.cat(r.obj_label).sup,
                    lex.cat(r.cat).sup,
                    "a wrong label is a confusable one"
                );
                conf_wrong += r.obj_conf;
                n_wrong += 1;
            }
            if !r.attrs.is_empty() {
                attr_total += 1;
                if r.attrs.contains(&r.attr_label) {
                    attr_correct += 1;
                }
            }
            assert!(r.obj_conf > 0.0 && r.obj_conf < 1.0 && r.attr_conf > 0.0 && r.attr_conf < 1.0);
            let b = r.bbox;
            assert!(
                b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= s.width as f32 && b[3] <= s.height as f32
            );
        }
    }
    let acc = correct as f32 / total as f32;
    assert!(
        (acc - c.object_label_accuracy).abs() < 0.05,
        "object label accuracy {acc}"
    );
    let attr_acc = attr_correct as f32 / attr_total as f32;
    assert!(
        attr_acc < 0.6 && attr_acc > 0.3,
        "attribute label accuracy {attr_acc}"
    );
    assert!(
        conf_right / n_right as f32 > conf_wrong / n_wrong as f32 + 0.2,
        "confidence tracks correctness"
    );
    assert!(
        kinds.iter().all(|&k| k > 100),
        "filler of every kind: {kinds:?}"
    );
}

#[test]
fn captions_mention_salient_objects_with_synonyms() {
    let (c, lex, all) = scenes(200, 4);
    let mut synonyms = 0;
    let mut forms = std::collections::HashSet::new();
    for (i, s) in all.iter().enumerate() {
        let mut rng = rng_for(4, Stream::Captions, i as u64);
        // The three most salient categories.
        let mut top: Vec<usize> = Vec::new();
        for o in s.by_salience() {
            if !top.contains(&s.objects[o].cat) && top.len() < 3 {
                top.push(s.objects[o].cat);
            }
        }
        for _ in 0..5 {
            let (text, facts) = caption(&mut rng, &c, &lex, s);
            assert!(!text.is_empty());
            assert!(text
                .chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_uppercase()));
            for f in &facts {
                assert!(
                    f.holds(&lex, s),
                    "caption fact {f:?} false in its own scene: {text}"
                );
            }
            // The first noun fact is one of the salient objects.
            if let Some(crate::text::Fact::Has(cat)) = facts.first() {
                assert!(top.contains(cat), "{text}");
            }
            let words = basic_words(&text);
            if words.iter().any(|w| {
                ["guy", "couch", "puppy", "lady", "kid", "bicycle", "mug"].contains(&w.as_str())
            }) {
                synonyms += 1;
            }
            forms.insert(words.first().cloned().unwrap_or_default());
        }
    }
    assert!(synonyms > 20, "{synonyms} captions with a synonym");
    assert!(forms.len() > 10, "caption openings: {forms:?}");
}

#[test]
fn phrases_name_attributes_and_include_verbs() {
    let (c, lex, all) = scenes(100, 5);
    let (mut total, mut with_verb, mut with_attr) = (0, 0, 0);
    let verbs = [
        "riding", "rides", "holding", "holds", "wearing", "wears", "eating", "eats", "sitting",
        "resting",
    ];
    let attrs: Vec<&str> = ATTRIBUTES.iter().map(|a| a.word).collect();
    for (i, s) in all.iter().enumerate() {
        let ps = phrases(&mut rng_for(5, Stream::Phrases, i as u64), &c, &lex, s);
        assert!(ps.len() >= c.min_phrases.min(s.objects.len()) && ps.len() <= c.max_phrases);
        for p in &ps {
            total += 1;
            let w = basic_words(&p.text);
            if w.iter().any(|x| verbs.contains(&x.as_str())) {
                with_verb += 1;
            }
            if w.iter().any(|x| attrs.contains(&x.as_str())) {
                with_attr += 1;
            }
        }
    }
    let vf = with_verb as f32 / total as f32;
    assert!(vf > 0.03 && vf < 0.3, "verb phrase fraction {vf}");
    assert!(
        with_attr as f32 / total as f32 > 0.6,
        "{with_attr} of {total} phrases name an attribute"
    );
}

#[test]
fn vqa_answers_are_balanced_and_true() {
    let (c, lex, all) = scenes(400, 6);
    let prior = presence(&lex, &all);
    let mut yes = 0;
    let mut no = 0;
    let mut types = BTreeMap::new();
    for (i, s) in all.iter().enumerate() {
        let mut rng = rng_for(6, Stream::Vqa, i as u64);
        let qs = vqa_questions(&mut rng, &c, &lex, &prior, s, 6);
        assert_eq!(qs.len(), 6);
        for q in &qs {
            *types.entry(q.answer_type).or_insert(0) += 1;
            if q.answer == "yes" {
                yes += 1;
            }
            if q.answer == "no" {
                no += 1;
            }
            let label = annotate(&mut rng, &c, q);
            assert!(label.values().all(|s| [0.3, 0.6, 0.9, 1.0].contains(s)));
            assert!(label.contains_key(&q.answer) || c.annotator_accuracy < 0.5);
        }
    }
    let ratio = yes as f32 / (yes + no) as f32;
    assert!((ratio - 0.5).abs() < 0.08, "yes ratio {ratio}");
    assert_eq!(types.len(), 3, "{types:?}");
}

#[test]
fn gqa_and_nlvr2() {
    let (c, lex, all) = scenes(200, 7);
    let mut kinds = std::collections::HashSet::new();
    for (i, s) in all.iter().enumerate() {
        let qs = gqa_questions(
            &mut rng_for(7, Stream::Gqa, i as u64),
            &c,
            &lex,
            &presence(&lex, &all),
            s,
            6,
        );
        assert!(!qs.is_empty());
        for q in qs {
            kinds.insert(q.question_type);
            assert!(!q.answer.is_empty());
        }
    }
    assert!(kinds.len() >= 7, "{kinds:?}");
    let mut labels = [0, 0];
    let pairs: Vec<(&Scene, &Scene)> = (0..199).map(|i| (&all[i], &all[i + 1])).collect();
    let pp = pair_presence(&lex, &pairs);
    for i in 0..199 {
        let want = i % 2 == 0;
        let mut rng = rng_for(7, Stream::Nlvr2, i as u64);
        if let Some(st) = statement(&mut rng, &c, &lex, &pp, &all[i], &all[i + 1], want) {
            assert_eq!(st.label, want);
            assert_eq!(st.claim.holds(&all[i], &all[i + 1]), want);
            labels[usize::from(st.label)] += 1;
        }
    }
    assert!(labels[0] > 80 && labels[1] > 80, "{labels:?}");
}

#[test]
fn counterpart_pairs_have_the_opposite_truth() {
    let (c, lex, all) = scenes(120, 3);
    let split: Vec<usize> = (0..120).collect();
    let pairs: Vec<(&Scene, &Scene)> = (0..119).map(|i| (&all[i], &all[i + 1])).collect();
    let pp = pair_presence(&lex, &pairs);
    let (mut found, mut kept_one) = (0, 0);
    for i in 0..119 {
        let want = i % 2 == 0;
        let mut rng = rng_for(3, Stream::Nlvr2, i as u64);
        let Some(st) = statement(&mut rng, &c, &lex, &pp, &all[i], &all[i + 1], want) else {
            continue;
        };
        let Some((a, b)) = counterpart_pair(&mut rng, &all, &split, &st.claim, (i, i + 1), !want)
        else {
            continue;
        };
        assert_ne!(a, b);
        assert_ne!((a, b), (i, i + 1));
        assert_eq!(st.claim.holds(&all[a], &all[b]), !want, "{}", st.sent);
        found += 1;
        kept_one += usize::from(a == i || b == i + 1);
    }
    // Almost every statement has a counterpart, mostly one image away from its pair.
    assert!(found > 100, "{found} of 119");
    assert!(kept_one * 10 > found * 9, "{kept_one} of {found}");
    // A claim no pair can make true has none.
    let absent = (0..lex.num_categories())
        .find(|&cat| all.iter().all(|s| s.count(cat) == 0))
        .expect("a category absent from every scene");
    let both = crate::questions::Claim::Both { cat: absent };
    let mut rng = rng_for(3, Stream::Nlvr2, 999);
    assert_eq!(
        counterpart_pair(&mut rng, &all, &split, &both, (0, 1), true),
        None
    );
}

#[test]
fn vqa_score_rule() {
    // bottom-up-attention get_score: 0 → 0, 1 → 0.3, 2 → 0.6, 3 → 0.9, ≥ 4 → 1.
    let got: Vec<f32> = (0..6).map(vqa_score).collect();
    assert_eq!(got, vec![0.0, 0.3, 0.6, 0.9, 1.0, 1.0]);
}

#[test]
fn text_only_baseline_by_hand() {
    let l = |pairs: &[(&str, f32)]| -> BTreeMap<String, f32> {
        pairs.iter().map(|(a, s)| (a.to_string(), *s)).collect()
    };
    let a = l(&[("yes", 1.0)]);
    let b = l(&[("no", 1.0), ("yes", 0.3)]);
    let c2 = l(&[("2", 1.0)]);
    let d = l(&[("3", 0.9), ("2", 0.6)]);
    let train = vec![
        QaItem {
            sent: "is it red?",
            qtype: "is",
            label: &a,
        },
        QaItem {
            sent: "is it red?",
            qtype: "is",
            label: &a,
        },
        QaItem {
            sent: "is it red?",
            qtype: "is",
            label: &b,
        },
        QaItem {
            sent: "how many dogs?",
            qtype: "how many",
            label: &c2,
        },
    ];
    // "is it red?" → yes (2.3 vs 1.0); unseen "how many cats?" → type "how many" → "2".
    let eval = vec![
        QaItem {
            sent: "is it red?",
            qtype: "is",
            label: &b,
        }, // yes scores 0.3
        QaItem {
            sent: "how many cats?",
            qtype: "how many",
            label: &d,
        }, // 2 scores 0.6
    ];
    let got = text_only_score(&train, &eval);
    assert!((got - 0.45).abs() < 1e-6, "{got}");
}

#[test]
fn recall_with_ties_by_hand() {
    assert_eq!(recall_at(0, 0, 1), 1.0);
    assert_eq!(recall_at(1, 0, 1), 0.0);
    assert_eq!(recall_at(0, 3, 1), 0.25); // 4 tied: 1 in 4 chance to come first
    assert_eq!(recall_at(2, 5, 5), 0.5); // positions 2..7 equally likely, 3 of 6 are < 5
    assert_eq!(recall_at(10, 0, 5), 0.0);
}

#[test]
fn every_generated_word_is_in_the_vocabulary() {
    let (c, lex, all) = scenes(150, 8);
    let words: std::collections::HashSet<String> = world_words().into_iter().collect();
    let prior = presence(&lex, &all);
    let pairs: Vec<(&Scene, &Scene)> = (0..149).map(|i| (&all[i], &all[i + 1])).collect();
    let pp = pair_presence(&lex, &pairs);
    let check = |t: &str| {
        for w in basic_words(t) {
            assert!(
                words.contains(&w),
                "`{w}` of `{t}` is missing from the vocabulary"
            );
        }
    };
    for (i, s) in all.iter().enumerate() {
        let mut rng = rng_for(8, Stream::Captions, i as u64);
        for _ in 0..5 {
            check(&caption(&mut rng, &c, &lex, s).0);
        }
        for p in phrases(&mut rng, &c, &lex, s) {
            check(&p.text);
        }
        for q in vqa_questions(&mut rng, &c, &lex, &prior, s, 6) {
            check(&q.sent);
            check(&q.answer);
        }
        for q in gqa_questions(&mut rng, &c, &lex, &prior, s, 6) {
            check(&q.sent);
            check(&q.answer);
        }
        if i + 1 < all.len() {
            if let Some(st) = statement(&mut rng, &c, &lex, &pp, s, &all[i + 1], i % 2 == 0) {
                check(&st.sent);
            }
        }
    }
}

#[test]
fn preset_world_table_only() {
    let text = "[model]\nhidden = 64\n\n[world]\ntrain_images = 10\nfeature_dim = 32\n";
    let c = WorldConfig::from_toml_str(text, Path::new("x.toml")).expect("valid");
    assert_eq!(c.train_images, 10);
    assert_eq!(c.feature_dim, 32);
    assert_eq!(c.val_images, WorldConfig::default().val_images);

    let err = WorldConfig::from_toml_str("[world]\ntrain_imgs = 10\n", Path::new("bad.toml"))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("bad.toml") && msg.contains("train_imgs"),
        "{msg}"
    );

    let err = WorldConfig::from_toml_str(
        "[world]\nobject_label_accuracy = 1.5\n",
        Path::new("p.toml"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("object_label_accuracy"), "{err}");

    let err = WorldConfig::from_toml_str(
        "[world]\nmin_objects = 9\nmax_objects = 4\n",
        Path::new("p.toml"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("min_objects"), "{err}");
}

#[test]
fn committed_presets_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/presets");
    // LXMERT's 36 regions, except tiny and tiny-gated (16 × 256-d, sized for the CPU budget
    // of reproduce).
    for (name, regions) in [
        ("smoke", 36),
        ("tiny", 16),
        ("tiny-gated", 16),
        ("small", 36),
        ("paper-shape", 36),
    ] {
        let c = WorldConfig::from_preset(&dir, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.regions_per_image, regions, "{name}");
    }
    let paper = WorldConfig::from_preset(&dir, "paper-shape").expect("paper-shape");
    assert_eq!(paper.feature_dim, 2048);
    assert_eq!(paper.retrieval_test_images, 1000);
    let small = WorldConfig::from_preset(&dir, "small").expect("small");
    assert_eq!(small.retrieval_test_images, 1000);
    assert!(matches!(
        WorldConfig::from_preset(&dir, "nope"),
        Err(crate::SynthError::Io { .. })
    ));
}
