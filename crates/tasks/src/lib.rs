//! The pre-training tasks of MSP ("Multi-stage Pre-training over Simplified Multimodal
//! Pre-training Models") for LXMERT-S: the per-example randomness and the losses.
//!
//! - [`Task`] / [`TaskSet`]: `MLM, MRFR, MOC, IFRS, TITP, TITS, ITM, ITM-HS`, parsed and
//!   displayed by their paper names (the CLI's `--without`).
//! - [`MlmMasker`]: LXMERT's word-piece masking (p = 0.15; 80% `[MASK]`, 10% a random id of
//!   the whole vocabulary, 10% kept; labels [`IGNORE_LABEL`] = −1 elsewhere), with
//!   [`PreferredWords`] masked at a higher rate in the phrase stage.
//! - [`RegionMasker`]: MRFR/MOC region masking (p = 0.15; 80% zeros, 10% a region of another
//!   image, 10% kept; boxes untouched), [`feat_regression_loss`] and
//!   [`classification_loss`] with LXMERT's reduction (mean over the real regions of the
//!   batch, × 1/0.15; confidence-weighted MOC over all regions or masked-only).
//! - [`IfrsShuffler`] / [`apply_ifrs`] / [`ifrs_loss`]: consecutive triplets of real regions
//!   shuffled with p = 0.05 by a non-identity permutation; the output at each shuffled
//!   position regresses the ROI feature that was there before the shuffle (eq. 1).
//! - [`topic_ids`] / [`multi_hot`] / [`topic_loss`]: TITP/TITS targets (text ∩ the image's
//!   object labels, as word-piece ids) and the BCE averaged over `B × vocab`.
//! - [`NegativeSampler`]: ITM (random other image) and ITM-HS (uniform among the top-M
//!   neighbours of the hard-negative pool, random fallback), never the image itself.
//! - [`BatchBuilder`]: all model inputs and targets of a step; [`forward_for_losses`]: the
//!   forward they need (the last layer on the language rows the losses read);
//!   [`compute_losses`]: every task's loss and accuracy and their sum.
//!
//! **Key design choice.** All randomness of batch `k` comes from a ChaCha8 RNG seeded with
//! the run's seed on stream `k` ([`RngState`]), so a batch is a pure function of
//! `(seed, k, examples)`: saving two integers resumes a run exactly, and any batch can be
//! rebuilt for debugging. Masking happens on host buffers before the tensors are made (cheap,
//! deterministic on every device); only IFRS acts on the *embedded* regions: its permutation
//! `[B, n]` goes to the model (`LxmertInputs::visual_permutation`), which applies it after the
//! visual feature encoder with the semantics of [`apply_ifrs`].
//!
//! Choices where the paper and references are silent: the phrase stage masks pieces of
//! attribute/category words with probability 0.3 and the rest with 0.15
//! ([`MlmConfig::preferred_prob`]); a donor region for MRFR comes from another image of the
//! batch (or a supplied [`DonorSet`]), and with no other image the region is kept; IFRS uses
//! the squared error averaged over D; topics use the labels of the image actually fed (a
//! mismatched ITM pair gets the replacement image's topic); ITM-HS draws from the first
//! `top_m` pool neighbours of the image (self excluded); TITP and TITS (and ITM and ITM-HS)
//! are exclusive in a set because they share a head.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use msp_tasks::{apply_ifrs, ifrs_loss, IfrsConfig, IfrsShuffler, MlmConfig, MlmMasker, RngState, TaskSet};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tasks: TaskSet = "MLM,MRFR,MOC,IFRS".parse()?;
//! assert_eq!(tasks, TaskSet::token_stage());
//! let mut rng = RngState::rng_for(42, 0); // batch 0 of seed 42
//!
//! // MLM on "[CLS] a b c [SEP] [PAD]" with [MASK] = 4 in a vocabulary of 100 ids.
//! let masker = MlmMasker::new(MlmConfig::default(), 4, 100, vec![2, 3, 0])?;
//! let m = masker.mask(&mut rng, &[2, 10, 11, 12, 3, 0], &[1, 1, 1, 1, 1, 0], None)?;
//! assert!(m.labels.iter().enumerate().all(|(i, &l)| l == -1 || (1..4).contains(&i)));
//!
//! // IFRS with every triplet shuffled: 6 regions → 2 triplets, never left in order.
//! let sh = IfrsShuffler::new(IfrsConfig { p_shuffle: 1.0 })?;
//! let plan = sh.plan(&mut rng, &[6], 6)?;
//! assert_eq!(plan.num_shuffled_triplets, 2);
//! let dev = Device::Cpu;
//! let feats = Tensor::arange(0f32, 6.0, &dev)?.reshape((1, 6, 1))?;
//! let shuffled = apply_ifrs(&feats, &plan.perm_tensor(&dev)?)?;
//! assert_ne!(shuffled.flatten_all()?.to_vec1::<f32>()?, vec![0., 1., 2., 3., 4., 5.]);
//! // Predicting the pre-shuffle features exactly gives zero loss.
//! let loss = ifrs_loss(&feats, &feats, &plan.shuffled_tensor(&dev)?)?;
//! assert_eq!(loss.to_scalar::<f32>()?, 0.0);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod assemble;
mod batch;
mod error;
mod ifrs;
mod itm;
mod losses;
mod mlm;
mod regions;
mod task;
mod topic;

pub use assemble::{compute_losses, forward_for_losses, LossConfig, TaskLoss, TaskLosses};
pub use batch::{
    Batch, BatchBuilder, BatchStats, BuilderConfig, Example, IfrsTargets, RngState, Targets,
};
pub use error::{Result, TaskError};
pub use ifrs::{
    apply_ifrs, ifrs_loss, IfrsConfig, IfrsPlan, IfrsShuffler, NON_IDENTITY_TRIPLET_PERMUTATIONS,
};
pub use itm::{ItmConfig, NegativeSampler, PairSource, Pairing};
pub use losses::{
    argmax_accuracy, classification_loss, feat_regression_loss, itm_loss, topic_accuracy, FeatLoss,
    MocRegions, VISUAL_LOSS_NORMALIZER,
};
pub use mlm::{MlmAction, MlmConfig, MlmMasked, MlmMasker, PreferredWords, IGNORE_LABEL};
pub use regions::{DonorSet, RegionAction, RegionMaskConfig, RegionMasked, RegionMasker};
pub use task::{Task, TaskSet};
pub use topic::{multi_hot, topic_ids, topic_loss, topic_words_for_image};
