//! The precision of the matrix products: f32, or bf16 products with f32 everywhere else
//! (PyTorch's `torch.autocast(dtype=torch.bfloat16)` for a model whose weights are f32).

use candle_core::{DType, Result, Tensor};
use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

/// What the matrix products of [`crate::ops`] compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32 (the default).
    #[default]
    F32,
    /// Matrix products on bf16 inputs, results back in f32; weights, gradients, LayerNorm,
    /// softmax, GELU, dropout, losses and the optimiser stay f32.
    Bf16,
}

impl Precision {
    /// The dtype the products compute in.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!(
                "unknown precision `{s}` (expected `f32` or `bf16`)"
            )),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

thread_local! {
    static PRECISION: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision of the matrix products recorded on this thread (f32 unless inside
/// [`with_precision`]).
pub fn precision() -> Precision {
    PRECISION.with(Cell::get)
}

/// Runs `f` with the matrix products recorded on this thread in precision `p`, then restores
/// the previous precision (also when `f` panics). The backward follows the recorded graph,
/// so only the forward pass needs to run inside; a training loop can simply run whole.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use msp_model::ops::{linear, with_precision, Precision};
///
/// let x = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu)?;
/// let w = Tensor::new(&[[0.1f32, 0.2, 0.3]], &Device::Cpu)?;
/// let y = with_precision(Precision::Bf16, || linear(&x, &w, None))?;
/// assert_eq!(y.dtype(), candle_core::DType::F32);
/// assert!((y.to_vec2::<f32>()?[0][0] - 1.4).abs() < 1e-2);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn with_precision<R>(p: Precision, f: impl FnOnce() -> R) -> R {
    super::with_local(&PRECISION, p, f)
}

/// True when the fused f32 CPU kernels of the products apply to `x` (f32 precision).
pub(super) fn products_fused(x: &Tensor) -> bool {
    precision() == Precision::F32 && super::fused(x)
}

/// `a · b` (candle's `matmul`, batched and broadcast as candle's) at this thread's
/// [`precision`]: in bf16, f32 operands are rounded to bf16 and the product returned in f32,
/// so the backward runs the gradient products in bf16 too and hands f32 gradients back.
pub fn autocast_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let p = precision();
    if p != Precision::F32 && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        a.to_dtype(p.dtype())?
            .matmul(&b.to_dtype(p.dtype())?)?
            .to_dtype(DType::F32)
    } else {
        a.matmul(b)
    }
}
