//! Object/attribute label vocabularies, token-stage text and topic words.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{read_utf8, Result, TextError};

/// A label vocabulary: one label per line, id = 0-based line index (the VG 1600 objects /
/// 400 attributes files, or the synthetic world's). A line may list synonyms separated by
/// commas (as the bottom-up-attention vocabularies do, e.g. `t-shirt,tee shirt`); the first
/// one is the label's display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelVocab {
    lines: Vec<String>,
}

impl LabelVocab {
    /// Reads a vocabulary. Errors: non-UTF-8 (line named), an empty line before the end,
    /// no labels at all.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_utf8(path)?;
        let mut lines: Vec<String> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).trim().to_string())
            .collect();
        while lines.last().is_some_and(String::is_empty) {
            lines.pop();
        }
        if lines.is_empty() {
            return Err(TextError::Empty {
                path: path.to_path_buf(),
                what: "label vocabulary".into(),
            });
        }
        if let Some(i) = lines.iter().position(String::is_empty) {
            return Err(TextError::BadRecord {
                path: path.to_path_buf(),
                record: i,
                field: "label".into(),
                message: format!("empty label on line {}", i + 1),
            });
        }
        Ok(Self { lines })
    }

    /// Builds a vocabulary from labels in id order (must be non-empty).
    pub fn from_labels(labels: Vec<String>) -> Result<Self> {
        if labels.is_empty() || labels.iter().any(|l| l.trim().is_empty()) {
            return Err(TextError::InvalidArgument(
                "label vocabulary must be non-empty and have no empty label".into(),
            ));
        }
        Ok(Self { lines: labels })
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Always false (an empty vocabulary is rejected).
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Display name of a label (first comma-separated alternative), if `id` is in range.
    pub fn name(&self, id: usize) -> Option<&str> {
        self.lines
            .get(id)
            .map(|l| l.split(',').next().unwrap_or(l).trim())
    }

    /// The full line of a label (all alternatives).
    pub fn line(&self, id: usize) -> Option<&str> {
        self.lines.get(id).map(String::as_str)
    }

    /// Display names of all labels, in id order.
    pub fn names(&self) -> Vec<String> {
        (0..self.len())
            .filter_map(|i| self.name(i))
            .map(str::to_string)
            .collect()
    }

    /// Token-stage text: the display names of the regions' labels in region order, joined
    /// with one space. An id out of range (or negative) is an error.
    pub fn token_text<T>(&self, ids: &[T]) -> Result<String>
    where
        T: Copy + TryInto<usize> + std::fmt::Debug,
    {
        let mut out = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            let name = id
                .try_into()
                .ok()
                .and_then(|u| self.name(u))
                .ok_or_else(|| {
                    TextError::InvalidArgument(format!(
                        "region {i}: label id {id:?} outside the vocabulary of {}",
                        self.len()
                    ))
                })?;
            out.push(name);
        }
        Ok(out.join(" "))
    }
}

/// Folds an English word to a singular key: irregular plurals (men, women, children,
/// people, feet, teeth, mice, geese, leaves, knives, wives, …), `-ies` → `-y`, `-ves` →
/// `-f`, `-es` after s/x/z/ch/sh → stem, `-s` (not `-ss`, `-us`, `-is`) → stem. Both the
/// text and the labels are folded, so "glasses" (label) matches "glasses" (text) and "dogs"
/// matches "dog".
pub fn singular(word: &str) -> String {
    const IRREGULAR: &[(&str, &str)] = &[
        ("men", "man"),
        ("women", "woman"),
        ("children", "child"),
        ("people", "person"),
        ("feet", "foot"),
        ("teeth", "tooth"),
        ("mice", "mouse"),
        ("geese", "goose"),
        ("leaves", "leaf"),
        ("knives", "knife"),
        ("wives", "wife"),
        ("lives", "life"),
        ("shelves", "shelf"),
        ("halves", "half"),
        ("loaves", "loaf"),
        ("scarves", "scarf"),
        ("wolves", "wolf"),
        ("calves", "calf"),
        ("oxen", "ox"),
        ("dice", "die"),
        ("buses", "bus"),
        ("glasses", "glass"),
        ("skis", "ski"),
        ("tomatoes", "tomato"),
        ("potatoes", "potato"),
    ];
    let w = word;
    if let Some((_, s)) = IRREGULAR.iter().find(|(p, _)| *p == w) {
        return (*s).to_string();
    }
    if let Some(m) = w.strip_suffix("men").filter(|m| m.len() >= 2) {
        return format!("{m}man"); // firemen, policemen
    }
    if let Some(stem) = w.strip_suffix("ies").filter(|s| s.len() >= 2) {
        return format!("{stem}y");
    }
    for suf in ["sses", "xes", "zes", "ches", "shes"] {
        if w.ends_with(suf) {
            return w[..w.len() - 2].to_string();
        }
    }
    if w.len() > 3
        && w.ends_with('s')
        && !w.ends_with("ss")
        && !w.ends_with("us")
        && !w.ends_with("is")
    {
        return w[..w.len() - 1].to_string();
    }
    w.to_string()
}

