//! The multi-head attention core as one op: per head, `softmax(Q·Kᵀ·scale + mask)`, dropout on
//! the probabilities, then `·V`, reading the heads straight out of the `[B, L, H]` projections
//! and writing the context in that layout.
//!
//! candle composes this from nine ops (three head splits with copies, two batched products, the
//! softmax, dropout, a transpose with a copy) and its backward adds a zero-filled buffer and an
//! addition per op input. Here the forward keeps the inputs, the dropout bits and the
//! probabilities before dropout (`B · heads · Lq · Lk` floats, as PyTorch keeps them), and the
//! backward runs the four gradient products of each head directly into the `[B, L, H]`
//! gradients.

use super::{
    autocast_matmul, check_keep, cpu_slice, fused, gemm_into, keep_or_zero, scaled_softmax_row,
    slice, softmax_grad_row, KeepMask, Operand, SharedMut,
};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Dropout on the attention probabilities: one keep flag per probability, row-major over
/// `[B, heads, Lq, Lk]`, and the factor applied to the kept ones (`1 / (1 − p)`).
#[derive(Debug, Clone, Copy)]
pub struct AttentionDropout<'a> {
    /// Keep flags, `B · heads · Lq · Lk` of them.
    pub keep: &'a KeepMask,
    /// Factor for kept probabilities.
    pub scale: f32,
}

