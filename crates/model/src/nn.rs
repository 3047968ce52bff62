//! Training-safe building blocks.
//!
//! candle's fused LayerNorm and `softmax_last_dim` record no backward (see
//! CANDLE-TRAINING.md): LayerNorm and GELU here use [`crate::ops`]' fused kernels, which have
//! one. Random numbers (init, dropout) come from our own seeded `rand` RNG because the CPU
//! device cannot be seeded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::ops::KeepMask;
use candle_core::{DType, Device, Module, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use rand_distr::{Distribution, Normal};

/// A linear layer `y = x Wᵀ + b` with BERT init (W ~ N(0, σ), b = 0).
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// Loads/creates `weight [out, in]` and `bias [out]` under `vb`.
    pub fn load(vb: VarBuilder<'_>, in_dim: usize, out_dim: usize, std: f64) -> Result<Self> {
        let w = vb.get_with_hints(
            (out_dim, in_dim),
            "weight",
            Init::Randn {
                mean: 0.,
                stdev: std,
            },
        )?;
        let b = vb.get_with_hints(out_dim, "bias", Init::Const(0.))?;
        Ok(Self {
            inner: candle_nn::Linear::new(w, Some(b)),
        })
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// The bias `[out]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// `gelu(self(x))` ([`crate::ops::linear_gelu`]: one op in a training step).
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        match self.inner.bias() {
            Some(b) => crate::ops::linear_gelu(x, self.inner.weight(), b),
            None => gelu(&self.forward(x)?),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::linear(x, self.inner.weight(), self.inner.bias())
    }
}

/// LayerNorm over the last dimension ([`crate::ops::layer_norm`]).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads/creates `weight` (init 1) and `bias` (init 0) of width `dim`.
    pub fn load(vb: VarBuilder<'_>, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.))?;
        Ok(Self { weight, bias, eps })
    }

    /// `self(dropout(dense(x)) + residual)`, dropout as in [`crate::ops::dropout_add`]
    /// ([`crate::ops::dense_residual_norm`]: one op in a training step).
    pub fn forward_dense_residual(
        &self,
        dense: &Linear,
        x: &Tensor,
        residual: &Tensor,
        keep: Option<&KeepMask>,
        scale: f32,
    ) -> Result<Tensor> {
        let Some(bias) = dense.bias() else {
            let y = crate::ops::dropout_add(&dense.forward(x)?, residual, keep, scale)?;
            return self.forward(&y);
        };
        let params = crate::ops::ResidualNormParams {
            weight: dense.weight(),
            bias,
            norm_weight: &self.weight,
            norm_bias: &self.bias,
            eps: self.eps,
        };
        crate::ops::dense_residual_norm(x, residual, params, keep, scale)
    }

    /// `self(dropout(down(gelu(up(x)))) + x)`, dropout as in [`crate::ops::dropout_add`]
    /// ([`crate::ops::feed_forward`]: one op in a training step).
    pub fn forward_feed_forward(
        &self,
        (up, down): (&Linear, &Linear),
        x: &Tensor,
        keep: Option<&KeepMask>,
        scale: f32,
    ) -> Result<Tensor> {
        let (Some(up_bias), Some(bias)) = (up.bias(), down.bias()) else {
            return self.forward_dense_residual(down, &up.forward_gelu(x)?, x, keep, scale);
        };
        let params = crate::ops::FeedForwardParams {
            up_weight: up.weight(),
            up_bias,
            down: crate::ops::ResidualNormParams {
                weight: down.weight(),
                bias,
                norm_weight: &self.weight,
                norm_bias: &self.bias,
                eps: self.eps,
            },
        };
        crate::ops::feed_forward(x, params, keep, scale)
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// An embedding table with BERT init; optionally row 0 is frozen (PyTorch `padding_idx=0`).
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor,
    freeze_row0: bool,
}

impl Embedding {
    /// Loads/creates `weight [rows, dim]`.
    pub fn load(
        vb: VarBuilder<'_>,
        rows: usize,
        dim: usize,
        std: f64,
        freeze_row0: bool,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(
            (rows, dim),
            "weight",
            Init::Randn {
                mean: 0.,
                stdev: std,
            },
        )?;
        Ok(Self {
            weight,
            freeze_row0,
        })
    }

    /// The table `[rows, dim]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Looks up `ids` (u32, any shape) → `[.., dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(self.weight.dim(1)?);
        let flat = ids.flatten_all()?;
        crate::ops::embedding(&self.weight, &flat, self.freeze_row0)?.reshape(dims)
    }
}

