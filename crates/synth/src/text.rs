//! Captions (COCO style) and region phrases (Visual Genome style) from scene graphs.
//!
//! All literal text lives in the template tables of this module and of `questions.rs`, so the
//! tokenizer vocabulary can be listed from them (see `vocab.rs`).

use rand::Rng as _;

use crate::config::WorldConfig;
use crate::lexicon::{plural, Action, AttrKind, Lexicon, Super, NUMBER_WORDS, SCENE_TYPES};
use crate::rng::Rng;
use crate::scene::{pick, Scene, Spatial};

/// Sentence frames of captions; `{x}` is the described content.
pub(crate) const CAPTION_FRAMES: &[&str] = &[
    "{x}.",
    "{x}",
    "{x}.",
    "there is {x}.",
    "a photo of {x}.",
    "a picture of {x}.",
    "an image of {x}.",
    "this is {x}.",
    "{x} in this picture.",
    "close up of {x}.",
    "a view of {x}.",
];

/// How a caption or phrase says a spatial relation.
pub(crate) fn spatial_words(rel: Spatial) -> &'static [&'static str] {
    match rel {
        Spatial::LeftOf => &["to the left of", "left of"],
        Spatial::RightOf => &["to the right of", "right of"],
        Spatial::On => &["on", "on top of", "sitting on", "resting on"],
        Spatial::Under => &["under", "underneath", "beneath"],
        Spatial::Near => &["near", "next to", "beside", "by"],
    }
}

/// How a caption says an action (progressive forms).
pub(crate) fn action_words(a: Action) -> &'static [&'static str] {
    match a {
        Action::Riding => &["riding", "riding on"],
        Action::Holding => &["holding", "carrying"],
        Action::Wearing => &["wearing", "dressed in"],
        Action::Eating => &["eating", "biting"],
    }
}

/// Group words for counts of three or more.
pub(crate) const GROUP_WORDS: &[&str] = &["a group of", "several", "some", "many"];
/// Fixed words used by phrases.
pub(crate) const PHRASE_WORDS: &[&str] = &[
    "of",
    "the",
    "a",
    "an",
    "in",
    "background",
    "is",
    "are",
    "and",
    "with",
    "pair",
    "part",
];

/// A fact a caption asserts, used by the retrieval oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Fact {
    Has(usize),
    HasAttr(usize, usize),
    Count(usize, usize),
    Action(usize, Action, usize),
    Spatial(usize, Spatial, usize),
    Place(usize),
}

impl Fact {
    /// Whether a scene satisfies the fact (the retrieval oracle uses the equivalent set of
    /// all facts of a scene; this direct check is for tests).
    #[cfg(test)]
    pub(crate) fn holds(&self, lex: &Lexicon, scene: &Scene) -> bool {
        match *self {
            Fact::Has(c) => scene.count(c) > 0,
            Fact::HasAttr(c, a) => scene
                .objects
                .iter()
                .any(|o| o.cat == c && o.attrs.contains(&a)),
            Fact::Count(c, n) => scene.count(c) == n,
            Fact::Action(s, act, o) => scene.actions.iter().any(|&(a, x, b)| {
                x == act && scene.objects[a].cat == s && scene.objects[b].cat == o
            }),
            Fact::Spatial(a, rel, b) => (0..scene.objects.len()).any(|i| {
                scene.objects[i].cat == a
                    && (0..scene.objects.len())
                        .any(|j| scene.objects[j].cat == b && scene.spatial(lex, rel, i, j))
            }),
            Fact::Place(t) => scene.scene_type == t,
        }
    }
}

/// A noun (label or synonym) for a category.
pub(crate) fn noun(rng: &mut Rng, lex: &Lexicon, cat: usize, synonym_rate: f32) -> &'static str {
    let words = lex.cat(cat).words;
    if words.len() > 1 && rng.random::<f32>() < synonym_rate {
        words[rng.random_range(1..words.len())]
    } else {
        words[0]
    }
}

pub(crate) fn article(word: &str) -> &'static str {
    match word.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => "an",
        _ => "a",
    }
}

fn adjective_rank(lex: &Lexicon, a: usize) -> u8 {
    match lex.attr(a).kind {
        AttrKind::Size => 0,
        AttrKind::State => 1,
        AttrKind::Colour => 2,
        AttrKind::Material => 3,
    }
}

/// Attributes in English adjective order (size, state, colour, material).
pub(crate) fn ordered_attrs(lex: &Lexicon, attrs: &[usize]) -> Vec<usize> {
    let mut v = attrs.to_vec();
    v.sort_by_key(|&a| (adjective_rank(lex, a), a));
    v
}

