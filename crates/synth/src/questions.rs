//! VQA-style and GQA-style questions and NLVR2-style statements, each built from a scene
//! graph together with its true answer, so the scene-graph oracle is the generator itself and
//! the text-only baseline can be fitted on the written files.
//!
//! Answers are balanced per question form: yes/no questions ask about a present or an absent
//! thing with equal probability, counts are drawn uniformly over the counts present, and
//! attribute questions are about uniformly drawn attributes, so the question text alone says
//! little about the answer.

use std::collections::BTreeMap;

use rand::Rng as _;

use crate::config::WorldConfig;
use crate::lexicon::{plural, Action, AttrKind, Lexicon, Super, NUMBER_WORDS};
use crate::rng::Rng;
use crate::scene::{pick, pick_weighted, Scene, Spatial};
use crate::text::{article, noun};

/// (template, VQA question_type) pairs.
type Templates = &'static [(&'static str, &'static str)];

pub(crate) const VQA_EXISTS: Templates = &[
    ("is there {a} {w} in the picture?", "is there a"),
    ("is there {a} {w} in the image?", "is there a"),
    ("is there {a} {w}?", "is there a"),
    ("do you see {a} {w}?", "do you see"),
    ("can you see {a} {w} in this photo?", "can you"),
    ("are there any {ws} in the picture?", "are there any"),
];
pub(crate) const VQA_ATTR_CHECK: Templates = &[
    ("is the {w} {attr}?", "is the"),
    ("is this {w} {attr}?", "is this"),
    ("is the {w} in the picture {attr}?", "is the"),
];
pub(crate) const VQA_REL_CHECK: Templates = &[
    ("is the {w} {rel} the {b}?", "is the"),
    ("is there {a} {w} {rel} the {b}?", "is there a"),
];
pub(crate) const VQA_COUNT: Templates = &[
    ("how many {ws} are there?", "how many"),
    ("how many {ws} are in the picture?", "how many"),
    ("how many {ws} can you see?", "how many"),
    ("how many {ws} are in the image?", "how many"),
];
pub(crate) const VQA_COLOR: Templates = &[
    ("what color is the {w}?", "what color is the"),
    ("what is the color of the {w}?", "what is the color of the"),
    ("what colour is the {w}?", "what color is the"),
];
pub(crate) const VQA_MATERIAL: Templates = &[
    ("what is the {w} made of?", "what is the"),
    ("what material is the {w}?", "what material is the"),
];
pub(crate) const VQA_ACTION: Templates = &[
    ("what is the {w} {verb}?", "what is the"),
    ("what is this {w} {verb}?", "what is this"),
];
pub(crate) const VQA_ON_WHAT: Templates = &[
    ("what is the {w} on?", "what is the"),
    ("where is the {w}?", "where is the"),
];

pub(crate) const GQA_REL_COLOR: &[&str] = &[
    "what color is the {w} {rel} the {b}?",
    "what is the color of the {w} that is {rel} the {b}?",
    "the {w} {rel} the {b} has what color?",
];
pub(crate) const GQA_REL_MATERIAL: &[&str] = &[
    "what is the {w} {rel} the {b} made of?",
    "what material is the {w} that is {rel} the {b}?",
];
pub(crate) const GQA_REL_WHICH: &[&str] = &[
    "what is {rel} the {b}?",
    "which object is {rel} the {b}?",
    "what kind of {group} is {rel} the {b}?",
];
pub(crate) const GQA_LEFT_RIGHT: &[&str] = &[
    "is the {w} to the left or to the right of the {b}?",
    "on which side of the {b} is the {w}?",
];
pub(crate) const GQA_BOTH: &[&str] = &[
    "are there both {ws} and {bs} in the picture?",
    "are there both {ws} and {bs} in this image?",
];
pub(crate) const GQA_REL_VERIFY: &[&str] = &[
    "is the {w} {rel} the {b}?",
    "is the {w} that is {rel} the {b} {attr}?",
];
pub(crate) const GQA_WHO: &[&str] = &["who is {verb} the {b}?", "what is {verb} the {b}?"];
pub(crate) const GQA_ACT_WHAT: &[&str] =
    &["what is the {w} {verb}?", "what is the {attr} {w} {verb}?"];

pub(crate) const NLVR2_TEMPLATES: &[&str] = &[
    "the {side} image contains exactly {n} {ws}.",
    "there are exactly {n} {ws} in the {side} image.",
    "one image contains exactly {n} {ws}.",
    "both images contain {a} {w}.",
    "there is at least one {w} in each image.",
    "the left image contains more {ws} than the right image.",
    "there are more {ws} in the right image than in the left image.",
    "there is {a} {attr} {w} in one of the images.",
    "in at least one image, {a} {w} is {verb} {a2} {b}.",
    "neither image contains {a} {w}.",
    "no {w} is visible in either image.",
];

/// The words a question uses for a spatial relation.
pub(crate) fn rel_phrase(rel: Spatial) -> &'static str {
    match rel {
        Spatial::LeftOf => "to the left of",
        Spatial::RightOf => "to the right of",
        Spatial::On => "on",
        Spatial::Under => "under",
        Spatial::Near => "near",
    }
}

