//! Blocks of a transformer layer as one op each, for a training step whose weight gradients
//! a [`GradSink`] collects: `LN(dropout(x·Wᵀ + b) + residual)` (the output of every
//! attention and feed-forward sub-layer), `gelu(x·Wᵀ + b)` (the feed-forward's first half)
//! and the whole feed-forward. The op's inputs are the activations only; its weights'
//! gradients go to the sink.
//!
//! As separate ops each intermediate (the product, its dropout plus residual, the GELU input)
//! is a node of candle's graph, whose backward gives it a zero-filled gradient buffer and an
//! addition; here the backward hands its intermediate gradients from one kernel to the next.
//! Without a collecting sink (or off the CPU, or in other dtypes) each function computes the
//! composite of [`linear`], [`dropout_add`], [`layer_norm`] and [`gelu`] it equals.

use super::{
    biased_product, column_sums, cpu_slice, dropout_add, dropout_then_add, fused, gelu, gelu_grad,
    gelu_rows, layer_norm, layer_norm_backward, linear, masked, par_rows, product, products_fused,
    row_stats, rows_layout, slice, GradSink, KeepMask, Operand,
};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::OnceLock;

/// The parameters of [`dense_residual_norm`].
#[derive(Debug, Clone, Copy)]
pub struct ResidualNormParams<'a> {
    /// Dense weight `[out, in]`.
    pub weight: &'a Tensor,
    /// Dense bias `[out]`.
    pub bias: &'a Tensor,
    /// LayerNorm weight `[out]`.
    pub norm_weight: &'a Tensor,
    /// LayerNorm bias `[out]`.
    pub norm_bias: &'a Tensor,
    /// LayerNorm epsilon.
    pub eps: f64,
}

/// `LN(dropout(x·Wᵀ + b) + residual)` for `x [.., in]`, `residual [.., out]` (BERT's
/// `…Output` block), the dropout as in [`dropout_add`]. One op when a [`GradSink`] collects
/// the four parameters' gradients; [`dense_residual_norm_composite`] otherwise.
pub fn dense_residual_norm(
    x: &Tensor,
    residual: &Tensor,
    p: ResidualNormParams<'_>,
    keep: Option<&KeepMask>,
    scale: f32,
) -> Result<Tensor> {
    let sink = GradSink::current_for_all(&[p.weight, p.bias, p.norm_weight, p.norm_bias]);
    let Some(sink) = sink.filter(|_| products_fused(x) && fused(residual)) else {
        return dense_residual_norm_composite(x, residual, p, keep, scale);
    };
    let (out, inp) = p.weight.dims2()?;
    let (xd, rd) = (x.dims(), residual.dims());
    if xd.len() != rd.len() || xd[..xd.len() - 1] != rd[..rd.len() - 1] || xd.last() != Some(&inp) {
        bail!("dense-residual-norm: x {xd:?}, residual {rd:?}, weight [{out}, {inp}]")
    }
    check_vectors(&p, out, "dense-residual-norm")?;
    if let Some(keep) = keep {
        super::check_keep("dense-residual-norm", keep.len(), residual.elem_count())?;
    }
    let op = DenseResidualNormOp::new(p, keep, scale, sink);
    x.contiguous()?.apply_op2(&residual.contiguous()?, op)
}

/// An error unless the bias and the norm's weight and bias of `p` have `out` elements.
fn check_vectors(p: &ResidualNormParams<'_>, out: usize, op: &str) -> Result<()> {
    for (name, t) in [
        ("bias", p.bias),
        ("norm weight", p.norm_weight),
        ("norm bias", p.norm_bias),
    ] {
        if t.dims() != [out] {
            bail!("{op}: {name} {:?} for {out} outputs", t.dims())
        }
    }
    Ok(())
}

