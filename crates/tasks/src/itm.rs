//! ITM / ITM-HS negative sampling: which image an example is paired with.

use std::collections::HashMap;

use msp_features::HardNegativePool;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TaskError};

/// ITM sampling settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ItmConfig {
    /// Probability that an example's image is replaced (0.5).
    pub prob: f64,
    /// ITM-HS: how many nearest neighbours of the image (self excluded) are candidates
    /// (default 100). ViLBERT's pool stores the image itself in slot 0 and draws from slots
    /// `1..len`; `msp_features::HardNegativePool` already drops slot 0, so its row is
    /// used from its start, and a ViLBERT pickle (99 neighbours) is used whole.
    pub top_m: usize,
}

impl Default for ItmConfig {
    fn default() -> Self {
        Self {
            prob: 0.5,
            top_m: 100,
        }
    }
}

/// Where the image of an example came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairSource {
    /// The example's own image (label 1).
    Matched,
    /// A hard negative from the pool (label 0).
    Hard,
    /// A uniformly random other image (label 0): ITM, or the ITM-HS fallback.
    Random,
}

/// The outcome for one example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pairing {
    /// Store row of the image fed to the model.
    pub image_row: usize,
    /// How it was chosen.
    pub source: PairSource,
}

impl Pairing {
    /// The ITM label: 1 = matched, 0 = mismatched.
    pub fn label(&self) -> u32 {
        u32::from(self.source == PairSource::Matched)
    }
}

/// Samples the image paired with a text. Images are identified by their feature-store row;
/// a replacement is never the example's own image.
#[derive(Debug, Clone)]
pub struct NegativeSampler {
    cfg: ItmConfig,
    /// ITM-HS: per store row, the candidate store rows (nearest first, at most `top_m`).
    hard: Option<Vec<Vec<usize>>>,
    num_images: usize,
}

impl NegativeSampler {
    /// ITM: random negatives among the `num_images` store rows.
    pub fn random(cfg: ItmConfig, num_images: usize) -> Result<Self> {
        check(&cfg)?;
        Ok(Self {
            cfg,
            hard: None,
            num_images,
        })
    }

