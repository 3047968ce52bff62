//! Prediction files in the public formats, and scoring them against gold files.
//!
//! - VQA: JSON `[{"question_id": int, "answer": str}]` (the EvalAI submission format).
//! - GQA: JSON `[{"questionId": str, "prediction": str}]` (the GQA submission format).
//! - NLVR2: CSV lines `identifier,True|False`, no header (LXMERT's `dump_result`).
//!
//! Gold files are the downstream JSON files of SPEC §2.4 (`msp_text::read_vqa` …).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{io_err, read_json, write_json, EvalError, Result};
use crate::metrics::{percent, soft_accuracy};

/// A downstream task whose predictions are scored from files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoredTask {
    /// VQA v2 (soft score).
    Vqa,
    /// GQA (accuracy).
    Gqa,
    /// NLVR2 (accuracy).
    Nlvr2,
}

impl std::str::FromStr for ScoredTask {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "vqa" => Ok(Self::Vqa),
            "gqa" => Ok(Self::Gqa),
            "nlvr2" => Ok(Self::Nlvr2),
            _ => Err(EvalError::Config {
                field: "task".into(),
                reason: format!("{s:?} (expected vqa, gqa or nlvr2)"),
            }),
        }
    }
}

/// One VQA prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqaPrediction {
    /// The question.
    pub question_id: u64,
    /// The answer string.
    pub answer: String,
}

/// One GQA prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GqaPrediction {
    /// The question.
    #[serde(rename = "questionId")]
    pub question_id: String,
    /// The answer string.
    pub prediction: String,
}

/// One NLVR2 prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nlvr2Prediction {
    /// The example's `identifier`.
    pub identifier: String,
    /// True when the statement is predicted to hold.
    pub label: bool,
}

/// The score of a predictions file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// The task.
    pub task: ScoredTask,
    /// Accuracy in percent (VQA: soft score); a gold item without prediction scores 0.
    pub accuracy: f64,
    /// Gold items.
    pub n: usize,
}

/// Writes VQA predictions (atomically).
pub fn write_vqa_predictions(path: &Path, p: &[VqaPrediction]) -> Result<()> {
    write_json(path, &p, false)
}

/// Writes GQA predictions (atomically).
pub fn write_gqa_predictions(path: &Path, p: &[GqaPrediction]) -> Result<()> {
    write_json(path, &p, false)
}

/// Writes NLVR2 predictions as `identifier,True|False` lines (atomically).
pub fn write_nlvr2_predictions(path: &Path, p: &[Nlvr2Prediction]) -> Result<()> {
    let mut s = String::new();
    for x in p {
        s.push_str(&x.identifier);
        s.push_str(if x.label { ",True\n" } else { ",False\n" });
    }
    msp_curriculum::write_atomic(path, s.as_bytes())?;
    Ok(())
}

/// Reads VQA predictions.
pub fn read_vqa_predictions(path: &Path) -> Result<Vec<VqaPrediction>> {
    read_json(path)
}

/// Reads GQA predictions.
pub fn read_gqa_predictions(path: &Path) -> Result<Vec<GqaPrediction>> {
    read_json(path)
}

/// Reads NLVR2 predictions (`identifier,True|False` per line; blank lines skipped).
pub fn read_nlvr2_predictions(path: &Path) -> Result<Vec<Nlvr2Prediction>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let bad = |field: &str, reason: String| EvalError::Record {
            path: path.to_path_buf(),
            record: i + 1,
            field: field.into(),
            reason,
        };
        let (id, label) = line
            .rsplit_once(',')
            .ok_or_else(|| bad("line", format!("{line:?} is not `identifier,True|False`")))?;
        let label = match label.trim() {
            "True" | "true" | "1" => true,
            "False" | "false" | "0" => false,
            other => return Err(bad("label", format!("{other:?} is not True or False"))),
        };
        if id.is_empty() {
            return Err(bad("identifier", "empty".into()));
        }
        out.push(Nlvr2Prediction {
            identifier: id.to_string(),
            label,
        });
    }
    Ok(out)
}