/// "a red car" / "two dogs" / "the old green car".
fn noun_phrase(
    rng: &mut Rng,
    lex: &Lexicon,
    scene: &Scene,
    obj: usize,
    cfg: &WorldConfig,
    facts: &mut Vec<Fact>,
    group: bool,
) -> String {
    let o = &scene.objects[obj];
    let n = scene.count(o.cat);
    let word = noun(rng, lex, o.cat, cfg.synonym_rate);
    facts.push(Fact::Has(o.cat));
    if group && n >= 2 {
        let words = plural(word);
        if n <= 4 && rng.random::<f32>() < 0.7 {
            facts.push(Fact::Count(o.cat, n));
            if n == 2 && rng.random::<f32>() < 0.2 {
                return format!("a pair of {words}");
            }
            return format!("{} {words}", NUMBER_WORDS[n]);
        }
        return format!("{} {words}", pick(rng, GROUP_WORDS));
    }
    let mut adj = String::new();
    if !o.attrs.is_empty() && rng.random::<f32>() < cfg.caption_attribute_rate {
        let a = *pick(rng, &o.attrs);
        facts.push(Fact::HasAttr(o.cat, a));
        adj = format!("{} ", lex.attr_word(a));
    }
    let head = format!("{adj}{word}");
    format!("{} {head}", article(&head))
}

/// One caption and the facts it asserts.
pub(crate) fn caption(
    rng: &mut Rng,
    cfg: &WorldConfig,
    lex: &Lexicon,
    scene: &Scene,
) -> (String, Vec<Fact>) {
    let mut facts = Vec::new();
    let order = scene.by_salience();
    // The 1–3 salient objects of distinct categories.
    let mut salient: Vec<usize> = Vec::new();
    for &i in &order {
        if salient
            .iter()
            .all(|&j| scene.objects[j].cat != scene.objects[i].cat)
        {
            salient.push(i);
        }
        if salient.len() == 3 {
            break;
        }
    }
    if salient.is_empty() {
        let place = *pick(rng, SCENE_TYPES[scene.scene_type].place);
        facts.push(Fact::Place(scene.scene_type));
        return (capitalise(&format!("a scene {place}.")), facts);
    }
    let k = rng.random_range(1..=salient.len());
    let main = salient[if rng.random::<f32>() < 0.7 {
        0
    } else {
        rng.random_range(0..k)
    }];
    let group = rng.random::<f32>() < 0.5;
    let subj = noun_phrase(rng, lex, scene, main, cfg, &mut facts, group);
    let mut content = subj.clone();
    // An action of the main object, or a relation to another salient object.
    let acts: Vec<&(usize, Action, usize)> = scene.actions.iter().filter(|a| a.0 == main).collect();
    let mut used_second = false;
    if !acts.is_empty() && rng.random::<f32>() < 0.75 {
        let &&(s, act, o) = pick(rng, &acts);
        let verb = *pick(rng, action_words(act));
        let obj = noun_phrase(rng, lex, scene, o, cfg, &mut facts, false);
        facts.push(Fact::Action(
            scene.objects[s].cat,
            act,
            scene.objects[o].cat,
        ));
        let is = if rng.random::<f32>() < 0.3 {
            if content.starts_with("a ") || content.starts_with("an ") {
                "is "
            } else {
                "are "
            }
        } else {
            ""
        };
        content = format!("{content} {is}{verb} {obj}");
        used_second = true;
    } else if k > 1 {
        let others: Vec<usize> = salient[..k]
            .iter()
            .copied()
            .filter(|&i| i != main)
            .collect();
        let other = *pick(rng, &others);
        let rels: Vec<Spatial> = Spatial::ALL
            .iter()
            .copied()
            .filter(|&r| scene.spatial(lex, r, main, other))
            .collect();
        let obj = noun_phrase(rng, lex, scene, other, cfg, &mut facts, false);
        if let Some(&rel) = rels.first().filter(|_| rng.random::<f32>() < 0.8) {
            let words = *pick(rng, spatial_words(rel));
            facts.push(Fact::Spatial(
                scene.objects[main].cat,
                rel,
                scene.objects[other].cat,
            ));
            content = format!("{content} {words} {obj}");
        } else {
            content = format!("{content} and {obj}");
        }
        used_second = true;
    }
    if !used_second && k > 1 && rng.random::<f32>() < 0.5 {
        let other = salient[1..k][rng.random_range(0..k - 1)];
        let obj = noun_phrase(rng, lex, scene, other, cfg, &mut facts, false);
        content = format!("{content} with {obj}");
    }
    if rng.random::<f32>() < 0.55 {
        let place = *pick(rng, SCENE_TYPES[scene.scene_type].place);
        facts.push(Fact::Place(scene.scene_type));
        content = format!("{content} {place}");
    }
    let frame = *pick(rng, CAPTION_FRAMES);
    (capitalise(&frame.replace("{x}", &content)), facts)
}

/// Upper-cases the first letter (COCO captions mostly start with a capital).
pub(crate) fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// One region phrase with its box.
#[derive(Clone, Debug)]
pub(crate) struct Phrase {
    pub(crate) text: String,
    pub(crate) bbox: [f32; 4],
}

fn union(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    [
        a[0].min(b[0]),
        a[1].min(b[1]),
        a[2].max(b[2]),
        a[3].max(b[3]),
    ]
}

