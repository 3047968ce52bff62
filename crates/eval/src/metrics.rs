//! Metrics of the downstream tasks: VQA soft score, accuracy, and retrieval ranks with
//! recall at 1/5/10 (all in percent, as the paper's tables).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// The VQA soft score of one prediction: the score the gold label gives the predicted
/// answer (LXMERT's `label[ans]`: min(1, annotators/3) in its 0.3/0.6/0.9/1 steps), 0 when
/// the answer is not among the labels or there is no prediction.
pub fn soft_score(label: &BTreeMap<String, f32>, prediction: Option<&str>) -> f64 {
    prediction
        .and_then(|p| label.get(p))
        .map_or(0.0, |&s| f64::from(s))
}

/// Mean soft score in percent over `(label, prediction)` pairs (every gold question counts,
/// a missing prediction scores 0); 0 for no question.
pub fn soft_accuracy<'a>(
    items: impl IntoIterator<Item = (&'a BTreeMap<String, f32>, Option<&'a str>)>,
) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (label, pred) in items {
        sum += soft_score(label, pred);
        n += 1;
    }
    percent(sum, n)
}

/// `100 · correct / n` (0 when `n` is 0).
pub fn percent(correct: f64, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        100.0 * correct / n as f64
    }
}

/// The 0-based rank of the best-scored positive among `scores`: the number of negatives
/// scored at least as high as it. Ties count against the positive (a model that gives every
/// candidate the same score ranks last, not first). Errors on a NaN score or no positive.
pub fn rank(scores: &[f32], positives: &[usize]) -> Result<usize> {
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(EvalError::Metric(format!("score {i} is NaN")));
    }
    let best = positives
        .iter()
        .map(|&p| {
            scores.get(p).copied().ok_or_else(|| {
                EvalError::Metric(format!("positive {p} outside {} scores", scores.len()))
            })
        })
        .try_fold(None, |acc: Option<f32>, s| {
            s.map(|s| Some(acc.map_or(s, |a| a.max(s))))
        })?
        .ok_or_else(|| EvalError::Metric("no positive candidate".into()))?;
    Ok(scores
        .iter()
        .enumerate()
        .filter(|(j, &s)| s >= best && !positives.contains(j))
        .count())
}

/// Recall at 1, 5 and 10 (percent), median and mean rank (1-based) over queries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    /// % of queries with a positive ranked first.
    pub r1: f64,
    /// % within the top 5.
    pub r5: f64,
    /// % within the top 10.
    pub r10: f64,
    /// Median rank (1-based; the lower middle for an even count).
    pub medr: f64,
    /// Mean rank (1-based).
    pub meanr: f64,
    /// Queries.
    pub n: usize,
}

impl Recall {
    /// From 0-based ranks.
    pub fn from_ranks(ranks: &[usize]) -> Self {
        let n = ranks.len();
        let within = |k: usize| percent(ranks.iter().filter(|&&r| r < k).count() as f64, n);
        let mut sorted = ranks.to_vec();
        sorted.sort_unstable();
        let medr = if n == 0 {
            0.0
        } else {
            (sorted[(n - 1) / 2] + 1) as f64
        };
        let meanr = if n == 0 {
            0.0
        } else {
            ranks.iter().map(|&r| (r + 1) as f64).sum::<f64>() / n as f64
        };
        Self {
            r1: within(1),
            r5: within(5),
            r10: within(10),
            medr,
            meanr,
            n,
        }
    }

    /// Mean of R@1, R@5 and R@10 (the paper's Table 4 "avg").
    pub fn avg(&self) -> f64 {
        (self.r1 + self.r5 + self.r10) / 3.0
    }
}

/// Match scores of every caption with every image of a retrieval test set.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreMatrix {
    /// Captions (rows).
    pub captions: usize,
    /// Images (columns).
    pub images: usize,
    /// `captions × images`, row-major.
    pub scores: Vec<f32>,
    /// The image of each caption.
    pub caption_image: Vec<usize>,
}