/// [`dense_residual_norm`] from [`linear`], [`dropout_add`] and [`layer_norm`]: the reference
/// and the fallback.
pub fn dense_residual_norm_composite(
    x: &Tensor,
    residual: &Tensor,
    p: ResidualNormParams<'_>,
    keep: Option<&KeepMask>,
    scale: f32,
) -> Result<Tensor> {
    let y = linear(x, p.weight, Some(p.bias))?;
    layer_norm(
        &dropout_add(&y, residual, keep, scale)?,
        p.norm_weight,
        p.norm_bias,
        p.eps,
    )
}

/// `gelu(x·Wᵀ + b)` for `x [.., in]`, `weight [out, in]` (BERT's `…Intermediate`). One op
/// when a [`GradSink`] collects the weight's and bias's gradients; [`gelu`] of [`linear`]
/// otherwise.
pub fn linear_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let sink = GradSink::current_for_all(&[weight, bias]);
    let Some(sink) = sink.filter(|_| products_fused(x)) else {
        return gelu(&linear(x, weight, Some(bias))?);
    };
    let (out, inp) = weight.dims2()?;
    if x.dims().last() != Some(&inp) || bias.dims() != [out] {
        bail!(
            "linear-gelu: x {:?}, weight [{out}, {inp}], bias {:?}",
            x.dims(),
            bias.dims()
        )
    }
    let op = LinearGeluOp {
        weight: weight.clone(),
        bias: bias.clone(),
        sink,
        saved_pre: OnceLock::new(),
    };
    x.contiguous()?.apply_op1(op)
}

/// The parameters of [`feed_forward`].
#[derive(Debug, Clone, Copy)]
pub struct FeedForwardParams<'a> {
    /// Up-projection weight `[inner, hidden]`.
    pub up_weight: &'a Tensor,
    /// Up-projection bias `[inner]`.
    pub up_bias: &'a Tensor,
    /// The down projection (`[hidden, inner]`) and the LayerNorm after it.
    pub down: ResidualNormParams<'a>,
}

/// `LN(dropout(gelu(x·W1ᵀ + b1)·W2ᵀ + b2) + x)` for `x [.., hidden]`: BERT's feed-forward
/// (`…Intermediate`, then `…Output` with `x` as the residual), the dropout as in
/// [`dropout_add`]. One op when a [`GradSink`] collects the six parameters' gradients: the
/// inner activations (`[.., inner]`, the widest of a layer) are not nodes of candle's graph,
/// and `x`'s two gradients are summed inside the op. [`feed_forward_composite`] otherwise.
pub fn feed_forward(
    x: &Tensor,
    p: FeedForwardParams<'_>,
    keep: Option<&KeepMask>,
    scale: f32,
) -> Result<Tensor> {
    let d = p.down;
    let vars = [
        p.up_weight,
        p.up_bias,
        d.weight,
        d.bias,
        d.norm_weight,
        d.norm_bias,
    ];
    let sink = GradSink::current_for_all(&vars);
    let Some(sink) = sink.filter(|_| products_fused(x)) else {
        return feed_forward_composite(x, p, keep, scale);
    };
    let (inner, hidden) = p.up_weight.dims2()?;
    if x.dims().last() != Some(&hidden)
        || p.up_bias.dims() != [inner]
        || d.weight.dims() != [hidden, inner]
    {
        bail!(
            "feed-forward: x {:?}, up weight [{inner}, {hidden}], up bias {:?}, down weight {:?}",
            x.dims(),
            p.up_bias.dims(),
            d.weight.dims()
        )
    }
    check_vectors(&d, hidden, "feed-forward")?;
    if let Some(keep) = keep {
        super::check_keep("feed-forward", keep.len(), x.elem_count())?;
    }
    let op = FeedForwardOp {
        up_weight: p.up_weight.clone(),
        up_bias: p.up_bias.clone(),
        down: DenseResidualNormOp::new(d, keep, scale, sink),
        saved: OnceLock::new(),
    };
    x.contiguous()?.apply_op1(op)
}

