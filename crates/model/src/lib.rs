//! LXMERT-S / LXMERT in candle, ready for training.
//!
//! This crate is the model of the msp project: the LXMERT backbone (embeddings, visual
//! feature encoder, language / relationship / cross-modality layers, pooler), its pre-training
//! heads (MLM, ITM, visual object/attribute/feature, topic, QA) and fine-tuning heads (answer,
//! NLVR2, retrieval match), with HF parameter names, safetensors checkpoints and the paper's
//! parameter count. [`Variant::LxmertS`] switches on what the released LXMERT-S code adds:
//! word-level position ids (fed as `position_ids`), a learned visual \[CLS\] region with box
//! (0,0,1,1), the product of a text and a visual tanh pooler, visual heads gated by that
//! pooled vector, and the topic head. [`Variant::Lxmert`] is HF's `LxmertForPreTraining`.
//!
//! Key design choice: every op has a backward. candle's fused LayerNorm and
//! `softmax_last_dim` silently drop gradients, so linear layers, the attention core,
//! LayerNorm, GELU, dropout (with the residual add) and the losses are our own fused CPU
//! kernels with hand-written backward passes ([`ops`], each tested against a composite of
//! candle's primitive ops, which is also the path on other devices), and a test checks that
//! one training step gives every variable a finite, non-zero gradient. A training step runs
//! its forward inside [`ops::GradSink::collect`] and its backward through
//! [`ops::GradSink::backward`]: the fused ops then write their weights' gradients themselves
//! (no zero-filled buffer and addition per use) and whole blocks (`LN(dropout(dense) +
//! residual)`, dense + GELU) run as one op each; the gradients are the same (tested), and
//! a plain `loss.backward()` without a sink still works. Random numbers (init, dropout) come from our own
//! seeded RNG, so runs are reproducible on CPU. Modules follow candle-transformers' `bert.rs`
//! (one struct per HF submodule, `load(vb, cfg)` with `vb.pp(<HF name>)`), so variable names
//! equal checkpoint keys by construction, and take `train: bool` in `forward_t`.
//! Fine-tuning heads read only the pooled output: [`LxmertModel::forward_pooled_t`] gives it
//! with the last cross layer run on the pooled rows alone (the same values and dropout masks
//! as the full forward, about 12% less work at the paper's sizes). Pre-training reads only
//! row 0 and the MLM-masked rows of the language output: [`LxmertModel::forward_rows_t`]
//! computes the last layer's language side on those ([`LanguageRows`]), the same again.
//!
//! Choices where the references are silent: the visual \[CLS\] is stored as one vector
//! `lxmert.visual_cls.weight [visual_feat_dim]` (LXMERT-S keeps a whole `[vocab, 2048]` table
//! `bert.word_embeddings` of which only the \[CLS\] row is used; the loader takes that row);
//! the second pooler is `lxmert.pooler_f`; the additive mask value is −10000 (LXMERT; HF's
//! dtype minimum gives the same f32 probabilities); row 0 of each embedding table gets no
//! gradient (`padding_idx=0`, as LXMERT and HF), switchable with
//! [`Config::freeze_padding_rows`]; LXMERT-S's gate on the visual heads (which saturates the
//! poolers when pre-training from a random init) can be switched off with
//! [`Config::gate_visual_heads`].
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use msp_model::{Config, Lxmert, LxmertInputs, Variant};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = Config::tiny();
//! let dev = Device::Cpu;
//! let model = Lxmert::new(&cfg, Variant::LxmertS, 42, &dev)?;
//! let ids = Tensor::new(&[[2u32, 7, 9, 3]], &dev)?;
//! let feats = Tensor::zeros((1, 5, cfg.visual_feat_dim), candle_core::DType::F32, &dev)?;
//! let boxes = Tensor::zeros((1, 5, 4), candle_core::DType::F32, &dev)?;
//! let out = model.model().forward_t(&LxmertInputs::new(&ids, &feats, &boxes), false)?;
//! assert_eq!(out.language_output.dims(), &[1, 4, cfg.hidden_size]);
//! assert_eq!(out.vision_output.dims(), &[1, 6, cfg.hidden_size]); // visual \[CLS\] + 5 regions
//! assert_eq!(out.pooled_output.dims(), &[1, cfg.hidden_size]);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod bench;
mod checkpoint;
mod concurrent;
mod config;
mod error;
mod heads;
mod io;
mod language_rows;
mod loss;
mod lxmert;
mod model;
mod nn;
pub mod ops;

pub use bench::{
    bench_gemm, forward_flops, peak_rss_bytes, pretraining_loss, GemmReport, GemmShape,
    SyntheticBatch,
};
pub use checkpoint::{
    copy_prefix, describe, init_embeddings_from_bert, load_safetensors, load_tensors, map_key,
    read_safetensors, save_varmap, write_safetensors, BertSource, DtypeMismatch, LoadOptions,
    LoadReport, ShapeMismatch, TIED_DECODER_KEY,
};
pub use concurrent::{gradient_store, run_side_by_side, sum_gradients, take_gradients};
pub use config::{Config, Variant};
pub use error::{ModelError, Result};
pub use heads::{
    AnswerHead, FeatRegions, LogitFc, LxmertForPreTraining, MatchHead, MlmHead, Nlvr2Head,
    PredictionHeadTransform, TopicHead, VisualObjHead, VisualPredictions,
};
pub use io::{forward_files, ForwardReport};
pub use language_rows::LanguageRows;
pub use loss::{bce_with_logits, cross_entropy, kept_rows, masked_cross_entropy, smooth_l1};
pub use lxmert::{
    permute_regions, AttentionLayer, DenseResidualNorm, FeedForward, LxmertAttention,
    LxmertEmbeddings, LxmertEncoder, LxmertInputs, LxmertLayer, LxmertModel, LxmertOutput,
    LxmertPooled, LxmertPooler, LxmertXLayer, OutputRows, VisualFeatureEncoder, MASK_VALUE,
};
pub use model::{build_with, module_of, param_count, seeded_var_builder, Lxmert, ParamCount};
pub use nn::{gelu, with_dropout_stream, Dropout, DropoutRng, Embedding, LayerNorm, Linear, Rows};