/// Indexes predictions by key, refusing duplicates and keys absent from the gold file.
fn index_predictions<'a, K: std::hash::Hash + Eq + std::fmt::Display, V>(
    path: &Path,
    field: &str,
    preds: impl IntoIterator<Item = (K, &'a V)>,
    gold: &HashMap<K, usize>,
) -> Result<HashMap<usize, &'a V>> {
    let mut out = HashMap::new();
    for (r, (k, v)) in preds.into_iter().enumerate() {
        let bad = |reason: String| EvalError::Record {
            path: path.to_path_buf(),
            record: r,
            field: field.into(),
            reason,
        };
        let g = *gold
            .get(&k)
            .ok_or_else(|| bad(format!("{k} is not in the gold file")))?;
        if out.insert(g, v).is_some() {
            return Err(bad(format!("{k} is predicted twice")));
        }
    }
    Ok(out)
}

/// Soft-score accuracy of keyed answer predictions against keyed gold labels.
fn score_soft<'a, K: std::hash::Hash + Eq + std::fmt::Display>(
    task: ScoredTask,
    pred: &Path,
    field: &str,
    gold: Vec<(K, &BTreeMap<String, f32>)>,
    preds: impl IntoIterator<Item = (K, &'a String)>,
) -> Result<Score> {
    let n = gold.len();
    let mut labels = Vec::with_capacity(n);
    let mut ids = HashMap::with_capacity(n);
    for (i, (k, l)) in gold.into_iter().enumerate() {
        ids.insert(k, i);
        labels.push(l);
    }
    let by = index_predictions(pred, field, preds, &ids)?;
    let accuracy = soft_accuracy(
        labels
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, by.get(&i).map(|a| a.as_str()))),
    );
    Ok(Score { task, accuracy, n })
}