/// The seeded random-number source shared by all dropout layers of a model: ChaCha12 (the
/// generator behind rand's `StdRng`, seeded the same way), whose stream positions let a mask
/// be drawn in parallel blocks ([`KeepMask::draw_parallel`]).
#[derive(Debug, Clone)]
pub struct DropoutRng(Arc<Mutex<ChaCha12Rng>>);

impl DropoutRng {
    /// A generator seeded with `seed` (same seed, same masks).
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(ChaCha12Rng::seed_from_u64(seed))))
    }

    /// Restarts the stream from `seed` (for every layer sharing it): a trainer that reseeds
    /// before each batch makes the masks a function of the batch, so a resumed run draws
    /// the masks an uninterrupted one would.
    pub fn reseed(&self, seed: u64) {
        let mut rng = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *rng = ChaCha12Rng::seed_from_u64(seed);
    }
}

thread_local! {
    /// The dropout stream [`with_dropout_stream`] set on this thread.
    static STREAM: std::cell::RefCell<Option<ChaCha12Rng>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with every dropout layer used on this thread drawing from a stream of its own,
/// seeded with `seed` as [`DropoutRng::reseed`] seeds a model's shared one, instead of from
/// the shared one (restored afterwards, also when `f` panics). Micro-batches run side by
/// side ([`crate::run_side_by_side`]) thus draw the masks they would draw one after the
/// other with the model reseeded with the same seeds before each.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use msp_model::{with_dropout_stream, Dropout, DropoutRng};
///
/// let shared = DropoutRng::new(1);
/// let drop = Dropout::new(0.5, &shared);
/// let x = Tensor::ones(64, candle_core::DType::F32, &Device::Cpu)?;
/// let own = with_dropout_stream(7, || drop.forward_t(&x, true))?;
/// shared.reseed(7);
/// let reseeded = drop.forward_t(&x, true)?;
/// assert_eq!(own.to_vec1::<f32>()?, reseeded.to_vec1::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn with_dropout_stream<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    /// Puts back the stream that was set before.
    struct Restore(Option<ChaCha12Rng>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STREAM.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let own = ChaCha12Rng::seed_from_u64(seed);
    let _restore = Restore(STREAM.with(|s| s.borrow_mut().replace(own)));
    f()
}

/// The generator at `rng`'s position, for a mask of `n` flags; `rng` moves past its words.
fn stream_part(rng: &mut ChaCha12Rng, n: usize) -> ChaCha12Rng {
    let part = rng.clone();
    rng.set_word_pos(rng.get_word_pos() + KeepMask::stream_words(n));
    part
}

/// Inverted dropout, active only when `train` is true.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f64,
    rng: DropoutRng,
}

impl Dropout {
    /// Dropout with drop probability `p`, drawing from `rng`.
    pub fn new(p: f64, rng: &DropoutRng) -> Self {
        Self {
            p,
            rng: rng.clone(),
        }
    }

