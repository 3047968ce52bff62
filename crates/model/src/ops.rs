//! Fused CPU kernels *with a backward* for a training step: linear layers and matrix products
//! (split over rayon's threads), the multi-head attention core (heads read and written in the
//! `[B, L, H]` layout, probabilities kept for the backward), LayerNorm, exact (erf) GELU,
//! the attention softmax (scale, additive mask, softmax in one pass), softmax cross-entropy,
//! dropout, and dropout plus residual add.
//!
//! candle builds these from 6–15 primitive ops each, and its backward adds a zero-filled
//! gradient buffer and an addition per op, so on the CPU a training step spent more time in
//! memory-bound passes than in matrix products (CANDLE-TRAINING.md "Speed on CPU"). Each
//! function here does one pass forward and one pass backward over f32 rows, in parallel with
//! rayon. On other devices or dtypes each falls back to the composite of candle ops with the
//! same value (the reference the kernels are tested against, see the tests below).
//!
//! [`GradSink`] (opt-in, for a training step) lets these ops' backward write the gradients of
//! the variables they read straight into one buffer per variable, and lets the blocks
//! [`dense_residual_norm`], [`linear_gelu`] and [`feed_forward`] run as one op each.
//!
//! [`with_precision`] runs the matrix products (linear layers, the attention products, the
//! MLM decoder) in bf16 as PyTorch's autocast does: weights stay f32 (the optimiser's master
//! copy), the product's inputs are rounded to bf16, and LayerNorm, softmax, GELU, dropout and
//! the losses stay f32. It is meant for the GPU (tensor cores); on the CPU candle widens bf16
//! products back to f32, so there it only serves to test the numerics.
//!
//! The matrix products split their work over rayon's current pool. Run the training loop
//! on one of the pool's threads (`rayon::ThreadPool::install`, as `cargo xtask` does) so
//! that the caller takes a share of every product instead of waiting beside the workers
//! (a tiny training step ran 1.07–1.35× faster that way), and inside
//! [`with_polling_workers`] so that the other workers poll for the next product instead of
//! sleeping between them.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape,
    Storage, Tensor, D,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

mod attention;
mod blocks;
mod denormals;
mod grad_sink;
mod keep_mask;
mod polling;
mod precision;
pub use attention::{multi_head_attention, multi_head_attention_composite, AttentionDropout};
pub use blocks::{
    dense_residual_norm, dense_residual_norm_composite, feed_forward, feed_forward_composite,
    linear_gelu, FeedForwardParams, ResidualNormParams,
};
pub use denormals::{flushes_denormals, set_flush_denormals};
pub use grad_sink::GradSink;
use keep_mask::keep_or_zero;
pub use keep_mask::KeepMask;
use polling::keep_workers_polling;
pub use polling::{with_polling_workers, POLLING_IDLE};
use precision::products_fused;
pub use precision::{autocast_matmul, precision, with_precision, Precision};

/// Rows smaller than this many elements are processed several to a rayon task.
const MIN_TASK_ELEMS: usize = 16 * 1024;

static FUSED: AtomicBool = AtomicBool::new(true);

/// Switches the fused kernels on or off for the whole process (default on); off, every
/// function here computes its composite reference. For A/B benchmarks and tests.
pub fn set_fused(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// True when the fused CPU kernels are switched on ([`set_fused`]).
pub fn fused_enabled() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// True when the fused CPU kernel applies to `x`.
fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && fused_enabled()
}

/// The contiguous f32 slice behind a CPU storage.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("{op}: expected an f32 tensor")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: expected a contiguous tensor"),
    }
}

/// The contiguous f32 slice of a tensor's storage on the CPU.
fn cpu_slice<'a>(storage: &'a Storage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(s) => slice(s, layout, op),
        _ => bail!("{op}: expected a CPU tensor"),
    }
}

/// Width of the last dimension and number of rows of `l`.
fn rows_of(l: &Layout) -> Result<(usize, usize)> {
    let w = l.dims().last().copied().unwrap_or(1);
    if w == 0 {
        bail!("empty last dimension")
    }
    Ok((l.shape().elem_count() / w, w))
}

/// Runs `f` with this thread's `cell` set to `value`, then restores the previous value (also
/// when `f` panics).
fn with_local<T: Copy + 'static, R>(
    cell: &'static std::thread::LocalKey<std::cell::Cell<T>>,
    value: T,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<std::cell::Cell<T>>, T);
    impl<T: Copy + 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(cell, cell.with(|c| c.replace(value)));
    f()
}

/// Rows per rayon task for rows of `width` elements.
fn min_rows(width: usize) -> usize {
    (MIN_TASK_ELEMS / width.max(1)).max(1)
}

/// `a·b + c`: one fused multiply-add where the compile target has FMA (x86-64-v3, this
/// workspace's default), else a multiply and an add (`mul_add` without FMA in the target is a
/// slow libm call).
#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        a * b + c
    }
}

/// Runs the element-wise loop `f` compiled for AVX-512 where the CPU has it (16 lanes, where
/// the compile target gives 8), and as compiled elsewhere. `f` is inlined into the AVX-512
/// function before the loop vectoriser runs, so its loop gets the wider vectors.
#[inline(always)]
fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { wide_avx512(f) };
    }
    f()
}

/// [`wide`]'s AVX-512 path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wide_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// e^x in f32 with only arithmetic (so it vectorises): Cephes' `expf` (2ⁿ·e^r, |r| ≤ ln2/2,
/// degree-6 polynomial), relative error ≈ 2·10⁻⁷; inputs are clamped to [−87.3, 88], and
/// below −87.3 the result is exactly 0 (where e^x leaves f32's normal range).
///
/// The zero matters for speed as much as for the value: a masked attention score
/// ([`crate::MASK_VALUE`]) once gave e^−87.3 ≈ 1.3·10⁻³⁸, a probability that the softmax's
/// division made denormal, and every product reading such probabilities (the attention's
/// forward and backward) took a microcode assist per element on Intel cores: on a Xeon VM
/// the tiny preset's token stage ran 41 samples/s with denormals kept, 608 with them flushed
/// (446 against 405 since; bench/README.md, "Session 28").
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let below = x < -87.3;
    let x = x.clamp(-87.3, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = madd(n, 2.121_944_4e-4, madd(n, -0.693_359_4, x));
    let mut p = 1.987_569_1e-4f32;
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = madd(p, r, c);
    }
    let e = madd(p, r * r, r) + 1.0;
    let bits = (t.to_bits() as i32 - 0x4B40_0000 + 127) << 23;
    let e = e * f32::from_bits(bits as u32);
    if below {
        0.0
    } else {
        e
    }
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5·10⁻⁷).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    erf_from(x, erf_factor(a) * exp(-a * a))
}

/// The factor `P(t)·t` of A&S 7.1.26 at `a = |x|`: `erf(|x|) = 1 − P(t)·t·e^{−a²}`.
#[inline(always)]
fn erf_factor(a: f32) -> f32 {
    let t = 1.0 / madd(a, 0.327_591_1, 1.0);
    let mut p = 1.061_405_4f32;
    for c in [-1.453_152, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
        p = madd(p, t, c);
    }
    p * t
}

/// erf(x) from the tail `erf_factor(|x|)·e^{−x²}`.
#[inline(always)]
fn erf_from(x: f32, tail: f32) -> f32 {
    (1.0 - tail).copysign(x)
}

/// Φ(x) and φ(x), the standard normal's distribution and density, from one exponential:
/// Φ(x) = (1 + erf(x/√2)) / 2, and erf's `e^{−a²}` at `a = |x|/√2` is `e^{−x²/2}` =
/// √(2π)·φ(x).
#[inline(always)]
fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    let a = x.abs() * FRAC_1_SQRT_2;
    let e = exp(-a * a);
    let erf = erf_from(x, erf_factor(a) * e);
    (0.5 * (1.0 + erf), FRAC_1_SQRT_2PI * e)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// Adds the per-task partial sums `partials` into `out`, in task order (so the result does
/// not depend on thread timing).
fn add_in_order(out: &mut [f32], partials: &[Vec<f32>]) {
    for p in partials {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
}

/// Runs `f(row, out_row)` over the rows of `out` (width `width`) in parallel.
fn par_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    out.par_chunks_mut(width)
        .with_min_len(min_rows(width))
        .enumerate()
        .for_each(|(i, o)| f(i, o));
}

// ---------------------------------------------------------------------------------------------
// Linear layers and matrix products

/// A 2-D f32 operand for [`par_gemm`]: base pointer and row/column strides (elements).
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

