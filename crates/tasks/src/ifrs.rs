//! IFRS: image features random shuffle (paper §3.1, eq. 1).
//!
//! Reading of eq. 1: the input of the cross-modality layers is the embedded region sequence
//! with some consecutive triplets shuffled, `t_j^[S] = (r_{i+1}, r_{i+2}, r_i)`; the output
//! `h(r_i^[S])` at position `i` is regressed onto `f(r_i)`, the ROI feature that was at
//! position `i` *before* shuffling (the text keeps its order, so the label at position `i`
//! still names `r_i`). All three positions of a shuffled triplet are regressed, including a
//! position that a transposition happens to leave in place. The loss is the squared error
//! averaged over the feature dimension (the paper sums it; the mean keeps it on the scale of
//! the other visual losses) and then over the shuffled positions of the batch.

use candle_core::{DType, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};

/// The five non-identity permutations of three elements; `σ[j]` is the source offset of
/// output offset `j`.
pub const NON_IDENTITY_TRIPLET_PERMUTATIONS: [[u32; 3]; 5] =
    [[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];

/// IFRS probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IfrsConfig {
    /// Probability that a triplet is shuffled (paper: 5%).
    pub p_shuffle: f64,
}

impl Default for IfrsConfig {
    fn default() -> Self {
        Self { p_shuffle: 0.05 }
    }
}

/// The shuffles of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfrsPlan {
    /// Batch size B.
    pub batch: usize,
    /// Regions per example n (the padded box count).
    pub regions: usize,
    /// `[B × n]`: position `i` of example `b` receives the embedded region `perm[b·n + i]`
    /// (identity outside shuffled triplets).
    pub perm: Vec<u32>,
    /// `[B × n]`: 1 at every position of a shuffled triplet, else 0.
    pub shuffled: Vec<u8>,
    /// Number of shuffled triplets in the batch.
    pub num_shuffled_triplets: usize,
}

impl IfrsPlan {
    /// The identity plan (nothing shuffled).
    pub fn identity(batch: usize, regions: usize) -> Self {
        Self {
            batch,
            regions,
            perm: (0..batch).flat_map(|_| 0..regions as u32).collect(),
            shuffled: vec![0; batch * regions],
            num_shuffled_triplets: 0,
        }
    }

    /// `perm` as a `[B, n]` u32 tensor.
    pub fn perm_tensor(&self, device: &candle_core::Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.perm,
            (self.batch, self.regions),
            device,
        )?)
    }

    /// `shuffled` as a `[B, n]` f32 tensor (the loss weight).
    pub fn shuffled_tensor(&self, device: &candle_core::Device) -> Result<Tensor> {
        let v: Vec<f32> = self.shuffled.iter().map(|&s| f32::from(s)).collect();
        Ok(Tensor::from_vec(v, (self.batch, self.regions), device)?)
    }
}

/// Draws IFRS shuffles.
#[derive(Debug, Clone)]
pub struct IfrsShuffler {
    cfg: IfrsConfig,
}

impl IfrsShuffler {
    /// A shuffler; `p_shuffle` must be a probability.
    pub fn new(cfg: IfrsConfig) -> Result<Self> {
        if !(0.0..=1.0).contains(&cfg.p_shuffle) {
            return Err(TaskError::Config {
                field: "ifrs.p_shuffle",
                reason: format!("{} is not a probability", cfg.p_shuffle),
            });
        }
        Ok(Self { cfg })
    }

    /// Plans the shuffles of a batch whose example `b` has `num_valid[b]` real regions
    /// (the first ones; the rest of the `n` slots is padding). The real regions are split
    /// into consecutive triplets `(0,1,2), (3,4,5), …`; a trailing remainder of one or two
    /// regions and the padding are never shuffled. Each triplet is shuffled independently
    /// with probability `p_shuffle` by a uniformly random non-identity permutation.
    pub fn plan<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        num_valid: &[usize],
        n: usize,
    ) -> Result<IfrsPlan> {
        let b = num_valid.len();
        let mut plan = IfrsPlan::identity(b, n);
        for (bi, &k) in num_valid.iter().enumerate() {
            if k > n {
                return Err(TaskError::Example {
                    index: bi,
                    reason: format!("{k} real regions in {n} slots"),
                });
            }
            for t in 0..k / 3 {
                if rng.random::<f64>() >= self.cfg.p_shuffle {
                    continue;
                }
                let sigma = NON_IDENTITY_TRIPLET_PERMUTATIONS
                    [rng.random_range(0..NON_IDENTITY_TRIPLET_PERMUTATIONS.len())];
                let start = bi * n + 3 * t;
                for (j, &src) in sigma.iter().enumerate() {
                    plan.perm[start + j] = (3 * t) as u32 + src;
                    plan.shuffled[start + j] = 1;
                }
                plan.num_shuffled_triplets += 1;
            }
        }
        Ok(plan)
    }
}

/// Applies IFRS shuffles to embedded regions (the model's hook, re-exported under the task's
/// name): `out[b, k + i] = embedded[b, k + perm[b, i]]` for `perm [B, n]`, keeping the `k`
/// prefix positions (LXMERT-S's visual `[CLS]`) in place. Pass the permutation to the model as
/// `LxmertInputs::visual_permutation` to apply it after the visual feature encoder.
pub use msp_model::permute_regions as apply_ifrs;