/// Fills `{slot}`s of a template.
pub(crate) fn fill(template: &str, slots: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in slots {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// One generated question with its truth.
#[derive(Clone, Debug)]
pub(crate) struct Question {
    pub(crate) sent: String,
    pub(crate) question_type: String,
    pub(crate) answer_type: &'static str,
    pub(crate) answer: String,
    /// What a wrong annotator may say instead.
    pub(crate) confusions: Vec<String>,
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn attrs_of_kind(lex: &Lexicon, cat: usize, kind: AttrKind) -> Vec<usize> {
    lex.allowed[cat]
        .iter()
        .copied()
        .filter(|&a| lex.attr(a).kind == kind)
        .collect()
}

fn kind_words(lex: &Lexicon, kind: AttrKind) -> Vec<String> {
    (0..lex.num_attributes())
        .filter(|&a| lex.attr(a).kind == kind)
        .map(|a| lex.attr_word(a).to_string())
        .collect()
}

/// Labels an annotator may confuse a category with: its synonyms and same-group labels.
fn category_confusions(lex: &Lexicon, cat: usize) -> Vec<String> {
    let mut v: Vec<String> = lex.cat(cat).words[1..]
        .iter()
        .filter(|w| **w != "person")
        .map(|w| w.to_string())
        .collect();
    v.extend(
        lex.confusable(cat)
            .into_iter()
            .map(|c| lex.label(c).to_string()),
    );
    v
}

/// Fraction of the world's scenes that contain each category (used to balance yes/no
/// questions per category: see the existence form of [`vqa_questions`]).
pub(crate) fn presence(lex: &Lexicon, scenes: &[Scene]) -> Vec<f32> {
    let mut w = vec![0.0f32; lex.num_categories()];
    for s in scenes {
        for c in s.categories() {
            w[c] += 1.0;
        }
    }
    let n = scenes.len().max(1) as f32;
    w.iter_mut().for_each(|x| *x /= n);
    w
}

fn describe_unique(rng: &mut Rng, lex: &Lexicon, cat: usize, syn: f32) -> &'static str {
    noun(rng, lex, cat, syn)
}

/// Weights of the VQA forms: existence, attribute check, relation check (yes/no, 0.38 in
/// all), counting (number, 0.12), colour, material, action object, support (other, 0.50) —
/// VQA v2's answer-type mix (Goyal et al. 2017: 38% yes/no, 12% number, 50% other).
const VQA_FORMS: [f32; 8] = [0.18, 0.1, 0.1, 0.12, 0.24, 0.08, 0.09, 0.09];

/// One VQA question of the given form about a scene, or `None` when it does not fit.
fn vqa_once(
    rng: &mut Rng,
    cfg: &WorldConfig,
    lex: &Lexicon,
    prior: &[f32],
    scene: &Scene,
    form: usize,
) -> Option<Question> {
    let syn = cfg.synonym_rate;
    let uniques = scene.unique_objects();
    match form {
        0 => {
            // Existence, half present, half absent. A present category is drawn with weight
            // 1/presence and an absent one with weight 1/(1 − presence), so every category is
            // asked about about equally often with either answer: the sentence alone does not
            // tell the answer.
            let want = rng.random::<bool>();
            let cats = scene.categories();
            let weights: Vec<f32> = (0..lex.num_categories())
                .map(|c| {
                    let p = prior[c];
                    if matches!(lex.cat(c).sup, Super::Stuff | Super::Part) || p <= 0.0 || p >= 1.0
                    {
                        0.0
                    } else if cats.contains(&c) == want {
                        if want {
                            1.0 / p
                        } else {
                            1.0 / (1.0 - p)
                        }
                    } else {
                        0.0
                    }
                })
                .collect();
            if weights.iter().all(|w| *w <= 0.0) {
                return None;
            }
            let cat = pick_weighted(rng, &weights);
            let (t, qt) = *pick(rng, VQA_EXISTS);
            let w = noun(rng, lex, cat, syn);
            let sent = fill(t, &[("a", article(w)), ("w", w), ("ws", &plural(w))]);
            let answer = yes_no(scene.count(cat) > 0);
            Some(Question {
                sent: crate::text::capitalise(&sent),
                question_type: qt.into(),
                answer_type: "yes/no",
                confusions: vec![yes_no(answer != "yes")],
                answer,
            })
        }
        1 => {
            // Attribute check on a unique object that allows both answers: one of its own
            // attributes, or another attribute of the same kind, 50/50.
            let cands: Vec<(usize, usize, Vec<usize>)> = uniques
                .iter()
                .flat_map(|&o| {
                    let obj = &scene.objects[o];
                    obj.attrs.iter().filter_map(move |&a| {
                        let others: Vec<usize> = attrs_of_kind(lex, obj.cat, lex.attr(a).kind)
                            .into_iter()
                            .filter(|x| !obj.attrs.contains(x))
                            .collect();
                        (!others.is_empty()).then_some((o, a, others))
                    })
                })
                .collect();
            let (o, true_attr, others) = pick(rng, &nonempty(cands)?).clone();
            let obj = &scene.objects[o];
            let attr = if rng.random::<bool>() {
                true_attr
            } else {
                *pick(rng, &others)
            };
            let (t, qt) = *pick(rng, VQA_ATTR_CHECK);
            let w = describe_unique(rng, lex, obj.cat, syn);
            let sent = fill(t, &[("w", w), ("attr", lex.attr_word(attr))]);
            let answer = yes_no(scene.has_attr(o, attr));
            Some(Question {
                sent: crate::text::capitalise(&sent),
                question_type: qt.into(),
                answer_type: "yes/no",
                confusions: vec![yes_no(answer != "yes")],
                answer,
            })
        }
        2 => {
            // Relation check between two unique objects: a relation drawn first, then a pair
            // for which it holds or does not, 50/50 (only when both exist).
            if uniques.len() < 2 {
                return None;
            }
            let rel = *pick(rng, &Spatial::ALL);
            let mut yes_pairs = Vec::new();
            let mut no_pairs = Vec::new();
            for &a in &uniques {
                for &b in &uniques {
                    if a != b {
                        if scene.spatial(lex, rel, a, b) {
                            yes_pairs.push((a, b));
                        } else {
                            no_pairs.push((a, b));
                        }
                    }
                }
            }
            if yes_pairs.is_empty() || no_pairs.is_empty() {
                return None;
            }
            let want = rng.random::<bool>();
            let (a, b) = *pick(rng, if want { &yes_pairs } else { &no_pairs });
            let (t, qt) = *pick(rng, VQA_REL_CHECK);
            let w = describe_unique(rng, lex, scene.objects[a].cat, syn);
            let bw = describe_unique(rng, lex, scene.objects[b].cat, syn);
            let sent = fill(
                t,
                &[
                    ("a", article(w)),
                    ("w", w),
                    ("rel", rel_phrase(rel)),
                    ("b", bw),
                ],
            );
            let answer = yes_no(want);
            Some(Question {
                sent: crate::text::capitalise(&sent),
                question_type: qt.into(),
                answer_type: "yes/no",
                confusions: vec![yes_no(!want)],
                answer,
            })
        }
        3 => {
            // Counting: a count value uniformly over those present, then a category with it.
            let cats: Vec<usize> = scene
                .categories()
                .into_iter()
                .filter(|&c| lex.cat(c).sup != Super::Clothing)
                .collect();
            let mut counts: Vec<usize> = cats.iter().map(|&c| scene.count(c)).collect();
            counts.sort_unstable();
            counts.dedup();
            let n = *pick(rng, &nonempty(counts)?);
            let with_n: Vec<usize> = cats.into_iter().filter(|&c| scene.count(c) == n).collect();
            let cat = *pick(rng, &with_n);
            let (t, qt) = *pick(rng, VQA_COUNT);
            let w = noun(rng, lex, cat, syn);
            let sent = fill(t, &[("ws", &plural(w))]);
            Some(Question {
                sent: crate::text::capitalise(&sent),
                question_type: qt.into(),
                answer_type: "number",
                answer: n.to_string(),
                confusions: vec![(n + 1).to_string(), n.saturating_sub(1).max(1).to_string()],
            })
        }
        4 | 5 => {
            let kind = if form == 4 {
                AttrKind::Colour
            } else {
                AttrKind::Material
            };
            let cands: Vec<(usize, usize)> = uniques
                .iter()
                .flat_map(|&o| {
                    scene.objects[o]
                        .attrs
                        .iter()
                        .filter(|&&a| lex.attr(a).kind == kind)
                        .map(move |&a| (o, a))
                })
                .collect();
            let (o, a) = *pick(rng, &nonempty(cands)?);
            let (t, qt) = *pick(rng, if form == 4 { VQA_COLOR } else { VQA_MATERIAL });
            let w = describe_unique(rng, lex, scene.objects[o].cat, syn);
            let sent = fill(t, &[("w", w)]);
            Some(Question {
                sent: crate::text::capitalise(&sent),
                question_type: qt.into(),
                answer_type: "other",
                answer: lex.attr_word(a).to_string(),
                confusions: kind_words(lex, kind),
            })
        }
        6 => {
            let cands: Vec<&(usize, Action, usize)> = scene
                .actions
                .iter()
                .filter(|x| uniques.contains(&x.0))
                .collect();
            let &&(s, act, o) = pick(rng, &nonempty(cands)?);
            let (t, qt) = *pick(rng, VQA_ACTION);
            let w = describe_unique(rng, lex, scene.objects[s].cat, syn);
            let sent = fill(t, &[("w", w), ("verb", act.forms().0)]);
            let oc = scene.objects[o].cat;
            Some(Question {
                sent: crate::text::capitalise(&sent),
                question_type: qt.into(),
                answer_type: "other",
                answer: lex.label(oc).to_string(),
                confusions: category_confusions(lex, oc),
            })
        }
        _ => {
            // What is the X on? (a unique X on a unique support).
            let mut cands = Vec::new();
            for &a in &uniques {
                let sups: Vec<usize> = (0..scene.objects.len())
                    .filter(|&b| scene.spatial(lex, Spatial::On, a, b))
                    .collect();
                if sups.len() == 1 {
                    cands.push((a, sups[0]));
                }
            }
            let (a, b) = *pick(rng, &nonempty(cands)?);
            let (t, qt) = *pick(rng, VQA_ON_WHAT);
            let w = describe_unique(rng, lex, scene.objects[a].cat, syn);
            let sent = fill(t, &[("w", w)]);
            let bc = scene.objects[b].cat;
            Some(Question {
                sent: crate::text::capitalise(&sent),
                question_type: qt.into(),
                answer_type: "other",
                answer: lex.label(bc).to_string(),
                confusions: category_confusions(lex, bc),
            })
        }
    }
}

fn nonempty<T>(v: Vec<T>) -> Option<Vec<T>> {
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

/// `n` VQA questions (distinct sentences) about a scene.
pub(crate) fn vqa_questions(
    rng: &mut Rng,
    cfg: &WorldConfig,
    lex: &Lexicon,
    prior: &[f32],
    scene: &Scene,
    n: usize,
) -> Vec<Question> {
    distinct_questions(rng, n, &VQA_FORMS, |rng, form| {
        vqa_once(rng, cfg, lex, prior, scene, form)
    })
}

/// Tries of one form before it counts as exhausted for a scene.
const FORM_TRIES: usize = 8;

/// Up to `n` questions with distinct sentences: each draws a form by `weights`, then tries
/// `draw(rng, form)` up to [`FORM_TRIES`] times for a new sentence; a form that yields none
/// is dropped for this scene. The mix of forms therefore follows `weights` wherever the scene
/// allows (a form that rarely fits is not silently replaced by the ones that always do).
fn distinct_questions(
    rng: &mut Rng,
    n: usize,
    weights: &[f32],
    mut draw: impl FnMut(&mut Rng, usize) -> Option<Question>,
) -> Vec<Question> {
    let mut weights = weights.to_vec();
    let mut out: Vec<Question> = Vec::new();
    while out.len() < n && weights.iter().any(|w| *w > 0.0) {
        let form = pick_weighted(rng, &weights);
        let fresh = (0..FORM_TRIES)
            .find_map(|_| draw(rng, form).filter(|q| out.iter().all(|x| x.sent != q.sent)));
        match fresh {
            Some(q) => out.push(q),
            None => weights[form] = 0.0,
        }
    }
    out
}

/// VQA soft score of `count` matching annotators (bottom-up-attention `get_score`, used to
/// build LXMERT's VQA labels): 1 → 0.3, 2 → 0.6, 3 → 0.9, ≥ 4 → 1.
pub(crate) fn vqa_score(count: usize) -> f32 {
    match count {
        0 => 0.0,
        1 => 0.3,
        2 => 0.6,
        3 => 0.9,
        _ => 1.0,
    }
}

/// Simulates the annotators of one question: each gives the true answer with the configured
/// probability, else a confusion; returns the soft-score label.
pub(crate) fn annotate(rng: &mut Rng, cfg: &WorldConfig, q: &Question) -> BTreeMap<String, f32> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..cfg.annotators {
        let wrong: Vec<&String> = q.confusions.iter().filter(|c| **c != q.answer).collect();
        let a = if wrong.is_empty() || rng.random::<f32>() < cfg.annotator_accuracy {
            q.answer.clone()
        } else {
            (*pick(rng, &wrong)).clone()
        };
        *counts.entry(a).or_default() += 1;
    }
    counts.into_iter().map(|(a, c)| (a, vqa_score(c))).collect()
}

/// The objects of category `cat` that stand in `rel` to some object of category `bcat`.
fn related(lex: &Lexicon, scene: &Scene, cat: usize, rel: Spatial, b: usize) -> Vec<usize> {
    (0..scene.objects.len())
        .filter(|&i| scene.objects[i].cat == cat && scene.spatial(lex, rel, i, b))
        .collect()
}

/// Weights of the GQA forms: colour, material, relation query, left/right, both exist
/// (logical), relation verify, who, action object.
const GQA_FORMS: [f32; 8] = [0.16, 0.08, 0.16, 0.14, 0.12, 0.14, 0.1, 0.1];

/// One GQA question of the given form, or `None` when it does not fit.
fn gqa_once(
    rng: &mut Rng,
    cfg: &WorldConfig,
    lex: &Lexicon,
    prior: &[f32],
    scene: &Scene,
    form: usize,
) -> Option<Question> {
    let syn = cfg.synonym_rate * 0.5;
    let uniques = scene.unique_objects();
    // A referring pair: object a (the only one of its category related to b), b unique.
    let ref_pair =
        |rng: &mut Rng, need: &dyn Fn(usize) -> bool| -> Option<(usize, Spatial, usize)> {
            let mut cands = Vec::new();
            for &b in &uniques {
                for (a, oa) in scene.objects.iter().enumerate() {
                    if a == b || !need(a) {
                        continue;
                    }
                    for rel in Spatial::ALL {
                        if scene.spatial(lex, rel, a, b)
                            && related(lex, scene, oa.cat, rel, b).len() == 1
                        {
                            cands.push((a, rel, b));
                        }
                    }
                }
            }
            Some(*pick(rng, &nonempty(cands)?))
        };
    let other =
        |answer: String, confusions: Vec<String>, sent: String, qt: &str, at: &'static str| {
            Some(Question {
                sent: crate::text::capitalise(&sent),
                question_type: qt.to_string(),
                answer_type: at,
                answer,
                confusions,
            })
        };
    match form {
        0 | 1 => {
            let kind = if form == 0 {
                AttrKind::Colour
            } else {
                AttrKind::Material
            };
            let has_kind = |a: usize| {
                scene.objects[a]
                    .attrs
                    .iter()
                    .any(|&x| lex.attr(x).kind == kind)
            };
            let (a, rel, b) = ref_pair(rng, &has_kind)?;
            let attr = *scene.objects[a]
                .attrs
                .iter()
                .find(|&&x| lex.attr(x).kind == kind)?;
            let t = *pick(
                rng,
                if form == 0 {
                    GQA_REL_COLOR
                } else {
                    GQA_REL_MATERIAL
                },
            );
            let w = noun(rng, lex, scene.objects[a].cat, syn);
            let bw = noun(rng, lex, scene.objects[b].cat, syn);
            let sent = fill(t, &[("w", w), ("rel", rel_phrase(rel)), ("b", bw)]);
            other(
                lex.attr_word(attr).into(),
                vec![],
                sent,
                if form == 0 { "relColor" } else { "relMaterial" },
                "other",
            )
        }
        2 => {
            let (a, rel, b) = ref_pair(rng, &|_| true)?;
            // "what is on the table?" must have one answer: a single object in rel to b.
            let all: Vec<usize> = (0..scene.objects.len())
                .filter(|&i| scene.spatial(lex, rel, i, b))
                .collect();
            if all.len() != 1 {
                return None;
            }
            let ac = scene.objects[a].cat;
            let mut t = *pick(rng, GQA_REL_WHICH);
            let group = lex.cat(ac).sup.group_word();
            if t.contains("{group}") && group.is_none() {
                t = GQA_REL_WHICH[0];
            }
            let bw = noun(rng, lex, scene.objects[b].cat, syn);
            let sent = fill(
                t,
                &[
                    ("rel", rel_phrase(rel)),
                    ("b", bw),
                    ("group", group.unwrap_or("")),
                ],
            );
            other(lex.label(ac).into(), vec![], sent, "relWhich", "other")
        }
        3 => {
            let mut cands = Vec::new();
            for &a in &uniques {
                for &b in &uniques {
                    if a != b && lex.cat(scene.objects[a].cat).sup != Super::Clothing {
                        if scene.spatial(lex, Spatial::LeftOf, a, b) {
                            cands.push((a, b, "left"));
                        } else if scene.spatial(lex, Spatial::RightOf, a, b) {
                            cands.push((a, b, "right"));
                        }
                    }
                }
            }
            let (a, b, side) = *pick(rng, &nonempty(cands)?);
            let t = *pick(rng, GQA_LEFT_RIGHT);
            let w = noun(rng, lex, scene.objects[a].cat, syn);
            let bw = noun(rng, lex, scene.objects[b].cat, syn);
            other(
                side.into(),
                vec![],
                fill(t, &[("w", w), ("b", bw)]),
                "leftRight",
                "other",
            )
        }
        4 => {
            // Both present: yes; else one of them absent, 50/50. Categories are weighted by
            // inverse presence (as in the VQA existence form) so pairs do not tell the answer.
            let cats = scene.categories();
            let inv = |c: usize, present: bool| -> f32 {
                let p = prior[c];
                if matches!(lex.cat(c).sup, Super::Stuff | Super::Part) || p <= 0.0 || p >= 1.0 {
                    0.0
                } else if present {
                    1.0 / p
                } else {
                    1.0 / (1.0 - p)
                }
            };
            let wa: Vec<f32> = (0..lex.num_categories())
                .map(|c| if cats.contains(&c) { inv(c, true) } else { 0.0 })
                .collect();
            if wa.iter().all(|w| *w <= 0.0) {
                return None;
            }
            let a = pick_weighted(rng, &wa);
            let want = rng.random::<bool>();
            let wb: Vec<f32> = (0..lex.num_categories())
                .map(|c| {
                    if c != a && cats.contains(&c) == want {
                        inv(c, want)
                    } else {
                        0.0
                    }
                })
                .collect();
            if wb.iter().all(|w| *w <= 0.0) {
                return None;
            }
            let b = pick_weighted(rng, &wb);
            let (a, b) = if rng.random::<bool>() { (a, b) } else { (b, a) };
            let t = *pick(rng, GQA_BOTH);
            let wa = plural(noun(rng, lex, a, syn));
            let wb = plural(noun(rng, lex, b, syn));
            let ans = yes_no(scene.count(a) > 0 && scene.count(b) > 0);
            other(
                ans,
                vec![],
                fill(t, &[("ws", &wa), ("bs", &wb)]),
                "existAnd",
                "yes/no",
            )
        }
        5 => {
            if uniques.len() < 2 {
                return None;
            }
            let want = rng.random::<bool>();
            let use_attr = rng.random::<f32>() < 0.4;
            if use_attr {
                // Only objects whose first attribute has an alternative of the same kind, so
                // both answers are possible.
                let alternatives = |a: usize| -> Vec<usize> {
                    let oa = &scene.objects[a];
                    match oa.attrs.first() {
                        Some(&first) => attrs_of_kind(lex, oa.cat, lex.attr(first).kind)
                            .into_iter()
                            .filter(|x| !oa.attrs.contains(x))
                            .collect(),
                        None => Vec::new(),
                    }
                };
                let (a, rel, b) = ref_pair(rng, &|a| !alternatives(a).is_empty())?;
                let oa = &scene.objects[a];
                let attr = if want {
                    oa.attrs[0]
                } else {
                    *pick(rng, &alternatives(a))
                };
                let w = noun(rng, lex, oa.cat, syn);
                let bw = noun(rng, lex, scene.objects[b].cat, syn);
                let sent = fill(
                    GQA_REL_VERIFY[1],
                    &[
                        ("w", w),
                        ("rel", rel_phrase(rel)),
                        ("b", bw),
                        ("attr", lex.attr_word(attr)),
                    ],
                );
                return other(
                    yes_no(oa.attrs.contains(&attr)),
                    vec![],
                    sent,
                    "verifyAttr",
                    "yes/no",
                );
            }
            // A relation first, then a pair for which it holds or not (only when both exist).
            let rel = *pick(rng, &Spatial::ALL);
            let mut pairs = [Vec::new(), Vec::new()];
            for &a in &uniques {
                for &b in &uniques {
                    if a != b {
                        pairs[usize::from(scene.spatial(lex, rel, a, b))].push((a, b));
                    }
                }
            }
            if pairs[0].is_empty() || pairs[1].is_empty() {
                return None;
            }
            let (a, b) = *pick(rng, &pairs[usize::from(want)]);
            let w = noun(rng, lex, scene.objects[a].cat, syn);
            let bw = noun(rng, lex, scene.objects[b].cat, syn);
            let sent = fill(
                GQA_REL_VERIFY[0],
                &[("w", w), ("rel", rel_phrase(rel)), ("b", bw)],
            );
            other(yes_no(want), vec![], sent, "verifyRel", "yes/no")
        }
        6 => {
            // Who is riding the horse? (a unique object with a single actor).
            let cands: Vec<&(usize, Action, usize)> = scene
                .actions
                .iter()
                .filter(|x| {
                    uniques.contains(&x.2)
                        && scene
                            .actions
                            .iter()
                            .filter(|y| y.2 == x.2 && y.1 == x.1)
                            .count()
                            == 1
                })
                .collect();
            let &&(s, act, o) = pick(rng, &nonempty(cands)?);
            let t = *pick(rng, GQA_WHO);
            let bw = noun(rng, lex, scene.objects[o].cat, syn);
            let sent = fill(t, &[("verb", act.forms().0), ("b", bw)]);
            other(
                lex.label(scene.objects[s].cat).into(),
                vec![],
                sent,
                "who",
                "other",
            )
        }
        _ => {
            let cands: Vec<&(usize, Action, usize)> = scene
                .actions
                .iter()
                .filter(|x| {
                    uniques.contains(&x.0)
                        && scene
                            .actions
                            .iter()
                            .filter(|y| y.0 == x.0 && y.1 == x.1)
                            .count()
                            == 1
                })
                .collect();
            let &&(s, act, o) = pick(rng, &nonempty(cands)?);
            let os = &scene.objects[s];
            let w = noun(rng, lex, os.cat, syn);
            let (t, attr) = if !os.attrs.is_empty() && rng.random::<bool>() {
                (GQA_ACT_WHAT[1], lex.attr_word(*pick(rng, &os.attrs)))
            } else {
                (GQA_ACT_WHAT[0], "")
            };
            let sent = fill(t, &[("w", w), ("verb", act.forms().0), ("attr", attr)]);
            other(
                lex.label(scene.objects[o].cat).into(),
                vec![],
                sent,
                "actWhat",
                "other",
            )
        }
    }
}

/// `n` GQA questions (distinct sentences) about a scene.
pub(crate) fn gqa_questions(
    rng: &mut Rng,
    cfg: &WorldConfig,
    lex: &Lexicon,
    prior: &[f32],
    scene: &Scene,
    n: usize,
) -> Vec<Question> {
    distinct_questions(rng, n, &GQA_FORMS, |rng, form| {
        gqa_once(rng, cfg, lex, prior, scene, form)
    })
}

/// For each category, the fractions of `pairs` in which both images / neither image contain it.
pub(crate) fn pair_presence(lex: &Lexicon, pairs: &[(&Scene, &Scene)]) -> Vec<(f32, f32)> {
    let mut v = vec![(0.0f32, 0.0f32); lex.num_categories()];
    for (a, b) in pairs {
        for (c, slot) in v.iter_mut().enumerate() {
            let (x, y) = (a.count(c) > 0, b.count(c) > 0);
            if x && y {
                slot.0 += 1.0;
            }
            if !x && !y {
                slot.1 += 1.0;
            }
        }
    }
    let n = pairs.len().max(1) as f32;
    v.iter_mut().for_each(|s| {
        s.0 /= n;
        s.1 /= n;
    });
    v
}

/// What an NLVR2 statement claims about an image pair; evaluated on the two scene graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Image `side` (0 left, 1 right) has exactly `n` objects of `cat`.
    CountIn { side: usize, cat: usize, n: usize },
    /// At least one image has exactly `n` objects of `cat`.
    OneHas { cat: usize, n: usize },
    /// Both images have a `cat`.
    Both { cat: usize },
    /// Image `side` has more `cat`s than the other.
    More { side: usize, cat: usize },
    /// Some image has a `cat` with attribute `attr`.
    AttrAny { cat: usize, attr: usize },
    /// Some image has a `subj` doing `act` to an `obj`.
    ActionAny {
        subj: usize,
        act: Action,
        obj: usize,
    },
    /// Neither image has a `cat`.
    Neither { cat: usize },
}

