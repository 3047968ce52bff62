//! The micro-batches of one training step run side by side, one per core.
//!
//! Splitting every matrix product of a step between the cores makes each product wait for
//! the slower half and leaves the serial work between products (candle's gradient sums and
//! zero fills, small element-wise ops) on one core. Run instead as whole micro-batches, one
//! per core, each with its ops on a single thread, the cores only meet once per step. Two
//! processes of batch 16 side by side (one thread each, small config, 16 steps, 3 rounds)
//! trained 114–128 samples/s together where one process of batch 32 on two threads trained
//! 93–100 (bench/README.md "Session 27").

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::ops::{flushes_denormals, precision, set_flush_denormals, with_precision};

/// One-thread rayon pools, one per micro-batch slot, kept for the life of the process.
static POOLS: Mutex<Vec<Arc<ThreadPool>>> = Mutex::new(Vec::new());

/// The first `n` one-thread pools, built on first use.
fn pools(n: usize) -> Result<Vec<Arc<ThreadPool>>> {
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    while pools.len() < n {
        let i = pools.len();
        let pool = ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(move |_| format!("msp-micro-batch-{i}"))
            .build()
            .map_err(|e| candle_core::Error::Msg(format!("micro-batch thread {i}: {e}")))?;
        pools.push(Arc::new(pool));
    }
    Ok(pools[..n].to_vec())
}

/// Runs `f(0)`, …, `f(n − 1)` at the same time, each on a thread of its own whose rayon pool
/// has that one thread (so the [`crate::ops`] kernels inside run serially), at the caller's
/// [`precision`] and with its denormal mode ([`flushes_denormals`]), and returns their results
/// in order. Meant for the micro-batches of a
/// training step on the CPU, `n` = the cores to use: each runs its forward and backward
/// (with its own [`crate::ops::GradSink`] and [`crate::with_dropout_stream`]), and the caller
/// sums the gradients. A panic in one is resumed on the caller once all have finished.
///
/// ```
/// let squares = msp_model::run_side_by_side(3, |i| {
///     assert_eq!(rayon::current_num_threads(), 1);
///     i * i
/// })?;
/// assert_eq!(squares, vec![0, 1, 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn run_side_by_side<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Result<Vec<T>> {
    let pools = pools(n)?;
    let p = precision();
    let flush = flushes_denormals();
    let run = |i: usize| {
        pools[i].install(|| {
            // SAFETY: the caller's own mode, on a thread that only runs these calls.
            unsafe { set_flush_denormals(flush) };
            with_precision(p, || f(i))
        })
    };
    Ok(std::thread::scope(|s| {
        let others: Vec<_> = (1..n).map(|i| s.spawn(move || run(i))).collect();
        let first = (n > 0).then(|| run(0));
        first
            .into_iter()
            .chain(others.into_iter().map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }))
            .collect()
    }))
}

/// The gradients of `vars` (in their order) taken out of `store`, whose other entries (candle
/// keeps one per tensor of the graph) are dropped here: a micro-batch run by
/// [`run_side_by_side`] hands only these back, and frees the rest on its own thread.
pub fn take_gradients(mut store: GradStore, vars: &[Tensor]) -> Vec<Option<Tensor>> {
    vars.iter().map(|v| store.remove(v)).collect()
}

/// The gradients of the micro-batches of one step ([`take_gradients`] of each, in order)
/// summed per variable (`g₀ + g₁ + …`, in parallel over the variables on the current rayon
/// pool), in `vars`' order. A variable without a gradient in any part has none in the result;
/// [`gradient_store`] makes the store an optimiser reads.
pub fn sum_gradients(
    parts: Vec<Vec<Option<Tensor>>>,
    vars: &[Tensor],
) -> Result<Vec<Option<Tensor>>> {
    (0..vars.len())
        .into_par_iter()
        .map(|v| {
            let mut grads = parts
                .iter()
                .filter_map(|p| p.get(v).and_then(Option::as_ref));
            let Some(first) = grads.next() else {
                return Ok(None);
            };
            grads.try_fold(first.clone(), |sum, g| sum.add(g)).map(Some)
        })
        .collect()
}

/// The gradients `grads` of `vars` (in their order, `None`: no gradient) as candle's
/// `GradStore`.
pub fn gradient_store(vars: &[Tensor], grads: Vec<Option<Tensor>>) -> GradStore {
    let mut store = GradStore::default();
    for (v, g) in vars.iter().zip(grads) {
        if let Some(g) = g {
            store.insert(v, g);
        }
    }
    store
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn micro_batches_overlap_in_time() {
        // Each waits until all have started: run one after the other, this would never end.
        let started = AtomicUsize::new(0);
        let out = run_side_by_side(3, |i| {
            started.fetch_add(1, Ordering::SeqCst);
            while started.load(Ordering::SeqCst) < 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
            (i, std::thread::current().name().map(String::from))
        })
        .unwrap();
        let names: Vec<_> = out.iter().map(|(_, n)| n.clone().unwrap()).collect();
        assert_eq!(out.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(
            names,
            [
                "msp-micro-batch-0",
                "msp-micro-batch-1",
                "msp-micro-batch-2"
            ]
        );
    }

    #[test]
    fn the_callers_precision_is_kept() {
        use crate::ops::Precision;
        let seen = with_precision(Precision::Bf16, || run_side_by_side(2, |_| precision()));
        assert_eq!(seen.unwrap(), [Precision::Bf16, Precision::Bf16]);
    }

    #[test]
    fn the_callers_denormal_mode_is_kept() {
        for flush in [true, false] {
            let before = unsafe { set_flush_denormals(flush) };
            let seen = run_side_by_side(2, |_| flushes_denormals());
            unsafe { set_flush_denormals(before) };
            let want = flush && cfg!(target_arch = "x86_64");
            assert_eq!(seen.unwrap(), [want, want]);
        }
    }

    #[test]
    #[should_panic(expected = "micro-batch 1 failed")]
    fn a_panic_reaches_the_caller() {
        let _ = run_side_by_side(2, |i| {
            if i == 1 {
                panic!("micro-batch 1 failed");
            }
        });
    }
}