/// [`feed_forward`] from [`gelu`], [`linear`] and [`dense_residual_norm_composite`]: the
/// reference and the fallback.
pub fn feed_forward_composite(
    x: &Tensor,
    p: FeedForwardParams<'_>,
    keep: Option<&KeepMask>,
    scale: f32,
) -> Result<Tensor> {
    let h = gelu(&linear(x, p.up_weight, Some(p.up_bias))?)?;
    dense_residual_norm_composite(&h, x, p.down, keep, scale)
}

/// `x [m, k] · Wᵀ + b` for a block's `(weight [n, k], bias [n])`.
fn project(x: Operand, (weight, bias): (&Tensor, &Tensor), m: usize, op: &str) -> Result<Vec<f32>> {
    let (n, k) = weight.dims2()?;
    let (w, b) = (weight.storage_and_layout(), bias.storage_and_layout());
    let (wo, bias) = (
        Operand::of_storage(&w.0, w.1, op)?,
        cpu_slice(&b.0, b.1, op)?,
    );
    Ok(biased_product(x, wo, bias, (m, n, k)))
}

/// The backward of a product `y = x·Wᵀ + b` given `dy [m, n]`: W's and b's gradients into
/// the sink, and, when `x` needs one, `dx = dy·W` (added to `onto`, x's gradient from the
/// rest of the op, when given).
fn product_backward(
    sink: &GradSink,
    (weight, bias): (&Tensor, &Tensor),
    x: &Tensor,
    dy: &[f32],
    onto: Option<Vec<f32>>,
    op: &str,
) -> Result<Option<Tensor>> {
    let (xs, xl) = x.storage_and_layout();
    let (x_layout, _) = rows_layout(xl, weight.dim(0)?, op)?;
    let xo = Operand::of_storage(&xs, &x_layout, op)?;
    sink_product_grads(sink, (weight, bias), xo, dy)?;
    if !x.track_op() {
        return Ok(None);
    }
    let dx = input_grad(weight, dy, onto, op)?;
    Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
}

/// The gradients of `W` and `b` for `y = x·Wᵀ + b`, `x [m, k]`, given `dy [m, n]`, into the
/// sink: `dW [n, k] += dyᵀ · x`, `db += Σ dy`.
fn sink_product_grads(
    sink: &GradSink,
    (weight, bias): (&Tensor, &Tensor),
    x: Operand,
    dy: &[f32],
) -> Result<()> {
    let (n, k) = weight.dims2()?;
    let m = dy.len() / n;
    sink.add_product_of(weight, (n, k, m), Operand::row_major(dy.as_ptr(), n).t(), x);
    sink.add_slice(bias, &column_sums(dy, n));
    Ok(())
}

/// `dx = dy · W` for `y = x·Wᵀ + b` (`dy [m, n]`, `W [n, k]`), added to `onto [m, k]` when
/// given (the product accumulates into it) and written to a new buffer otherwise.
fn input_grad(weight: &Tensor, dy: &[f32], onto: Option<Vec<f32>>, op: &str) -> Result<Vec<f32>> {
    let (n, k) = weight.dims2()?;
    let m = dy.len() / n;
    let ws = weight.storage_and_layout();
    let wo = Operand::of_storage(&ws.0, ws.1, op)?;
    let dyo = Operand::row_major(dy.as_ptr(), n);
    Ok(match onto {
        Some(mut acc) => {
            if acc.len() != m * k {
                bail!(
                    "{op}: {} elements to add a [{m}, {k}] gradient to",
                    acc.len()
                )
            }
            // SAFETY: acc holds the m·k initialised elements; dy covers [m, n], W [n, k].
            unsafe { super::par_gemm(acc.as_mut_ptr(), (m, k, n), true, dyo, wo) };
            acc
        }
        None => product(m, k, n, dyo, wo),
    })
}

/// [`dense_residual_norm`]'s op; keeps the pre-norm sum for the backward.
struct DenseResidualNormOp {
    weight: Tensor,
    bias: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    eps: f32,
    keep: Option<KeepMask>,
    scale: f32,
    sink: GradSink,
    saved_sum: OnceLock<Vec<f32>>,
}

