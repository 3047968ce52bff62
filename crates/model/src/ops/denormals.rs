//! Denormal floats flushed to zero, per thread: the x86-64 flush-to-zero (FTZ) and
//! denormals-are-zero (DAZ) modes, which PyTorch sets with `torch.set_flush_denormal(True)`.
//!
//! An f32 with |x| < 2⁻¹²⁶ ≈ 1.18e-38 is denormal. On Intel cores an instruction that reads or
//! produces one takes a microcode assist of about a hundred cycles; AMD's Zen cores handle
//! most without one. When this crate's `exp` still gave masked attention scores a probability
//! of ≈ 10⁻³⁸ instead of 0, the small preset's sentence-stage step (`bench train --config
//! small`, batch 32, 2 threads, an Intel Xeon VM with AVX-512) ran 14.7 samples/s keeping
//! denormals and 116 flushing them. The kernels no longer make denormals of their own (both
//! modes now run at the same speed); flushing guards against those a model or its data makes
//! (underflowing gradients, saturated activations). Other architectures keep denormals here.
//!
//! The mode belongs to a thread: `xtask` sets it on its threads (and
//! [`crate::run_side_by_side`] runs the micro-batches in the caller's mode).

/// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) flags.
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = 0x8040;

#[cfg(target_arch = "x86_64")]
fn read_mxcsr() -> u32 {
    let mut csr = 0u32;
    // SAFETY: stores MXCSR into `csr`, changes nothing else.
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
    }
    csr
}

/// Whether this thread flushes denormal floats to zero (x86-64: both FTZ and DAZ set);
/// `false` on other architectures.
pub fn flushes_denormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        read_mxcsr() & FTZ_DAZ == FTZ_DAZ
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Makes this thread flush denormal floats to zero (`on`: denormal inputs read as zero,
/// denormal results written as zero) or keep them, and returns the mode it had. Does
/// nothing on other architectures than x86-64 (returns `false`).
///
/// ```
/// use msp_model::ops::{flushes_denormals, set_flush_denormals};
/// use std::hint::black_box;
///
/// // SAFETY: only the results below 1.18e-38 differ.
/// let before = unsafe { set_flush_denormals(true) };
/// let tiny = black_box(1e-30f32) * black_box(1e-10f32);
/// unsafe { set_flush_denormals(before) };
/// if cfg!(target_arch = "x86_64") {
///     assert_eq!(tiny, 0.0);
///     assert!(black_box(1e-30f32) * black_box(1e-10f32) > 0.0);
/// }
/// assert_eq!(flushes_denormals(), before);
/// ```
///
/// # Safety
/// Rust compiles code for the default floating-point environment: under this mode, values
/// that would be denormal can be computed as zero at run time while constants folded by
/// the compiler keep them, so results below 1.18e-38 may differ between the two. Call it
/// where that is acceptable (training, evaluation).
pub unsafe fn set_flush_denormals(on: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let old = read_mxcsr();
        let new = if on { old | FTZ_DAZ } else { old & !FTZ_DAZ };
        // SAFETY: loads MXCSR with only the FTZ and DAZ flags changed (every x86-64 CPU
        // has both); the caller accepts the numerical difference.
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &new, options(nostack, preserves_flags));
        }
        old & FTZ_DAZ == FTZ_DAZ
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = on;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn flushing_turns_denormal_results_and_inputs_into_zero() {
        // 2⁻¹⁴⁰: denormal in f32.
        let denormal = f32::from_bits(1 << 9);
        assert!(denormal > 0.0 && !denormal.is_normal());
        let before = unsafe { set_flush_denormals(true) };
        assert!(flushes_denormals());
        let product = black_box(1e-30f32) * black_box(1e-10f32);
        // DAZ: a denormal input reads as zero, so adding it changes nothing and 2·x is 0.
        let doubled = black_box(denormal) * black_box(2.0f32);
        let was_on = unsafe { set_flush_denormals(false) };
        assert!(was_on && !flushes_denormals());
        let kept = black_box(1e-30f32) * black_box(1e-10f32);
        let kept_doubled = black_box(denormal) * black_box(2.0f32);
        unsafe { set_flush_denormals(before) };
        assert_eq!((product, doubled), (0.0, 0.0));
        assert!((kept - 1e-40).abs() < 1e-43, "{kept}");
        assert_eq!(kept_doubled, f32::from_bits(1 << 10));
    }
}