/// "old green car" (all true attributes, adjective order), sometimes with an article.
fn described(
    rng: &mut Rng,
    lex: &Lexicon,
    cat: usize,
    attrs: &[usize],
    synonym_rate: f32,
) -> String {
    let word = noun(rng, lex, cat, synonym_rate);
    let adj: Vec<&str> = ordered_attrs(lex, attrs)
        .iter()
        .map(|&a| lex.attr_word(a))
        .collect();
    let head = if adj.is_empty() {
        word.to_string()
    } else {
        format!("{} {word}", adj.join(" "))
    };
    match rng.random_range(0..4) {
        0 => format!("{} {head}", article(&head)),
        1 => format!("the {head}"),
        _ => head,
    }
}

/// Visual Genome style region phrases of one scene: attribute phrases for most objects,
/// relation and action phrases (some with verbs), parts and background stuff.
pub(crate) fn phrases(
    rng: &mut Rng,
    cfg: &WorldConfig,
    lex: &Lexicon,
    scene: &Scene,
) -> Vec<Phrase> {
    let target = rng.random_range(cfg.min_phrases..=cfg.max_phrases);
    let syn = cfg.synonym_rate * 0.5;
    let mut out: Vec<Phrase> = Vec::new();
    // Every object gets an attribute phrase first (in random order), so phrases cover regions.
    let mut objs: Vec<usize> = (0..scene.objects.len()).collect();
    for i in (1..objs.len()).rev() {
        let j = rng.random_range(0..=i);
        objs.swap(i, j);
    }
    for &i in &objs {
        if out.len() >= target {
            break;
        }
        let o = &scene.objects[i];
        out.push(Phrase {
            text: described(rng, lex, o.cat, &o.attrs, syn),
            bbox: o.bbox,
        });
    }
    let mut guard = 0;
    while out.len() < target && guard < 100 {
        guard += 1;
        let kind = rng.random_range(0..6);
        match kind {
            0 if !scene.actions.is_empty() => {
                let &(s, act, o) = pick(rng, &scene.actions);
                let (ing, pres) = act.forms();
                let verb = if rng.random::<f32>() < 0.7 { ing } else { pres };
                let a = &scene.objects[s];
                let b = &scene.objects[o];
                let text = format!(
                    "{} {verb} {}",
                    described(rng, lex, a.cat, &[], syn),
                    described(rng, lex, b.cat, &b.attrs[..b.attrs.len().min(1)], syn)
                );
                out.push(Phrase {
                    text,
                    bbox: union(a.bbox, b.bbox),
                });
            }
            1 | 2 if scene.objects.len() >= 2 => {
                let i = rng.random_range(0..scene.objects.len());
                let j = rng.random_range(0..scene.objects.len());
                let rels: Vec<Spatial> = Spatial::ALL
                    .iter()
                    .copied()
                    .filter(|&r| scene.spatial(lex, r, i, j))
                    .collect();
                if rels.is_empty() {
                    continue;
                }
                let rel = *pick(rng, &rels);
                let words = *pick(rng, spatial_words(rel));
                let a = &scene.objects[i];
                let b = &scene.objects[j];
                let text = format!(
                    "{} {words} {}",
                    described(rng, lex, a.cat, &a.attrs[..a.attrs.len().min(1)], syn),
                    described(rng, lex, b.cat, &[], syn)
                );
                out.push(Phrase {
                    text,
                    bbox: union(a.bbox, b.bbox),
                });
            }
            3 if !scene.stuff.is_empty() => {
                let s = pick(rng, &scene.stuff);
                let mut text = described(rng, lex, s.cat, &s.attrs, 0.0);
                if rng.random::<f32>() < 0.25 {
                    text = format!("{text} in the background");
                }
                out.push(Phrase { text, bbox: s.bbox });
            }
            4 if !scene.objects.is_empty() => {
                let i = rng.random_range(0..scene.objects.len());
                let o = &scene.objects[i];
                let parts = crate::lexicon::parts_of(lex.cat(o.cat).sup, lex.label(o.cat));
                if parts.is_empty() {
                    continue;
                }
                let part = *pick(rng, parts);
                let owner = noun(rng, lex, o.cat, syn);
                let text = format!("{part} of the {owner}");
                out.push(Phrase { text, bbox: o.bbox });
            }
            5 if !scene.objects.is_empty() => {
                let i = rng.random_range(0..scene.objects.len());
                let o = &scene.objects[i];
                let n = scene.count(o.cat);
                if n < 2 || lex.cat(o.cat).sup == Super::Clothing {
                    continue;
                }
                let members: Vec<&crate::scene::Object> =
                    scene.objects.iter().filter(|x| x.cat == o.cat).collect();
                let bbox = members
                    .iter()
                    .fold(members[0].bbox, |acc, x| union(acc, x.bbox));
                let text = format!(
                    "{} {}",
                    NUMBER_WORDS[n.min(10)],
                    plural(noun(rng, lex, o.cat, syn))
                );
                out.push(Phrase { text, bbox });
            }
            _ => {}
        }
    }
    out
}
