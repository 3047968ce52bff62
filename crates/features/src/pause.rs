//! Deterministic interruption points for crash tests (SPEC §10: "a killed run resumes").
//!
//! Code that writes outputs calls [`pause_point`] at named moments (`features.convert.record`,
//! `synth.world.vocab`, `pretrain.checkpoint.weights`, …). Normally this is one environment
//! look-up, cached. When [`PAUSE_ENV`] names the point (`point` or `point#n` for its n-th
//! occurrence in the process, n ≥ 1), the process prints [`PAUSED_MARKER`] and the point to
//! stderr and sleeps forever, so a test can SIGKILL it at exactly that moment (a real kill from
//! outside, not a simulated one). It lives here because every crate that writes outputs
//! depends on this one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable naming the point to pause at.
pub const PAUSE_ENV: &str = "MSP_TEST_PAUSE_AT";

/// What a paused process prints on stderr, followed by ` <point>#<n>`.
pub const PAUSED_MARKER: &str = "msp-test: paused at";

fn target() -> Option<&'static (String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let v = std::env::var(PAUSE_ENV).ok()?;
            match v.split_once('#') {
                Some((p, n)) => Some((p.to_string(), n.parse().ok().filter(|&n| n >= 1)?)),
                None => Some((v, 1)),
            }
        })
        .as_ref()
}

/// Pauses the process forever if [`PAUSE_ENV`] names this point and occurrence; otherwise
/// returns at once.
pub fn pause_point(point: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((name, nth)) = target() else {
        return;
    };
    if name != point || HITS.fetch_add(1, Ordering::SeqCst) + 1 != *nth {
        return;
    }
    eprintln!("{PAUSED_MARKER} {point}#{nth}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