/// Multi-head scaled dot-product attention for `q [B, Lq, H]`, `k` and `v [B, Lk, H]` whose
/// last dimension holds `heads` heads side by side: per head
/// `dropout(softmax(Q_h·K_hᵀ·scale + mask))·V_h`, heads concatenated again, `[B, Lq, H]`.
/// `mask` is additive and broadcasts as `[B, 1, 1, Lk]`; it gets no gradient.
///
/// One fused op on the CPU in f32 (see the module doc); elsewhere
/// [`multi_head_attention_composite`].
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    scale: f64,
    dropout: Option<AttentionDropout<'_>>,
) -> Result<Tensor> {
    let dims = AttentionDims::of(q, k, v, heads)?;
    if let Some(d) = dropout {
        check_keep("attention", d.keep.len(), dims.probs())?;
    }
    if !(super::products_fused(q) && fused(k) && fused(v) && mask.is_none_or(fused)) {
        return multi_head_attention_composite(q, k, v, heads, mask, scale, dropout);
    }
    let mask = match mask {
        Some(m) => Some(
            m.reshape((dims.batch, dims.lk))?
                .flatten_all()?
                .to_vec1::<f32>()?,
        ),
        None => None,
    };
    let op = AttentionOp {
        dims,
        scale: scale as f32,
        mask,
        keep: dropout.map(|d| (d.keep.clone(), d.scale)),
        saved_probs: OnceLock::new(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// [`multi_head_attention`] from candle ops (head split, batched products, the attention
/// softmax and dropout of this module): the reference and the fallback.
pub fn multi_head_attention_composite(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    scale: f64,
    dropout: Option<AttentionDropout<'_>>,
) -> Result<Tensor> {
    let (b, lq, h) = q.dims3()?;
    let split = |x: &Tensor| -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        x.reshape((b, l, heads, h / heads))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
    let mut probs = super::attention_softmax(&autocast_matmul(&qh, &kh.t()?)?, mask, scale)?;
    if let Some(d) = dropout {
        probs = super::dropout_masked(&probs, d.keep, d.scale)?;
    }
    autocast_matmul(&probs, &vh)?
        .transpose(1, 2)?
        .reshape((b, lq, h))
}

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy)]
struct AttentionDims {
    batch: usize,
    lq: usize,
    lk: usize,
    hidden: usize,
    heads: usize,
}

impl AttentionDims {
    /// Checks that `q [B, Lq, H]`, `k` and `v [B, Lk, H]` agree and `heads` divides `H`.
    fn of(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Self> {
        let (batch, lq, hidden) = q.dims3()?;
        let (kb, lk, kh) = k.dims3()?;
        if (kb, kh) != (batch, hidden) || v.dims() != k.dims() {
            bail!(
                "attention: q {:?}, k {:?} and v {:?} do not agree",
                q.dims(),
                k.dims(),
                v.dims()
            )
        }
        if heads == 0 || hidden % heads != 0 {
            bail!("attention: {heads} heads do not divide a hidden size of {hidden}")
        }
        Ok(Self {
            batch,
            lq,
            lk,
            hidden,
            heads,
        })
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Number of attention probabilities, `B · heads · Lq · Lk`.
    fn probs(&self) -> usize {
        self.batch * self.heads * self.lq * self.lk
    }

    /// Head `h` of example `b` in a `[B, len, H]` buffer at `ptr`, as a `[len, head_dim]`
    /// operand (`transposed`: as `[head_dim, len]`).
    fn head(&self, ptr: *const f32, len: usize, b: usize, h: usize, transposed: bool) -> Operand {
        let op = Operand::row_major(ptr, self.hidden).offset(b * len, h * self.head_dim());
        if transposed {
            op.t()
        } else {
            op
        }
    }
}

/// An empty buffer with room for exactly `len` elements that the caller's products write in
/// full before `set_len(len)`, or, when they would not (`written` false: a product over zero
/// keys or queries writes nothing), `len` zeros already in place.
fn unfilled(len: usize, written: bool) -> Vec<f32> {
    if written {
        Vec::with_capacity(len)
    } else {
        vec![0f32; len]
    }
}

/// The fused op; inputs `q`, `k`, `v` (contiguous).
struct AttentionOp {
    dims: AttentionDims,
    scale: f32,
    /// Additive mask `[B, Lk]`.
    mask: Option<Vec<f32>>,
    /// Dropout keep flags over `[B, heads, Lq, Lk]` and the factor for kept probabilities.
    keep: Option<(KeepMask, f32)>,
    /// The probabilities before dropout, `[B, heads, Lq, Lk]`, kept by the forward for the
    /// backward.
    saved_probs: OnceLock<Vec<f32>>,
}

impl AttentionOp {
    /// The probabilities of head `h` of example `b` into `p [Lq, Lk]` (written without being
    /// read first), before dropout.
    fn probs<'a>(
        &self,
        q: &[f32],
        k: &[f32],
        b: usize,
        h: usize,
        p: &'a mut [MaybeUninit<f32>],
    ) -> &'a mut [f32] {
        let d = &self.dims;
        let (qh, kt) = (
            d.head(q.as_ptr(), d.lq, b, h, false),
            d.head(k.as_ptr(), d.lk, b, h, true),
        );
        // SAFETY: p holds Lq × Lk, the operands lie inside q and k (sizes checked by the op);
        // the product writes all of p (k = head_dim > 0), so it is initialised after it.
        let p = unsafe {
            gemm_into(
                p.as_mut_ptr().cast(),
                d.lk,
                (d.lq, d.lk, d.head_dim()),
                false,
                qh,
                kt,
            );
            std::slice::from_raw_parts_mut(p.as_mut_ptr().cast::<f32>(), p.len())
        };
        let mask = self.mask.as_ref().map(|m| &m[b * d.lk..(b + 1) * d.lk]);
        for row in p.chunks_mut(d.lk) {
            scaled_softmax_row(row, self.scale, mask);
        }
        p
    }

    /// Applies the dropout of head `h` of example `b` to `p [Lq, Lk]` in place.
    fn drop(&self, b: usize, h: usize, p: &mut [f32]) {
        if let Some((keep, factor)) = &self.keep {
            let base = (b * self.dims.heads + h) * p.len();
            let factor = *factor;
            keep.apply(base, p, move |k, x| *x = keep_or_zero(*x * factor, k));
        }
    }

    /// The probabilities `p [Lq, Lk]` of head `h` of example `b` after dropout: `p` itself
    /// without dropout, else a copy in `scratch` with the dropout applied.
    fn dropped<'a>(&self, b: usize, h: usize, p: &'a [f32], scratch: &'a mut [f32]) -> &'a [f32] {
        if self.keep.is_none() {
            return p;
        }
        scratch.copy_from_slice(p);
        self.drop(b, h, scratch);
        scratch
    }

    /// The `[B, Lq, H]` context and the probabilities before dropout `[B, heads, Lq, Lk]`.
    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let d = self.dims;
        let len = d.lq * d.lk;
        let mut out = unfilled(d.batch * d.lq * d.hidden, d.lk > 0);
        let mut probs = Vec::with_capacity(d.batch * d.heads * len);
        let dst = SharedMut(out.as_mut_ptr());
        probs.spare_capacity_mut()[..d.batch * d.heads * len]
            .par_chunks_mut(len.max(1))
            .enumerate()
            .for_each_init(
                || vec![0f32; len],
                |scratch, (t, p)| {
                    let (b, h) = (t / d.heads, t % d.heads);
                    let p = self.probs(q, k, b, h, p);
                    let pd = Operand::row_major(self.dropped(b, h, p, scratch).as_ptr(), d.lk);
                    // SAFETY: head (b, h) of the output is written by this task alone.
                    unsafe {
                        gemm_into(
                            dst.at(b * d.lq * d.hidden + h * d.head_dim()),
                            d.hidden,
                            (d.lq, d.head_dim(), d.lk),
                            false,
                            pd,
                            d.head(v.as_ptr(), d.lk, b, h, false),
                        )
                    }
                },
            );
        // SAFETY: every head's probabilities and context (Lq rows of head_dim over Lk > 0
        // keys, see `unfilled`) were written above.
        unsafe {
            probs.set_len(d.batch * d.heads * len);
            out.set_len(d.batch * d.lq * d.hidden);
        }
        (out, probs)
    }

    /// Gradients of `q`, `k` and `v` for the upstream gradient `dout [B, Lq, H]`, given the
    /// forward's probabilities before dropout `probs [B, heads, Lq, Lk]`.
    fn backward(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        probs: &[f32],
        dout: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = self.dims;
        let (hd, len) = (d.head_dim(), d.lq * d.lk);
        let written = d.lq > 0 && d.lk > 0;
        let (mut dq, mut dk, mut dv) = (
            unfilled(q.len(), written),
            unfilled(k.len(), written),
            unfilled(v.len(), written),
        );
        let (dq_ptr, dk_ptr, dv_ptr) = (
            SharedMut(dq.as_mut_ptr()),
            SharedMut(dk.as_mut_ptr()),
            SharedMut(dv.as_mut_ptr()),
        );
        (0..d.batch * d.heads).into_par_iter().for_each_init(
            || (vec![0f32; len], vec![0f32; len]),
            |(scratch, dp), t| {
                let (b, h) = (t / d.heads, t % d.heads);
                let p = &probs[t * len..(t + 1) * len];
                let pd = self.dropped(b, h, p, scratch);
                let rows = |ptr: *const f32| Operand::row_major(ptr, d.lk);
                let (q_off, k_off) = (b * d.lq * d.hidden + h * hd, b * d.lk * d.hidden + h * hd);
                let dout_h = d.head(dout.as_ptr(), d.lq, b, h, false);
                // SAFETY: head (b, h) of dq, dk and dv is written by this task alone; the
                // scratch buffers hold Lq × Lk.
                unsafe {
                    // dV_h = P'ᵀ · dO_h.
                    gemm_into(
                        dv_ptr.at(k_off),
                        d.hidden,
                        (d.lk, hd, d.lq),
                        false,
                        rows(pd.as_ptr()).t(),
                        dout_h,
                    );
                    // dP' = dO_h · V_hᵀ.
                    gemm_into(
                        dp.as_mut_ptr(),
                        d.lk,
                        (d.lq, d.lk, hd),
                        false,
                        dout_h,
                        d.head(v.as_ptr(), d.lk, b, h, true),
                    );
                }
                // Through the dropout, then the softmax: dS = scale · P ⊙ (dP − ⟨dP, P⟩).
                self.drop(b, h, dp);
                for (g, y) in dp.chunks_mut(d.lk).zip(p.chunks(d.lk)) {
                    softmax_grad_row(y, g, self.scale);
                }
                // SAFETY: as above.
                unsafe {
                    // dQ_h = dS · K_h; dK_h = dSᵀ · Q_h.
                    gemm_into(
                        dq_ptr.at(q_off),
                        d.hidden,
                        (d.lq, hd, d.lk),
                        false,
                        rows(dp.as_ptr()),
                        d.head(k.as_ptr(), d.lk, b, h, false),
                    );
                    gemm_into(
                        dk_ptr.at(k_off),
                        d.hidden,
                        (d.lk, hd, d.lq),
                        false,
                        rows(dp.as_ptr()).t(),
                        d.head(q.as_ptr(), d.lq, b, h, false),
                    );
                }
            },
        );
        // SAFETY: every head of dq (Lq rows, a product over Lk keys), dk and dv (Lk rows, over
        // Lq queries) was written above, or the buffers were zero-filled (`unfilled`).
        unsafe {
            dq.set_len(q.len());
            dk.set_len(k.len());
            dv.set_len(v.len());
        }
        (dq, dk, dv)
    }

    /// Checks the storages against the sizes the op was built for.
    fn check(&self, q: &[f32], k: &[f32], v: &[f32]) -> Result<()> {
        let d = &self.dims;
        let (nq, nk) = (d.batch * d.lq * d.hidden, d.batch * d.lk * d.hidden);
        if (q.len(), k.len(), v.len()) != (nq, nk, nk) {
            bail!(
                "attention: storages of {}, {} and {} elements for q {nq}, k and v {nk}",
                q.len(),
                k.len(),
                v.len()
            )
        }
        Ok(())
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "msp-attention"
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
        let (q, k, v) = (
            slice(s1, l1, self.name())?,
            slice(s2, l2, self.name())?,
            slice(s3, l3, self.name())?,
        );
        self.check(q, k, v)?;
        let (out, probs) = self.forward(q, k, v);
        // candle runs an op's forward once; were it run again on the same q and k, the
        // probabilities kept first would be the same.
        let _ = self.saved_probs.set(probs);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dq, dk, dv) = {
            let name = self.name();
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let (qv, kv, vv, gv) = (
                cpu_slice(&qs, ql, name)?,
                cpu_slice(&ks, kl, name)?,
                cpu_slice(&vs, vl, name)?,
                cpu_slice(&gs, gl, name)?,
            );
            self.check(qv, kv, vv)?;
            if gv.len() != qv.len() {
                bail!(
                    "attention: gradient of {} elements for {}",
                    gv.len(),
                    qv.len()
                )
            }
            let Some(probs) = self.saved_probs.get() else {
                bail!("attention: backward without a forward")
            };
            self.backward((qv, kv, vv), probs, gv)
        };
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}
