//! Text-only baselines and scene-graph oracles per downstream task.
//!
//! The baseline answers each eval question with the answer of highest total score among the
//! train questions with the same sentence (falling back to the same question type, then to
//! the overall best answer); the oracle answers from the true scene graph. A world is only
//! useful if the gap between the two is large: the answers must need the image.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// One question as the baseline sees it: its text, its type and its soft-score label.
#[derive(Clone, Debug)]
pub(crate) struct QaItem<'a> {
    pub(crate) sent: &'a str,
    pub(crate) qtype: &'a str,
    pub(crate) label: &'a BTreeMap<String, f32>,
}

fn best(scores: &HashMap<&str, f32>) -> Option<String> {
    scores
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(k, _)| k.to_string())
}

/// Fits the text-only prior on `train` and returns its mean soft score on `eval`.
pub(crate) fn text_only_score(train: &[QaItem<'_>], eval: &[QaItem<'_>]) -> f32 {
    let mut by_sent: HashMap<&str, HashMap<&str, f32>> = HashMap::new();
    let mut by_type: HashMap<&str, HashMap<&str, f32>> = HashMap::new();
    let mut global: HashMap<&str, f32> = HashMap::new();
    for q in train {
        for (a, s) in q.label {
            *by_sent.entry(q.sent).or_default().entry(a).or_default() += s;
            *by_type.entry(q.qtype).or_default().entry(a).or_default() += s;
            *global.entry(a).or_default() += s;
        }
    }
    let sent_best: HashMap<&str, String> = by_sent
        .iter()
        .filter_map(|(k, v)| best(v).map(|b| (*k, b)))
        .collect();
    let type_best: HashMap<&str, String> = by_type
        .iter()
        .filter_map(|(k, v)| best(v).map(|b| (*k, b)))
        .collect();
    let global_best = best(&global).unwrap_or_default();
    if eval.is_empty() {
        return 0.0;
    }
    let total: f32 = eval
        .iter()
        .map(|q| {
            let pred = sent_best
                .get(q.sent)
                .or_else(|| type_best.get(q.qtype))
                .unwrap_or(&global_best);
            q.label.get(pred).copied().unwrap_or(0.0)
        })
        .sum();
    total / eval.len() as f32
}

/// Baseline and oracle of one task (scores in [0, 1]; for retrieval, recall at 1/5/10).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskBaseline {
    /// The data set (e.g. "vqa minival").
    pub task: String,
    /// The eval split scored.
    pub split: String,
    /// Examples scored.
    pub examples: usize,
    /// Metric name ("vqa soft score", "accuracy", "IR recall@1" …).
    pub metric: String,
    /// The text-only (or image-blind) baseline.
    pub text_only: f32,
    /// Answering from the true scene graph.
    pub oracle: f32,
}

/// Expected recall@k of the true item under random tie-breaking, given how many candidates
/// score strictly higher (`greater`) and how many others tie with it (`ties`).
pub(crate) fn recall_at(greater: usize, ties: usize, k: usize) -> f32 {
    if greater >= k {
        return 0.0;
    }
    (((k - greater) as f32) / (ties as f32 + 1.0)).min(1.0)
}
