//! Downstream data sets in LXMERT's JSON formats (reference §1.3–1.4): VQA, GQA, NLVR2,
//! Flickr30k retrieval, and the answer vocabularies. Readers validate every record and name
//! the file, record index and field on error; writers are atomic.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{write_atomic, Result, TextError};
use crate::readers::{bad, parse_json};

pub(crate) fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|source| TextError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes)
}

/// A VQA question (`data/vqa/*.json`). The test split has no `label`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqaQuestion {
    /// Integer question id.
    pub question_id: u64,
    /// Image id (COCO file stem).
    pub img_id: String,
    /// The question.
    pub sent: String,
    /// Soft answer scores (empty when absent).
    #[serde(default)]
    pub label: BTreeMap<String, f32>,
    /// `yes/no`, `number`, `other`.
    #[serde(default)]
    pub answer_type: String,
    /// Question type prefix, e.g. `what color is the`.
    #[serde(default)]
    pub question_type: String,
}

/// A GQA question (`data/gqa/*.json`): string question id, one answer with score 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GqaQuestion {
    /// String question id (e.g. `"07333408"`).
    pub question_id: String,
    /// Image id.
    pub img_id: String,
    /// The question.
    pub sent: String,
    /// Answer scores (empty for the submit split).
    #[serde(default)]
    pub label: BTreeMap<String, f32>,
}

/// An NLVR2 example (`data/nlvr2/*.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nlvr2Example {
    /// e.g. `train-10171-0-0`.
    pub identifier: String,
    /// Left image id (`…-img0`).
    pub img0: String,
    /// Right image id (`…-img1`).
    pub img1: String,
    /// The statement.
    pub sent: String,
    /// 1 = true, 0 = false.
    pub label: u8,
    /// e.g. `nlvr2_train_0`.
    pub uid: String,
}

/// A Flickr30k retrieval entry (LXMERT-S `flickr30k_{train,test}2014.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalEntry {
    /// `<digits>.jpg`.
    pub img_path: String,
    /// The captions (5 in the real data).
    pub sentences: Vec<String>,
}

impl RetrievalEntry {
    /// The integer image id (`img_path` without extension), as the hard-negative pool keys it
    /// (reference §1.4). `None` if the stem is not an integer.
    pub fn image_number(&self) -> Option<u64> {
        self.img_path.split('.').next()?.parse().ok()
    }
}

fn check_text(path: &Path, r: usize, field: &str, s: &str) -> Result<()> {
    if s.trim().is_empty() {
        Err(bad(path, r, field, format!("empty {field}")))
    } else {
        Ok(())
    }
}

fn check_scores(path: &Path, r: usize, label: &BTreeMap<String, f32>) -> Result<()> {
    for (a, &s) in label {
        if a.is_empty() {
            return Err(bad(path, r, "label", "empty answer"));
        }
        if !s.is_finite() || !(0.0..=1.0).contains(&s) {
            return Err(bad(
                path,
                r,
                "label",
                format!("score {s} of `{a}` outside [0, 1]"),
            ));
        }
    }
    Ok(())
}

fn check_vocab(
    path: &Path,
    r: usize,
    label: &BTreeMap<String, f32>,
    vocab: Option<&AnswerVocab>,
) -> Result<()> {
    if let Some(v) = vocab {
        if let Some(a) = label.keys().find(|a| v.id(a).is_none()) {
            return Err(bad(
                path,
                r,
                "label",
                format!("answer `{a}` is not in the answer vocabulary"),
            ));
        }
    }
    Ok(())
}

/// Reads a VQA split. With `vocab`, every labelled answer must be in it.
pub fn read_vqa_checked(
    path: impl AsRef<Path>,
    vocab: Option<&AnswerVocab>,
) -> Result<Vec<VqaQuestion>> {
    let path = path.as_ref();
    let v: Vec<VqaQuestion> = parse_json(path)?;
    for (r, q) in v.iter().enumerate() {
        check_text(path, r, "img_id", &q.img_id)?;
        check_text(path, r, "sent", &q.sent)?;
        check_scores(path, r, &q.label)?;
        check_vocab(path, r, &q.label, vocab)?;
    }
    Ok(v)
}

/// Reads a VQA split (`[{question_id:int, img_id, sent, label:{ans:score}, answer_type,
/// question_type}]`).
pub fn read_vqa(path: impl AsRef<Path>) -> Result<Vec<VqaQuestion>> {
    read_vqa_checked(path, None)
}

/// Writes a VQA split (atomically).
pub fn write_vqa(path: impl AsRef<Path>, v: &[VqaQuestion]) -> Result<()> {
    write_json(path.as_ref(), v)
}

/// Reads a GQA split. With `vocab`, every labelled answer must be in it. A labelled question
/// must have exactly one answer.
pub fn read_gqa_checked(
    path: impl AsRef<Path>,
    vocab: Option<&AnswerVocab>,
) -> Result<Vec<GqaQuestion>> {
    let path = path.as_ref();
    let v: Vec<GqaQuestion> = parse_json(path)?;
    for (r, q) in v.iter().enumerate() {
        check_text(path, r, "question_id", &q.question_id)?;
        check_text(path, r, "img_id", &q.img_id)?;
        check_text(path, r, "sent", &q.sent)?;
        check_scores(path, r, &q.label)?;
        if q.label.len() > 1 {
            return Err(bad(
                path,
                r,
                "label",
                format!("{} answers (GQA has one)", q.label.len()),
            ));
        }
        check_vocab(path, r, &q.label, vocab)?;
    }
    Ok(v)
}