impl Claim {
    /// Whether the claim holds for (left, right).
    pub(crate) fn holds(&self, left: &Scene, right: &Scene) -> bool {
        let s = [left, right];
        match *self {
            Claim::CountIn { side, cat, n } => s[side].count(cat) == n,
            Claim::OneHas { cat, n } => s.iter().any(|x| x.count(cat) == n),
            Claim::Both { cat } => s.iter().all(|x| x.count(cat) > 0),
            Claim::More { side, cat } => s[side].count(cat) > s[1 - side].count(cat),
            Claim::AttrAny { cat, attr } => s.iter().any(|x| {
                x.objects
                    .iter()
                    .any(|o| o.cat == cat && o.attrs.contains(&attr))
            }),
            Claim::ActionAny { subj, act, obj } => s.iter().any(|x| {
                x.actions.iter().any(|&(a, v, b)| {
                    v == act && x.objects[a].cat == subj && x.objects[b].cat == obj
                })
            }),
            Claim::Neither { cat } => s.iter().all(|x| x.count(cat) == 0),
        }
    }
}

/// A statement over an image pair, with its template index (the text-only baseline's
/// fallback key), its claim and its truth.
#[derive(Clone, Debug)]
pub(crate) struct Statement {
    pub(crate) sent: String,
    pub(crate) template: usize,
    pub(crate) claim: Claim,
    pub(crate) label: bool,
}