// SAFETY: an `Operand` is only read, while the storage it points into is borrowed by the
// calling kernel for the whole (scoped) parallel product.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    /// The operand of a 2-D tensor's storage and layout.
    fn of<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<(Self, &'a [f32])> {
        let CpuStorage::F32(data) = s else {
            bail!("{op}: expected an f32 tensor")
        };
        let [rs, cs] = l.stride() else {
            bail!("{op}: expected a 2-D tensor, got {:?}", l.dims())
        };
        let (rows, cols) = (l.dims()[0], l.dims()[1]);
        let last = l.start_offset() + (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs;
        if rows * cols > 0 && last >= data.len() {
            bail!("{op}: layout outside its storage")
        }
        let op = Self {
            ptr: data[l.start_offset()..].as_ptr(),
            rs: *rs as isize,
            cs: *cs as isize,
        };
        Ok((op, data))
    }

    /// The operand of a 2-D CPU tensor's storage and layout.
    fn of_storage(s: &Storage, l: &Layout, op: &str) -> Result<Self> {
        match s {
            Storage::Cpu(s) => Ok(Self::of(s, l, op)?.0),
            _ => bail!("{op}: expected a CPU tensor"),
        }
    }

    /// A contiguous row-major matrix with `cols` columns at `ptr`.
    fn row_major(ptr: *const f32, cols: usize) -> Self {
        Self {
            ptr,
            rs: cols as isize,
            cs: 1,
        }
    }

    /// The transposed operand (strides swapped).
    fn t(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether this is a transposed row-major matrix (a weight `W` seen as `Wᵀ` in `x · Wᵀ`):
    /// columns contiguous, rows not.
    fn is_transposed(self) -> bool {
        self.rs == 1 && self.cs > 1
    }

    /// The operand shifted by `rows` rows and `cols` columns.
    fn offset(self, rows: usize, cols: usize) -> Self {
        // SAFETY: callers stay inside the operand's shape (checked by `of`).
        let ptr = unsafe {
            self.ptr
                .offset(rows as isize * self.rs + cols as isize * self.cs)
        };
        Self { ptr, ..self }
    }
}

/// `lhs [m, k] · rhs [k, n]` as a new row-major `[m, n]` buffer, by [`par_gemm`] writing
/// into it directly (no zero fill first).
fn product(m: usize, n: usize, k: usize, lhs: Operand, rhs: Operand) -> Vec<f32> {
    if k == 0 {
        return vec![0f32; m * n];
    }
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    let spare = dst.spare_capacity_mut();
    // SAFETY: `spare` holds m·n elements; without `read_dst` every block of `par_gemm` is
    // written (k > 0) and never read, and the blocks cover [m, n], so all m·n are initialised
    // before `set_len`.
    unsafe {
        par_gemm(spare.as_mut_ptr().cast(), (m, n, k), false, lhs, rhs);
        dst.set_len(m * n);
    }
    dst
}

/// `dst [m, n] (row-major) = read_dst·dst + lhs [m, k] · rhs [k, n]`, split into one
/// single-threaded `gemm` per rayon thread: along n when `rhs` is a transposed row-major
/// matrix (a weight `W` as `Wᵀ` in `x · Wᵀ`), along k for a weight gradient
/// ([`par_gemm_over_k`]), else along the larger of m and n.
///
/// Such an `rhs` is copied to row-major order before use ([`with_rows_of`]): split along m,
/// every thread would copy all of it; split along n, each copies its own columns. Measured
/// when gemm still packed it itself, forward products of one LXMERT-S layer on 2 threads
/// (best of 150, one run): 11.35 → 10.55 ms at hidden 256 (the FFN down projection 180 →
/// 200 GFLOP/s), 75.4 → 72.8 ms at hidden 768.
///
/// # Safety
/// `dst` must be valid for writes of m·n elements, and for reads when `read_dst`.
///
/// On a quiet 2-core machine this and the `gemm` crate's own 2-thread mode reach about the
/// same speed (≈ 150 GFLOP/s, `cargo xtask bench gemm`); the split keeps every product on
/// the caller's strides (transposed views cost nothing) with the bias pre-loaded.
unsafe fn par_gemm(
    dst: *mut f32,
    (m, n, k): (usize, usize, usize),
    read_dst: bool,
    lhs: Operand,
    rhs: Operand,
) {
    let out = SharedMut(dst);
    let block = |r0: usize, rows: usize, c0: usize, cols: usize| {
        if rows == 0 || cols == 0 {
            return;
        }
        let (a, b) = (lhs.offset(r0, 0), rhs.offset(0, c0));
        // SAFETY: the block [r0, r0 + rows) × [c0, c0 + cols) lies inside dst (row stride n),
        // blocks of different threads are disjoint, and lhs/rhs cover m × k and k × n.
        unsafe {
            with_rows_of(b, (k, cols), |b| {
                gemm_into(out.at(r0 * n + c0), n, (rows, cols, k), read_dst, a, b)
            })
        }
    };
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || m * n * k < (1 << 18) {
        block(0, m, 0, n);
        return;
    }
    keep_workers_polling();
    if lhs.is_transposed() && !rhs.is_transposed() && k >= m.max(n) {
        // SAFETY: as for this function.
        return unsafe { par_gemm_over_k(dst, (m, n, k), read_dst, lhs, rhs, threads) };
    }
    let packed_rhs = rhs.is_transposed() && n >= 16 * threads;
    (0..threads).into_par_iter().for_each(|i| {
        if m >= n && !packed_rhs {
            let c = m.div_ceil(threads);
            if i * c < m {
                block(i * c, c.min(m - i * c), 0, n);
            }
        } else {
            let c = n.div_ceil(threads);
            if i * c < n {
                block(0, m, i * c, c.min(n - i * c));
            }
        }
    });
}

/// [`par_gemm`] for a weight gradient `dyᵀ · x` (`lhs` a transposed activation, `rhs` an
/// activation, summed over `k` ≥ m, n rows of a batch): each thread takes a share of the
/// `k` rows, the first adding into `dst`, the others writing partial products to scratch,
/// which are then added into `dst` (by rows, on all threads).
///
/// gemm packs both operands of such a product. Split along m or n, every thread would pack
/// the whole of one of them; split along k, each packs its own rows of both, for an
/// m × n reduction. Small-config training step, 8 rounds alternating: best steps +0.9 %
/// (paired median), the weight-gradient products' median time 815 → 777 µs ([256, 256]
/// over 1152 rows).
///
/// # Safety
/// As for [`par_gemm`].
unsafe fn par_gemm_over_k(
    dst: *mut f32,
    (m, n, k): (usize, usize, usize),
    read_dst: bool,
    lhs: Operand,
    rhs: Operand,
    threads: usize,
) {
    let out = SharedMut(dst);
    let share = k.div_ceil(threads).next_multiple_of(8);
    let parts = k.div_ceil(share);
    let mut partial: Vec<f32> = Vec::with_capacity((parts - 1) * m * n);
    let scratch = SharedMut(partial.as_mut_ptr());
    (0..parts).into_par_iter().for_each(|i| {
        let (k0, kn) = (i * share, share.min(k - i * share));
        let (a, b) = (lhs.offset(0, k0), rhs.offset(k0, 0));
        // SAFETY: part 0 writes dst (m × n, caller), part i > 0 its own m × n block of
        // `partial`; the operands' columns / rows k0..k0 + kn lie inside them (caller).
        unsafe {
            if i == 0 {
                gemm_into(out.at(0), n, (m, n, kn), read_dst, a, b)
            } else {
                gemm_into(scratch.at((i - 1) * m * n), n, (m, n, kn), false, a, b)
            }
        }
    });
    // SAFETY: every part > 0 wrote its whole block above; dst holds m·n elements (caller).
    let (partial, dst) = unsafe {
        partial.set_len((parts - 1) * m * n);
        (partial, std::slice::from_raw_parts_mut(dst, m * n))
    };
    par_rows(dst, n, |r, row| {
        for p in partial.chunks_exact(m * n) {
            for (d, s) in row.iter_mut().zip(&p[r * n..][..n]) {
                *d += s;
            }
        }
    });
}

thread_local! {
    /// This thread's copy of the weight block of its share of an `x · Wᵀ` ([`with_rows_of`]).
    static WEIGHT_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with `rhs [k, n]` in row-major order: when `rhs` is a transposed row-major
/// matrix (`Wᵀ` of a weight `W [n, k]`, as in `x · Wᵀ`) of at least 2¹⁴ elements, `f` gets
/// a contiguous copy in this thread's scratch ([`transpose_rows`]), else `rhs` itself.
///
/// `gemm` repacks such an operand in every call, gathering one element at a time, and with
/// `W`'s rows 4 KiB apart (1024 f32: the FFN down projection at hidden 256) those gathers
/// share an L1 set. The copy is made 16 rows at a time. Forward products alone (best of 30,
/// one thread): 1184 rows × W [256, 1024] 6.14 → 5.56 ms (copy included), W [256, 256]
/// 1.39 → 1.36, W [1024, 256] 5.78 → 5.72.
///
/// # Safety
/// `rhs` must cover `k × n`.
unsafe fn with_rows_of<R>(rhs: Operand, (k, n): (usize, usize), f: impl FnOnce(Operand) -> R) -> R {
    if !rhs.is_transposed() || n < 16 || n * k < 1 << 14 {
        return f(rhs);
    }
    WEIGHT_ROWS.with(|scratch| {
        let mut t = scratch.borrow_mut();
        if t.len() < n * k {
            t.resize(n * k, 0.0);
        }
        // SAFETY: rhs covers k × n (caller), W's rows `cs` apart with k contiguous elements.
        unsafe { transpose_rows(rhs.ptr, rhs.cs as usize, (n, k), &mut t[..n * k]) };
        f(Operand {
            ptr: t.as_ptr(),
            rs: n as isize,
            cs: 1,
        })
    })
}

/// `out [k, n] = Wᵀ` for `W [n, k]` whose rows start `stride` elements apart: 16 rows of `W`
/// at a time, so each column of them fills one 64-byte line of `out`. Rows a multiple of
/// 2 KiB apart map to the same few L1 sets, so those are read a 16 × 16 tile at a time
/// (one line per row) instead of all 16 rows side by side.
///
/// # Safety
/// `w` must be valid for reads of rows `0..n`, each `k` elements from `w + j·stride`.
unsafe fn transpose_rows(w: *const f32, stride: usize, (n, k): (usize, usize), out: &mut [f32]) {
    // SAFETY: row j lies inside W (caller).
    let row = |j: usize| unsafe { std::slice::from_raw_parts(w.add(j * stride), k) };
    const R: usize = 16;
    let same_sets = (stride * 4) % 2048 == 0;
    let mut j = 0;
    while j + R <= n {
        let rows: [&[f32]; R] = std::array::from_fn(|r| row(j + r));
        if same_sets {
            let mut tile = [[0f32; R]; R];
            for k0 in (0..k).step_by(R) {
                let kn = (k - k0).min(R);
                for (r, src) in rows.iter().enumerate() {
                    for (c, v) in src[k0..k0 + kn].iter().enumerate() {
                        tile[c][r] = *v;
                    }
                }
                for (c, t) in tile[..kn].iter().enumerate() {
                    out[(k0 + c) * n + j..][..R].copy_from_slice(t);
                }
            }
        } else {
            for kk in 0..k {
                let line = &mut out[kk * n + j..][..R];
                for (o, src) in line.iter_mut().zip(&rows) {
                    *o = src[kk];
                }
            }
        }
        j += R;
    }
    for jj in j..n {
        for (kk, v) in row(jj).iter().enumerate() {
            out[kk * n + jj] = *v;
        }
    }
}

/// The destination pointer of [`par_gemm`], shared by threads writing disjoint blocks.
struct SharedMut(*mut f32);

// SAFETY: only used for writes to disjoint blocks inside one parallel product.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer `i` elements in.
    ///
    /// # Safety
    /// `i` must be inside the destination.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        unsafe { self.0.add(i) }
    }
}