    /// Applies dropout when `train`, identity otherwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self.keep_mask(x.elem_count(), train)? {
            Some(keep) => crate::ops::dropout_masked(x, &keep, self.keep_scale()),
            None => Ok(x.clone()),
        }
    }

    /// `n` keep flags drawn from the shared generator (each kept with probability `1 − p`),
    /// or `None` when dropout is off (`!train` or `p = 0`): the mask [`Self::forward_t`]
    /// applies, for a fused op that applies it itself.
    pub fn keep_mask(&self, n: usize, train: bool) -> Result<Option<KeepMask>> {
        if !train || self.p <= 0.0 {
            return Ok(None);
        }
        // Take this draw's part of the stream (this thread's, under `with_dropout_stream`)
        // and release the lock before drawing (on rayon threads): the generator moves past
        // the words the mask uses.
        let own = STREAM.with(|s| s.borrow_mut().as_mut().map(|rng| stream_part(rng, n)));
        let mut part = match own {
            Some(part) => part,
            None => {
                let mut shared = self
                    .rng
                    .0
                    .lock()
                    .map_err(|_| candle_core::Error::Msg("dropout RNG poisoned".into()))?;
                stream_part(&mut shared, n)
            }
        };
        Ok(Some(KeepMask::draw_parallel(&mut part, n, self.p as f32)))
    }

    /// The keep flags of the rows `rows` selects from a `[outer, rows.of, inner]` tensor:
    /// drawn as [`Self::keep_mask`] draws them for the whole tensor, then those of the other
    /// rows dropped. A forward that computes only some rows thus applies the masks the full
    /// forward applies to them, and leaves the stream where the full forward leaves it.
    pub fn keep_mask_rows(
        &self,
        outer: usize,
        rows: Rows<'_>,
        inner: usize,
        train: bool,
    ) -> Result<Option<KeepMask>> {
        let mask = self.keep_mask(outer * rows.of * inner, train)?;
        match mask {
            Some(m) if !rows.is_all() => Ok(Some(m.select_rows(
                outer,
                rows.of,
                inner,
                rows.kept,
                |o, k| rows.row(o, outer, k),
            )?)),
            m => Ok(m),
        }
    }

    /// The factor for kept elements, `1 / (1 − p)`.
    pub fn keep_scale(&self) -> f32 {
        1.0 / (1.0 - self.p as f32)
    }
}

/// Which rows along the sequence dimension a layer computes: `kept` of `of`, the first ones
/// or, with `pick`, chosen per example. Dropout draws its masks for all `of` (see
/// [`Dropout::keep_mask_rows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows<'a> {
    /// Rows computed per example.
    pub kept: usize,
    /// Rows of the full sequence.
    pub of: usize,
    /// `[examples · kept]`: the rows of example `b` are `pick[b · kept..(b + 1) · kept]`;
    /// `None`: the first `kept` rows of every example.
    pub pick: Option<&'a [u32]>,
}

impl<'a> Rows<'a> {
    /// Every row of a sequence of `n`.
    pub fn all(n: usize) -> Self {
        Self {
            kept: n,
            of: n,
            pick: None,
        }
    }

    /// Every row of `x`, its elements grouped by the last dimension as one sequence.
    pub fn every(x: &Tensor) -> Result<Self> {
        Ok(Self::all(
            x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1),
        ))
    }

    /// The first `kept` rows of a sequence of `of` (`kept ≤ of`).
    pub fn first(kept: usize, of: usize) -> Self {
        Self {
            kept: kept.min(of),
            of,
            pick: None,
        }
    }

    /// The rows `pick` names, `kept` per example, of sequences of `of` (see [`Self::pick`]).
    pub fn picked(pick: &'a [u32], kept: usize, of: usize) -> Result<Self> {
        if kept == 0 || pick.len() % kept != 0 || pick.iter().any(|&r| r as usize >= of) {
            candle_core::bail!(
                "rows: {} picks, {kept} per example, of sequences of {of}",
                pick.len()
            )
        }
        Ok(Self {
            kept,
            of,
            pick: Some(pick),
        })
    }

    /// Whether every row is computed, in order.
    pub fn is_all(&self) -> bool {
        self.pick.is_none() && self.kept == self.of
    }

    /// The sequence row of computed row `k` in block `o` of `outer` blocks (the blocks are
    /// the examples, or the examples' heads in order).
    pub fn row(&self, o: usize, outer: usize, k: usize) -> usize {
        match self.pick {
            None => k,
            Some(p) => {
                let examples = p.len() / self.kept;
                let per_example = (outer / examples.max(1)).max(1);
                p[(o / per_example) * self.kept + k] as usize
            }
        }
    }

    /// The computed rows of `x [B, of, H]`, `[B, kept, H]`.
    pub fn gather(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        if l != self.of {
            candle_core::bail!("rows: {l} rows, expected {}", self.of)
        }
        match self.pick {
            None if self.kept == l => Ok(x.clone()),
            None => x.narrow(1, 0, self.kept),
            Some(p) => {
                if p.len() != b * self.kept {
                    candle_core::bail!("rows: {} picks for {b} × {} rows", p.len(), self.kept)
                }
                let flat: Vec<u32> = p
                    .chunks(self.kept)
                    .enumerate()
                    .flat_map(|(e, rows)| rows.iter().map(move |&r| (e * l) as u32 + r))
                    .collect();
                let idx = Tensor::from_vec(flat, b * self.kept, x.device())?;
                x.reshape((b * l, h))?
                    .index_select(&idx, 0)?
                    .reshape((b, self.kept, h))
            }
        }
    }
}