/// IFRS loss: `Σ_{b,i} s[b,i] · mean_D (pred[b,i] − target[b,i])² / max(Σ s, 1)` with
/// `pred [B, n, D]` the feat decoder's output on the shuffled input, `target [B, n, D]` the
/// original (pre-shuffle, unmasked) ROI features and `shuffled [B, n]` the 0/1 plan mask.
/// No shuffled position → exactly 0.
pub fn ifrs_loss(pred: &Tensor, target: &Tensor, shuffled: &Tensor) -> Result<Tensor> {
    if pred.dims() != target.dims() || pred.rank() != 3 {
        return Err(TaskError::Shape {
            name: "ifrs target",
            got: target.dims().to_vec(),
            expected: format!("{:?} like the prediction", pred.dims()),
        });
    }
    let (b, n, _) = pred.dims3()?;
    if shuffled.dims() != [b, n] {
        return Err(TaskError::Shape {
            name: "ifrs shuffled mask",
            got: shuffled.dims().to_vec(),
            expected: format!("[{b}, {n}]"),
        });
    }
    let per = pred
        .to_dtype(DType::F32)?
        .sub(&target.to_dtype(DType::F32)?)?
        .sqr()?
        .mean(2)?;
    let w = shuffled.to_dtype(DType::F32)?;
    let count = w.sum_all()?.to_scalar::<f32>()?;
    Ok((per.mul(&w)?.sum_all()? / f64::from(count.max(1.0)))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn permutations_are_all_non_identity_and_distinct() {
        let mut all: Vec<[u32; 3]> = NON_IDENTITY_TRIPLET_PERMUTATIONS.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 5);
        for p in all {
            assert_ne!(p, [0, 1, 2]);
            let mut s = p;
            s.sort();
            assert_eq!(s, [0, 1, 2]);
        }
    }

    #[test]
    fn plan_statistics_and_structure() {
        let sh = IfrsShuffler::new(IfrsConfig::default()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        // 36 real regions → 12 triplets; 8 real of 10 slots → 2 triplets, regions 6..8 alone.
        let (mut triplets, mut shuffled) = (0usize, 0usize);
        let mut by_perm = [0usize; 5];
        for _ in 0..4000 {
            let plan = sh.plan(&mut rng, &[36, 8], 36).unwrap();
            triplets += 14;
            shuffled += plan.num_shuffled_triplets;
            for bi in 0..2 {
                let row = &plan.perm[bi * 36..(bi + 1) * 36];
                let s = &plan.shuffled[bi * 36..(bi + 1) * 36];
                let k = [36, 8][bi];
                for t in 0..36 / 3 {
                    let tri = [row[3 * t], row[3 * t + 1], row[3 * t + 2]];
                    let base = 3 * t as u32;
                    let local = [tri[0] - base, tri[1] - base, tri[2] - base];
                    if s[3 * t] == 1 {
                        assert!(3 * t + 3 <= k, "shuffled outside real triplets");
                        assert_eq!(s[3 * t + 1..3 * t + 3], [1, 1]);
                        assert_ne!(local, [0, 1, 2], "identity in a shuffled triplet");
                        let i = NON_IDENTITY_TRIPLET_PERMUTATIONS
                            .iter()
                            .position(|p| *p == local)
                            .unwrap();
                        by_perm[i] += 1;
                    } else {
                        assert_eq!(local, [0, 1, 2]);
                        assert_eq!(s[3 * t..3 * t + 3], [0, 0, 0]);
                    }
                }
            }
        }
        let rate = shuffled as f64 / triplets as f64;
        // 56k triplets: sd ≈ 0.0009.
        assert!((rate - 0.05).abs() < 0.005, "rate {rate}");
        for c in by_perm {
            assert!(
                (c as f64 / shuffled as f64 - 0.2).abs() < 0.03,
                "{by_perm:?}"
            );
        }
        assert!(sh.plan(&mut rng, &[5], 4).is_err());
        assert!(IfrsShuffler::new(IfrsConfig { p_shuffle: 1.5 }).is_err());
    }

    #[test]
    fn loss_matches_hand_values() {
        let dev = Device::Cpu;
        // B = 1, n = 3, D = 2; positions 0 and 1 shuffled.
        let pred = Tensor::new(&[[[1f32, 2.], [0., 0.], [5., 5.]]], &dev).unwrap();
        let target = Tensor::new(&[[[0f32, 0.], [1., 3.], [0., 0.]]], &dev).unwrap();
        let s = Tensor::new(&[[1f32, 1., 0.]], &dev).unwrap();
        // pos 0: (1 + 4)/2 = 2.5; pos 1: (1 + 9)/2 = 5 → mean 3.75.
        let l: f32 = ifrs_loss(&pred, &target, &s).unwrap().to_scalar().unwrap();
        assert!((l - 3.75).abs() < 1e-6, "{l}");
        // Nothing shuffled → exactly zero.
        let z = Tensor::zeros((1, 3), DType::F32, &dev).unwrap();
        let l: f32 = ifrs_loss(&pred, &target, &z).unwrap().to_scalar().unwrap();
        assert_eq!(l, 0.0);
        assert!(ifrs_loss(&pred, &target.narrow(1, 0, 2).unwrap(), &s).is_err());
    }
}