impl ScoreMatrix {
    /// Checks the shape and that every image has a caption.
    pub fn new(images: usize, caption_image: Vec<usize>, scores: Vec<f32>) -> Result<Self> {
        let captions = caption_image.len();
        if scores.len() != captions * images {
            return Err(EvalError::Metric(format!(
                "{} scores for {captions} captions × {images} images",
                scores.len()
            )));
        }
        let mut seen = vec![false; images];
        for (c, &i) in caption_image.iter().enumerate() {
            *seen.get_mut(i).ok_or_else(|| {
                EvalError::Metric(format!("caption {c} names image {i} of {images}"))
            })? = true;
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(EvalError::Metric(format!("image {i} has no caption")));
        }
        Ok(Self {
            captions,
            images,
            scores,
            caption_image,
        })
    }

    fn row(&self, c: usize) -> &[f32] {
        &self.scores[c * self.images..(c + 1) * self.images]
    }

    fn column(&self, i: usize, rows: &[usize]) -> Vec<f32> {
        rows.iter()
            .map(|&c| self.scores[c * self.images + i])
            .collect()
    }

    /// Image retrieval: each caption ranks every image; its own image is the positive.
    pub fn image_retrieval(&self) -> Result<Recall> {
        let ranks = (0..self.captions)
            .map(|c| rank(self.row(c), &[self.caption_image[c]]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Recall::from_ranks(&ranks))
    }

    /// Text retrieval, standard protocol: each image ranks every caption; a hit when any
    /// of its captions is within the top k.
    pub fn text_retrieval(&self) -> Result<Recall> {
        let all: Vec<usize> = (0..self.captions).collect();
        let ranks = (0..self.images)
            .map(|i| {
                let pos: Vec<usize> = all
                    .iter()
                    .copied()
                    .filter(|&c| self.caption_image[c] == i)
                    .collect();
                rank(&self.column(i, &all), &pos)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Recall::from_ranks(&ranks))
    }

    /// Text retrieval as LXMERT-S computes it: only the first caption of each image is a
    /// candidate (an images × images problem with one positive per image).
    pub fn text_retrieval_first_caption(&self) -> Result<Recall> {
        let mut first = vec![usize::MAX; self.images];
        for (c, &i) in self.caption_image.iter().enumerate() {
            first[i] = first[i].min(c);
        }
        let ranks = (0..self.images)
            .map(|i| rank(&self.column(i, &first), &[i]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Recall::from_ranks(&ranks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(pairs: &[(&str, f32)]) -> BTreeMap<String, f32> {
        pairs.iter().map(|(a, s)| (a.to_string(), *s)).collect()
    }

    #[test]
    fn soft_scores_by_hand() {
        // Three questions: a full hit, a partial (2 of 10 annotators → 0.6), a miss, plus a
        // question with no prediction: (1 + 0.6 + 0 + 0) / 4 = 40 %.
        let l1 = label(&[("yes", 1.0)]);
        let l2 = label(&[("red", 1.0), ("blue", 0.6)]);
        let l3 = label(&[("2", 0.3)]);
        let l4 = label(&[("cat", 1.0)]);
        let acc = soft_accuracy([
            (&l1, Some("yes")),
            (&l2, Some("blue")),
            (&l3, Some("3")),
            (&l4, None),
        ]);
        assert!((acc - 40.0).abs() < 1e-5, "{acc}");
        assert_eq!(soft_accuracy(std::iter::empty()), 0.0);
        assert_eq!(percent(1.0, 3), 100.0 / 3.0);
    }

    #[test]
    fn ranks_with_ties_count_against_the_positive() -> Result<()> {
        assert_eq!(rank(&[0.9, 0.1, 0.5], &[0])?, 0);
        assert_eq!(rank(&[0.9, 0.1, 0.5], &[2])?, 1);
        assert_eq!(rank(&[0.9, 0.1, 0.5], &[1])?, 2);
        // A tie with one negative: rank 1, not 0.
        assert_eq!(rank(&[0.5, 0.5, 0.1], &[0])?, 1);
        // Constant scores: last.
        assert_eq!(rank(&[0.2; 4], &[3])?, 3);
        // Several positives: the best one counts, other positives are not negatives.
        assert_eq!(rank(&[0.3, 0.8, 0.9, 0.1], &[1, 2])?, 0);
        assert_eq!(rank(&[0.95, 0.8, 0.9, 0.1], &[1, 2])?, 1);
        assert!(rank(&[f32::NAN, 0.1], &[1]).is_err());
        assert!(rank(&[0.1], &[]).is_err());
        assert!(rank(&[0.1], &[3]).is_err());
        Ok(())
    }

    #[test]
    fn recall_by_hand() {
        // Ranks 0, 3, 7, 12 → R@1 25, R@5 50, R@10 75; 1-based 1, 4, 8, 13: medr 4, mean 6.5.
        let r = Recall::from_ranks(&[0, 3, 7, 12]);
        assert_eq!((r.r1, r.r5, r.r10), (25.0, 50.0, 75.0));
        assert_eq!((r.medr, r.meanr, r.n), (4.0, 6.5, 4));
        assert_eq!(r.avg(), 50.0);
    }

    #[test]
    fn retrieval_protocols_by_hand() -> Result<()> {
        // 3 images, 2 captions each (captions 0,1 → image 0; 2,3 → 1; 4,5 → 2).
        #[rustfmt::skip]
        let scores = vec![
            // img0 img1 img2
            0.9, 0.1, 0.2, // c0 (img 0): rank 0
            0.1, 0.8, 0.3, // c1 (img 0): rank 2
            0.3, 0.7, 0.2, // c2 (img 1): rank 0
            0.5, 0.4, 0.6, // c3 (img 1): rank 2
            0.1, 0.2, 0.4, // c4 (img 2): rank 0
            0.6, 0.6, 0.6, // c5 (img 2): ties → rank 2
        ];
        let m = ScoreMatrix::new(3, vec![0, 0, 1, 1, 2, 2], scores)?;
        let ir = m.image_retrieval()?;
        assert_eq!(ir.n, 6);
        assert_eq!(ir.r1, 50.0);
        assert_eq!(ir.r5, 100.0);
        // Standard TR. Image 0 column: c0 .9 c1 .1 | c2 .3 c3 .5 c4 .1 c5 .6 → best positive
        // 0.9, rank 0. Image 1: c2 .7 c3 .4 | c0 .1 c1 .8 c4 .2 c5 .6 → best .7, c1 above:
        // rank 1. Image 2: c4 .4 c5 .6 | c0 .2 c1 .3 c2 .2 c3 .6 → best .6 tied with c3:
        // rank 1.
        let tr = m.text_retrieval()?;
        assert_eq!(tr.n, 3);
        assert!((tr.r1 - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(tr.meanr, (1.0 + 2.0 + 2.0) / 3.0);
        // First-caption TR: candidates c0, c2, c4. Image 0: .9 .3 .1 → 0. Image 1: c2 .7
        // vs .1 .2 → 0. Image 2: c4 .4 vs .2 .2 → 0.
        let tr1 = m.text_retrieval_first_caption()?;
        assert_eq!((tr1.r1, tr1.n), (100.0, 3));
        Ok(())
    }

    #[test]
    fn score_matrix_checks_its_shape() {
        assert!(ScoreMatrix::new(2, vec![0, 1], vec![0.0; 3]).is_err());
        assert!(ScoreMatrix::new(2, vec![0, 0], vec![0.0; 4]).is_err());
        assert!(ScoreMatrix::new(2, vec![0, 2], vec![0.0; 4]).is_err());
    }
}