/// Reads a GQA split (`[{question_id:str, img_id, sent, label:{ans:1.0}}]`).
pub fn read_gqa(path: impl AsRef<Path>) -> Result<Vec<GqaQuestion>> {
    read_gqa_checked(path, None)
}

/// Writes a GQA split (atomically).
pub fn write_gqa(path: impl AsRef<Path>, v: &[GqaQuestion]) -> Result<()> {
    write_json(path.as_ref(), v)
}

/// Reads an NLVR2 split. Checks: non-empty fields, label 0 or 1.
pub fn read_nlvr2(path: impl AsRef<Path>) -> Result<Vec<Nlvr2Example>> {
    let path = path.as_ref();
    let v: Vec<Nlvr2Example> = parse_json(path)?;
    for (r, e) in v.iter().enumerate() {
        check_text(path, r, "identifier", &e.identifier)?;
        check_text(path, r, "img0", &e.img0)?;
        check_text(path, r, "img1", &e.img1)?;
        check_text(path, r, "sent", &e.sent)?;
        if e.label > 1 {
            return Err(bad(path, r, "label", format!("{} is not 0 or 1", e.label)));
        }
    }
    Ok(v)
}

/// Writes an NLVR2 split (atomically).
pub fn write_nlvr2(path: impl AsRef<Path>, v: &[Nlvr2Example]) -> Result<()> {
    write_json(path.as_ref(), v)
}

/// Reads a Flickr30k retrieval file (`[{img_path, sentences:[…]}]`). Checks: non-empty
/// `img_path`, at least one sentence, no empty sentence.
pub fn read_flickr30k(path: impl AsRef<Path>) -> Result<Vec<RetrievalEntry>> {
    let path = path.as_ref();
    let v: Vec<RetrievalEntry> = parse_json(path)?;
    for (r, e) in v.iter().enumerate() {
        check_text(path, r, "img_path", &e.img_path)?;
        if e.sentences.is_empty() {
            return Err(bad(path, r, "sentences", "no sentences"));
        }
        for (i, s) in e.sentences.iter().enumerate() {
            check_text(path, r, &format!("sentences[{i}]"), s)?;
        }
    }
    Ok(v)
}

/// Writes a Flickr30k retrieval file (atomically).
pub fn write_flickr30k(path: impl AsRef<Path>, v: &[RetrievalEntry]) -> Result<()> {
    write_json(path.as_ref(), v)
}

/// An answer vocabulary: `trainval_ans2label.json` (`{ans: idx}`) and
/// `trainval_label2ans.json` (`[ans…]`), which must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerVocab {
    answers: Vec<String>,
    index: HashMap<String, usize>,
}

impl AnswerVocab {
    /// Builds a vocabulary from answers in label order. Duplicates or empty answers → error.
    pub fn new(answers: Vec<String>) -> Result<Self> {
        let mut index = HashMap::with_capacity(answers.len());
        for (i, a) in answers.iter().enumerate() {
            if a.is_empty() {
                return Err(TextError::InvalidArgument(format!("answer {i} is empty")));
            }
            if index.insert(a.clone(), i).is_some() {
                return Err(TextError::InvalidArgument(format!(
                    "answer `{a}` appears twice"
                )));
            }
        }
        if answers.is_empty() {
            return Err(TextError::InvalidArgument("empty answer vocabulary".into()));
        }
        Ok(Self { answers, index })
    }

    /// Reads both files and checks that they are inverse to each other.
    pub fn read(ans2label: impl AsRef<Path>, label2ans: impl AsRef<Path>) -> Result<Self> {
        let (pa, pl) = (ans2label.as_ref(), label2ans.as_ref());
        let a2l: BTreeMap<String, usize> = parse_json(pa)?;
        let l2a: Vec<String> = parse_json(pl)?;
        if l2a.is_empty() {
            return Err(TextError::Empty {
                path: pl.to_path_buf(),
                what: "answer vocabulary".into(),
            });
        }
        if a2l.len() != l2a.len() {
            return Err(bad(
                pa,
                0,
                "(size)",
                format!(
                    "{} answers, but {} has {}",
                    a2l.len(),
                    pl.display(),
                    l2a.len()
                ),
            ));
        }
        for (i, a) in l2a.iter().enumerate() {
            if a.is_empty() {
                return Err(bad(pl, i, "answer", "empty answer"));
            }
            if a2l.get(a) != Some(&i) {
                return Err(bad(
                    pa,
                    i,
                    a,
                    format!(
                        "expected index {i} (from {}), found {:?}",
                        pl.display(),
                        a2l.get(a)
                    ),
                ));
            }
        }
        Self::new(l2a)
    }

    /// Writes both files (atomically).
    pub fn write(&self, ans2label: impl AsRef<Path>, label2ans: impl AsRef<Path>) -> Result<()> {
        let a2l: BTreeMap<&str, usize> = self
            .answers
            .iter()
            .enumerate()
            .map(|(i, a)| (a.as_str(), i))
            .collect();
        write_json(ans2label.as_ref(), &a2l)?;
        write_json(label2ans.as_ref(), &self.answers)
    }

    /// Number of answers.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Always false (an empty vocabulary is rejected).
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// Label index of an answer.
    pub fn id(&self, answer: &str) -> Option<usize> {
        self.index.get(answer).copied()
    }

    /// Answer of a label index.
    pub fn answer(&self, id: usize) -> Option<&str> {
        self.answers.get(id).map(String::as_str)
    }

    /// All answers in label order.
    pub fn answers(&self) -> &[String] {
        &self.answers
    }
}