/// Finds a second image pair, within `split` (indices into `scenes`), for which `claim` has
/// the truth `want`, as NLVR2 writes each sentence for image pairs of both truths so the
/// sentence alone does not tell its label. The first tries keep one image of `pair` and redraw
/// the other (a minimal contrast); then every partner of either image is scanned from a random
/// start; then 400 pairs are drawn at random. `None` when none of these has that truth.
pub(crate) fn counterpart_pair(
    rng: &mut Rng,
    scenes: &[Scene],
    split: &[usize],
    claim: &Claim,
    pair: (usize, usize),
    want: bool,
) -> Option<(usize, usize)> {
    let fits = |a: usize, b: usize| a != b && claim.holds(&scenes[a], &scenes[b]) == want;
    for t in 0..40 {
        let other = split[rng.random_range(0..split.len())];
        let cand = if t % 2 == 0 {
            (pair.0, other)
        } else {
            (other, pair.1)
        };
        if fits(cand.0, cand.1) {
            return Some(cand);
        }
    }
    let start = rng.random_range(0..split.len());
    let kept = (0..split.len())
        .map(|i| split[(start + i) % split.len()])
        .flat_map(|x| [(pair.0, x), (x, pair.1)])
        .find(|&(a, b)| fits(a, b));
    kept.or_else(|| {
        (0..400)
            .map(|_| {
                (
                    split[rng.random_range(0..split.len())],
                    split[rng.random_range(0..split.len())],
                )
            })
            .find(|&(a, b)| fits(a, b))
    })
}

