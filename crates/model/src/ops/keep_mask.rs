//! Dropout keep masks as bits.

use candle_core::{bail, Result};
use rand::RngCore;
use rand_chacha::ChaCha12Rng;
use rayon::prelude::*;

/// A dropout keep mask: one flag per element of a row-major tensor, stored as bits (flag `i`
/// is bit `i % 64` of word `i / 64`), the form the fused dropout kernels read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepMask {
    words: Vec<u64>,
    len: usize,
}

impl KeepMask {
    /// The mask of `flags` (`true`: keep).
    pub fn from_flags(flags: &[bool]) -> Self {
        let mut words = vec![0u64; flags.len().div_ceil(64)];
        for (i, _) in flags.iter().enumerate().filter(|(_, &k)| k) {
            words[i / 64] |= 1 << (i % 64);
        }
        Self {
            words,
            len: flags.len(),
        }
    }

    /// `n` flags drawn from `rng`, each kept with probability `1 − p` (to 2⁻¹⁶): two flags
    /// per `u32` of the stream, low half first, flag `i` being `u / 2¹⁶ ≥ p` for its 16-bit
    /// `u`, decided on the integer. A mask uses [`Self::stream_words`]`(n)` words.
    pub fn draw(rng: &mut impl RngCore, n: usize, p: f32) -> Self {
        // u · 2⁻¹⁶ ≥ p  ⇔  u ≥ ⌈p · 2¹⁶⌉ (both sides exact).
        let threshold = (f64::from(p) * 65_536.0).ceil().max(0.0) as u32;
        let mut words = vec![0u64; n.div_ceil(64)];
        // A word's 64 flags at once: `fill_bytes` consumes the stream's u32s in the order
        // `next_u32` would (little-endian bytes), whole u32s only.
        let mut bytes = [0u8; 128];
        for (w, word) in words.iter_mut().enumerate() {
            let bits = (n - w * 64).min(64);
            rng.fill_bytes(&mut bytes[..4 * bits.div_ceil(2)]);
            for (b, u) in bytes[..2 * bits].chunks_exact(2).enumerate() {
                let u = u32::from(u16::from_le_bytes([u[0], u[1]]));
                *word |= u64::from(u >= threshold) << b;
            }
        }
        Self { words, len: n }
    }

    /// The `u32` words of the stream a mask of `n` flags uses.
    pub fn stream_words(n: usize) -> u128 {
        n.div_ceil(2) as u128
    }

    /// [`Self::draw`] from a ChaCha12 stream (rand's `StdRng`), with blocks of the mask drawn
    /// on rayon threads from their positions in the stream: the same flags, and `rng` left
    /// where the serial draw leaves it.
    pub fn draw_parallel(rng: &mut ChaCha12Rng, n: usize, p: f32) -> Self {
        // Flags per task: a whole number of words, so tasks write disjoint words.
        const TASK_FLAGS: usize = 16 * 1024;
        if n <= TASK_FLAGS {
            return Self::draw(rng, n, p);
        }
        let start = rng.get_word_pos();
        let mut words = vec![0u64; n.div_ceil(64)];
        words
            .par_chunks_mut(TASK_FLAGS / 64)
            .enumerate()
            .for_each(|(t, chunk)| {
                let first = t * TASK_FLAGS;
                let mut local = rng.clone();
                local.set_word_pos(start + Self::stream_words(first));
                let part = Self::draw(&mut local, TASK_FLAGS.min(n - first), p);
                chunk.copy_from_slice(&part.words);
            });
        rng.set_word_pos(start + Self::stream_words(n));
        Self { words, len: n }
    }

    /// Number of flags.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mask has no flags.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flag `i`.
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// `f(select, a)` for the flags `start..start + a.len()` and the elements of `a`, a mask
    /// word at a time, `select` being all ones for a kept element and 0 for a dropped one
    /// (for [`keep_or_zero`]): the flags are shifts of the word and the selection is a bit
    /// mask, so the loop vectorises (a branch on a random flag per element mispredicts one
    /// time in ten at p = 0.1).
    #[inline(always)]
    pub(crate) fn apply<A>(&self, start: usize, a: &mut [A], f: impl Fn(u32, &mut A)) {
        for (off, n, bits) in self.runs(start, a.len()) {
            for (j, a) in a[off..off + n].iter_mut().enumerate() {
                f(select(bits, j), a);
            }
        }
    }