/// Exact (erf) GELU, as BERT ([`crate::ops::gelu`]).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    crate::ops::gelu(x)
}

/// FNV-1a of a name, mixed with the seed: each variable gets its own stream, so adding a
/// variable never changes the init of the others.
fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Builds the initial value of a variable from its init hint with a seeded RNG.
pub(crate) fn seeded_init(
    shape: &Shape,
    name: &str,
    init: Init,
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let n = shape.elem_count();
    let values: Vec<f32> = match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => {
            let mut rng = StdRng::seed_from_u64(name_seed(seed, name));
            let normal = Normal::new(mean, stdev.max(0.0))
                .map_err(|e| candle_core::Error::Msg(format!("init of {name}: {e}")))?;
            (0..n).map(|_| normal.sample(&mut rng) as f32).collect()
        }
        Init::Uniform { lo, up } => {
            let mut rng = StdRng::seed_from_u64(name_seed(seed, name));
            (0..n).map(|_| rng.random_range(lo..up) as f32).collect()
        }
        other => {
            return Err(candle_core::Error::Msg(format!(
                "init {other:?} of {name} is not used by this model"
            )));
        }
    };
    Tensor::from_vec(values, shape.clone(), &Device::Cpu)?
        .to_device(dev)?
        .to_dtype(dtype)
}

/// A `VarBuilder` backend that creates every variable in a [`VarMap`] with a seeded init.
pub(crate) struct SeededVarMap {
    pub(crate) map: VarMap,
    pub(crate) seed: u64,
}