/// `dst [m, n] (row stride dst_rs) = read_dst·dst + lhs [m, k] · rhs [k, n]`, on this thread.
///
/// # Safety
/// `dst` must hold the `m × n` block at row stride `dst_rs`, and `lhs` / `rhs` must cover
/// `m × k` / `k × n`.
unsafe fn gemm_into(
    dst: *mut f32,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    read_dst: bool,
    lhs: Operand,
    rhs: Operand,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            read_dst,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// `x · Wᵀ + b` for `x [.., in]`, `weight [out, in]`, `bias [out]` (as `torch.nn.Linear`).
///
/// On the CPU in f32 the product runs as one single-threaded `gemm` per thread on a block of
/// the output, with the bias pre-loaded into the output, and the backward uses the same
/// products (dx = dy·W, dW = dyᵀ·x, db = Σ dy). Elsewhere candle's matmul.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (out, _) = weight.dims2()?;
    if !(products_fused(x) && fused(weight) && bias.is_none_or(fused)) {
        return linear_composite(x, weight, bias);
    }
    // A 2-D input may be a strided view; more dimensions are read as rows of a contiguous
    // tensor, so the op takes `x` itself: no reshape in the graph, whose backward would add
    // a zero-filled buffer and a copy per side.
    let x = if x.rank() == 2 {
        x.clone()
    } else {
        x.contiguous()?
    };
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(out, DType::F32, x.device())?,
    };
    let op = LinearOp {
        weight_sink: GradSink::current_for(weight),
        bias_sink: GradSink::current_for(&bias),
    };
    x.apply_op3(weight, &bias, op)
}

/// [`linear`] from candle ops, the product at the thread's [`precision`]: the reference and
/// the fallback.
pub fn linear_composite(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if precision() == Precision::F32 {
        return candle_nn::Linear::new(weight.clone(), bias.cloned()).forward(x);
    }
    let (out, inp) = weight.dims2()?;
    let mut dims = x.dims().to_vec();
    let rows = x.elem_count() / inp.max(1);
    let y = autocast_matmul(&x.reshape((rows, inp))?, &weight.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    *dims.last_mut().expect("x has a last dimension") = out;
    y.reshape(dims)
}

/// `lhs [m, k] · rhs [k, n]` for 2-D tensors. On the CPU in f32 (any strides, so transposed
/// views cost nothing) by the same split products as [`linear`], with a backward; candle's
/// matmul elsewhere.
pub fn matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    lhs.dims2()?;
    rhs.dims2()?;
    if products_fused(lhs) && fused(rhs) {
        lhs.apply_op2(rhs, MatmulOp)
    } else {
        autocast_matmul(lhs, rhs)
    }
}

/// [`matmul`] without recording a backward (inside the backward of [`linear`]).
fn matmul_no_bwd(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    lhs.apply_op2_no_bwd(rhs, &MatmulOp)
}

/// [`linear`]'s op; the sinks, when collecting, take the weight and bias gradients.
struct LinearOp {
    weight_sink: Option<GradSink>,
    bias_sink: Option<GradSink>,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "msp-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x_layout, out_shape) = rows_layout(l1, l2.dims()[0], self.name())?;
        let (x, _) = Operand::of(s1, &x_layout, self.name())?;
        let (w, _) = Operand::of(s2, l2, self.name())?;
        let b = slice(s3, l3, self.name())?;
        let ((m, k), (n, k2)) = (x_layout.shape().dims2()?, l2.shape().dims2()?);
        if k != k2 || b.len() != n {
            bail!(
                "linear: x [{m}, {k}], weight [{n}, {k2}], bias [{}]",
                b.len()
            )
        }
        Ok((
            CpuStorage::F32(biased_product(x, w, b, (m, n, k))),
            out_shape,
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // As matrices of rows (views of detached tensors: nothing enters the graph).
        let (n, k) = weight.dims2()?;
        let x2 = match x.rank() {
            2 => x.detach(),
            _ => x.detach().reshape(((), k))?,
        };
        let grad = grad.detach().reshape(((), n))?;
        // An input outside the graph (the region features of the visual projection, a
        // stand-in zero bias) needs no gradient: skip its product.
        let dx = if x.track_op() {
            Some(matmul_no_bwd(&grad, weight)?.reshape(x.shape())?)
        } else {
            None
        };
        let dw = match &self.weight_sink {
            Some(sink) => {
                sink.add_product(weight, &grad.t()?, &x2)?;
                None
            }
            None => Some(matmul_no_bwd(&grad.t()?, &x2)?),
        };
        let db = match &self.bias_sink {
            Some(sink) => {
                sink.add_column_sums(bias, &grad)?;
                None
            }
            None if bias.track_op() => Some(grad.contiguous()?.apply_op1_no_bwd(&ColumnSumOp)?),
            None => None,
        };
        Ok((dx, dw, db))
    }
}

/// `x [m, k] · Wᵀ + bias` for `w` = W `[n, k]`: the bias in every row, then the product added
/// to it.
fn biased_product(
    x: Operand,
    w: Operand,
    bias: &[f32],
    (m, n, k): (usize, usize, usize),
) -> Vec<f32> {
    // The bias in every row, filled on rayon's threads (a serial fill left the other thread
    // idle for ≈ 1 % of a small step).
    assert_eq!(
        bias.len(),
        n,
        "biased product: bias of {} for {n} outputs",
        bias.len()
    );
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    dst.spare_capacity_mut()
        .par_chunks_mut(min_rows(n) * n.max(1))
        .for_each(|rows| {
            for row in rows.chunks_mut(n.max(1)) {
                for (d, &b) in row.iter_mut().zip(bias) {
                    d.write(b);
                }
            }
        });
    // SAFETY: the chunks cover all m·n elements in rows of n = bias.len(), each written above.
    unsafe { dst.set_len(m * n) };
    // rhs [k, n] = Wᵀ: element (i, o) is W[o, i].
    // SAFETY: dst holds the m·n initialised elements; x covers [m, k], Wᵀ [k, n].
    unsafe { par_gemm(dst.as_mut_ptr(), (m, n, k), true, x, w.t()) };
    dst
}

/// The layout of `x [.., k]` as a matrix of rows `[rows, k]` (a 2-D `x` as it is, strides
/// included; more dimensions must be contiguous), and the shape of `x · Wᵀ` for a weight of
/// `out` rows.
fn rows_layout(x: &Layout, out: usize, op: &str) -> Result<(Layout, Shape)> {
    let dims = x.dims();
    let Some((&k, lead)) = dims.split_last() else {
        bail!("{op}: x has no dimension")
    };
    let out_shape = Shape::from([lead, &[out]].concat());
    if dims.len() == 2 {
        return Ok((x.clone(), out_shape));
    }
    if !x.is_contiguous() {
        bail!("{op}: expected a contiguous x of {dims:?}")
    }
    let rows = lead.iter().product::<usize>();
    let layout = Layout::contiguous_with_offset((rows, k), x.start_offset());
    Ok((layout, out_shape))
}

/// Sums of the columns of a `[rows, cols]` matrix (the bias gradient of [`linear`]).
struct ColumnSumOp;

impl CustomOp1 for ColumnSumOp {
    fn name(&self) -> &'static str {
        "msp-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, cols) = rows_of(l)?;
        let sums = column_sums(slice(s, l, self.name())?, cols);
        Ok((CpuStorage::F32(sums), Shape::from(cols)))
    }
}