    /// ITM-HS: hard negatives from `pool`, whose image ids are mapped onto the store's
    /// `store_ids` (row order). Neighbours missing from the store and the image itself are
    /// dropped; an image that is not in the pool, or has no neighbour left, falls back to a
    /// random other image.
    pub fn hard(cfg: ItmConfig, pool: &HardNegativePool, store_ids: &[String]) -> Result<Self> {
        check(&cfg)?;
        if cfg.top_m == 0 {
            return Err(TaskError::Config {
                field: "itm.top_m",
                reason: "must be ≥ 1".into(),
            });
        }
        let store_row: HashMap<&str, usize> = store_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mut hard = vec![Vec::new(); store_ids.len()];
        for (prow, id) in pool.image_ids.iter().enumerate() {
            let Some(&own) = store_row.get(id.as_str()) else {
                continue;
            };
            let Some(neigh) = pool.pool.get(prow) else {
                continue;
            };
            hard[own] = neigh
                .iter()
                .filter_map(|&j| pool.image_ids.get(j))
                .filter_map(|nid| store_row.get(nid.as_str()).copied())
                .filter(|&r| r != own)
                .take(cfg.top_m)
                .collect();
        }
        Ok(Self {
            cfg,
            hard: Some(hard),
            num_images: store_ids.len(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ItmConfig {
        &self.cfg
    }

    /// Hard-negative candidates of a store row (empty for ITM or an image without any).
    pub fn candidates(&self, row: usize) -> &[usize] {
        self.hard
            .as_ref()
            .and_then(|h| h.get(row))
            .map_or(&[], Vec::as_slice)
    }

    /// Draws the pairing of an example whose own image is store row `row`: kept with
    /// probability `1 − prob`; otherwise a hard negative (ITM-HS, uniform over the
    /// candidates) or a uniformly random other image. With fewer than two images in the
    /// store no other image exists and the pair stays matched.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, row: usize) -> Pairing {
        let matched = Pairing {
            image_row: row,
            source: PairSource::Matched,
        };
        if rng.random::<f64>() >= self.cfg.prob {
            return matched;
        }
        let cands = self.candidates(row);
        if !cands.is_empty() {
            return Pairing {
                image_row: cands[rng.random_range(0..cands.len())],
                source: PairSource::Hard,
            };
        }
        if self.num_images < 2 {
            return matched;
        }
        // Uniform over the other rows: draw from n − 1 and skip the own row.
        let mut r = rng.random_range(0..self.num_images - 1);
        if r >= row {
            r += 1;
        }
        Pairing {
            image_row: r,
            source: PairSource::Random,
        }
    }
}

fn check(cfg: &ItmConfig) -> Result<()> {
    if !(0.0..=1.0).contains(&cfg.prob) {
        return Err(TaskError::Config {
            field: "itm.prob",
            reason: format!("{} is not a probability", cfg.prob),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("img{i}")).collect()
    }

    #[test]
    fn random_negatives_are_uniform_and_never_self() {
        let s = NegativeSampler::random(ItmConfig::default(), 5).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut hist = [0usize; 5];
        let mut neg = 0;
        for _ in 0..40_000 {
            let p = s.sample(&mut rng, 2);
            if p.source == PairSource::Matched {
                assert_eq!((p.image_row, p.label()), (2, 1));
            } else {
                assert_eq!(p.source, PairSource::Random);
                assert_eq!(p.label(), 0);
                assert_ne!(p.image_row, 2);
                neg += 1;
                hist[p.image_row] += 1;
            }
        }
        assert!((neg as f64 / 40_000.0 - 0.5).abs() < 0.01);
        for r in [0, 1, 3, 4] {
            assert!(
                (hist[r] as f64 / neg as f64 - 0.25).abs() < 0.015,
                "{hist:?}"
            );
        }
    }

    #[test]
    fn hard_negatives_come_from_the_pool() {
        // Pool in its own order (ids differ from store order); img1's row lists itself and an
        // image absent from the store, which are dropped.
        let pool = HardNegativePool {
            image_ids: vec![
                "img1".into(),
                "img3".into(),
                "img0".into(),
                "ghost".into(),
                "img2".into(),
            ],
            pool: vec![vec![0, 3, 1, 2, 4], vec![2], vec![], vec![0], vec![0, 1]],
        };
        let cfg = ItmConfig {
            prob: 1.0,
            top_m: 2,
        };
        let s = NegativeSampler::hard(cfg, &pool, &ids(4)).unwrap();
        // img1 (store row 1): neighbours img3, img0 (img2 is beyond top_m = 2).
        assert_eq!(s.candidates(1), &[3, 0]);
        assert_eq!(s.candidates(3), &[0]);
        assert!(s.candidates(0).is_empty()); // empty pool row
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut hist = [0usize; 4];
        for _ in 0..10_000 {
            let p = s.sample(&mut rng, 1);
            assert_eq!(p.source, PairSource::Hard);
            hist[p.image_row] += 1;
        }
        assert_eq!(hist[1] + hist[2], 0);
        assert!((hist[3] as f64 / 10_000.0 - 0.5).abs() < 0.03);
        // Empty pool row → a random other image.
        for _ in 0..200 {
            let p = s.sample(&mut rng, 0);
            assert_eq!(p.source, PairSource::Random);
            assert_ne!(p.image_row, 0);
        }
        // An empty pool altogether → random fallback everywhere.
        let empty = HardNegativePool {
            image_ids: vec![],
            pool: vec![],
        };
        let s = NegativeSampler::hard(cfg, &empty, &ids(3)).unwrap();
        let p = s.sample(&mut rng, 2);
        assert_eq!(p.source, PairSource::Random);
        assert_ne!(p.image_row, 2);
    }

    #[test]
    fn one_image_stays_matched_and_config_is_checked() {
        let s = NegativeSampler::random(
            ItmConfig {
                prob: 1.0,
                top_m: 1,
            },
            1,
        )
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(s.sample(&mut rng, 0).source, PairSource::Matched);
        assert!(NegativeSampler::random(
            ItmConfig {
                prob: -0.1,
                top_m: 1
            },
            3
        )
        .is_err());
        let empty = HardNegativePool {
            image_ids: vec![],
            pool: vec![],
        };
        assert!(NegativeSampler::hard(
            ItmConfig {
                prob: 0.5,
                top_m: 0
            },
            &empty,
            &ids(2)
        )
        .is_err());
    }
}
