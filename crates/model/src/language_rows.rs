//! The language positions a pre-training forward needs at the output.

use candle_core::{DType, Tensor};

use crate::nn::Rows;
use crate::{ModelError, Result};

/// The language rows whose final hidden states a forward computes
/// ([`crate::LxmertModel::forward_rows_t`]): for each example row 0 (the pooler's) and the
/// rows a head reads (the MLM-masked positions), padded to the same count `kept` per example
/// with the first rows not chosen. The output's `language_output` is then `[B, kept, H]`, its
/// row `k` of example `b` being sequence row [`Self::row`]`(b, k)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanguageRows {
    /// `[B · kept]`, ascending within each example, row 0 first.
    pick: Vec<u32>,
    kept: usize,
    seq_len: usize,
}

impl LanguageRows {
    /// Row 0 and `rows[b]` of each example `b` of sequences of `seq_len` (duplicates are
    /// dropped; a row `>= seq_len` is an error).
    pub fn new(rows: &[Vec<usize>], seq_len: usize) -> Result<Self> {
        let bad = |reason: String| ModelError::Input {
            name: "language_rows",
            reason,
        };
        if seq_len == 0 {
            return Err(bad("sequences of length 0".into()));
        }
        let mut chosen: Vec<Vec<bool>> = Vec::with_capacity(rows.len());
        for (b, r) in rows.iter().enumerate() {
            let mut c = vec![false; seq_len];
            c[0] = true;
            for &i in r {
                *c.get_mut(i).ok_or_else(|| {
                    bad(format!("example {b}: row {i} of a sequence of {seq_len}"))
                })? = true;
            }
            chosen.push(c);
        }
        let kept = chosen
            .iter()
            .map(|c| c.iter().filter(|&&x| x).count())
            .max()
            .unwrap_or(1);
        let mut pick = Vec::with_capacity(rows.len() * kept);
        for mut c in chosen {
            // Pad with the first rows not chosen, so every example has `kept`.
            let mut missing = kept - c.iter().filter(|&&x| x).count();
            for x in c.iter_mut().filter(|x| !**x) {
                if missing == 0 {
                    break;
                }
                *x = true;
                missing -= 1;
            }
            pick.extend((0..seq_len).filter(|&i| c[i]).map(|i| i as u32));
        }
        Ok(Self {
            pick,
            kept,
            seq_len,
        })
    }

    /// Row 0 of each example and every position whose label in `labels [B, L]` is `>= 0`
    /// (MLM labels, −1 where nothing is predicted).
    pub fn from_labels(labels: &Tensor) -> Result<Self> {
        let (b, l) = labels.dims2().map_err(|e| ModelError::Input {
            name: "language_rows",
            reason: format!("labels: {e}"),
        })?;
        let v: Vec<i64> = labels.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
        let rows: Vec<Vec<usize>> = v
            .chunks(l.max(1))
            .take(b)
            .map(|r| (0..l).filter(|&i| r[i] >= 0).collect())
            .collect();
        Self::new(&rows, l)
    }

    /// Row 0 of each of `examples` sequences of `seq_len`: what the poolers read.
    pub fn pooled(examples: usize, seq_len: usize) -> Result<Self> {
        Self::new(&vec![Vec::new(); examples], seq_len)
    }

    /// Number of examples `B`.
    pub fn examples(&self) -> usize {
        self.pick.len() / self.kept
    }

    /// Rows computed per example.
    pub fn kept(&self) -> usize {
        self.kept
    }

    /// Length `L` of the full sequences.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The sequence row of computed row `k` of example `b`.
    pub fn row(&self, b: usize, k: usize) -> usize {
        self.pick[b * self.kept + k] as usize
    }

    /// These rows as the layers take them.
    pub fn rows(&self) -> Rows<'_> {
        Rows {
            kept: self.kept,
            of: self.seq_len,
            pick: Some(&self.pick),
        }
    }

    /// Maps flat positions into `[B, L]` (u32, as [`crate::kept_rows`] gives them) to flat
    /// positions into the computed `[B, kept]`; a position not computed is an error.
    pub fn slots_of(&self, flat: &Tensor) -> Result<Tensor> {
        let v: Vec<u32> = flat.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        let slots = v
            .iter()
            .map(|&i| {
                let (b, l) = (i as usize / self.seq_len, i as usize % self.seq_len);
                let row = self
                    .pick
                    .get(b * self.kept..(b + 1) * self.kept)
                    .and_then(|rows| rows.binary_search(&(l as u32)).ok());
                row.map(|k| (b * self.kept + k) as u32)
                    .ok_or_else(|| ModelError::Input {
                        name: "language_rows",
                        reason: format!(
                            "position {l} of example {b} was not computed by the forward \
                             (rows of {} examples × {})",
                            self.examples(),
                            self.seq_len
                        ),
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        let n = slots.len();
        Ok(Tensor::from_vec(slots, n, flat.device())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rows_are_padded_sorted_and_start_at_zero() {
        // Example 0 asks for 4 and 2, example 1 for nothing, example 2 for 0 and 5.
        let r = LanguageRows::new(&[vec![4, 2, 4], vec![], vec![0, 5]], 6).unwrap();
        assert_eq!((r.examples(), r.kept(), r.seq_len()), (3, 3, 6));
        // Example 1 is padded with rows 1 and 2, example 2 with row 1.
        assert_eq!(r.pick, [0, 2, 4, 0, 1, 2, 0, 1, 5]);
        assert_eq!(r.row(2, 2), 5);
        let rows = r.rows();
        assert_eq!((rows.kept, rows.of), (3, 6));
        assert!(LanguageRows::new(&[vec![6]], 6).is_err());
        assert!(LanguageRows::new(&[vec![]], 0).is_err());
        let p = LanguageRows::pooled(2, 4).unwrap();
        assert_eq!((p.kept(), p.pick.as_slice()), (1, &[0u32, 0][..]));
    }

    #[test]
    fn labels_choose_rows_and_positions_map_to_slots() {
        let dev = Device::Cpu;
        let labels = Tensor::new(&[[-1i64, 7, -1, 3], [-1, -1, -1, -1]], &dev).unwrap();
        let r = LanguageRows::from_labels(&labels).unwrap();
        assert_eq!(r.pick, [0, 1, 3, 0, 1, 2]);
        // Flat [B, L] positions 1, 3 (example 0) and 4 (example 1, row 0) → 1, 2 and 3.
        let flat = Tensor::new(&[1u32, 3, 4], &dev).unwrap();
        let slots: Vec<u32> = r.slots_of(&flat).unwrap().to_vec1().unwrap();
        assert_eq!(slots, [1, 2, 3]);
        // Position 3 of example 1 was not computed.
        let err = r
            .slots_of(&Tensor::new(&[7u32], &dev).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("position 3 of example 1"), "{err}");
    }
}