/// Sums of the columns of the row-major `x [.., cols]`: partial sums over blocks of rows,
/// added in block order (so the result does not depend on thread timing).
fn column_sums(x: &[f32], cols: usize) -> Vec<f32> {
    let per_task = min_rows(cols);
    let partials: Vec<Vec<f32>> = x
        .par_chunks(per_task * cols)
        .map(|block| {
            let mut acc = vec![0f32; cols];
            for row in block.chunks(cols) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .collect();
    let mut out = vec![0f32; cols];
    add_in_order(&mut out, &partials);
    out
}

struct MatmulOp;

impl CustomOp2 for MatmulOp {
    fn name(&self) -> &'static str {
        "msp-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, _) = Operand::of(s1, l1, self.name())?;
        let (b, _) = Operand::of(s2, l2, self.name())?;
        let ((m, k), (k2, n)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if k != k2 {
            bail!("matmul: [{m}, {k}] · [{k2}, {n}]")
        }
        let dst = product(m, n, k, a, b);
        Ok((CpuStorage::F32(dst), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        lhs: &Tensor,
        rhs: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dl = matmul_no_bwd(grad, &rhs.t()?)?;
        let dr = matmul_no_bwd(&lhs.t()?, grad)?;
        Ok((Some(dl), Some(dr)))
    }
}

// ---------------------------------------------------------------------------------------------
// Embedding lookup

/// The rows `ids` (u32, `[n]`) of `table [rows, dim]` → `[n, dim]`; with `freeze_row0` the
/// table's row 0 gets no gradient (as PyTorch's `padding_idx=0`).
///
/// On the CPU in f32 one op whose backward adds the gradient rows into the table's gradient
/// (straight into a collecting [`GradSink`]'s buffer, where the tied MLM decoder's gradient
/// already is); candle's `index_select` elsewhere.
pub fn embedding(table: &Tensor, ids: &Tensor, freeze_row0: bool) -> Result<Tensor> {
    if !(fused(table) && ids.dtype() == DType::U32) {
        return embedding_composite(table, ids, freeze_row0);
    }
    let op = EmbeddingOp {
        freeze_row0,
        sink: GradSink::current_for(table),
    };
    table.apply_op2(&ids.contiguous()?, op)
}

/// [`embedding`] from candle ops: the reference and the fallback.
pub fn embedding_composite(table: &Tensor, ids: &Tensor, freeze_row0: bool) -> Result<Tensor> {
    let out = table.index_select(ids, 0)?;
    if !freeze_row0 {
        return Ok(out);
    }
    // Same value as the plain lookup, but rows looked up with id 0 come from a detached copy.
    let frozen = table.detach().index_select(ids, 0)?;
    let keep = ids.ne(0u32)?.to_dtype(out.dtype())?.unsqueeze(1)?;
    let diff = out.sub(&frozen)?.broadcast_mul(&keep)?;
    frozen.add(&diff)
}

/// [`embedding`]'s op; the sink, when collecting, takes the table's gradient.
struct EmbeddingOp {
    freeze_row0: bool,
    sink: Option<GradSink>,
}

impl EmbeddingOp {
    /// The ids as row numbers of a table of `rows`.
    fn rows<'a>(&self, ids: &'a CpuStorage, l: &Layout, rows: usize) -> Result<&'a [u32]> {
        checked_ids(ids, l, rows, "embedding: id", "(the table's rows)")
    }

    /// `dtable[id] += grad row` for every looked-up row (in order; not row 0 when frozen).
    fn scatter(&self, dtable: &mut [f32], ids: &[u32], grad: &[f32], dim: usize) {
        for (&id, g) in ids.iter().zip(grad.chunks(dim)) {
            if self.freeze_row0 && id == 0 {
                continue;
            }
            let id = id as usize;
            for (d, g) in dtable[id * dim..(id + 1) * dim].iter_mut().zip(g) {
                *d += g;
            }
        }
    }
}

impl CustomOp2 for EmbeddingOp {
    fn name(&self) -> &'static str {
        "msp-embedding"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, dim) = l1.shape().dims2()?;
        let table = slice(s1, l1, self.name())?;
        let ids = self.rows(s2, l2, rows)?;
        let mut out = vec![0f32; ids.len() * dim];
        par_rows(&mut out, dim.max(1), |i, o| {
            let id = ids[i] as usize;
            o.copy_from_slice(&table[id * dim..(id + 1) * dim]);
        });
        Ok((CpuStorage::F32(out), Shape::from((ids.len(), dim))))
    }

    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, dim) = table.dims2()?;
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let (is, il) = ids.storage_and_layout();
        let g = cpu_slice(&gs, gl, self.name())?;
        let Storage::Cpu(is) = &*is else {
            bail!("embedding: expected CPU ids")
        };
        let ids = self.rows(is, il, rows)?;
        if g.len() != ids.len() * dim {
            bail!(
                "embedding: gradient of {} elements for {} rows",
                g.len(),
                ids.len()
            )
        }
        match &self.sink {
            Some(sink) => {
                sink.add_into(table, |d| self.scatter(d, ids, g, dim));
                Ok((None, None))
            }
            None => {
                let mut d = vec![0f32; rows * dim];
                self.scatter(&mut d, ids, g, dim);
                Ok((
                    Some(Tensor::from_vec(d, (rows, dim), table.device())?),
                    None,
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// LayerNorm over the last dimension: `(x − mean) / √(var + eps) · weight + bias`.
///
/// Fused on the CPU in f32 (statistics recomputed in the backward rather than stored); the
/// composite of candle ops elsewhere.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(x) && fused(weight) && fused(bias) {
        x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNormOp { eps: eps as f32 },
        )
    } else {
        layer_norm_composite(x, weight, bias, eps)
    }
}

/// LayerNorm from primitive candle ops (statistics in f32): the reference and the fallback.
pub fn layer_norm_composite(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Lanes of [`lane_sum`]: one AVX vector of f32.
const LANES: usize = 8;

/// `Σ f(a[j], b[j], c[j])` (slices of one length) in [`LANES`] interleaved partial sums, so
/// that it vectorises (f32 addition is not reassociated otherwise), then added in lane order.
#[inline]
fn lane_sum(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let mut tail = 0f32;
    for ((&x, &y), &z) in ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .zip(cc.remainder())
    {
        tail += f(x, y, z);
    }
    for ((x, y), z) in ac.zip(bc).zip(cc) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l], z[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest element of `x` (−∞ for none), in [`LANES`] interleaved maxima.
#[inline]
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// Mean and 1/√(var + eps) of one row.
#[inline]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x, x, x, |v, _, _| v) / n;
    let var = lane_sum(x, x, x, |v, _, _| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "msp-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g, b) = (
            slice(s1, l1, self.name())?,
            slice(s2, l2, self.name())?,
            slice(s3, l3, self.name())?,
        );
        let (_, h) = rows_of(l1)?;
        if g.len() != h || b.len() != h {
            bail!("layer-norm: weight/bias of {} for rows of {h}", g.len())
        }
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, h, |r, o| {
            let xr = &x[r * h..(r + 1) * h];
            let (mean, rstd) = row_stats(xr, self.eps);
            for j in 0..h {
                o[j] = (xr[j] - mean) * rstd * g[j] + b[j];
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &LayerNormGradOp { eps: self.eps },
        )?;
        let rows = x.elem_count() / weight.elem_count();
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        Ok((
            Some(dx),
            Some(packed.get(rows)?),
            Some(packed.get(rows + 1)?),
        ))
    }
}

/// Gradients of LayerNorm, packed as `[rows + 2, h]`: the rows of dx, then dweight, dbias.
struct LayerNormGradOp {
    eps: f32,
}

impl CustomOp3 for LayerNormGradOp {
    fn name(&self) -> &'static str {
        "msp-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g, dy) = (
            slice(s1, l1, self.name())?,
            slice(s2, l2, self.name())?,
            slice(s3, l3, self.name())?,
        );
        let (rows, h) = rows_of(l1)?;
        let mut out = vec![0f32; (rows + 2) * h];
        let (dx, dparams) = out.split_at_mut(rows * h);
        layer_norm_backward(x, g, dy, self.eps, dx, dparams);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, h))))
    }
}

/// LayerNorm's backward over rows of `h = g.len()`: `dx` (rows like `x`) and, in `dparams`
/// `[2h]`, dweight then dbias (partial sums per task, added in task order).
fn layer_norm_backward(
    x: &[f32],
    g: &[f32],
    dy: &[f32],
    eps: f32,
    dx: &mut [f32],
    dparams: &mut [f32],
) {
    let h = g.len();
    let per_task = min_rows(h);
    // dx row by row; dweight/dbias as one partial sum per task, added in task order.
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(per_task * h)
        .enumerate()
        .map(|(c, dxc)| {
            let mut acc = vec![0f32; 2 * h];
            let (dw, db) = acc.split_at_mut(h);
            for (k, dxr) in dxc.chunks_mut(h).enumerate() {
                let r = c * per_task + k;
                let xr = &x[r * h..(r + 1) * h];
                let dyr = &dy[r * h..(r + 1) * h];
                let (mean, rstd) = row_stats(xr, eps);
                for j in 0..h {
                    let xhat = (xr[j] - mean) * rstd;
                    dw[j] += dyr[j] * xhat;
                    db[j] += dyr[j];
                }
                // Σ dy·g and Σ dy·g·x̂ over the row (x̂ = (x − mean)·rstd).
                let sum_g = lane_sum(dyr, g, g, |d, g, _| d * g);
                let sum_gx = lane_sum(dyr, g, xr, |d, g, x| d * g * ((x - mean) * rstd));
                let (mg, mgx) = (sum_g / h as f32, sum_gx / h as f32);
                for j in 0..h {
                    let xhat = (xr[j] - mean) * rstd;
                    dxr[j] = rstd * (dyr[j] * g[j] - mg - xhat * mgx);
                }
            }
            acc
        })
        .collect();
    add_in_order(dparams, &partials);
}

// ---------------------------------------------------------------------------------------------
// GELU

/// Exact GELU `x · Φ(x)` (BERT's `gelu`). Fused on the CPU in f32 (erf to 1.5·10⁻⁷);
/// candle's `gelu_erf` elsewhere.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        x.contiguous()?.apply_op1(GeluOp)
    } else {
        x.gelu_erf()
    }
}

/// Elements per rayon task of an element-wise kernel.
const ELEMWISE_TASK: usize = 8 * 1024;

/// A new vector of `len` elements, written chunk by chunk (`ELEMWISE_TASK` elements, chunk
/// `c`) by `f(c, chunk)` on rayon's threads: no zero fill first, which for the feed-forward's
/// `[rows, 4·hidden]` buffers is a serial pass over megabytes.
///
/// # Safety
/// `f` must write every element of its chunk.
unsafe fn par_filled(len: usize, f: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(ELEMWISE_TASK)
        .enumerate()
        .for_each(|(c, o)| f(c, o));
    // SAFETY: the chunks cover all `len` elements, each written by `f` (caller).
    unsafe { out.set_len(len) };
    out
}

/// The `ELEMWISE_TASK` chunk `c` of `x`, `len` elements long.
fn chunk_of(x: &[f32], c: usize, len: usize) -> &[f32] {
    &x[c * ELEMWISE_TASK..][..len]
}