    /// [`Self::apply`] with the paired elements of `b` (as long as `a`).
    #[inline(always)]
    pub(crate) fn apply_zip<A, B>(
        &self,
        start: usize,
        a: &mut [A],
        b: &[B],
        f: impl Fn(u32, &mut A, &B),
    ) {
        for (off, n, bits) in self.runs(start, a.len()) {
            for (j, (a, b)) in a[off..off + n].iter_mut().zip(&b[off..off + n]).enumerate() {
                f(select(bits, j), a, b);
            }
        }
    }

    /// The flags `start..start + len` in runs inside one word: `(offset from start, length,
    /// bits)`, bit `j` of `bits` being the flag of element `start + offset + j`.
    fn runs(&self, start: usize, len: usize) -> impl Iterator<Item = (usize, usize, u64)> + '_ {
        let end = start + len;
        assert!(
            end <= self.len,
            "keep mask: flags {start}..{end} of {}",
            self.len
        );
        let mut pos = start;
        std::iter::from_fn(move || {
            (pos < end).then(|| {
                let n = (64 - pos % 64).min(end - pos);
                let run = (pos - start, n, self.words[pos / 64] >> (pos % 64));
                pos += n;
                run
            })
        })
    }

    /// The flags of `kept` rows of each outer block of a `[outer, of, inner]` tensor, row
    /// `k` of block `o` being `row(o, k)` (`< of`), in order: the mask of
    /// `[outer, kept, inner]`.
    pub fn select_rows(
        &self,
        outer: usize,
        of: usize,
        inner: usize,
        kept: usize,
        row: impl Fn(usize, usize) -> usize,
    ) -> Result<Self> {
        if outer * of * inner != self.len {
            bail!(
                "keep mask: {} flags, not [{outer}, {of}, {inner}]",
                self.len
            )
        }
        let mut flags = Vec::with_capacity(outer * kept * inner);
        for o in 0..outer {
            for k in 0..kept {
                let r = row(o, k);
                if r >= of {
                    bail!("keep mask: row {r} of block {o}, blocks have {of} rows")
                }
                let start = (o * of + r) * inner;
                flags.extend((start..start + inner).map(|i| self.get(i)));
            }
        }
        Ok(Self::from_flags(&flags))
    }

    /// The words (64 flags each, the last one padded with zeros).
    #[cfg(test)]
    fn words(&self) -> &[u64] {
        &self.words
    }
}

/// All ones when bit `j` of `bits` is set, else 0.
#[inline(always)]
fn select(bits: u64, j: usize) -> u32 {
    0u32.wrapping_sub((bits >> j) as u32 & 1)
}