/// Draws one NLVR2 statement about (left, right) whose truth is `want`.
pub(crate) fn statement(
    rng: &mut Rng,
    cfg: &WorldConfig,
    lex: &Lexicon,
    pair_prior: &[(f32, f32)],
    left: &Scene,
    right: &Scene,
    want: bool,
) -> Option<Statement> {
    let syn = cfg.synonym_rate * 0.5;
    let scenes = [left, right];
    let mut t = 0;
    // The template is drawn first and kept: both labels are then about equally likely for
    // every template (a template whose claims are rarely true is not left to false examples).
    // Only when a template cannot reach the wanted label for this pair is another one drawn.
    for attempt in 0..320 {
        if attempt % 80 == 0 {
            t = rng.random_range(0..NLVR2_TEMPLATES.len());
        }
        // Draw the subject category from the pair so statements are about visible things.
        let side_img = rng.random_range(0..2);
        let cats = scenes[side_img].categories();
        let mut cat = *pick(rng, &cats);
        if rng.random::<f32>() < 0.3 {
            cat = rng.random_range(0..lex.num_categories());
            if matches!(lex.cat(cat).sup, Super::Stuff | Super::Part) {
                continue;
            }
        }
        if matches!(t, 3 | 4 | 9 | 10) {
            // "Both images contain" / "neither image contains": the category is drawn among
            // those making the claim `want`, with weight 1 / P(claim | category) over the
            // split's pairs (`pair_prior[c]` = fractions of pairs where both / neither image
            // contain c), so each category is about as often in true as in false statements.
            let weights: Vec<f32> = (0..lex.num_categories())
                .map(|c| {
                    let (both, neither) = pair_prior[c];
                    if matches!(lex.cat(c).sup, Super::Stuff | Super::Part | Super::Clothing)
                        || both + neither >= 1.0
                    {
                        return 0.0;
                    }
                    let (holds, p_holds) = if t <= 4 {
                        (left.count(c) > 0 && right.count(c) > 0, both)
                    } else {
                        (left.count(c) == 0 && right.count(c) == 0, neither)
                    };
                    let p_want = if want { p_holds } else { 1.0 - p_holds };
                    if holds == want && p_want > 0.0 {
                        1.0 / p_want
                    } else {
                        0.0
                    }
                })
                .collect();
            if weights.iter().all(|w| *w <= 0.0) {
                t = rng.random_range(0..NLVR2_TEMPLATES.len());
                continue;
            }
            cat = pick_weighted(rng, &weights);
        }
        if lex.cat(cat).sup == Super::Clothing && t <= 6 {
            continue;
        }
        let w = noun(rng, lex, cat, syn);
        let ws = plural(w);
        let c = [left.count(cat), right.count(cat)];
        let (slots, claim): (Vec<(&str, String)>, Claim) = match t {
            0 | 1 => {
                let side = rng.random_range(0..2);
                let n = (c[side] as i64 + rng.random_range(-1..=1)).clamp(1, 4) as usize;
                if n < 2 {
                    continue;
                }
                let word = if side == 0 { "left" } else { "right" };
                (
                    vec![
                        ("side", word.into()),
                        ("n", NUMBER_WORDS[n].into()),
                        ("ws", ws),
                    ],
                    Claim::CountIn { side, cat, n },
                )
            }
            2 => {
                let n = (c[side_img] as i64 + rng.random_range(-1..=1)).clamp(2, 4) as usize;
                (
                    vec![("n", NUMBER_WORDS[n].into()), ("ws", ws)],
                    Claim::OneHas { cat, n },
                )
            }
            3 | 4 => (
                vec![("a", article(w).into()), ("w", w.into())],
                Claim::Both { cat },
            ),
            5 => (vec![("ws", ws)], Claim::More { side: 0, cat }),
            6 => (vec![("ws", ws)], Claim::More { side: 1, cat }),
            7 => {
                let allowed = &lex.allowed[cat];
                if allowed.is_empty() {
                    continue;
                }
                // Half the time an attribute the pair's objects really have.
                let present: Vec<usize> = scenes
                    .iter()
                    .flat_map(|s| {
                        s.objects
                            .iter()
                            .filter(|o| o.cat == cat)
                            .flat_map(|o| o.attrs.clone())
                    })
                    .collect();
                let attr = if !present.is_empty() && rng.random::<bool>() {
                    *pick(rng, &present)
                } else {
                    *pick(rng, allowed)
                };
                let aw = lex.attr_word(attr);
                let head = format!("{aw} {w}");
                (
                    vec![
                        ("a", article(&head).into()),
                        ("attr", aw.into()),
                        ("w", w.into()),
                    ],
                    Claim::AttrAny { cat, attr },
                )
            }
            8 => {
                let acts: Vec<(usize, Action, usize)> = scenes
                    .iter()
                    .flat_map(|s| {
                        s.actions
                            .iter()
                            .map(move |&(a, x, b)| (s.objects[a].cat, x, s.objects[b].cat))
                    })
                    .collect();
                if acts.is_empty() {
                    continue;
                }
                let (subj, act, mut obj) = *pick(rng, &acts);
                if rng.random::<bool>() {
                    let alts: Vec<usize> = lex.confusable(obj);
                    if !alts.is_empty() {
                        obj = *pick(rng, &alts);
                    }
                }
                let sw = noun(rng, lex, subj, syn);
                let ow = noun(rng, lex, obj, syn);
                (
                    vec![
                        ("a", article(sw).into()),
                        ("w", sw.into()),
                        ("verb", act.forms().0.into()),
                        ("a2", article(ow).into()),
                        ("b", ow.into()),
                    ],
                    Claim::ActionAny { subj, act, obj },
                )
            }
            _ => (
                vec![("a", article(w).into()), ("w", w.into())],
                Claim::Neither { cat },
            ),
        };
        let truth = claim.holds(left, right);
        if truth != want {
            continue;
        }
        let refs: Vec<(&str, &str)> = slots.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let sent = crate::text::capitalise(&fill(NLVR2_TEMPLATES[t], &refs));
        return Some(Statement {
            sent,
            template: t,
            claim,
            label: truth,
        });
    }
    None
}
