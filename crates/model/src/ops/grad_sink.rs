//! Variable gradients written by the fused ops' own backward instead of candle's `GradStore`.

use super::{column_sums, cpu_slice, fused, par_gemm, product, Operand};
use candle_core::backprop::GradStore;
use candle_core::{bail, Result, Tensor, TensorId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Collects the gradients of the variables that the fused ops read (the weight and bias of
/// [`super::linear`], the table of [`super::embedding`]) in one buffer per variable, written
/// by the ops' backward itself: the first product straight into a new buffer, later uses
/// (LXMERT's cross-attention serves both streams, the word table is also the MLM decoder)
/// added in place, rows of a table scattered into it. candle's backward would instead give
/// every use a zero-filled buffer and an addition; at the paper's sizes that is about 2 GB
/// of memory traffic a step, most of it serial.
///
/// Opt-in, for a training step: run the forward inside [`GradSink::collect`] and its
/// backward with [`GradSink::backward`], which returns candle's `GradStore` with these
/// gradients in it (added to what candle's own backward found for the same variables), so
/// optimisers and gradient clipping read it as before.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use msp_model::ops::{linear, GradSink};
///
/// let w = Var::from_tensor(&Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?)?;
/// let x = Tensor::new(&[[1f32, 1.]], &Device::Cpu)?;
/// let sink = GradSink::new();
/// // The layer is used twice, as LXMERT's cross-attention is.
/// let y = sink.collect(|| {
///     let h = linear(&x, w.as_tensor(), None)?;
///     linear(&h, w.as_tensor(), None)?.sum_all()
/// })?;
/// let grads = sink.backward(&y)?;
/// // h = x·Wᵀ = [3, 7]; dW = [1, 1]ᵀ·h + ([1, 1]·W)ᵀ·x = [[3, 7], [3, 7]] + [[4, 4], [6, 6]].
/// let dw = grads.get(&w).unwrap().to_vec2::<f32>()?;
/// assert_eq!(dw, vec![vec![7., 11.], vec![9., 13.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct GradSink(Arc<Mutex<HashMap<TensorId, Collected>>>);

/// One variable's gradient so far.
struct Collected {
    var: Tensor,
    grad: Vec<f32>,
}

thread_local! {
    /// The sink [`GradSink::collect`] installed on this thread.
    static CURRENT: RefCell<Option<GradSink>> = const { RefCell::new(None) };
}

impl GradSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` (a forward) with this sink collecting the gradients of the variables read by
    /// the fused ops that `f` builds on this thread. Their backward must then run through
    /// [`Self::backward`]: a plain `loss.backward()` would leave those variables out.
    pub fn collect<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Puts back the sink that was installed before, also when `f` panics.
        struct Restore(Option<GradSink>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| *c.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(self.clone())));
        f()
    }

    /// `loss.backward()` with the gradients this sink collected meanwhile moved into the
    /// store (added to candle's where a variable has both); the sink is empty afterwards.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        let collected = std::mem::take(&mut *self.lock());
        for Collected { var, grad } in collected.into_values() {
            let g = Tensor::from_vec(grad, var.shape(), var.device())?;
            let g = match grads.remove(&var) {
                Some(other) => other.add(&g)?,
                None => g,
            };
            grads.insert(&var, g);
        }
        Ok(grads)
    }

    /// The sink collecting on this thread, for a fused op reading `var`; `None` when none
    /// is, or when `var` is not a CPU f32 variable (its gradient then goes through candle).
    pub(super) fn current_for(var: &Tensor) -> Option<Self> {
        Self::current_for_all(&[var])
    }

    /// The sink collecting on this thread, for a fused op reading all of `vars` (each as in
    /// [`Self::current_for`]).
    pub(super) fn current_for_all(vars: &[&Tensor]) -> Option<Self> {
        if !vars.iter().all(|v| v.is_variable() && fused(v)) {
            return None;
        }
        CURRENT.with(|c| c.borrow().clone())
    }

    /// `var`'s gradient += `lhs [m, k] · rhs [k, n]` (2-D CPU f32 tensors, any strides).
    pub(super) fn add_product(&self, var: &Tensor, lhs: &Tensor, rhs: &Tensor) -> Result<()> {
        const OP: &str = "gradient sink";
        let ((m, k), (k2, n)) = (lhs.dims2()?, rhs.dims2()?);
        if k != k2 || var.elem_count() != m * n {
            bail!(
                "{OP}: [{m}, {k}] · [{k2}, {n}] for a variable of {:?}",
                var.dims()
            )
        }
        let (ls, ll) = lhs.storage_and_layout();
        let (rs, rl) = rhs.storage_and_layout();
        let (a, b) = (
            Operand::of_storage(&ls, ll, OP)?,
            Operand::of_storage(&rs, rl, OP)?,
        );
        self.add_product_of(var, (m, n, k), a, b);
        Ok(())
    }

    /// `var`'s gradient (`m·n` elements, checked by the caller) += `lhs [m, k] · rhs [k, n]`.
    pub(super) fn add_product_of(
        &self,
        var: &Tensor,
        (m, n, k): (usize, usize, usize),
        lhs: Operand,
        rhs: Operand,
    ) {
        let mut collected = self.lock();
        match collected.get_mut(&var.id()) {
            // SAFETY: `grad` holds the m·n initialised elements (the variable's size).
            Some(c) => unsafe { par_gemm(c.grad.as_mut_ptr(), (m, n, k), true, lhs, rhs) },
            None => {
                let grad = product(m, n, k, lhs, rhs);
                collected.insert(
                    var.id(),
                    Collected {
                        var: var.clone(),
                        grad,
                    },
                );
            }
        }
    }

    /// `var`'s gradient += the column sums of `rows [r, n]` (the bias of a linear layer).
    pub(super) fn add_column_sums(&self, var: &Tensor, rows: &Tensor) -> Result<()> {
        let rows = rows.contiguous()?;
        let (s, l) = rows.storage_and_layout();
        let sums = column_sums(cpu_slice(&s, l, "gradient sink")?, var.elem_count());
        self.add_slice(var, &sums);
        Ok(())
    }

    /// `var`'s gradient += `values` (as many as the variable has elements).
    pub(super) fn add_slice(&self, var: &Tensor, values: &[f32]) {
        self.add_into(var, |g| {
            for (g, v) in g.iter_mut().zip(values) {
                *g += v;
            }
        })
    }

    /// `var`'s gradient += what `add` adds into it (a zero-filled buffer the first time).
    pub(super) fn add_into(&self, var: &Tensor, add: impl FnOnce(&mut [f32])) {
        let mut collected = self.lock();
        let c = collected.entry(var.id()).or_insert_with(|| Collected {
            var: var.clone(),
            grad: vec![0f32; var.elem_count()],
        });
        add(&mut c.grad)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TensorId, Collected>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for GradSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradSink")
            .field("variables", &self.lock().len())
            .finish()
    }
}
