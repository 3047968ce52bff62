//! MRFR / MOC region masking (LXMERT's `random_feat`).

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};

/// Region masking probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegionMaskConfig {
    /// Probability that a (real, non-padded) region is selected (LXMERT `--objMaskRate` 0.15).
    pub prob: f64,
    /// Of the selected regions, the fraction whose feature is set to zeros (0.8).
    pub zero_frac: f64,
    /// Of the selected regions, the fraction whose feature is replaced by a region of another
    /// image (0.1); the rest (0.1) keeps its feature.
    pub donor_frac: f64,
}

impl Default for RegionMaskConfig {
    fn default() -> Self {
        Self {
            prob: 0.15,
            zero_frac: 0.8,
            donor_frac: 0.1,
        }
    }
}

impl RegionMaskConfig {
    /// Checks the probabilities.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("regions.prob", self.prob),
            ("regions.zero_frac", self.zero_frac),
            ("regions.donor_frac", self.donor_frac),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(TaskError::Config {
                    field,
                    reason: format!("{v} is not a probability"),
                });
            }
        }
        if self.zero_frac + self.donor_frac > 1.0 + 1e-12 {
            return Err(TaskError::Config {
                field: "regions.donor_frac",
                reason: "zero_frac + donor_frac exceeds 1".into(),
            });
        }
        Ok(())
    }
}

/// A supplied set of donor regions: `features [R × D]` row-major, with the image each
/// region comes from (any key that identifies an image, e.g. its store row).
#[derive(Debug, Clone, PartialEq)]
pub struct DonorSet {
    dim: usize,
    features: Vec<f32>,
    images: Vec<usize>,
}

impl DonorSet {
    /// Builds a donor set; `features.len()` must be `images.len() × dim`.
    pub fn new(dim: usize, features: Vec<f32>, images: Vec<usize>) -> Result<Self> {
        if dim == 0 || features.len() != images.len() * dim {
            return Err(TaskError::Shape {
                name: "donor features",
                got: vec![features.len()],
                expected: format!("[{} × {dim}]", images.len()),
            });
        }
        Ok(Self {
            dim,
            features,
            images,
        })
    }

    /// Number of donor regions.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when there is no donor region.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// What happened to a selected region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionAction {
    /// Feature set to zeros.
    Zero,
    /// Feature replaced by a region of another image.
    Donor,
    /// Feature kept (also used when no region of another image exists to donate).
    Keep,
}

/// The result of masking a padded batch `[B, n, D]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionMasked {
    /// Masked features `[B × n × D]` (the model input).
    pub features: Vec<f32>,
    /// `[B × n]`: 1.0 at selected regions (all three actions), 0.0 elsewhere. This is
    /// LXMERT's `feat_mask`, the weight of the feature-regression loss.
    pub feat_mask: Vec<f32>,
    /// Per region: what was done (`None` = not selected).
    pub actions: Vec<Option<RegionAction>>,
}

impl RegionMasked {
    /// Number of selected regions.
    pub fn num_selected(&self) -> usize {
        self.actions.iter().filter(|a| a.is_some()).count()
    }
}

/// Masks regions of a padded batch. The original features are not changed: they are the
/// regression target. Boxes are never touched.
#[derive(Debug, Clone)]
pub struct RegionMasker {
    cfg: RegionMaskConfig,
}

