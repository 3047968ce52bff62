//! Epoch plans and a prefetching data loader whose batch order never depends on thread
//! timing: batch `k` is a pure function of `(seed, k)`.

use std::sync::mpsc::{sync_channel, Receiver};

use candle_core::Device;
use msp_tasks::{Batch, BatchBuilder, Example};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{CurriculumError, Result};

/// Which part (text source) and which of its examples make one micro-batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// Index of the source in the stage.
    pub part: usize,
    /// Example indices within that source.
    pub indices: Vec<usize>,
}

/// The batches of a stage: every epoch shuffles each source's examples with a seeded RNG,
/// cuts them into batches (the last one may be smaller) and, for a joint stage, interleaves
/// the sources' batches in a seeded random order (so each source contributes in proportion
/// to its number of batches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    seed: u64,
    parts: Vec<(usize, usize)>,
}

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

impl StagePlan {
    /// A plan over sources of `(number of examples, batch size)`.
    pub fn new(seed: u64, parts: Vec<(usize, usize)>) -> Result<Self> {
        if parts.is_empty() || parts.iter().any(|&(n, b)| n == 0 || b == 0) {
            return Err(CurriculumError::Config {
                field: "stage".into(),
                reason: format!("every source needs examples and a batch size ≥ 1: {parts:?}"),
            });
        }
        Ok(Self { seed, parts })
    }

    /// Micro-batches per epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        self.parts.iter().map(|&(n, b)| n.div_ceil(b) as u64).sum()
    }

    /// The micro-batches of one epoch, in order.
    pub fn epoch(&self, epoch: u64) -> Vec<BatchPlan> {
        let mut per_part: Vec<Vec<Vec<usize>>> = Vec::new();
        let mut order: Vec<usize> = Vec::new();
        for (p, &(n, b)) in self.parts.iter().enumerate() {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut rng(self.seed, epoch * 64 + p as u64));
            let chunks: Vec<Vec<usize>> = idx.chunks(b).map(<[usize]>::to_vec).collect();
            order.extend(std::iter::repeat_n(p, chunks.len()));
            per_part.push(chunks);
        }
        if self.parts.len() > 1 {
            order.shuffle(&mut rng(self.seed, epoch * 64 + 63));
        }
        let mut next = vec![0usize; self.parts.len()];
        order
            .into_iter()
            .map(|p| {
                let indices = std::mem::take(&mut per_part[p][next[p]]);
                next[p] += 1;
                BatchPlan { part: p, indices }
            })
            .collect()
    }
}

/// Builds micro-batch `k` of a stage.
pub fn build_batch(
    plan: &StagePlan,
    epoch_cache: &mut Option<(u64, Vec<BatchPlan>)>,
    builders: &[BatchBuilder<'_>],
    examples: &[&[Example]],
    k: u64,
    device: &Device,
) -> Result<Batch> {
    let bpe = plan.batches_per_epoch();
    let (epoch, i) = (k / bpe, (k % bpe) as usize);
    if epoch_cache.as_ref().map(|c| c.0) != Some(epoch) {
        *epoch_cache = Some((epoch, plan.epoch(epoch)));
    }
    let bp = match epoch_cache {
        Some((_, v)) => &v[i],
        None => unreachable!("filled above"),
    };
    let ex: Vec<Example> = bp
        .indices
        .iter()
        .map(|&j| examples[bp.part][j].clone())
        .collect();
    Ok(builders[bp.part].build_at(&ex, k, device)?)
}

/// Runs `consume` over micro-batches `start..end` built by `workers` threads ahead of use
/// (each with a bounded queue of 2). Batch `k` is built by worker `k mod workers` and read
/// from that worker's queue, so the order is fixed. When `consume` returns early the
/// workers stop at their next send.
pub fn with_loader<R>(
    plan: &StagePlan,
    builders: &[BatchBuilder<'_>],
    examples: &[&[Example]],
    device: &Device,
    range: std::ops::Range<u64>,
    workers: usize,
    consume: impl FnOnce(&mut dyn FnMut() -> Option<Result<Batch>>) -> R,
) -> R {
    let workers = workers.max(1) as u64;
    std::thread::scope(|s| {
        let mut rxs: Vec<Receiver<Result<Batch>>> = Vec::new();
        for w in 0..workers {
            let (tx, rx) = sync_channel::<Result<Batch>>(2);
            rxs.push(rx);
            let start = range.start + w;
            let end = range.end;
            s.spawn(move || {
                let mut cache = None;
                let mut k = start;
                while k < end {
                    let b = build_batch(plan, &mut cache, builders, examples, k, device);
                    let failed = b.is_err();
                    if tx.send(b).is_err() || failed {
                        break;
                    }
                    k += workers;
                }
            });
        }
        let mut k = range.start;
        let end = range.end;
        let mut next = move || {
            if k >= end {
                return None;
            }
            let rx = &rxs[((k - range.start) % workers) as usize];
            k += 1;
            Some(rx.recv().unwrap_or_else(|_| {
                Err(CurriculumError::Config {
                    field: "loader".into(),
                    reason: "a loader thread stopped".into(),
                })
            }))
        };
        consume(&mut next)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_every_example_once() -> Result<()> {
        let plan = StagePlan::new(5, vec![(10, 4), (3, 2)])?;
        assert_eq!(plan.batches_per_epoch(), 3 + 2);
        for e in 0..3 {
            let ep = plan.epoch(e);
            assert_eq!(ep.len(), 5);
            for (p, n) in [(0usize, 10usize), (1, 3)] {
                let mut seen: Vec<usize> = ep
                    .iter()
                    .filter(|b| b.part == p)
                    .flat_map(|b| b.indices.clone())
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>());
            }
        }
        assert_eq!(plan.epoch(1), plan.epoch(1));
        assert_ne!(plan.epoch(0), plan.epoch(1));
        Ok(())
    }

    #[test]
    fn empty_source_is_refused() {
        assert!(matches!(
            StagePlan::new(1, vec![(0, 4)]),
            Err(CurriculumError::Config { .. })
        ));
    }
}