impl CustomOp2 for DenseResidualNormOp {
    fn name(&self) -> &'static str {
        "msp-dense-residual-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let k = self.weight.dim(1)?;
        let (x_layout, _) = rows_layout(l1, k, name)?;
        let (xo, _) = Operand::of(s1, &x_layout, name)?;
        let out = self.forward_rows(xo, x_layout.dims()[0], slice(s2, l2, name)?)?;
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dz, d_dense) = self.backward_rows(grad)?;
        let dense = (&self.weight, &self.bias);
        let d_dense = d_dense.as_deref().unwrap_or(&dz);
        let dx = product_backward(&self.sink, dense, x, d_dense, None, self.name())?;
        let dres = Tensor::from_vec(dz, residual.shape(), residual.device())?;
        Ok((dx, Some(dres)))
    }
}

impl DenseResidualNormOp {
    /// The op for `p`, the dropout flags `keep` (kept values times `scale`) and `sink`.
    fn new(p: ResidualNormParams<'_>, keep: Option<&KeepMask>, scale: f32, sink: GradSink) -> Self {
        Self {
            weight: p.weight.clone(),
            bias: p.bias.clone(),
            norm_weight: p.norm_weight.clone(),
            norm_bias: p.norm_bias.clone(),
            eps: p.eps as f32,
            keep: keep.cloned(),
            scale,
            sink,
            saved_sum: OnceLock::new(),
        }
    }

    /// `LN(dropout(x·Wᵀ + b) + residual)` for `x [m, in]` and the row-major `residual
    /// [m, out]`; keeps the pre-norm sum for [`Self::backward_rows`].
    fn forward_rows(&self, x: Operand, m: usize, residual: &[f32]) -> Result<Vec<f32>> {
        let name = self.name();
        let n = self.weight.dim(0)?;
        if residual.len() != m * n {
            bail!(
                "{name}: residual of {} elements for [{m}, {n}]",
                residual.len()
            )
        }
        // z = dropout(x·Wᵀ + b) + residual.
        let mut z = project(x, (&self.weight, &self.bias), m, name)?;
        dropout_then_add(&mut z, residual, self.keep.as_ref(), self.scale);
        let (gs, bs) = (
            self.norm_weight.storage_and_layout(),
            self.norm_bias.storage_and_layout(),
        );
        let (g, beta) = (cpu_slice(&gs.0, gs.1, name)?, cpu_slice(&bs.0, bs.1, name)?);
        let mut out = vec![0f32; m * n];
        par_rows(&mut out, n, |row, o| {
            let zr = &z[row * n..(row + 1) * n];
            let (mean, rstd) = row_stats(zr, self.eps);
            for j in 0..n {
                o[j] = (zr[j] - mean) * rstd * g[j] + beta[j];
            }
        });
        // candle runs an op's forward once.
        let _ = self.saved_sum.set(z);
        Ok(out)
    }

    /// The backward through the norm and the dropout for the output gradient `grad`: the
    /// LayerNorm's parameter gradients into the sink, and the gradients of the residual and
    /// (with dropout; the same without) of the dense output.
    fn backward_rows(&self, grad: &Tensor) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let name = self.name();
        let Some(z) = self.saved_sum.get() else {
            bail!("{name}: backward without a forward")
        };
        let n = self.weight.dim(0)?;
        let grad = grad.contiguous()?;
        // LayerNorm: dz, and its weight's and bias's gradients into the sink.
        let mut dz = vec![0f32; z.len()];
        let mut dparams = vec![0f32; 2 * n];
        {
            let (gs, gl) = grad.storage_and_layout();
            let dy = cpu_slice(&gs, gl, name)?;
            if dy.len() != z.len() {
                bail!("{name}: gradient of {} elements for {}", dy.len(), z.len())
            }
            let ws = self.norm_weight.storage_and_layout();
            let g = cpu_slice(&ws.0, ws.1, name)?;
            layer_norm_backward(z, g, dy, self.eps, &mut dz, &mut dparams);
        }
        let (dg, db) = dparams.split_at(n);
        self.sink.add_slice(&self.norm_weight, dg);
        self.sink.add_slice(&self.norm_bias, db);
        // The dense output's gradient: dz through the dropout mask.
        let d_dense = self.keep.as_ref().map(|keep| masked(&dz, keep, self.scale));
        Ok((dz, d_dense))
    }
}