impl RegionMasker {
    /// A masker with validated probabilities.
    pub fn new(cfg: RegionMaskConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &RegionMaskConfig {
        &self.cfg
    }

    /// Masks `features [B × n × D]` whose real regions are marked by `valid [B × n]`
    /// (1 real, 0 padding; padded regions are never selected). `images [B]` identifies the
    /// image of each batch row: a donor region always comes from a *different* image.
    /// Donors are drawn uniformly from `donors` when given, else from the real regions of
    /// the other images of the batch (their original features); when no such region exists
    /// (a batch of one image) the selected region keeps its feature ([`RegionAction::Keep`]).
    #[allow(clippy::too_many_arguments)]
    pub fn mask<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        features: &[f32],
        valid: &[f32],
        images: &[usize],
        n: usize,
        d: usize,
        donors: Option<&DonorSet>,
    ) -> Result<RegionMasked> {
        let b = images.len();
        if valid.len() != b * n {
            return Err(TaskError::Shape {
                name: "region mask",
                got: vec![valid.len()],
                expected: format!("[{b} × {n}]"),
            });
        }
        if features.len() != b * n * d {
            return Err(TaskError::Shape {
                name: "features",
                got: vec![features.len()],
                expected: format!("[{b} × {n} × {d}]"),
            });
        }
        if let Some(ds) = donors {
            if ds.dim != d {
                return Err(TaskError::Shape {
                    name: "donor features",
                    got: vec![ds.len(), ds.dim],
                    expected: format!("feature width {d}"),
                });
            }
        }
        // Every real region of the batch, as (flat region index, image key): the batch donors.
        let batch_regions: Vec<(usize, usize)> = (0..b * n)
            .filter(|&s| valid[s] > 0.5)
            .map(|s| (s, images[s / n]))
            .collect();
        let mut out = RegionMasked {
            features: features.to_vec(),
            feat_mask: vec![0.0; b * n],
            actions: vec![None; b * n],
        };
        for s in 0..b * n {
            if valid[s] <= 0.5 || rng.random::<f64>() >= self.cfg.prob {
                continue;
            }
            out.feat_mask[s] = 1.0;
            let u = rng.random::<f64>();
            let dst = s * d..(s + 1) * d;
            let action = if u < self.cfg.zero_frac {
                out.features[dst].fill(0.0);
                RegionAction::Zero
            } else if u < self.cfg.zero_frac + self.cfg.donor_frac {
                let own = images[s / n];
                let src: Option<&[f32]> = match donors {
                    Some(ds) => pick_other(rng, &ds.images, |i| ds.images[i], own)
                        .map(|i| &ds.features[i * d..(i + 1) * d]),
                    None => pick_other(rng, &batch_regions, |i| batch_regions[i].1, own).map(|i| {
                        let r = batch_regions[i].0;
                        &features[r * d..(r + 1) * d]
                    }),
                };
                match src {
                    Some(src) => {
                        out.features[dst].copy_from_slice(src);
                        RegionAction::Donor
                    }
                    None => RegionAction::Keep,
                }
            } else {
                RegionAction::Keep
            };
            out.actions[s] = Some(action);
        }
        Ok(out)
    }
}