/// `x · Φ(x)`.
#[inline(always)]
fn gelu_of(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// GELU of every element.
fn gelu_rows(x: &[f32]) -> Vec<f32> {
    // SAFETY: every element of each chunk is written.
    unsafe {
        par_filled(x.len(), |c, o| {
            let x = chunk_of(x, c, o.len());
            wide(|| {
                for (o, &v) in o.iter_mut().zip(x) {
                    o.write(gelu_of(v));
                }
            })
        })
    }
}

/// `dy · (Φ(x) + x·φ(x))`, GELU's backward, element by element (slices of one length).
fn gelu_grad(x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), dy.len(), "gelu_grad: slices of one length");
    // SAFETY: every element of each chunk is written.
    unsafe {
        par_filled(x.len(), |c, o| {
            let (x, dy) = (chunk_of(x, c, o.len()), chunk_of(dy, c, o.len()));
            wide(|| {
                for ((o, &x), &d) in o.iter_mut().zip(x).zip(dy) {
                    let (cdf, pdf) = normal_cdf_pdf(x);
                    o.write(d * madd(x, pdf, cdf));
                }
            })
        })
    }
}

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "msp-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        Ok((CpuStorage::F32(gelu_rows(x)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluGradOp)?))
    }
}

/// `dy · (Φ(x) + x·φ(x))`.
struct GeluGradOp;

impl CustomOp2 for GeluGradOp {
    fn name(&self) -> &'static str {
        "msp-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        Ok((CpuStorage::F32(gelu_grad(x, dy)), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Dropout

/// `x · scale` where `keep` (one flag per element of `x`, row-major) is set, 0 elsewhere:
/// inverted dropout with a mask drawn by the caller. Fused on the CPU in f32: the op keeps the
/// mask as bits, where the composite `x · mask` keeps a whole f32 mask tensor alive until the
/// backward (PyTorch keeps a byte per element); its backward applies the same mask.
pub fn dropout_masked(x: &Tensor, keep: &KeepMask, scale: f32) -> Result<Tensor> {
    check_keep("dropout", keep.len(), x.elem_count())?;
    if fused(x) {
        let keep = keep.clone();
        x.contiguous()?.apply_op1(DropoutOp { keep, scale })
    } else {
        let mask: Vec<f32> = (0..keep.len())
            .map(|i| if keep.get(i) { scale } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), &candle_core::Device::Cpu)?
            .to_device(x.device())?
            .to_dtype(x.dtype())?;
        x.mul(&mask)
    }
}

/// An error unless there is one keep flag per element.
fn check_keep(op: &str, flags: usize, elems: usize) -> Result<()> {
    if flags != elems {
        bail!("{op}: {flags} mask flags for {elems} elements")
    }
    Ok(())
}

/// `x · scale` where `keep` is set, 0 elsewhere.
fn masked(x: &[f32], keep: &KeepMask, scale: f32) -> Vec<f32> {
    // SAFETY: `apply_zip` visits every element of each chunk.
    unsafe {
        par_filled(x.len(), |c, o| {
            let x = chunk_of(x, c, o.len());
            keep.apply_zip(c * ELEMWISE_TASK, o, x, move |k, o, &v| {
                o.write(keep_or_zero(v * scale, k));
            })
        })
    }
}

/// Multiplies by `scale` where the bit is set, 0 elsewhere (forward and backward alike).
struct DropoutOp {
    keep: KeepMask,
    scale: f32,
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "msp-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let out = masked(x, &self.keep, self.scale);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// `dropout(y) + residual` in one pass, the residual branch of a transformer block: `keep`
/// and `scale` as in [`dropout_masked`], `None` for no dropout. Fused on the CPU in f32 (the
/// backward passes the gradient to `residual` as it is and through the mask to `y`); the
/// composite of [`dropout_masked`] and candle's `add` elsewhere.
pub fn dropout_add(
    y: &Tensor,
    residual: &Tensor,
    keep: Option<&KeepMask>,
    scale: f32,
) -> Result<Tensor> {
    if y.dims() != residual.dims() {
        bail!(
            "dropout-add: y {:?} and residual {:?} differ",
            y.dims(),
            residual.dims()
        )
    }
    if let Some(keep) = keep {
        check_keep("dropout-add", keep.len(), y.elem_count())?;
    }
    if fused(y) && fused(residual) {
        let dropout = keep.map(|keep| DropoutOp {
            keep: keep.clone(),
            scale,
        });
        y.contiguous()?
            .apply_op2(&residual.contiguous()?, DropoutAddOp { dropout })
    } else {
        dropout_add_composite(y, residual, keep, scale)
    }
}

/// [`dropout_add`] from [`dropout_masked`] and candle's `add`: the reference and the fallback.
pub fn dropout_add_composite(
    y: &Tensor,
    residual: &Tensor,
    keep: Option<&KeepMask>,
    scale: f32,
) -> Result<Tensor> {
    match keep {
        Some(keep) => dropout_masked(y, keep, scale)?.add(residual),
        None => y.add(residual),
    }
}

/// `y = dropout(y) + residual` in place (slices of one length): the elements of `y` whose
/// flag in `keep` is set times `scale`, the others 0 (no dropout without `keep`), then the
/// residual added.
fn dropout_then_add(y: &mut [f32], residual: &[f32], keep: Option<&KeepMask>, scale: f32) {
    y.par_chunks_mut(ELEMWISE_TASK)
        .zip(residual.par_chunks(ELEMWISE_TASK))
        .enumerate()
        .for_each(|(c, (y, r))| match keep {
            Some(keep) => keep.apply_zip(c * ELEMWISE_TASK, y, r, move |k, y, &r| {
                *y = keep_or_zero(*y * scale, k) + r
            }),
            None => {
                for (y, &r) in y.iter_mut().zip(r) {
                    *y += r;
                }
            }
        });
}

/// `dropout(y) + residual`; no dropout when `dropout` is `None`.
struct DropoutAddOp {
    dropout: Option<DropoutOp>,
}

impl CustomOp2 for DropoutAddOp {
    fn name(&self) -> &'static str {
        "msp-dropout-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, r) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let mut out = y.to_vec();
        let (keep, scale) = self
            .dropout
            .as_ref()
            .map_or((None, 1.0), |d| (Some(&d.keep), d.scale));
        dropout_then_add(&mut out, r, keep, scale);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = match &self.dropout {
            Some(d) => grad.contiguous()?.apply_op1_no_bwd(d)?,
            None => grad.clone(),
        };
        Ok((Some(dy), Some(grad.clone())))
    }
}

// ---------------------------------------------------------------------------------------------
// Attention softmax

/// `softmax(scores · scale + mask)` over the last dimension, for `scores [B, H, Lq, Lk]` and
/// an additive `mask` that broadcasts as `[B, 1, 1, Lk]` (or none). Fused on the CPU in f32.
pub fn attention_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (b, _, _, lk) = scores.dims4()?;
    if fused(scores) && mask.is_none_or(fused) {
        let mask = match mask {
            Some(m) => m.reshape((b, lk))?.contiguous()?,
            None => Tensor::zeros((b, lk), DType::F32, scores.device())?,
        };
        scores.contiguous()?.apply_op2(
            &mask,
            AttentionSoftmaxOp {
                scale: scale as f32,
            },
        )
    } else {
        attention_softmax_composite(scores, mask, scale)
    }
}

/// [`attention_softmax`] from candle ops: the reference and the fallback.
pub fn attention_softmax_composite(
    scores: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let mut s = (scores * scale)?;
    if let Some(m) = mask {
        s = s.broadcast_add(m)?;
    }
    candle_nn::ops::softmax(&s, D::Minus1)
}

/// In place, `softmax(row · scale + mask)` of one row of attention scores.
#[inline]
fn scaled_softmax_row(row: &mut [f32], scale: f32, mask: Option<&[f32]>) {
    match mask {
        Some(m) => {
            for (s, &m) in row.iter_mut().zip(m) {
                *s = *s * scale + m;
            }
        }
        None => {
            for s in row.iter_mut() {
                *s *= scale;
            }
        }
    }
    softmax_row(row);
}

/// In place, the softmax backward of one row: `g` holds dy on entry and
/// `scale · y ⊙ (dy − ⟨dy, y⟩)` on return, for the softmax output `y`.
#[inline]
fn softmax_grad_row(y: &[f32], g: &mut [f32], scale: f32) {
    let dot = lane_sum(y, g, g, |a, b, _| a * b);
    for (g, &y) in g.iter_mut().zip(y) {
        *g = scale * y * (*g - dot);
    }
}

/// In-place softmax of one row.
#[inline]
fn softmax_row(o: &mut [f32]) {
    let max = lane_max(o);
    for v in o.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / lane_sum(o, o, o, |v, _, _| v);
    for v in o.iter_mut() {
        *v *= inv;
    }
}

struct AttentionSoftmaxOp {
    scale: f32,
}

impl CustomOp2 for AttentionSoftmaxOp {
    fn name(&self) -> &'static str {
        "msp-attention-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, mask) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let (rows, lk) = rows_of(l1)?;
        let batch = l1.dims()[0];
        if mask.len() != batch * lk {
            bail!(
                "attention-softmax: mask of {} for {batch} × {lk}",
                mask.len()
            )
        }
        let rows_per_example = rows / batch;
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, lk, |r, o| {
            o.copy_from_slice(&x[r * lk..(r + 1) * lk]);
            let m = &mask[(r / rows_per_example) * lk..][..lk];
            scaled_softmax_row(o, self.scale, Some(m));
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx =
            probs.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGradOp { scale: self.scale })?;
        Ok((Some(dx), None))
    }
}

/// `scale · y ⊙ (dy − ⟨dy, y⟩)` per row.
struct SoftmaxGradOp {
    scale: f32,
}

impl CustomOp2 for SoftmaxGradOp {
    fn name(&self) -> &'static str {
        "msp-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, dy) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let (_, w) = rows_of(l1)?;
        let mut out = vec![0f32; y.len()];
        par_rows(&mut out, w, |r, o| {
            o.copy_from_slice(&dy[r * w..(r + 1) * w]);
            softmax_grad_row(&y[r * w..(r + 1) * w], o, self.scale);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// Mean cross-entropy of `logits [N, C]` against class ids `targets [N]`. Fused on the CPU
/// for f32 logits (a class id ≥ C is an error); log-softmax and gather elsewhere.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?;
    if fused(logits) && logits.rank() == 2 {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropyOp)
    } else {
        cross_entropy_composite(logits, &targets)
    }
}

/// [`cross_entropy`] from candle ops: the reference and the fallback.
pub fn cross_entropy_composite(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = logp.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// The u32 class ids behind a CPU storage, checked against `classes`.
fn class_ids<'a>(s: &'a CpuStorage, l: &Layout, classes: usize) -> Result<&'a [u32]> {
    checked_ids(s, l, classes, "cross-entropy: class id", "classes")
}