/// Scores a predictions file against a gold file.
pub fn score_file(task: ScoredTask, pred: &Path, gold: &Path) -> Result<Score> {
    match task {
        ScoredTask::Vqa => {
            let g = msp_text::read_vqa(gold)?;
            let p = read_vqa_predictions(pred)?;
            score_soft(
                task,
                pred,
                "question_id",
                g.iter().map(|q| (q.question_id, &q.label)).collect(),
                p.iter().map(|x| (x.question_id, &x.answer)),
            )
        }
        ScoredTask::Gqa => {
            let g = msp_text::read_gqa(gold)?;
            let p = read_gqa_predictions(pred)?;
            score_soft(
                task,
                pred,
                "questionId",
                g.iter()
                    .map(|q| (q.question_id.clone(), &q.label))
                    .collect(),
                p.iter().map(|x| (x.question_id.clone(), &x.prediction)),
            )
        }
        ScoredTask::Nlvr2 => {
            let g = msp_text::read_nlvr2(gold)?;
            let p = read_nlvr2_predictions(pred)?;
            let ids: HashMap<String, usize> = g
                .iter()
                .enumerate()
                .map(|(i, e)| (e.identifier.clone(), i))
                .collect();
            let by = index_predictions(
                pred,
                "identifier",
                p.iter().map(|x| (x.identifier.clone(), &x.label)),
                &ids,
            )?;
            let correct = g
                .iter()
                .enumerate()
                .filter(|(i, e)| by.get(i).is_some_and(|&&l| l == (e.label == 1)))
                .count();
            Ok(Score {
                task,
                accuracy: percent(correct as f64, g.len()),
                n: g.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msp_text::{GqaQuestion, Nlvr2Example, VqaQuestion};

    fn vqa(id: u64, label: &[(&str, f32)]) -> VqaQuestion {
        VqaQuestion {
            question_id: id,
            img_id: "1".into(),
            sent: "what?".into(),
            label: label.iter().map(|(a, s)| (a.to_string(), *s)).collect(),
            answer_type: "other".into(),
            question_type: "what".into(),
        }
    }

    #[test]
    fn vqa_file_scores_by_hand() -> Result<()> {
        let d = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let gold = d.path().join("gold.json");
        msp_text::downstream::write_vqa(
            &gold,
            &[
                vqa(1, &[("yes", 1.0)]),
                vqa(2, &[("red", 0.6), ("blue", 1.0)]),
                vqa(3, &[("2", 1.0)]),
            ],
        )?;
        let pred = d.path().join("pred.json");
        // Hit, partial 0.6, question 3 missing: (1 + 0.6 + 0) / 3.
        write_vqa_predictions(
            &pred,
            &[
                VqaPrediction {
                    question_id: 2,
                    answer: "red".into(),
                },
                VqaPrediction {
                    question_id: 1,
                    answer: "yes".into(),
                },
            ],
        )?;
        let s = score_file(ScoredTask::Vqa, &pred, &gold)?;
        assert_eq!(s.n, 3);
        assert!((s.accuracy - 160.0 / 3.0).abs() < 1e-4, "{}", s.accuracy);
        // The file is in the public format.
        let v: serde_json::Value = read_json(&pred)?;
        assert_eq!(v[0]["question_id"], 2);
        assert_eq!(v[0]["answer"], "red");

        // Unknown and duplicate ids are errors naming the record.
        std::fs::write(&pred, r#"[{"question_id": 9, "answer": "yes"}]"#).map_err(io_err(&pred))?;
        let e = score_file(ScoredTask::Vqa, &pred, &gold)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pred.json") && e.contains("record 0") && e.contains("9"),
            "{e}"
        );
        std::fs::write(
            &pred,
            r#"[{"question_id": 1, "answer": "yes"}, {"question_id": 1, "answer": "no"}]"#,
        )
        .map_err(io_err(&pred))?;
        let e = score_file(ScoredTask::Vqa, &pred, &gold)
            .unwrap_err()
            .to_string();
        assert!(e.contains("record 1") && e.contains("twice"), "{e}");
        std::fs::write(&pred, r#"[{"question_id": 1}]"#).map_err(io_err(&pred))?;
        assert!(score_file(ScoredTask::Vqa, &pred, &gold).is_err());
        Ok(())
    }

    #[test]
    fn gqa_and_nlvr2_files_score_by_hand() -> Result<()> {
        let d = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let gold = d.path().join("gqa.json");
        let q = |id: &str, a: &str| GqaQuestion {
            question_id: id.into(),
            img_id: "1".into(),
            sent: "is it?".into(),
            label: [(a.to_string(), 1.0)].into_iter().collect(),
        };
        msp_text::downstream::write_gqa(&gold, &[q("a1", "yes"), q("a2", "left"), q("a3", "no")])?;
        let pred = d.path().join("gqa-pred.json");
        std::fs::write(
            &pred,
            r#"[{"questionId": "a1", "prediction": "yes"}, {"questionId": "a2", "prediction": "right"}, {"questionId": "a3", "prediction": "no"}]"#,
        )
        .map_err(io_err(&pred))?;
        let s = score_file(ScoredTask::Gqa, &pred, &gold)?;
        assert!((s.accuracy - 200.0 / 3.0).abs() < 1e-9);

        let gold = d.path().join("nlvr2.json");
        let e = |id: &str, label: u8| Nlvr2Example {
            identifier: id.into(),
            img0: "1".into(),
            img1: "2".into(),
            sent: "there are two dogs".into(),
            label,
            uid: id.into(),
        };
        msp_text::downstream::write_nlvr2(
            &gold,
            &[e("x-0", 1), e("x-1", 0), e("x-2", 1), e("x-3", 0)],
        )?;
        let pred = d.path().join("nlvr2.csv");
        write_nlvr2_predictions(
            &pred,
            &[
                Nlvr2Prediction {
                    identifier: "x-0".into(),
                    label: true,
                },
                Nlvr2Prediction {
                    identifier: "x-1".into(),
                    label: true,
                },
                Nlvr2Prediction {
                    identifier: "x-3".into(),
                    label: false,
                },
            ],
        )?;
        assert_eq!(
            std::fs::read_to_string(&pred).map_err(io_err(&pred))?,
            "x-0,True\nx-1,True\nx-3,False\n"
        );
        // x-0 right, x-1 wrong, x-2 missing, x-3 right: 2 / 4.
        let s = score_file(ScoredTask::Nlvr2, &pred, &gold)?;
        assert_eq!((s.accuracy, s.n), (50.0, 4));
        std::fs::write(&pred, "x-0,Maybe\n").map_err(io_err(&pred))?;
        let e = score_file(ScoredTask::Nlvr2, &pred, &gold)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nlvr2.csv") && e.contains("record 1") && e.contains("Maybe"),
            "{e}"
        );
        Ok(())
    }
}