/// [`linear_gelu`]'s op; keeps the pre-activation for the backward.
struct LinearGeluOp {
    weight: Tensor,
    bias: Tensor,
    sink: GradSink,
    saved_pre: OnceLock<Vec<f32>>,
}

impl CustomOp1 for LinearGeluOp {
    fn name(&self) -> &'static str {
        "msp-linear-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let n = self.weight.dim(0)?;
        let (x_layout, out_shape) = rows_layout(l, n, name)?;
        let (xo, _) = Operand::of(s, &x_layout, name)?;
        let m = x_layout.dims()[0];
        let pre = project(xo, (&self.weight, &self.bias), m, name)?;
        let out = gelu_rows(&pre);
        // candle runs an op's forward once.
        let _ = self.saved_pre.set(pre);
        Ok((CpuStorage::F32(out), out_shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let name = self.name();
        let Some(pre) = self.saved_pre.get() else {
            bail!("{name}: backward without a forward")
        };
        let grad = grad.contiguous()?;
        let dpre = {
            let (gs, gl) = grad.storage_and_layout();
            let dg = cpu_slice(&gs, gl, name)?;
            if dg.len() != pre.len() {
                bail!(
                    "{name}: gradient of {} elements for {}",
                    dg.len(),
                    pre.len()
                )
            }
            gelu_grad(pre, dg)
        };
        product_backward(&self.sink, (&self.weight, &self.bias), x, &dpre, None, name)
    }
}

/// [`feed_forward`]'s op; keeps the pre-activation and the GELU output for the backward (and
/// the residual block's pre-norm sum in `down`).
struct FeedForwardOp {
    up_weight: Tensor,
    up_bias: Tensor,
    down: DenseResidualNormOp,
    saved: OnceLock<(Vec<f32>, Vec<f32>)>,
}

impl CustomOp1 for FeedForwardOp {
    fn name(&self) -> &'static str {
        "msp-feed-forward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (inner, hidden) = self.up_weight.dims2()?;
        let (x_layout, _) = rows_layout(l, hidden, name)?;
        let (xo, _) = Operand::of(s, &x_layout, name)?;
        let m = x_layout.dims()[0];
        let pre = project(xo, (&self.up_weight, &self.up_bias), m, name)?;
        let h = gelu_rows(&pre);
        // x (contiguous) is also the residual.
        let out =
            self.down
                .forward_rows(Operand::row_major(h.as_ptr(), inner), m, slice(s, l, name)?)?;
        // candle runs an op's forward once.
        let _ = self.saved.set((pre, h));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let name = self.name();
        let Some((pre, h)) = self.saved.get() else {
            bail!("{name}: backward without a forward")
        };
        let inner = self.up_weight.dim(0)?;
        let sink = &self.down.sink;
        // Norm and dropout: dz is the residual's (x's) share.
        let (dz, d_dense) = self.down.backward_rows(grad)?;
        let d_dense = d_dense.as_deref().unwrap_or(&dz);
        // Down projection, then the GELU.
        let down = (&self.down.weight, &self.down.bias);
        sink_product_grads(sink, down, Operand::row_major(h.as_ptr(), inner), d_dense)?;
        let dh = input_grad(&self.down.weight, d_dense, None, name)?;
        let dpre = gelu_grad(pre, &dh);
        // Up projection: x's second share added onto dz.
        let up = (&self.up_weight, &self.up_bias);
        product_backward(sink, up, x, &dpre, Some(dz), name)
    }
}