/// `x` where `select` is all ones, +0 where it is 0 (a select without a branch).
#[inline(always)]
pub(crate) fn keep_or_zero(x: f32, select: u32) -> f32 {
    f32::from_bits(x.to_bits() & select)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn drawn_masks_compare_16_bit_halves_with_p() {
        // The reference: each u32 of the same stream as two 16-bit fractions, low half
        // first, compared with p as floats.
        for (seed, p) in [
            (1, 0.1f32),
            (2, 0.25),
            (3, 0.5),
            (4, 1.0 / 3.0),
            (5, 0.999_99),
        ] {
            for n in [10_007, 64, 3] {
                let mut a = StdRng::seed_from_u64(seed);
                let mut b = StdRng::seed_from_u64(seed);
                let mut flags = Vec::new();
                while flags.len() < n {
                    let u = a.next_u32();
                    for half in [u & 0xFFFF, u >> 16] {
                        flags.push(f64::from(half) / 65_536.0 >= f64::from(p));
                    }
                }
                flags.truncate(n);
                let mask = KeepMask::draw(&mut b, n, p);
                assert_eq!(mask, KeepMask::from_flags(&flags), "p = {p}, {n} flags");
                // Both leave the stream at the same place.
                assert_eq!(a.next_u32(), b.next_u32(), "p = {p}, {n} flags");
            }
        }
        // The edges: p = 0 keeps everything, p = 1 nothing.
        let mut r = StdRng::seed_from_u64(6);
        assert!((0..100).all(|i| KeepMask::draw(&mut r, 100, 0.0).get(i)));
        assert!((0..100).all(|i| !KeepMask::draw(&mut r, 100, 1.0).get(i)));
        // About 1 − p kept.
        let m = KeepMask::draw(&mut r, 100_000, 0.1);
        let kept = (0..100_000).filter(|&i| m.get(i)).count();
        assert!(
            (89_000..91_000).contains(&kept),
            "{kept} of 100000 kept at p = 0.1"
        );
    }

    #[test]
    fn parallel_draws_equal_the_serial_draw() {
        use rand::SeedableRng;
        // StdRng is ChaCha12 seeded the same way: the dropout stream is unchanged.
        let (mut std, mut chacha) = (StdRng::seed_from_u64(9), ChaCha12Rng::seed_from_u64(9));
        assert!((0..1000).all(|_| std.next_u32() == chacha.next_u32()));
        // Several tasks, the last one partial and ending inside a word; then one task.
        for n in [3 * 16 * 1024 + 1000 + 7, 5000] {
            let mut a = ChaCha12Rng::seed_from_u64(4);
            let mut b = a.clone();
            a.next_u32();
            b.next_u32();
            assert_eq!(
                KeepMask::draw_parallel(&mut a, n, 0.1),
                KeepMask::draw(&mut b, n, 0.1),
                "{n} flags"
            );
            assert_eq!(
                a.next_u32(),
                b.next_u32(),
                "{n} flags: the stream continues"
            );
        }
    }

    #[test]
    fn applied_flags_match_the_flags_at_any_offset() {
        // 300 flags in a pattern with runs of both kinds across word boundaries.
        let flags: Vec<bool> = (0..300).map(|i| (i * 7 + i / 13) % 5 != 0).collect();
        let m = KeepMask::from_flags(&flags);
        for (start, len) in [
            (0, 300),
            (0, 0),
            (5, 59),
            (63, 2),
            (64, 64),
            (70, 200),
            (299, 1),
        ] {
            let mut a: Vec<f32> = (0..len).map(|i| i as f32 + 1.0).collect();
            m.apply(start, &mut a, |k, x| *x = keep_or_zero(*x, k));
            let want: Vec<f32> = (0..len)
                .map(|i| {
                    if flags[start + i] {
                        i as f32 + 1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            assert_eq!(a, want, "apply from {start}, {len} flags");
            let mut sum = vec![10f32; len];
            m.apply_zip(start, &mut sum, &want, |k, s, &w| {
                *s += keep_or_zero(2.0 * w, k)
            });
            let want_sum: Vec<f32> = want.iter().map(|w| 10.0 + 2.0 * w).collect();
            assert_eq!(sum, want_sum, "apply_zip from {start}, {len} flags");
        }
        // Dropped elements become +0 whatever they held, NaN included.
        let mut a = [f32::NAN, -1.0];
        KeepMask::from_flags(&[false, false]).apply(0, &mut a, |k, x| *x = keep_or_zero(*x, k));
        assert_eq!(a.map(f32::to_bits), [0, 0]);
    }

    #[test]
    fn flags_round_trip_and_rows_are_selected() {
        // Flags 0, 2, 64 and 66 of 67 (three words' worth of boundaries).
        let flags: Vec<bool> = (0..67).map(|i| i % 64 == 0 || i % 64 == 2).collect();
        let m = KeepMask::from_flags(&flags);
        assert_eq!(m.len(), 67);
        assert_eq!(m.words(), [0b101, 0b101]);
        assert!((0..67).all(|i| m.get(i) == flags[i]));
        // [outer 2, rows 3, inner 2], first row: flags 0–1 and 6–7.
        let f: Vec<bool> = (0..12).map(|i| [0, 3, 6, 7, 11].contains(&i)).collect();
        let m = KeepMask::from_flags(&f);
        let rows = m.select_rows(2, 3, 2, 1, |_, _| 0).unwrap();
        assert_eq!(rows, KeepMask::from_flags(&[true, false, true, true]));
        // Rows 2 then 1 of block 0 (flags 4–5, 2–3), row 0 then 2 of block 1 (6–7, 10–11).
        let picked = m
            .select_rows(2, 3, 2, 2, |o, k| [[2, 1], [0, 2]][o][k])
            .unwrap();
        let expected = [4, 5, 2, 3, 6, 7, 10, 11].map(|i| f[i]);
        assert_eq!(picked, KeepMask::from_flags(&expected));
        assert!(m.select_rows(2, 4, 2, 1, |_, _| 0).is_err());
        assert!(m.select_rows(2, 3, 2, 1, |_, _| 3).is_err());
    }
}