/// The contiguous u32 ids behind a CPU storage, each below `limit`; errors name `what`
/// (`"{what} {id} outside 0..{limit} {of}"`).
fn checked_ids<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    limit: usize,
    what: &str,
    of: &str,
) -> Result<&'a [u32]> {
    let CpuStorage::U32(data) = s else {
        bail!("{what}s must be u32")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{what}s must be contiguous")
    };
    let ids = &data[a..b];
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= limit) {
        bail!("{what} {bad} outside 0..{limit} {of}")
    }
    Ok(ids)
}

struct CrossEntropyOp;

impl CustomOp2 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "msp-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let (n, c) = rows_of(l1)?;
        let t = class_ids(s2, l2, c)?;
        if t.len() != n {
            bail!("cross-entropy: {} targets for {n} rows", t.len())
        }
        let nll: f64 = x
            .par_chunks(c)
            .with_min_len(min_rows(c))
            .zip(t.par_iter())
            .map(|(row, &t)| {
                let max = lane_max(row);
                let sum = lane_sum(row, row, row, |v, _, _| exp(v - max));
                f64::from(max + sum.ln() - row[t as usize])
            })
            .sum();
        Ok((
            CpuStorage::F32(vec![(nll / n as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = logits.apply_op2_no_bwd(targets, &CrossEntropyGradOp)?;
        Ok((Some(d.broadcast_mul(grad)?), None))
    }
}

/// `(softmax(x) − onehot(t)) / N`.
struct CrossEntropyGradOp;

impl CustomOp2 for CrossEntropyGradOp {
    fn name(&self) -> &'static str {
        "msp-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let (n, c) = rows_of(l1)?;
        let t = class_ids(s2, l2, c)?;
        let inv_n = 1.0 / n as f32;
        let mut out = x.to_vec();
        par_rows(&mut out, c, |r, o| {
            softmax_row(o);
            o[t[r] as usize] -= 1.0;
            for v in o.iter_mut() {
                *v *= inv_n;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Var};

    fn randn(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Value and gradients of `f(vars)·w` (w a fixed random projection, so every output
    /// element gets a different upstream gradient) for the fused and the composite version.
    fn check(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        composite: impl Fn(&[Tensor]) -> Result<Tensor>,
        tol: f32,
    ) {
        let run = |f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
            let vars: Vec<Var> = inputs
                .iter()
                .map(|t| Var::from_tensor(t).unwrap())
                .collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = f(&ts).unwrap();
            let w = randn(y.dims(), 99, 1.0);
            let loss = y.mul(&w).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let gs: Vec<Tensor> = vars
                .iter()
                .map(|v| grads.get(v).expect("every input gets a gradient").clone())
                .collect();
            (y, gs)
        };
        let (yf, gf) = run(&fused);
        let (yc, gc) = run(&composite);
        assert!(
            max_diff(&yf, &yc) < tol,
            "value differs by {}",
            max_diff(&yf, &yc)
        );
        for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
            let d = max_diff(a, b);
            assert!(d < tol, "gradient {i} differs by {d}");
        }
    }

    #[test]
    fn lane_sums_and_maxima_cover_every_element() {
        // Lengths around the lane width: the remainder is counted once, lanes all added.
        for n in 0..30 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
            let dot: f64 = a.iter().zip(&b).map(|(&x, &y)| f64::from(x * y)).sum();
            let got = lane_sum(&a, &b, &b, |x, y, _| x * y);
            assert!(
                (f64::from(got) - dot).abs() < 1e-4,
                "n = {n}: {got} vs {dot}"
            );
            let max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(lane_max(&a), max, "n = {n}");
        }
        assert_eq!(
            lane_sum(&[1., 2., 3.], &[0.; 3], &[0.; 3], |x, _, _| x),
            6.0
        );
    }

    #[test]
    fn exp_and_erf_match_std() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let (e, want) = (exp(x), x.exp());
            assert!(
                ((e - want) / want).abs() < 5e-7,
                "exp({x}) = {e}, want {want}"
            );
        }
        // Hand values: erf(0) = 0, erf(0.5) = 0.5204999, erf(1) = 0.8427008, erf(-2) = -0.9953223.
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
        ] {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x}) = {}", erf(x));
        }
        // Far below: exactly 0, as std's (no denormal from a masked score); at the edge of the
        // normal range still e^x.
        assert_eq!(exp(-1e4), 0.0);
        assert_eq!((-1e4f32).exp(), 0.0);
        assert_eq!(exp(-88.0), 0.0);
        let edge = exp(-87.3);
        assert!(edge.is_normal() && ((edge - (-87.3f32).exp()) / edge).abs() < 5e-7);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn dropout_matches_composite_with_gradients() {
        use rand::{Rng, SeedableRng};
        // 3·5·1000 elements: several rayon tasks, the last one partial.
        let x = randn(&[3, 5, 1000], 4, 2.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let keep: Vec<bool> = (0..x.elem_count())
            .map(|_| rng.random::<f32>() >= 0.1)
            .collect();
        let scale = 1.0 / 0.9;
        // The composite reference: x · mask with the mask as an f32 tensor.
        let mask: Vec<f32> = keep.iter().map(|&k| if k { scale } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, x.dims(), &Device::Cpu).unwrap();
        let keep_mask = KeepMask::from_flags(&keep);
        check(
            std::slice::from_ref(&x),
            |t| dropout_masked(&t[0], &keep_mask, scale),
            |t| t[0].mul(&mask),
            1e-6,
        );
        // Dropped elements are exactly 0, kept ones x · scale; a transposed view is read in
        // its logical order.
        let xt = x.transpose(1, 2).unwrap();
        let y: Vec<f32> = dropout_masked(&xt, &keep_mask, scale)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let xv: Vec<f32> = xt.flatten_all().unwrap().to_vec1().unwrap();
        for ((&y, &v), &k) in y.iter().zip(&xv).zip(&keep) {
            assert_eq!(y, if k { v * scale } else { 0.0 });
        }
        assert!(dropout_masked(&x, &KeepMask::from_flags(&keep[1..]), scale).is_err());
    }

    #[test]
    fn layer_norm_matches_composite_with_gradients() {
        let x = randn(&[3, 7, 48], 1, 3.0);
        let w = randn(&[48], 2, 1.0);
        let b = randn(&[48], 3, 1.0);
        check(
            &[x, w, b],
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-12),
            |t| layer_norm_composite(&t[0], &t[1], &t[2], 1e-12),
            2e-5,
        );
    }

    #[test]
    fn layer_norm_hand_value() {
        // Row [1, 2, 3]: mean 2, var 2/3, x̂ = [−1.2247449, 0, 1.2247449].
        let x = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0f32, 1., 0.], &Device::Cpu).unwrap();
        let y: Vec<f32> = layer_norm(&x, &w, &b, 0.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, e) in y.iter().zip([-1.224_744_9f32, 1.0, 3.674_234_6]) {
            assert!((a - e).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn gelu_matches_candle_with_gradient() {
        let x = randn(&[5, 300], 4, 6.0);
        check(&[x], |t| gelu(&t[0]), |t| t[0].gelu_erf(), 2e-6);
        // GELU(1) = 0.8413447, GELU(−1) = −0.1586553.
        let v: Vec<f32> = gelu(&Tensor::new(&[1f32, -1.], &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((v[0] - 0.841_344_7).abs() < 1e-6 && (v[1] + 0.158_655_3).abs() < 1e-6);
    }

    #[test]
    fn attention_softmax_matches_composite_with_gradient() {
        let s = randn(&[2, 3, 4, 5], 5, 4.0);
        let mask = Tensor::new(
            &[[0f32, 0., -10000., 0., 0.], [0., 0., 0., 0., -10000.]],
            &Device::Cpu,
        )
        .unwrap()
        .reshape((2, 1, 1, 5))
        .unwrap();
        check(
            std::slice::from_ref(&s),
            |t| attention_softmax(&t[0], Some(&mask), 0.125),
            |t| attention_softmax_composite(&t[0], Some(&mask), 0.125),
            1e-6,
        );
        check(
            &[s],
            |t| attention_softmax(&t[0], None, 1.0),
            |t| attention_softmax_composite(&t[0], None, 1.0),
            1e-6,
        );
    }

    #[test]
    fn cross_entropy_matches_composite_with_gradient() {
        let logits = randn(&[6, 11], 6, 5.0);
        let t = Tensor::new(&[0u32, 10, 3, 3, 7, 1], &Device::Cpu).unwrap();
        check(
            &[logits],
            |x| cross_entropy(&x[0], &t),
            |x| cross_entropy_composite(&x[0], &t),
            1e-6,
        );
        // Two classes, logits (0, ln 3): p = 1/4, 3/4; target 0 → ln 4.
        let l = Tensor::new(&[[0f32, 3f32.ln()]], &Device::Cpu).unwrap();
        let v: f32 = cross_entropy(&l, &Tensor::new(&[0u32], &Device::Cpu).unwrap())
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((v - 4f32.ln()).abs() < 1e-6);
        assert!(cross_entropy(&l, &Tensor::new(&[2u32], &Device::Cpu).unwrap()).is_err());
    }

    #[test]
    fn linear_matches_candle_with_gradients() {
        // Large enough for the two-thread split (m·n·k ≥ 2¹⁸), on both sides of m = n.
        // W [700, 96] and [160, 512] go through the row-major copy of W (`with_rows_of`),
        // the second a tile at a time (rows 2 KiB apart).
        for (rows, inp, out) in [(3 * 40, 64, 48), (6, 96, 700), (3 * 12, 512, 160)] {
            let x = randn(&[3, rows / 3, inp], 7, 1.0);
            let w = randn(&[out, inp], 8, 0.2);
            let b = randn(&[out], 9, 1.0);
            check(
                &[x, w, b],
                |t| linear(&t[0], &t[1], Some(&t[2])),
                |t| candle_nn::Linear::new(t[1].clone(), Some(t[2].clone())).forward(&t[0]),
                2e-4,
            );
        }
    }

    #[test]
    fn weight_gradients_split_over_rows_match_the_definition() {
        // dyᵀ · x over k rows (the split over k), into a fresh or an accumulated dst, on 2
        // and 3 threads (k = 301: the last share is short).
        let (m, n, k) = (24, 40, 301);
        let dy: Vec<f32> = (0..k * m).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let x: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5) % 11) as f32 / 4.0 - 1.0)
            .collect();
        let start: Vec<f32> = (0..m * n).map(|i| i as f32).collect();
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for read_dst in [false, true] {
                let mut dst = start.clone();
                let (lhs, rhs) = (
                    Operand::row_major(dy.as_ptr(), m).t(),
                    Operand::row_major(x.as_ptr(), n),
                );
                assert!(lhs.is_transposed() && m * n * k >= 1 << 18);
                // SAFETY: dst holds m × n; dy and x hold k rows of m and n.
                pool.install(|| unsafe {
                    par_gemm(dst.as_mut_ptr(), (m, n, k), read_dst, lhs, rhs)
                });
                for i in 0..m {
                    for j in 0..n {
                        let sum: f32 = (0..k).map(|r| dy[r * m + i] * x[r * n + j]).sum();
                        let want = sum + if read_dst { start[i * n + j] } else { 0.0 };
                        let got = dst[i * n + j];
                        assert!(
                            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                            "{threads} {read_dst} {i} {j}: {got} {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn transposed_rows_match_the_definition() {
        // Rows 100 apart (16 side by side) and 512 apart (2 KiB: 16 × 16 tiles, k not a
        // multiple of 16), both with a remainder of rows after the blocks of 16.
        for (n, k, stride) in [(37, 90, 100), (35, 500, 512)] {
            let w: Vec<f32> = (0..n * stride).map(|i| i as f32).collect();
            let mut out = vec![f32::NAN; n * k];
            // SAFETY: w holds n rows of `stride` ≥ k elements.
            unsafe { transpose_rows(w.as_ptr(), stride, (n, k), &mut out) };
            for j in 0..n {
                for kk in 0..k {
                    assert_eq!(
                        out[kk * n + j],
                        (j * stride + kk) as f32,
                        "{n} {k} {j} {kk}"
                    );
                }
            }
        }
    }

    #[test]
    fn linear_of_an_input_outside_the_graph_still_trains_its_weight() {
        // The features are a plain tensor (no variable behind them): the weight gets the same
        // gradient as through candle's matmul, and the input gets none, where candle's
        // backward computes one (2-D and 3-D: either way the op's argument is `x` itself).
        for dims in [&[10, 32][..], &[2, 5, 32]] {
            let x = randn(dims, 20, 1.0);
            let w = Var::from_tensor(&randn(&[24, 32], 21, 0.2)).unwrap();
            let mut out_dims = dims.to_vec();
            *out_dims.last_mut().unwrap() = 24;
            let upstream = randn(&out_dims, 22, 1.0);
            let grads_of = |f: &dyn Fn() -> Result<Tensor>| {
                let loss = f().unwrap().mul(&upstream).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                (grads.get(&w).unwrap().clone(), grads.get(&x).is_some())
            };
            let (ours, ours_x) = grads_of(&|| linear(&x, &w, None));
            let (candle, candle_x) = grads_of(&|| x.broadcast_matmul(&w.t()?));
            assert!(max_diff(&ours, &candle) < 2e-4, "{dims:?}");
            assert!(!ours_x, "{dims:?}: no product for the input's gradient");
            // (2-D: candle's product takes `x` itself; 3-D: a broadcast view of it).
            assert!(
                candle_x || dims.len() > 2,
                "candle's backward does compute one"
            );
        }
    }

    #[test]
    fn embedding_matches_composite_with_gradients() {
        let table = randn(&[6, 5], 1, 1.0);
        // Repeated ids add up; with `freeze_row0` row 0 gets none.
        let ids = Tensor::new(&[3u32, 0, 5, 3, 1, 0], &Device::Cpu).unwrap();
        for freeze in [false, true] {
            check(
                std::slice::from_ref(&table),
                |v| embedding(&v[0], &ids, freeze),
                |v| embedding_composite(&v[0], &ids, freeze),
                1e-6,
            );
        }
        let bad = Tensor::new(&[6u32], &Device::Cpu).unwrap();
        let err = embedding(&table, &bad, false).unwrap_err().to_string();
        assert!(err.contains("embedding: id 6 outside 0..6"), "{err}");
    }

    #[test]
    fn matmul_matches_candle_on_transposed_views() {
        let a = randn(&[90, 70], 10, 1.0);
        let b = randn(&[80, 90], 11, 1.0);
        check(
            &[a.clone(), b.clone()],
            |t| matmul(&t[0].t()?, &t[1].t()?),
            |t| t[0].t()?.matmul(&t[1].t()?),
            2e-4,
        );
        check(
            &[b, a],
            |t| matmul(&t[0], &t[1]),
            |t| t[0].matmul(&t[1]),
            2e-4,
        );
        // Hand value: [[1, 2], [3, 4]] · [[5], [6]] = [[17], [39]].
        let l = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let r = Tensor::new(&[[5f32], [6.]], &Device::Cpu).unwrap();
        let v: Vec<Vec<f32>> = matmul(&l, &r).unwrap().to_vec2().unwrap();
        assert_eq!(v, vec![vec![17.0], vec![39.0]]);
        assert!(matmul(&l, &l.t().unwrap().narrow(0, 0, 1).unwrap()).is_err());
    }

    #[test]
    fn attention_matches_composite_with_gradients() {
        // Cross (Lq ≠ Lk) and self attention, with and without mask and dropout; one size
        // small, one with enough heads × examples to spread over the threads.
        for (batch, lq, lk, hidden, heads) in [(2, 3, 5, 8, 2), (3, 7, 7, 24, 4), (4, 6, 9, 64, 4)]
        {
            let q = randn(&[batch, lq, hidden], 12, 1.5);
            let k = randn(&[batch, lk, hidden], 13, 1.5);
            let v = randn(&[batch, lk, hidden], 14, 1.0);
            let mask: Vec<f32> = (0..batch * lk)
                .map(|i| if i % 4 == 3 { -10000.0 } else { 0.0 })
                .collect();
            let mask = Tensor::from_vec(mask, (batch, 1, 1, lk), &Device::Cpu).unwrap();
            let flags: Vec<bool> = (0..batch * heads * lq * lk).map(|i| i % 5 != 2).collect();
            let keep = KeepMask::from_flags(&flags);
            let drop = AttentionDropout {
                keep: &keep,
                scale: 1.25,
            };
            for (m, d) in [(Some(&mask), Some(drop)), (None, None)] {
                check(
                    &[q.clone(), k.clone(), v.clone()],
                    |t| multi_head_attention(&t[0], &t[1], &t[2], heads, m, 0.3, d),
                    |t| multi_head_attention_composite(&t[0], &t[1], &t[2], heads, m, 0.3, d),
                    2e-5,
                );
            }
        }
    }

    #[test]
    fn bf16_products_round_their_inputs_and_hand_back_f32_gradients() {
        // Hand value: bf16(0.1, 0.2, 0.3) = (205/2048, 205/1024, 77/256) = (0.10009765625,
        // 0.2001953125, 0.30078125), so
        // (1, 2, 3)·w = 1.40283203125, which bf16 (step 2⁻⁷ in [1, 2)) rounds to 1.40625.
        let x = Var::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
        let w = Var::new(&[[0.1f32, 0.2, 0.3]], &Device::Cpu).unwrap();
        let y = with_precision(Precision::Bf16, || linear(&x, &w, None)).unwrap();
        assert_eq!(precision(), Precision::F32, "the precision is restored");
        assert_eq!(y.dtype(), DType::F32);
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![1.40625]]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let (gx, gw) = (grads.get(&x).unwrap(), grads.get(&w).unwrap());
        assert_eq!((gx.dtype(), gw.dtype()), (DType::F32, DType::F32));
        assert_eq!(
            gx.to_vec2::<f32>().unwrap(),
            vec![vec![205.0 / 2048.0, 205.0 / 1024.0, 77.0 / 256.0]]
        );
        assert_eq!(gw.to_vec2::<f32>().unwrap(), vec![vec![1., 2., 3.]]);

        // Random sizes: within bf16 rounding of the f32 products, values and gradients.
        let bf16 = |f: fn(&[Tensor]) -> Result<Tensor>| {
            move |t: &[Tensor]| with_precision(Precision::Bf16, || f(t))
        };
        let inputs = [
            randn(&[4, 6, 40], 7, 1.0),
            randn(&[24, 40], 8, 0.2),
            randn(&[24], 9, 1.0),
        ];
        check(
            &inputs,
            bf16(|t| linear(&t[0], &t[1], Some(&t[2]))),
            |t| linear(&t[0], &t[1], Some(&t[2])),
            3e-2,
        );
        check(
            &[randn(&[30, 20], 10, 1.0), randn(&[20, 25], 11, 1.0)],
            bf16(|t| matmul(&t[0], &t[1])),
            |t| matmul(&t[0], &t[1]),
            5e-2,
        );
        check(
            &[
                randn(&[2, 5, 16], 12, 1.0),
                randn(&[2, 7, 16], 13, 1.0),
                randn(&[2, 7, 16], 14, 1.0),
            ],
            bf16(|t| multi_head_attention(&t[0], &t[1], &t[2], 4, None, 0.5, None)),
            |t| multi_head_attention(&t[0], &t[1], &t[2], 4, None, 0.5, None),
            3e-2,
        );
        // And the products did run in bf16.
        let y16 = with_precision(Precision::Bf16, || linear(&inputs[0], &inputs[1], None)).unwrap();
        assert!(max_diff(&y16, &linear(&inputs[0], &inputs[1], None).unwrap()) > 1e-4);
    }

    #[test]
    fn attention_hand_value() {
        // One head, one query, two keys: scores (1·1, 1·0)·ln 3 → probabilities (3/4, 1/4);
        // values 4 and 8 give 5. A masked second key leaves the first: 4.
        let t =
            |v: &[f32], l: usize| Tensor::from_vec(v.to_vec(), (1, l, 1), &Device::Cpu).unwrap();
        let (q, k, v) = (t(&[1.0], 1), t(&[1.0, 0.0], 2), t(&[4.0, 8.0], 2));
        let out = |mask: Option<&Tensor>| -> f32 {
            multi_head_attention(&q, &k, &v, 1, mask, 3f64.ln(), None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
        };
        assert!((out(None) - 5.0).abs() < 1e-5, "{}", out(None));
        let mask = Tensor::new(&[0f32, -10000.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 2))
            .unwrap();
        assert!((out(Some(&mask)) - 4.0).abs() < 1e-5);
        let k3 = t(&[1.0, 0.0, 2.0], 3);
        assert!(multi_head_attention(&q, &k3, &v, 1, None, 1.0, None).is_err());
        // Two heads do not divide a hidden size of 1.
        assert!(multi_head_attention(&q, &k, &v, 2, None, 1.0, None).is_err());
    }

    #[test]
    fn dropout_add_matches_composite_with_gradients() {
        // More than one task of ELEMWISE_TASK elements, so the mask words are offset per task.
        let y = randn(&[3, 50, 130], 15, 1.0);
        let r = randn(&[3, 50, 130], 16, 1.0);
        let flags: Vec<bool> = (0..y.elem_count()).map(|i| (i * 7) % 10 < 9).collect();
        let keep = KeepMask::from_flags(&flags);
        for k in [Some(&keep), None] {
            check(
                &[y.clone(), r.clone()],
                |t| dropout_add(&t[0], &t[1], k, 1.0 / 0.9),
                |t| dropout_add_composite(&t[0], &t[1], k, 1.0 / 0.9),
                1e-6,
            );
        }
        // Hand value: (2, 3) with the second dropped, scale 2, plus (1, 1) → (5, 1).
        let t = |v: [f32; 2]| Tensor::new(&v, &Device::Cpu).unwrap();
        let half = KeepMask::from_flags(&[true, false]);
        let out = dropout_add(&t([2.0, 3.0]), &t([1.0, 1.0]), Some(&half), 2.0).unwrap();
        assert_eq!(out.to_vec1::<f32>().unwrap(), vec![5.0, 1.0]);
        assert!(dropout_add(
            &t([2.0, 3.0]),
            &t([1.0, 1.0]).reshape((2, 1)).unwrap(),
            None,
            1.0
        )
        .is_err());
    }

    /// A block's function of its activations and parameters.
    type BlockFn<'a> = &'a dyn Fn(&[Tensor], &[Tensor]) -> Result<Tensor>;

    /// Value and gradients of `f(acts, params)·w` for the fused block run inside a
    /// [`GradSink`] (its parameters' gradients go there) and the composite run without.
    fn check_block(
        acts: &[Tensor],
        params: &[Tensor],
        fused: impl Fn(&[Tensor], &[Tensor]) -> Result<Tensor>,
        composite: impl Fn(&[Tensor], &[Tensor]) -> Result<Tensor>,
        tol: f32,
    ) {
        let run = |f: BlockFn<'_>, collect: bool| {
            let vars: Vec<Var> = acts
                .iter()
                .chain(params)
                .map(|t| Var::from_tensor(t).unwrap())
                .collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let (a, p) = ts.split_at(acts.len());
            let sink = GradSink::new();
            let y = if collect {
                sink.collect(|| f(a, p))
            } else {
                f(a, p)
            }
            .unwrap();
            let w = randn(y.dims(), 99, 1.0);
            // An empty sink's backward is candle's.
            let grads = sink
                .backward(&y.mul(&w).unwrap().sum_all().unwrap())
                .unwrap();
            let gs: Vec<Tensor> = vars
                .iter()
                .map(|v| grads.get(v).expect("every input gets a gradient").clone())
                .collect();
            (y, gs)
        };
        let (yf, gf) = run(&fused, true);
        let (yc, gc) = run(&composite, false);
        let d = max_diff(&yf, &yc);
        assert!(d < tol, "value differs by {d}");
        for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
            let d = max_diff(a, b);
            assert!(d < tol, "gradient {i} differs by {d}");
        }
    }

    /// The error of `f` run on `params` as variables inside a collecting [`GradSink`] (so a
    /// block runs as its own op).
    fn sink_error(params: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> String {
        let vars: Vec<Var> = params
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        GradSink::new()
            .collect(|| f(&ts))
            .expect_err("the fused op rejects its input")
            .to_string()
    }

    /// The residual block's parameters from `p` = (weight, bias, norm weight, norm bias).
    fn residual_norm_params(p: &[Tensor]) -> ResidualNormParams<'_> {
        ResidualNormParams {
            weight: &p[0],
            bias: &p[1],
            norm_weight: &p[2],
            norm_bias: &p[3],
            eps: 1e-12,
        }
    }

    #[test]
    fn dense_residual_norm_matches_composite_with_gradients() {
        // Rows over more than one task, so the mask words are offset per task.
        let x = randn(&[3, 50, 24], 21, 1.0);
        let r = randn(&[3, 50, 130], 22, 1.0);
        let params = [
            randn(&[130, 24], 23, 0.3),
            randn(&[130], 24, 0.1),
            randn(&[130], 25, 1.0),
            randn(&[130], 26, 0.1),
        ];
        let flags: Vec<bool> = (0..r.elem_count()).map(|i| (i * 7) % 10 < 9).collect();
        let keep = KeepMask::from_flags(&flags);
        for k in [Some(&keep), None] {
            check_block(
                &[x.clone(), r.clone()],
                &params,
                |a, p| dense_residual_norm(&a[0], &a[1], residual_norm_params(p), k, 1.0 / 0.9),
                |a, p| {
                    dense_residual_norm_composite(
                        &a[0],
                        &a[1],
                        residual_norm_params(p),
                        k,
                        1.0 / 0.9,
                    )
                },
                1e-4,
            );
        }
        // With a collecting sink the block is its own op (its errors name it).
        let short = KeepMask::from_flags(&[true; 3]);
        let err = sink_error(&params, |p| {
            dense_residual_norm(&x, &r, residual_norm_params(p), Some(&short), 1.0)
        });
        assert!(err.contains("dense-residual-norm: 3 mask flags"), "{err}");
    }

    #[test]
    fn feed_forward_matches_composite_with_gradients() {
        // hidden 24, inner 70; rows over more than one task, so the mask words are offset
        // per task.
        let x = randn(&[3, 120, 24], 41, 1.0);
        let params = [
            randn(&[70, 24], 42, 0.3),
            randn(&[70], 43, 0.1),
            randn(&[24, 70], 44, 0.3),
            randn(&[24], 45, 0.1),
            randn(&[24], 46, 1.0),
            randn(&[24], 47, 0.1),
        ];
        let flags: Vec<bool> = (0..x.elem_count()).map(|i| (i * 7) % 10 < 9).collect();
        let keep = KeepMask::from_flags(&flags);
        fn of(p: &[Tensor]) -> FeedForwardParams<'_> {
            FeedForwardParams {
                up_weight: &p[0],
                up_bias: &p[1],
                down: residual_norm_params(&p[2..]),
            }
        }
        for k in [Some(&keep), None] {
            check_block(
                std::slice::from_ref(&x),
                &params,
                |a, p| feed_forward(&a[0], of(p), k, 1.0 / 0.9),
                |a, p| feed_forward_composite(&a[0], of(p), k, 1.0 / 0.9),
                1e-4,
            );
        }
        // With a collecting sink the block is its own op (its errors name it).
        let short = KeepMask::from_flags(&[true; 3]);
        let err = sink_error(&params, |p| feed_forward(&x, of(p), Some(&short), 1.0));
        assert!(err.contains("feed-forward: 3 mask flags"), "{err}");
        // A down weight of the wrong shape is an error naming the shapes.
        let mut bad = params.clone();
        bad[2] = params[0].clone();
        let err = sink_error(&bad, |p| feed_forward(&x, of(p), None, 1.0));
        assert!(err.contains("down weight [70, 24]"), "{err}");
    }

    #[test]
    fn linear_gelu_matches_composite_with_gradients() {
        let x = randn(&[3, 40, 24], 31, 1.0);
        let params = [randn(&[230, 24], 32, 0.3), randn(&[230], 33, 0.1)];
        check_block(
            std::slice::from_ref(&x),
            &params,
            |a, p| linear_gelu(&a[0], &p[0], &p[1]),
            |a, p| gelu(&linear(&a[0], &p[0], Some(&p[1]))?),
            1e-4,
        );
        // Hand value: x = (1, −1), W = I, b = (0.5, 0) → (gelu(1.5), gelu(−1)).
        let w =
            Var::from_tensor(&Tensor::new(&[[1f32, 0.], [0., 1.]], &Device::Cpu).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.5f32, 0.], &Device::Cpu).unwrap()).unwrap();
        let x = Tensor::new(&[[1f32, -1.]], &Device::Cpu).unwrap();
        let y = GradSink::new()
            .collect(|| linear_gelu(&x, w.as_tensor(), b.as_tensor()))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // gelu(1.5) = 1.5·Φ(1.5) = 1.5 · 0.9331928; gelu(−1) = −Φ(−1) = −0.1586553.
        assert!((y[0][0] - 1.399_789).abs() < 1e-5, "{}", y[0][0]);
        assert!((y[0][1] + 0.158_655_3).abs() < 1e-5, "{}", y[0][1]);
    }
}
