//! Blocks of a transformer layer as one op each, for a training step whose weight gradients
//! a [`GradSink`] collects: `LN(dropout(x·Wᵀ + b) + residual)` (the output of every
//! attention and feed-forward sub-layer) and `gelu(x·Wᵀ + b)` (the feed-forward's first
//! half). The op's inputs are the activations only; its weights' gradients go to the sink.
//!
//! As separate ops each intermediate (the product, its dropout plus residual, the GELU input)
//! is a node of candle's graph, whose backward gives it a zero-filled gradient buffer and an
//! addition; here the backward hands its intermediate gradients from one kernel to the next.
//! Without a collecting sink (or off the CPU, or in other dtypes) each function computes the
//! composite of [`linear`], [`dropout_add`], [`layer_norm`] and [`gelu`] it equals.

use super::{
    biased_product, column_sums, cpu_slice, dropout_add, fused, gelu, gelu_grad, gelu_of,
    keep_or_zero, layer_norm, layer_norm_backward, linear, masked, par_rows, product,
    products_fused, row_stats, rows_layout, slice, GradSink, KeepMask, Operand, ELEMWISE_TASK,
};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
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
    for (name, t) in [
        ("bias", p.bias),
        ("norm weight", p.norm_weight),
        ("norm bias", p.norm_bias),
    ] {
        if t.dims() != [out] {
            bail!(
                "dense-residual-norm: {name} {:?} for {out} outputs",
                t.dims()
            )
        }
    }
    if let Some(keep) = keep {
        super::check_keep("dense-residual-norm", keep.len(), residual.elem_count())?;
    }
    let op = DenseResidualNormOp {
        weight: p.weight.clone(),
        bias: p.bias.clone(),
        norm_weight: p.norm_weight.clone(),
        norm_bias: p.norm_bias.clone(),
        eps: p.eps as f32,
        keep: keep.cloned(),
        scale,
        sink,
        saved_sum: OnceLock::new(),
    };
    x.contiguous()?.apply_op2(&residual.contiguous()?, op)
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
/// the sink, and `dx = dy·W` when `x` needs one.
fn product_backward(
    sink: &GradSink,
    (weight, bias): (&Tensor, &Tensor),
    x: &Tensor,
    dy: &[f32],
    op: &str,
) -> Result<Option<Tensor>> {
    let (n, k) = weight.dims2()?;
    let m = dy.len() / n;
    let (xs, xl) = x.storage_and_layout();
    let (x_layout, _) = rows_layout(xl, n, op)?;
    let xo = Operand::of_storage(&xs, &x_layout, op)?;
    let dyo = Operand::row_major(dy.as_ptr(), n);
    // dW [n, k] += dyᵀ [n, m] · x [m, k]; db += column sums of dy.
    sink.add_product_of(weight, (n, k, m), dyo.t(), xo);
    sink.add_slice(bias, &column_sums(dy, n));
    if !x.track_op() {
        return Ok(None);
    }
    let ws = weight.storage_and_layout();
    let wo = Operand::of_storage(&ws.0, ws.1, op)?;
    // dx [m, k] = dy [m, n] · W [n, k].
    let dx = product(m, k, n, dyo, wo);
    Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
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
        let n = self.weight.dim(0)?;
        let (x_layout, _) = rows_layout(l1, n, name)?;
        let (xo, _) = Operand::of(s1, &x_layout, name)?;
        let m = x_layout.dims()[0];
        let r = slice(s2, l2, name)?;
        // z = dropout(x·Wᵀ + b) + residual.
        let mut z = project(xo, (&self.weight, &self.bias), m, name)?;
        z.par_chunks_mut(ELEMWISE_TASK)
            .zip(r.par_chunks(ELEMWISE_TASK))
            .enumerate()
            .for_each(|(c, (z, r))| match &self.keep {
                Some(keep) => {
                    let scale = self.scale;
                    keep.apply_zip(c * ELEMWISE_TASK, z, r, move |k, z, &r| {
                        *z = keep_or_zero(*z * scale, k) + r
                    })
                }
                None => {
                    for (z, &r) in z.iter_mut().zip(r) {
                        *z += r;
                    }
                }
            });
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
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
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
        let dense = (&self.weight, &self.bias);
        let dx = match &self.keep {
            Some(keep) => {
                product_backward(&self.sink, dense, x, &masked(&dz, keep, self.scale), name)?
            }
            None => product_backward(&self.sink, dense, x, &dz, name)?,
        };
        let dres = Tensor::from_vec(dz, residual.shape(), residual.device())?;
        Ok((dx, Some(dres)))
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
        let mut out = vec![0f32; pre.len()];
        out.par_chunks_mut(ELEMWISE_TASK)
            .zip(pre.par_chunks(ELEMWISE_TASK))
            .for_each(|(o, h)| {
                for (o, &v) in o.iter_mut().zip(h) {
                    *o = gelu_of(v);
                }
            });
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
        product_backward(&self.sink, (&self.weight, &self.bias), x, &dpre, name)
    }
}