/// Lower-case words of a text: maximal runs of alphanumerics, `-` and `'` (a trailing `'s`
/// possessive is dropped).
fn text_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\''))
        .map(|w| {
            let w = w.trim_matches(|c| c == '-' || c == '\'');
            w.strip_suffix("'s").unwrap_or(w).to_string()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Matches texts against a fixed set of label names (build once, use per example).
#[derive(Debug, Clone)]
pub struct TopicMatcher {
    /// Folded first word → list of (folded word sequence, label name), longest first.
    by_first: HashMap<String, Vec<(Vec<String>, String)>>,
}

impl TopicMatcher {
    /// Builds the matcher. Each name may hold comma-separated synonyms; a match on any
    /// synonym yields the name's first alternative, lower-cased.
    pub fn new<S: AsRef<str>>(label_names: &[S]) -> Self {
        let mut by_first: HashMap<String, Vec<(Vec<String>, String)>> = HashMap::new();
        for name in label_names {
            let name = name.as_ref().to_lowercase();
            let display = name.split(',').next().unwrap_or(&name).trim().to_string();
            if display.is_empty() {
                continue;
            }
            for alt in name.split(',') {
                let seq: Vec<String> = text_words(alt).iter().map(|w| singular(w)).collect();
                if let Some(first) = seq.first() {
                    by_first
                        .entry(first.clone())
                        .or_default()
                        .push((seq.clone(), display.clone()));
                }
            }
        }
        for v in by_first.values_mut() {
            v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.1.cmp(&b.1)));
        }
        Self { by_first }
    }

    /// Topic words of `text`: label names found in it, scanning left to right and taking the
    /// longest label at each position (so "traffic light" is one topic, not also "light"),
    /// singular/plural folded on both sides; each name once, in order of first appearance.
    pub fn topic_words(&self, text: &str) -> Vec<String> {
        let words: Vec<String> = text_words(text).iter().map(|w| singular(w)).collect();
        let mut out: Vec<String> = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let mut advanced = 1;
            if let Some(cands) = self.by_first.get(&words[i]) {
                if let Some((seq, name)) = cands.iter().find(|(seq, _)| words[i..].starts_with(seq))
                {
                    if !out.contains(name) {
                        out.push(name.clone());
                    }
                    advanced = seq.len();
                }
            }
            i += advanced;
        }
        out
    }
}

/// Topic words of `text` with respect to `label_names` (see [`TopicMatcher::topic_words`];
/// build a [`TopicMatcher`] once when calling this per example).
pub fn topic_words<S: AsRef<str>>(text: &str, label_names: &[S]) -> Vec<String> {
    TopicMatcher::new(label_names).topic_words(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singular_folds() {
        for (p, s) in [
            ("dogs", "dog"),
            ("glasses", "glass"),
            ("benches", "bench"),
            ("boxes", "box"),
            ("ponies", "pony"),
            ("men", "man"),
            ("leaves", "leaf"),
            ("bus", "bus"),
            ("grass", "grass"),
            ("tennis", "tennis"),
            ("policemen", "policeman"),
            ("dog", "dog"),
        ] {
            assert_eq!(singular(p), s, "{p}");
        }
    }

    #[test]
    fn topics() {
        let labels = [
            "dog",
            "traffic light",
            "light",
            "glasses",
            "man",
            "t-shirt,tee shirt",
        ];
        assert_eq!(
            topic_words("Two dogs under a Traffic Light, a man's glasses.", &labels),
            vec!["dog", "traffic light", "man", "glasses"]
        );
        assert_eq!(
            topic_words("a light and a tee shirt", &labels),
            vec!["light", "t-shirt"]
        );
        assert!(topic_words("nothing here", &labels).is_empty());
    }
}
