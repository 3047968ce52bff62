//! TITP / TITS targets: topic = words of the text ∩ object labels of the image.

use candle_core::{Device, Tensor};
use msp_text::BertTokenizer;

use crate::error::{Result, TaskError};

/// Topic words of `text` for an image whose regions carry the label names `image_labels`
/// (duplicates allowed): [`msp_text::topic_words`] against the image's own labels, so the
/// intersection is with *this* image (lower-case, multi-word names, singular/plural folded).
pub fn topic_words_for_image<S: AsRef<str>>(text: &str, image_labels: &[S]) -> Vec<String> {
    let mut names: Vec<&str> = image_labels.iter().map(AsRef::as_ref).collect();
    names.sort_unstable();
    names.dedup();
    msp_text::topic_words(text, &names)
}

/// The word-piece ids of the topic of (`text`, image): sorted, deduplicated; empty when text
/// and image share no label.
pub fn topic_ids<S: AsRef<str>>(tok: &BertTokenizer, text: &str, image_labels: &[S]) -> Vec<u32> {
    tok.topic_token_ids(&topic_words_for_image(text, image_labels))
}

/// Multi-hot targets `[B, vocab]` f32: row `b` is 1 at `ids[b]`, 0 elsewhere (an empty topic
/// is an all-zero row, whose BCE is still defined). An id `≥ vocab` is an error.
pub fn multi_hot(ids: &[Vec<u32>], vocab: usize, device: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; ids.len() * vocab];
    for (b, row) in ids.iter().enumerate() {
        for &id in row {
            let id = id as usize;
            if id >= vocab {
                return Err(TaskError::Example {
                    index: b,
                    reason: format!("topic id {id} outside the vocabulary of {vocab}"),
                });
            }
            v[b * vocab + id] = 1.0;
        }
    }
    Ok(Tensor::from_vec(v, (ids.len(), vocab), device)?)
}

/// Topic loss (paper eqs. 2 and 4, LXMERT-S's `BCEWithLogitsLoss`): binary cross-entropy
/// with logits averaged over all `B × vocab` entries.
pub fn topic_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    if logits.dims() != target.dims() {
        return Err(TaskError::Shape {
            name: "topic target",
            got: target.dims().to_vec(),
            expected: format!("{:?} like the topic logits", logits.dims()),
        });
    }
    Ok(msp_model::bce_with_logits(logits, target)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_hot_rows() {
        let t = multi_hot(&[vec![1, 3], vec![]], 4, &Device::Cpu).unwrap();
        let v: Vec<Vec<f32>> = t.to_vec2().unwrap();
        assert_eq!(v, vec![vec![0., 1., 0., 1.], vec![0.; 4]]);
        assert!(matches!(
            multi_hot(&[vec![4]], 4, &Device::Cpu),
            Err(TaskError::Example { index: 0, .. })
        ));
    }

    #[test]
    fn topic_words_use_the_image_labels() {
        let labels = ["dog", "light", "dog", "man"];
        assert_eq!(
            topic_words_for_image("Two dogs under a traffic light", &labels),
            vec!["dog", "light"]
        );
        assert!(topic_words_for_image("a cat", &labels).is_empty());
    }

    #[test]
    fn loss_matches_independent_f64() {
        let x = [[2.0f64, -1.0, 0.5], [0.0, 30.0, -4.0]];
        let z = [[1.0f64, 0.0, 1.0], [0.0, 0.0, 0.0]];
        let mut want = 0.0;
        for b in 0..2 {
            for v in 0..3 {
                // −ln σ(x) = ln(1 + e^−x), −ln(1 − σ(x)) = ln(1 + e^x).
                let x: f64 = x[b][v];
                want += z[b][v] * (-x).exp().ln_1p() + (1.0 - z[b][v]) * x.exp().ln_1p();
            }
        }
        want /= 6.0;
        let dev = Device::Cpu;
        let xs = Tensor::new(&[[2.0f32, -1.0, 0.5], [0.0, 30.0, -4.0]], &dev).unwrap();
        let zs = Tensor::new(&[[1.0f32, 0.0, 1.0], [0.0, 0.0, 0.0]], &dev).unwrap();
        let got: f32 = topic_loss(&xs, &zs).unwrap().to_scalar().unwrap();
        assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
        assert!(topic_loss(&xs, &zs.narrow(1, 0, 2).unwrap()).is_err());
    }
}
