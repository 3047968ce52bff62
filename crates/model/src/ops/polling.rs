//! Rayon's other workers kept polling for work between the matrix products of a training
//! loop, instead of going to sleep in the short serial stretches between them.
//!
//! A rayon worker that finds no work yields for a few dozen rounds and then sleeps; waking
//! it again costs the thread that pushed the work a system call and the sleeper tens of
//! microseconds (measured on a 2-core VM: the stolen half of a `join` started 20–30 µs
//! late after a 50–1000 µs serial gap, 1 µs late without one). A training step runs several
//! hundred products with serial work between them, so a sleeping worker often woke after its
//! half had already been taken back by the caller. Under [`with_polling_workers`], the first
//! product that finds no worker polling starts one on every other thread of the pool
//! (`rayon::spawn_broadcast`); each runs the pool's pending jobs as they appear
//! (`rayon::yield_now`) and returns to rayon after [`POLLING_IDLE`] without any.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a polling worker looks for work after its last job before it returns to rayon.
pub const POLLING_IDLE: Duration = Duration::from_millis(1);

/// Workers polling now (or started and about to).
static POLLING: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread runs a loop under [`with_polling_workers`].
    static DRIVER: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on this thread with the pool's other workers kept polling for work while the
/// matrix products of [`crate::ops`] run (each worker stops after [`POLLING_IDLE`] without work, so
/// serial phases inside `f` do not keep a core busy). Meant for a training or evaluation loop
/// run on one of the pool's threads; elsewhere it changes nothing.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use msp_model::ops::{linear, with_polling_workers};
///
/// let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
/// let y = pool.install(|| {
///     with_polling_workers(|| {
///         let x = Tensor::ones((64, 256), candle_core::DType::F32, &Device::Cpu)?;
///         let w = Tensor::ones((256, 256), candle_core::DType::F32, &Device::Cpu)?;
///         linear(&x, &w, None)
///     })
/// })?;
/// assert_eq!(y.to_vec2::<f32>()?[3][5], 256.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn with_polling_workers<R>(f: impl FnOnce() -> R) -> R {
    super::with_local(&DRIVER, true, f)
}

/// Called before work is split over the pool: on a thread inside [`with_polling_workers`]
/// with no worker polling, starts one on every other thread of the current pool.
pub(crate) fn keep_workers_polling() {
    if !DRIVER.with(Cell::get) || POLLING.load(Ordering::Acquire) > 0 {
        return;
    }
    let Some(me) = rayon::current_thread_index() else {
        return;
    };
    let others = rayon::current_num_threads().saturating_sub(1);
    if others == 0 {
        return;
    }
    POLLING.fetch_add(others, Ordering::AcqRel);
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() != me {
            poll();
        }
    });
}

/// Runs pending jobs of the pool until [`POLLING_IDLE`] passes without one.
fn poll() {
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            POLLING.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let _done = Done;
    let mut last = Instant::now();
    loop {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            last = Instant::now();
        } else if last.elapsed() > POLLING_IDLE {
            return;
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver's product starts pollers on the other threads; they run the pool's jobs and
    /// stop after POLLING_IDLE, and outside a driver nothing starts.
    #[test]
    fn pollers_start_for_a_driver_only_and_stop_when_idle() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            keep_workers_polling();
            assert_eq!(POLLING.load(Ordering::Acquire), 0, "not a driver");
            with_polling_workers(|| {
                keep_workers_polling();
                assert_eq!(POLLING.load(Ordering::Acquire), 2);
                // Work pushed now is run by the pollers or the driver, with the same result.
                let s: u64 = rayon::iter::ParallelIterator::sum(
                    rayon::iter::IntoParallelIterator::into_par_iter(0..10_000u64),
                );
                assert_eq!(s, 49_995_000);
            });
            let t = Instant::now();
            while POLLING.load(Ordering::Acquire) > 0 {
                assert!(t.elapsed() < Duration::from_secs(5), "pollers did not stop");
                std::thread::sleep(POLLING_IDLE);
            }
            assert!(!DRIVER.with(Cell::get), "the driver flag is restored");
        });
    }
}
