//! The list of every word the generators can emit, in a fixed order, for the world's own
//! BERT-style `vocab.txt` (the same for every seed and preset).

use crate::lexicon::{plural, Action, ATTRIBUTES, CATEGORIES, NUMBER_WORDS, SCENE_TYPES};
use crate::questions::{
    GQA_ACT_WHAT, GQA_BOTH, GQA_LEFT_RIGHT, GQA_REL_COLOR, GQA_REL_MATERIAL, GQA_REL_VERIFY,
    GQA_REL_WHICH, GQA_WHO, NLVR2_TEMPLATES, VQA_ACTION, VQA_ATTR_CHECK, VQA_COLOR, VQA_COUNT,
    VQA_EXISTS, VQA_MATERIAL, VQA_ON_WHAT, VQA_REL_CHECK,
};
use crate::scene::Spatial;
use crate::text::{action_words, spatial_words, CAPTION_FRAMES, GROUP_WORDS, PHRASE_WORDS};

/// Splits text into lower-case words and single punctuation marks (BERT's basic tokenisation,
/// ASCII only), dropping `{slot}` names.
pub(crate) fn basic_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_slot = false;
    for ch in text.chars() {
        if ch == '{' {
            in_slot = true;
            continue;
        }
        if ch == '}' {
            in_slot = false;
            if !cur.is_empty() {
                cur.clear();
            }
            continue;
        }
        if in_slot {
            continue;
        }
        if ch.is_ascii_alphanumeric() {
            cur.push(ch.to_ascii_lowercase());
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if ch.is_ascii_punctuation() {
                out.push(ch.to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Every word (and punctuation mark) the world's text can contain, deduplicated, in a fixed
/// order: templates first, then categories, attributes, numbers.
pub fn world_words() -> Vec<String> {
    let mut texts: Vec<String> = Vec::new();
    let mut push = |s: &str| texts.push(s.to_string());
    for t in CAPTION_FRAMES {
        push(t);
    }
    for t in [
        VQA_EXISTS,
        VQA_ATTR_CHECK,
        VQA_REL_CHECK,
        VQA_COUNT,
        VQA_COLOR,
        VQA_MATERIAL,
        VQA_ACTION,
        VQA_ON_WHAT,
    ] {
        for (q, qt) in t {
            push(q);
            push(qt);
        }
    }
    for t in [
        GQA_REL_COLOR,
        GQA_REL_MATERIAL,
        GQA_REL_WHICH,
        GQA_LEFT_RIGHT,
        GQA_BOTH,
        GQA_REL_VERIFY,
        GQA_WHO,
        GQA_ACT_WHAT,
        NLVR2_TEMPLATES,
    ] {
        for q in t {
            push(q);
        }
    }
    for w in GROUP_WORDS.iter().chain(PHRASE_WORDS) {
        push(w);
    }
    for st in SCENE_TYPES {
        for p in st.place {
            push(p);
        }
    }
    for rel in Spatial::ALL {
        for w in spatial_words(rel) {
            push(w);
        }
        push(crate::questions::rel_phrase(rel));
    }
    for a in Action::ALL {
        for w in action_words(a) {
            push(w);
        }
        let (ing, pres) = a.forms();
        push(ing);
        push(pres);
    }
    for w in [
        "yes",
        "no",
        "left",
        "right",
        "a",
        "an",
        "scene",
        "person",
        "animal",
        "vehicle",
        "furniture",
        "food",
        "clothing",
    ] {
        push(w);
    }
    for c in CATEGORIES {
        for w in c.words {
            push(w);
            push(&plural(w));
        }
    }
    for a in ATTRIBUTES {
        push(a.word);
    }
    for n in NUMBER_WORDS {
        push(n);
    }
    for d in 0..=10 {
        push(&d.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    let mut words = Vec::new();
    for t in &texts {
        for w in basic_words(t) {
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
    }
    words
}