/// A uniform pick among the entries of `items` whose image (given by `image_of`) differs from
/// `own`: rejection sampling (uniform over the accepted set), then an exact scan when the
/// own image dominates. `None` when every entry belongs to `own`.
fn pick_other<T, R: Rng + ?Sized>(
    rng: &mut R,
    items: &[T],
    image_of: impl Fn(usize) -> usize,
    own: usize,
) -> Option<usize> {
    if items.is_empty() {
        return None;
    }
    for _ in 0..32 {
        let i = rng.random_range(0..items.len());
        if image_of(i) != own {
            return Some(i);
        }
    }
    let others: Vec<usize> = (0..items.len()).filter(|&i| image_of(i) != own).collect();
    if others.is_empty() {
        None
    } else {
        Some(others[rng.random_range(0..others.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Batch of `b` images × `n` regions × d = 2, feature of region (i, j) = (100 i + j, 1).
    fn batch(b: usize, n: usize) -> Vec<f32> {
        (0..b * n)
            .flat_map(|s| [(100 * (s / n) + s % n) as f32, 1.0])
            .collect()
    }

    #[test]
    fn rates_split_and_donors_from_other_images() {
        let (b, n, d) = (4, 6, 2);
        let feats = batch(b, n);
        let mut valid = vec![1.0; b * n];
        valid[n - 1] = 0.0; // one padded region
        let images = [10, 11, 12, 10]; // rows 0 and 3 show the same image
        let m = RegionMasker::new(RegionMaskConfig::default()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (mut cand, mut sel, mut zero, mut donor, mut keep) = (0usize, 0usize, 0, 0, 0);
        for _ in 0..20_000 {
            let out = m
                .mask(&mut rng, &feats, &valid, &images, n, d, None)
                .unwrap();
            for s in 0..b * n {
                let f = &out.features[s * d..(s + 1) * d];
                if valid[s] == 0.0 {
                    assert!(out.actions[s].is_none());
                    assert_eq!(out.feat_mask[s], 0.0);
                    continue;
                }
                cand += 1;
                match out.actions[s] {
                    None => {
                        assert_eq!(out.feat_mask[s], 0.0);
                        assert_eq!(f, &feats[s * d..(s + 1) * d]);
                    }
                    Some(a) => {
                        sel += 1;
                        assert_eq!(out.feat_mask[s], 1.0);
                        match a {
                            RegionAction::Zero => {
                                zero += 1;
                                assert_eq!(f, &[0.0, 0.0]);
                            }
                            RegionAction::Donor => {
                                donor += 1;
                                // A real region of a different image.
                                let (row, j) = (f[0] as usize / 100, f[0] as usize % 100);
                                assert_eq!(f[1], 1.0);
                                assert_ne!(images[row], images[s / n]);
                                assert_eq!(valid[row * n + j], 1.0);
                            }
                            RegionAction::Keep => {
                                keep += 1;
                                assert_eq!(f, &feats[s * d..(s + 1) * d]);
                            }
                        }
                    }
                }
            }
        }
        let rate = sel as f64 / cand as f64;
        assert!((rate - 0.15).abs() < 0.005, "rate {rate}");
        let f = |k: usize| k as f64 / sel as f64;
        assert!((f(zero) - 0.8).abs() < 0.01);
        assert!((f(donor) - 0.1).abs() < 0.01);
        assert!((f(keep) - 0.1).abs() < 0.01);
    }

    #[test]
    fn single_image_batch_keeps_instead_of_self_donation() {
        let cfg = RegionMaskConfig {
            prob: 1.0,
            zero_frac: 0.0,
            donor_frac: 1.0,
        };
        let m = RegionMasker::new(cfg).unwrap();
        let feats = batch(2, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        // Both rows are the same image: no donor exists.
        let out = m
            .mask(&mut rng, &feats, &[1.0; 6], &[4, 4], 3, 2, None)
            .unwrap();
        assert_eq!(out.features, feats);
        assert!(out.actions.iter().all(|a| *a == Some(RegionAction::Keep)));
        assert_eq!(out.feat_mask, vec![1.0; 6]);
        // A supplied donor set is used instead, never a region of the own image.
        let ds = DonorSet::new(2, vec![7.0, 7.0, 9.0, 9.0], vec![4, 5]).unwrap();
        let out = m
            .mask(&mut rng, &feats, &[1.0; 6], &[4, 4], 3, 2, Some(&ds))
            .unwrap();
        assert!(out.features.iter().all(|&v| v == 9.0));
    }

    #[test]
    fn zero_prob_masks_nothing_and_shapes_are_checked() {
        let cfg = RegionMaskConfig {
            prob: 0.0,
            ..RegionMaskConfig::default()
        };
        let m = RegionMasker::new(cfg).unwrap();
        let feats = batch(1, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let out = m
            .mask(&mut rng, &feats, &[1.0; 3], &[0], 3, 2, None)
            .unwrap();
        assert_eq!(out.num_selected(), 0);
        assert_eq!(out.feat_mask, vec![0.0; 3]);
        assert!(matches!(
            m.mask(&mut rng, &feats, &[1.0; 2], &[0], 3, 2, None),
            Err(TaskError::Shape {
                name: "region mask",
                ..
            })
        ));
        assert!(DonorSet::new(2, vec![1.0; 3], vec![0]).is_err());
        assert!(RegionMasker::new(RegionMaskConfig {
            zero_frac: 0.9,
            donor_frac: 0.2,
            prob: 0.1
        })
        .is_err());
    }
}