impl candle_nn::var_builder::SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self
            .map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap poisoned".into()))?;
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                return Err(candle_core::Error::Msg(format!(
                    "variable {name} exists with shape {:?}, requested {:?}",
                    v.shape(),
                    s
                )));
            }
            return Ok(v.as_tensor().clone());
        }
        let t = seeded_init(&s, name, h, self.seed, dtype, dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self
            .map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap poisoned".into()))?;
        data.get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::Msg(format!("no variable {name}")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// A `VarBuilder` backend that allocates nothing: it records each requested name and shape
/// and hands back a broadcast scalar. Used to count parameters of large configs instantly.
pub(crate) struct ShapeRecorder {
    pub(crate) shapes: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
}

impl candle_nn::var_builder::SimpleBackend for ShapeRecorder {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Ok(mut m) = self.shapes.lock() {
            m.insert(name.to_string(), s.dims().to_vec());
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "shape recorder has no value for {name}"
        )))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_matches_hand_values() {
        let map = VarMap::new();
        let vb = crate::seeded_var_builder(&map, 0, &Device::Cpu);
        let ln = LayerNorm::load(vb, 4, 1e-12).unwrap();
        // mean 2.5, variance 1.25 → (x − 2.5) / √1.25.
        let x = Tensor::new(&[[1f32, 2., 3., 4.]], &Device::Cpu).unwrap();
        let y: Vec<f32> = ln
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let s = 1.25f32.sqrt();
        for (a, b) in y.iter().zip([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn rows_gather_the_first_or_the_picked_rows() {
        // x [2, 3, 1], row r of example b holds 10 b + r.
        let x = Tensor::new(&[[[0f32], [1.], [2.]], [[10.], [11.], [12.]]], &Device::Cpu).unwrap();
        let values = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        assert_eq!(values(Rows::first(1, 3).gather(&x).unwrap()), [0., 10.]);
        let pick = [0u32, 2, 1, 2];
        let rows = Rows::picked(&pick, 2, 3).unwrap();
        assert_eq!(values(rows.gather(&x).unwrap()), [0., 2., 11., 12.]);
        assert!(Rows::picked(&pick, 2, 4).unwrap().gather(&x).is_err());
        assert!(Rows::picked(&pick, 1, 3).unwrap().gather(&x).is_err());
    }

    #[test]
    fn row_flags_are_the_full_flags_of_those_rows() {
        let draw = |rows: Rows<'_>| {
            let d = Dropout::new(0.5, &DropoutRng::new(3));
            let flags = d.keep_mask_rows(2, rows, 2, true).unwrap().unwrap();
            // The stream continues where the full draw of 2 · 3 · 2 flags leaves it.
            (flags, d.keep_mask(4, true).unwrap().unwrap())
        };
        let (full, next_full) = draw(Rows::all(3));
        let (first, next_first) = draw(Rows::first(1, 3));
        assert_eq!(full.len(), 12);
        // [outer 2, rows 3, inner 2]: row 0 of each outer block is flags 0–1 and 6–7.
        let expected = [0, 1, 6, 7].map(|i| full.get(i));
        assert_eq!(first, KeepMask::from_flags(&expected));
        assert_eq!(next_first, next_full);
        // Rows picked per example: [outer 2 = 2 examples, rows 3, inner 2], row 2 of
        // example 0 (flags 4–5) and row 0 of example 1 (flags 6–7).
        let pick = [2u32, 0];
        let (picked, next_picked) = draw(Rows::picked(&pick, 1, 3).unwrap());
        let expected = [4, 5, 6, 7].map(|i| full.get(i));
        assert_eq!(picked, KeepMask::from_flags(&expected));
        assert_eq!(next_picked, next_full);
        // Four outer blocks are two examples' two heads each: blocks 0–1 read example 0's
        // row 2, blocks 2–3 example 1's row 0.
        let d = Dropout::new(0.5, &DropoutRng::new(4));
        let heads = d
            .keep_mask_rows(4, Rows::picked(&pick, 1, 3).unwrap(), 1, true)
            .unwrap()
            .unwrap();
        let all = Dropout::new(0.5, &DropoutRng::new(4))
            .keep_mask(12, true)
            .unwrap()
            .unwrap();
        let expected = [2, 5, 6, 9].map(|i| all.get(i));
        assert_eq!(heads, KeepMask::from_flags(&expected));
        assert!(Rows::picked(&pick, 1, 2).is_err());
        assert!(Rows::picked(&pick, 0, 3).is_err());
        let off = Dropout::new(0.5, &DropoutRng::new(3));
        assert!(off
            .keep_mask_rows(2, Rows::first(1, 3), 2, false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn dropout_is_identity_in_eval_and_seeded_in_train() {
        let x = Tensor::ones((8, 64), DType::F32, &Device::Cpu).unwrap();
        let d1 = Dropout::new(0.25, &DropoutRng::new(9));
        let d2 = Dropout::new(0.25, &DropoutRng::new(9));
        let eval: Vec<f32> = d1
            .forward_t(&x, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(eval.iter().all(|&v| v == 1.0));
        let a: Vec<f32> = d1
            .forward_t(&x, true)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = d2
            .forward_t(&x, true)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
        let dropped = a.iter().filter(|&&v| v == 0.0).count();
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        assert!((60..=200).contains(&dropped), "{dropped} of 512 dropped");
    }

    #[test]
    fn seeded_init_is_reproducible_and_has_bert_statistics() {
        let s = Shape::from((200, 100));
        let a = seeded_init(
            &s,
            "w",
            Init::Randn {
                mean: 0.,
                stdev: 0.02,
            },
            5,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let b = seeded_init(
            &s,
            "w",
            Init::Randn {
                mean: 0.,
                stdev: 0.02,
            },
            5,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let c = seeded_init(
            &s,
            "v",
            Init::Randn {
                mean: 0.,
                stdev: 0.02,
            },
            5,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let va: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(va, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(va, c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let n = va.len() as f32;
        let mean = va.iter().sum::<f32>() / n;
        let std = (va.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
        assert!(
            mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3,
            "{mean} {std}"
        );
    }
}
