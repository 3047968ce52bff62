//! The LXMERT / LXMERT-S backbone: embeddings, visual feature encoder, language /
//! relationship / cross layers, pooler(s).
//!
//! One struct per HF submodule (`modeling_lxmert.py`), each built by `load(vb, cfg)` with
//! `vb.pp(<HF attribute name>)`, so variable names equal checkpoint keys by construction.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::{Config, Variant};
use crate::language_rows::LanguageRows;
use crate::nn::{Dropout, DropoutRng, Embedding, LayerNorm, Linear, Rows};
use crate::ops::KeepMask;

/// Additive value for masked attention positions (original LXMERT; HF uses the dtype minimum,
/// which gives the same f32 probabilities: both underflow to exactly 0 after `exp`).
pub const MASK_VALUE: f64 = -10000.0;

/// `lxmert.embeddings`: word + position + token type → LayerNorm → dropout.
#[derive(Debug, Clone)]
pub struct LxmertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl LxmertEmbeddings {
    /// Builds under `vb` (= `lxmert.embeddings`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config, rng: &DropoutRng) -> Result<Self> {
        let (h, std, fz) = (
            cfg.hidden_size,
            cfg.initializer_range,
            cfg.freeze_padding_rows,
        );
        Ok(Self {
            word_embeddings: Embedding::load(vb.pp("word_embeddings"), cfg.vocab_size, h, std, fz)?,
            position_embeddings: Embedding::load(
                vb.pp("position_embeddings"),
                cfg.max_position_embeddings,
                h,
                std,
                fz,
            )?,
            token_type_embeddings: Embedding::load(
                vb.pp("token_type_embeddings"),
                cfg.type_vocab_size,
                h,
                std,
                fz,
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob, rng),
        })
    }

    /// The word-embedding table (tied to the MLM decoder).
    pub fn word_embeddings(&self) -> &Tensor {
        self.word_embeddings.weight()
    }

    /// `ids`, `token_type_ids`, `position_ids`: u32 `[B, L]`.
    pub fn forward_t(
        &self,
        ids: &Tensor,
        token_type_ids: &Tensor,
        position_ids: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let e = self
            .word_embeddings
            .forward(ids)?
            .add(&self.position_embeddings.forward(position_ids)?)?
            .add(&self.token_type_embeddings.forward(token_type_ids)?)?;
        self.dropout.forward_t(&self.layer_norm.forward(&e)?, train)
    }
}

/// `LxmertAttention`: multi-head scaled dot-product attention (Q from `hidden`, K/V from
/// `context`), additive mask, softmax, attention dropout.
#[derive(Debug, Clone)]
pub struct LxmertAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dropout: Dropout,
    heads: usize,
    head_dim: usize,
}

impl LxmertAttention {
    /// Builds under `vb` (`…att` or `…self`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config, rng: &DropoutRng) -> Result<Self> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        Ok(Self {
            query: Linear::load(vb.pp("query"), h, h, std)?,
            key: Linear::load(vb.pp("key"), h, h, std)?,
            value: Linear::load(vb.pp("value"), h, h, std)?,
            dropout: Dropout::new(cfg.attention_probs_dropout_prob, rng),
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `hidden [B,Lq,H]`, `context [B,Lk,H]`, `mask` additive `[B,1,1,Lk]` → `[B,Lq,H]`.
    pub fn forward_t(
        &self,
        hidden: &Tensor,
        context: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_rows_t(hidden, context, mask, Rows::all(hidden.dim(1)?), train)
    }

    /// [`Self::forward_t`] for `hidden` = the `rows.kept` of `rows.of` query rows that `rows`
    /// selects (the dropout masks are those of the full forward, see [`Rows`]).
    pub fn forward_rows_t(
        &self,
        hidden: &Tensor,
        context: &Tensor,
        mask: Option<&Tensor>,
        rows: Rows<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, lq, _) = hidden.dims3()?;
        if lq != rows.kept {
            candle_core::bail!("attention: {lq} query rows, expected {}", rows.kept)
        }
        let lk = context.dim(1)?;
        let q = self.query.forward(hidden)?;
        let k = self.key.forward(context)?;
        let v = self.value.forward(context)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let keep = self
            .dropout
            .keep_mask_rows(b * self.heads, rows, lk, train)?;
        let dropout = keep.as_ref().map(|keep| crate::ops::AttentionDropout {
            keep,
            scale: self.dropout.keep_scale(),
        });
        crate::ops::multi_head_attention(&q, &k, &v, self.heads, mask, scale, dropout)
    }

    /// Draws the dropout masks a forward with `lq` query rows over `lk` keys would, without
    /// computing anything.
    fn skip_t(&self, b: usize, lq: usize, lk: usize, train: bool) -> Result<()> {
        self.dropout.keep_mask(b * self.heads * lq * lk, train)?;
        Ok(())
    }
}

/// `LxmertAttentionOutput` / `LxmertOutput`: dense → dropout → LayerNorm(· + residual).
#[derive(Debug, Clone)]
pub struct DenseResidualNorm {
    dense: Linear,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl DenseResidualNorm {
    /// Builds under `vb` (`…output`), `in_dim → hidden`.
    pub fn load(vb: VarBuilder<'_>, cfg: &Config, in_dim: usize, rng: &DropoutRng) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(
                vb.pp("dense"),
                in_dim,
                cfg.hidden_size,
                cfg.initializer_range,
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob, rng),
        })
    }

    /// `LN(dropout(dense(x)) + residual)`.
    pub fn forward_t(&self, x: &Tensor, residual: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_rows_t(x, residual, Rows::every(x)?, train)
    }

    /// [`Self::forward_t`] for `x [B, rows.kept, ·]`, the rows that `rows` selects of a
    /// sequence of `rows.of` (the dropout mask is that of the full forward, see [`Rows`]).
    pub fn forward_rows_t(
        &self,
        x: &Tensor,
        residual: &Tensor,
        rows: Rows<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let keep = self.keep_rows(residual, rows, train)?;
        let scale = self.dropout.keep_scale();
        self.layer_norm
            .forward_dense_residual(&self.dense, x, residual, keep.as_ref(), scale)
    }

    /// The dropout flags of a forward whose residual is `residual [B, rows.kept, H]`.
    fn keep_rows(
        &self,
        residual: &Tensor,
        rows: Rows<'_>,
        train: bool,
    ) -> Result<Option<KeepMask>> {
        let h = self.dense.weight().dim(0)?;
        let outer = residual.elem_count() / (rows.kept * h).max(1);
        self.dropout.keep_mask_rows(outer, rows, h, train)
    }

    /// Draws the dropout mask of a forward over `n` rows, without computing anything.
    fn skip_t(&self, n: usize, train: bool) -> Result<()> {
        self.dropout
            .keep_mask(n * self.dense.weight().dim(0)?, train)?;
        Ok(())
    }
}

/// `LxmertCrossAttentionLayer` (`att`, `output`) and `LxmertSelfAttentionLayer` (`self`,
/// `output`): attention then residual block.
#[derive(Debug, Clone)]
pub struct AttentionLayer {
    att: LxmertAttention,
    output: DenseResidualNorm,
}

impl AttentionLayer {
    /// Builds under `vb`; `att_name` is `"att"` (cross) or `"self"` (self-attention).
    pub fn load(
        vb: VarBuilder<'_>,
        cfg: &Config,
        att_name: &str,
        rng: &DropoutRng,
    ) -> Result<Self> {
        Ok(Self {
            att: LxmertAttention::load(vb.pp(att_name), cfg, rng)?,
            output: DenseResidualNorm::load(vb.pp("output"), cfg, cfg.hidden_size, rng)?,
        })
    }

    /// Query `x`, keys/values `ctx`, additive mask over `ctx`.
    pub fn forward_t(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        ctx_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_rows_t(x, ctx, ctx_mask, Rows::all(x.dim(1)?), train)
    }

    /// [`Self::forward_t`] for the query rows `x`, the `rows.kept` of `rows.of` that `rows`
    /// selects.
    pub fn forward_rows_t(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        ctx_mask: Option<&Tensor>,
        rows: Rows<'_>,
        train: bool,
    ) -> Result<Tensor> {
        let a = self.att.forward_rows_t(x, ctx, ctx_mask, rows, train)?;
        self.output.forward_rows_t(&a, x, rows, train)
    }

    /// Draws the dropout masks of a forward with `lq` query rows over `lk` keys.
    fn skip_t(&self, b: usize, lq: usize, lk: usize, train: bool) -> Result<()> {
        self.att.skip_t(b, lq, lk, train)?;
        self.output.skip_t(b * lq, train)
    }
}

/// FFN: `intermediate.dense` + GELU, then `output` (dense, dropout, LN with residual).
#[derive(Debug, Clone)]
pub struct FeedForward {
    intermediate: Linear,
    output: DenseResidualNorm,
}

impl FeedForward {
    /// `inter_vb` holds `dense` (H→I), `out_vb` holds `dense` (I→H) and `LayerNorm`.
    pub fn load(
        inter_vb: VarBuilder<'_>,
        out_vb: VarBuilder<'_>,
        cfg: &Config,
        rng: &DropoutRng,
    ) -> Result<Self> {
        Ok(Self {
            intermediate: Linear::load(
                inter_vb.pp("dense"),
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.initializer_range,
            )?,
            output: DenseResidualNorm::load(out_vb, cfg, cfg.intermediate_size, rng)?,
        })
    }

    /// `LN(x + dropout(W2 gelu(W1 x)))`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_rows_t(x, Rows::every(x)?, train)
    }

    /// [`Self::forward_t`] for `x [B, rows.kept, H]`, the rows `rows` selects of a sequence.
    pub fn forward_rows_t(&self, x: &Tensor, rows: Rows<'_>, train: bool) -> Result<Tensor> {
        let out = &self.output;
        let keep = out.keep_rows(x, rows, train)?;
        out.layer_norm.forward_feed_forward(
            (&self.intermediate, &out.dense),
            x,
            keep.as_ref(),
            out.dropout.keep_scale(),
        )
    }

    /// Draws the dropout mask of a forward over `n` rows.
    fn skip_t(&self, n: usize, train: bool) -> Result<()> {
        self.output.skip_t(n, train)
    }
}

/// `LxmertLayer`: a post-LN BERT layer (language `encoder.layer.i` / relationship
/// `encoder.r_layers.i`).
#[derive(Debug, Clone)]
pub struct LxmertLayer {
    attention: AttentionLayer,
    ffn: FeedForward,
}

impl LxmertLayer {
    /// Builds under `vb` (`…layer.{i}`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config, rng: &DropoutRng) -> Result<Self> {
        Ok(Self {
            attention: AttentionLayer::load(vb.pp("attention"), cfg, "self", rng)?,
            ffn: FeedForward::load(vb.pp("intermediate"), vb.pp("output"), cfg, rng)?,
        })
    }

    /// Self-attention then FFN.
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let a = self.attention.forward_t(x, x, mask, train)?;
        self.ffn.forward_t(&a, train)
    }
}

/// The output rows the last cross layer computes ([`LxmertXLayer::forward_rows_t`]).
#[derive(Debug, Clone, Copy)]
pub struct OutputRows<'a> {
    /// Language rows.
    pub lang: Rows<'a>,
    /// Vision rows; `None`: no vision output (the vision stream is skipped).
    pub visn: Option<Rows<'a>>,
}

/// `LxmertXLayer`: shared cross-attention (both directions read the layer inputs), then
/// per-modality self-attention, then per-modality FFN.
#[derive(Debug, Clone)]
pub struct LxmertXLayer {
    visual_attention: AttentionLayer,
    lang_self_att: AttentionLayer,
    visn_self_att: AttentionLayer,
    lang_ffn: FeedForward,
    visn_ffn: FeedForward,
}

impl LxmertXLayer {
    /// Builds under `vb` (`lxmert.encoder.x_layers.{i}`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config, rng: &DropoutRng) -> Result<Self> {
        Ok(Self {
            visual_attention: AttentionLayer::load(vb.pp("visual_attention"), cfg, "att", rng)?,
            lang_self_att: AttentionLayer::load(vb.pp("lang_self_att"), cfg, "self", rng)?,
            visn_self_att: AttentionLayer::load(vb.pp("visn_self_att"), cfg, "self", rng)?,
            lang_ffn: FeedForward::load(vb.pp("lang_inter"), vb.pp("lang_output"), cfg, rng)?,
            visn_ffn: FeedForward::load(vb.pp("visn_inter"), vb.pp("visn_output"), cfg, rng)?,
        })
    }

    /// One cross layer on `(lang [B,L,H], visn [B,N,H])`.
    pub fn forward_t(
        &self,
        lang: &Tensor,
        lang_mask: Option<&Tensor>,
        visn: &Tensor,
        visn_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let l = self
            .visual_attention
            .forward_t(lang, visn, visn_mask, train)?;
        let v = self
            .visual_attention
            .forward_t(visn, lang, lang_mask, train)?;
        let l = self.lang_self_att.forward_t(&l, &l, lang_mask, train)?;
        let v = self.visn_self_att.forward_t(&v, &v, visn_mask, train)?;
        Ok((
            self.lang_ffn.forward_t(&l, train)?,
            self.visn_ffn.forward_t(&v, train)?,
        ))
    }

    /// [`Self::forward_t`] computing only the output rows `rows` (`[B, kept, H]` each; no
    /// vision output when `rows.visn` is `None`, the vision stream skipped). The
    /// cross-attention still runs on every row (the self-attention reads all of them as keys
    /// and values); the self-attention queries, residual blocks and FFNs run on the chosen
    /// rows only. The values and, when training, the dropout masks are those of the full
    /// forward.
    pub fn forward_rows_t(
        &self,
        lang: &Tensor,
        lang_mask: Option<&Tensor>,
        visn: &Tensor,
        visn_mask: Option<&Tensor>,
        rows: OutputRows<'_>,
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let OutputRows {
            lang: lang_rows,
            visn: visn_rows,
        } = rows;
        let (b, nl, _) = lang.dims3()?;
        let nv = visn.dim(1)?;
        // The masks are drawn in the order of the full forward.
        let l = self
            .visual_attention
            .forward_t(lang, visn, visn_mask, train)?;
        let v = if visn_rows.is_some() {
            Some(
                self.visual_attention
                    .forward_t(visn, lang, lang_mask, train)?,
            )
        } else {
            self.visual_attention.skip_t(b, nv, nl, train)?;
            None
        };
        let l = self.lang_self_att.forward_rows_t(
            &lang_rows.gather(&l)?,
            &l,
            lang_mask,
            lang_rows,
            train,
        )?;
        let v = match (&v, visn_rows) {
            (Some(v), Some(rows)) => Some((
                self.visn_self_att
                    .forward_rows_t(&rows.gather(v)?, v, visn_mask, rows, train)?,
                rows,
            )),
            _ => {
                self.visn_self_att.skip_t(b, nv, nv, train)?;
                None
            }
        };
        let l = self.lang_ffn.forward_rows_t(&l, lang_rows, train)?;
        let v = match v {
            Some((v, rows)) => Some(self.visn_ffn.forward_rows_t(&v, rows, train)?),
            None => {
                self.visn_ffn.skip_t(b * nv, train)?;
                None
            }
        };
        Ok((l, v))
    }
}

/// `LxmertVisualFeatureEncoder` (`encoder.visn_fc`): `(LN(W_f f) + LN(W_b box)) / 2` → dropout.
#[derive(Debug, Clone)]
pub struct VisualFeatureEncoder {
    visn_fc: Linear,
    visn_layer_norm: LayerNorm,
    box_fc: Linear,
    box_layer_norm: LayerNorm,
    dropout: Dropout,
}

impl VisualFeatureEncoder {
    /// Builds under `vb` (`lxmert.encoder.visn_fc`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config, rng: &DropoutRng) -> Result<Self> {
        let (h, std, eps) = (cfg.hidden_size, cfg.initializer_range, cfg.layer_norm_eps);
        Ok(Self {
            visn_fc: Linear::load(vb.pp("visn_fc"), cfg.visual_feat_dim, h, std)?,
            visn_layer_norm: LayerNorm::load(vb.pp("visn_layer_norm"), h, eps)?,
            box_fc: Linear::load(vb.pp("box_fc"), cfg.visual_pos_dim, h, std)?,
            box_layer_norm: LayerNorm::load(vb.pp("box_layer_norm"), h, eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob, rng),
        })
    }

    /// `feats [B,N,F]`, `boxes [B,N,4]` → `[B,N,H]`.
    pub fn forward_t(&self, feats: &Tensor, boxes: &Tensor, train: bool) -> Result<Tensor> {
        let x = self
            .visn_layer_norm
            .forward(&self.visn_fc.forward(feats)?)?;
        let y = self.box_layer_norm.forward(&self.box_fc.forward(boxes)?)?;
        self.dropout.forward_t(&((x + y)? * 0.5)?, train)
    }
}

/// `LxmertEncoder`: visual feature encoder, language layers, relationship layers, cross layers.
#[derive(Debug, Clone)]
pub struct LxmertEncoder {
    visn_fc: VisualFeatureEncoder,
    layer: Vec<LxmertLayer>,
    r_layers: Vec<LxmertLayer>,
    x_layers: Vec<LxmertXLayer>,
}

/// Reorders embedded regions along dim 1: `out[b, k + i] = embedded[b, k + perm[b, i]]`, where
/// `embedded` is `[B, M, H]`, `perm` is `[B, N]` with `N ≤ M`, and the `k = M − N` leading
/// positions (LXMERT-S's visual \[CLS\]) stay in place. This is how IFRS shuffles regions after
/// the visual feature encoder; it is a gather, so gradients flow back to the original positions.
pub fn permute_regions(embedded: &Tensor, perm: &Tensor) -> Result<Tensor> {
    let (b, m, h) = embedded.dims3()?;
    let (pb, n) = perm.dims2()?;
    if pb != b || n > m {
        candle_core::bail!(
            "visual_permutation has shape {:?}, expected [{b}, N ≤ {m}] for regions {:?}",
            perm.dims(),
            embedded.dims()
        );
    }
    let k = m - n;
    let perm = perm.to_dtype(DType::U32)?;
    let index = if k == 0 {
        perm
    } else {
        let prefix = Tensor::arange(0u32, k as u32, embedded.device())?
            .unsqueeze(0)?
            .broadcast_as((b, k))?;
        Tensor::cat(&[&prefix, &(perm + k as f64)?], 1)?
    };
    let index = index.unsqueeze(2)?.broadcast_as((b, m, h))?.contiguous()?;
    embedded.contiguous()?.gather(&index, 1)
}

impl LxmertEncoder {
    /// Builds under `vb` (`lxmert.encoder`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config, rng: &DropoutRng) -> Result<Self> {
        let layers = |name: &str, n: usize| -> Result<Vec<LxmertLayer>> {
            (0..n)
                .map(|i| LxmertLayer::load(vb.pp(name).pp(i), cfg, rng))
                .collect()
        };
        Ok(Self {
            visn_fc: VisualFeatureEncoder::load(vb.pp("visn_fc"), cfg, rng)?,
            layer: layers("layer", cfg.l_layers)?,
            r_layers: layers("r_layers", cfg.r_layers)?,
            x_layers: (0..cfg.x_layers)
                .map(|i| LxmertXLayer::load(vb.pp("x_layers").pp(i), cfg, rng))
                .collect::<Result<_>>()?,
        })
    }

    /// Embeds regions with the visual feature encoder, then applies the IFRS permutation
    /// (if any) to the embedded regions.
    pub fn embed_visual(
        &self,
        feats: &Tensor,
        boxes: &Tensor,
        permutation: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let v = self.visn_fc.forward_t(feats, boxes, train)?;
        match permutation {
            Some(perm) => permute_regions(&v, perm),
            None => Ok(v),
        }
    }

    /// Runs the layers on embedded text and embedded regions (see [`Self::embed_visual`]).
    pub fn forward_t(
        &self,
        lang: &Tensor,
        lang_mask: Option<&Tensor>,
        visn: &Tensor,
        visn_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        self.forward_layers_t(&self.x_layers, lang, lang_mask, visn, visn_mask, train)
    }

    /// The language and relationship layers, then the cross layers `x_layers`.
    fn forward_layers_t(
        &self,
        x_layers: &[LxmertXLayer],
        lang: &Tensor,
        lang_mask: Option<&Tensor>,
        visn: &Tensor,
        visn_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let mut v = visn.clone();
        let mut l = lang.clone();
        for layer in &self.layer {
            l = layer.forward_t(&l, lang_mask, train)?;
        }
        for layer in &self.r_layers {
            v = layer.forward_t(&v, visn_mask, train)?;
        }
        for layer in x_layers {
            (l, v) = layer.forward_t(&l, lang_mask, &v, visn_mask, train)?;
        }
        Ok((l, v))
    }

    /// [`Self::forward_t`] with the last cross layer computing only the output rows `rows`,
    /// by [`LxmertXLayer::forward_rows_t`]: `[B, kept, H]` each.
    pub fn forward_rows_t(
        &self,
        lang: &Tensor,
        lang_mask: Option<&Tensor>,
        visn: &Tensor,
        visn_mask: Option<&Tensor>,
        rows: OutputRows<'_>,
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let Some((last, before)) = self.x_layers.split_last() else {
            let (l, v) = self.forward_t(lang, lang_mask, visn, visn_mask, train)?;
            let v = rows.visn.map(|r| r.gather(&v)).transpose()?;
            return Ok((rows.lang.gather(&l)?, v));
        };
        let (l, v) = self.forward_layers_t(before, lang, lang_mask, visn, visn_mask, train)?;
        last.forward_rows_t(&l, lang_mask, &v, visn_mask, rows, train)
    }
}

/// `LxmertPooler`: `tanh(dense(x[:, 0]))`.
#[derive(Debug, Clone)]
pub struct LxmertPooler {
    dense: Linear,
}

impl LxmertPooler {
    /// Builds under `vb` (`lxmert.pooler` / `lxmert.pooler_f`).
    pub fn load(vb: VarBuilder<'_>, cfg: &Config) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(
                vb.pp("dense"),
                cfg.hidden_size,
                cfg.hidden_size,
                cfg.initializer_range,
            )?,
        })
    }

    /// `[B,L,H]` → `[B,H]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.dense.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()
    }
}

/// Inputs of the backbone, with HF names. Integer tensors may be u8/u32/i64; masks any dtype
/// (1 = attend, 0 = masked).
#[derive(Debug, Clone, Copy)]
pub struct LxmertInputs<'a> {
    /// Word-piece ids `[B, L]`.
    pub input_ids: &'a Tensor,
    /// 1 for real tokens, 0 for padding `[B, L]` (all ones when absent).
    pub attention_mask: Option<&'a Tensor>,
    /// Segment ids `[B, L]` (zeros when absent).
    pub token_type_ids: Option<&'a Tensor>,
    /// Position ids `[B, L]` (word-level for LXMERT-S; `0..L` when absent).
    pub position_ids: Option<&'a Tensor>,
    /// Region features `[B, N, visual_feat_dim]`.
    pub visual_feats: &'a Tensor,
    /// Normalised boxes `[B, N, visual_pos_dim]`.
    pub visual_pos: &'a Tensor,
    /// 1 for real regions, 0 for padded ones `[B, N]` (no mask when absent). With LXMERT-S a
    /// 1 is prepended for the visual \[CLS\].
    pub visual_attention_mask: Option<&'a Tensor>,
    /// IFRS region shuffle `[B, N]` (integer ids): after the visual feature encoder, region
    /// position `i` receives the embedded region `perm[b, i]` (see [`permute_regions`]). The
    /// text keeps its order; `None` leaves the regions in place.
    pub visual_permutation: Option<&'a Tensor>,
}

impl<'a> LxmertInputs<'a> {
    /// Inputs with only the required tensors.
    pub fn new(input_ids: &'a Tensor, visual_feats: &'a Tensor, visual_pos: &'a Tensor) -> Self {
        Self {
            input_ids,
            attention_mask: None,
            token_type_ids: None,
            position_ids: None,
            visual_feats,
            visual_pos,
            visual_attention_mask: None,
            visual_permutation: None,
        }
    }
}

/// Outputs of the backbone.
#[derive(Debug, Clone)]
pub struct LxmertOutput {
    /// `[B, L, H]`, or `[B, kept, H]`: the rows of [`Self::language_rows`].
    pub language_output: Tensor,
    /// The language rows `language_output` holds when the forward computed only some
    /// ([`LxmertModel::forward_rows_t`]); `None`: every row.
    pub language_rows: Option<LanguageRows>,
    /// `[B, N, H]`, or `[B, N+1, H]` with the visual \[CLS\] first (LXMERT-S).
    pub vision_output: Tensor,
    /// `[B, H]`: tanh pooler, or the product of the two poolers (LXMERT-S).
    pub pooled_output: Tensor,
    /// LXMERT-S: the text and the visual pooler outputs (`[B, H]` each) whose product is
    /// `pooled_output`; `None` with a single pooler.
    pub pooler_factors: Option<(Tensor, Tensor)>,
}

/// The pooled output alone ([`LxmertModel::forward_pooled_t`]).
#[derive(Debug, Clone)]
pub struct LxmertPooled {
    /// `[B, H]`, as [`LxmertOutput::pooled_output`].
    pub pooled_output: Tensor,
    /// As [`LxmertOutput::pooler_factors`].
    pub pooler_factors: Option<(Tensor, Tensor)>,
}

/// Embedded inputs and additive masks, ready for the encoder.
struct Embedded {
    lang: Tensor,
    lang_mask: Option<Tensor>,
    visn: Tensor,
    visn_mask: Option<Tensor>,
}

/// `LxmertModel` (HF) / `LXRTModel` (LXMERT-S): the backbone.
#[derive(Debug, Clone)]
pub struct LxmertModel {
    embeddings: LxmertEmbeddings,
    encoder: LxmertEncoder,
    pooler: LxmertPooler,
    pooler_f: Option<LxmertPooler>,
    visual_cls: Option<Tensor>,
    cfg: Config,
    variant: Variant,
}

fn to_ids(t: &Tensor, name: &'static str) -> crate::Result<Tensor> {
    match t.dtype() {
        DType::U8 | DType::U32 | DType::I64 | DType::I32 | DType::I16 | DType::F32 | DType::F64 => {
            Ok(t.to_dtype(DType::U32)?)
        }
        other => Err(crate::ModelError::Input {
            name,
            reason: format!("unsupported dtype {other:?}"),
        }),
    }
}

fn additive_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, n) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    ((m.affine(-1.0, 1.0)? * MASK_VALUE)?)
        .to_dtype(dtype)?
        .reshape((b, 1, 1, n))
}

impl LxmertModel {
    /// Builds under `vb` (= `lxmert`): `embeddings`, `encoder`, `pooler`, and for LXMERT-S
    /// `pooler_f` and `visual_cls.weight` (the visual \[CLS\] feature, `[visual_feat_dim]`).
    pub fn load(
        vb: VarBuilder<'_>,
        cfg: &Config,
        variant: Variant,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let visual_cls = if variant.visual_cls() {
            Some(vb.pp("visual_cls").get_with_hints(
                cfg.visual_feat_dim,
                "weight",
                candle_nn::Init::Randn {
                    mean: 0.,
                    stdev: cfg.initializer_range,
                },
            )?)
        } else {
            None
        };
        Ok(Self {
            embeddings: LxmertEmbeddings::load(vb.pp("embeddings"), cfg, rng)?,
            encoder: LxmertEncoder::load(vb.pp("encoder"), cfg, rng)?,
            pooler: LxmertPooler::load(vb.pp("pooler"), cfg)?,
            pooler_f: if variant.product_pooler() {
                Some(LxmertPooler::load(vb.pp("pooler_f"), cfg)?)
            } else {
                None
            },
            visual_cls,
            cfg: cfg.clone(),
            variant,
        })
    }

    /// The word-embedding table (tied to the MLM decoder).
    pub fn word_embeddings(&self) -> &Tensor {
        self.embeddings.word_embeddings()
    }

    /// The variant this backbone was built as.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Runs the backbone; `train` switches dropout on.
    pub fn forward_t(&self, inputs: &LxmertInputs<'_>, train: bool) -> crate::Result<LxmertOutput> {
        let e = self.embed(inputs, train)?;
        let (language_output, vision_output) = self.encoder.forward_t(
            &e.lang,
            e.lang_mask.as_ref(),
            &e.visn,
            e.visn_mask.as_ref(),
            train,
        )?;
        let (pooled_output, pooler_factors) = self.pool(&language_output, Some(&vision_output))?;
        Ok(LxmertOutput {
            language_output,
            language_rows: None,
            vision_output,
            pooled_output,
            pooler_factors,
        })
    }

    /// [`Self::forward_t`] with the last cross layer computing only the language rows
    /// `rows` (row 0 and the MLM-masked positions, say): `language_output` is
    /// `[B, rows.kept(), H]` and [`LxmertOutput::language_rows`] says which rows it holds;
    /// the vision and pooled outputs are whole. The same values as the full forward, and
    /// when training the same dropout masks. With MLM at 15% of 20 tokens (row 0 and the
    /// masked rows, padded to the batch's most: ≈ 8 rows at batch 32, 9 at batch 64) it skips
    /// about 2.6% of the backbone's multiply-adds at the paper's sizes (36 regions, 5 cross
    /// layers) and 9% at the tiny preset's (hidden 128, 16 regions, 2 cross layers); with
    /// row 0 alone (no MLM) 4% and 15%.
    pub fn forward_rows_t(
        &self,
        inputs: &LxmertInputs<'_>,
        rows: &LanguageRows,
        train: bool,
    ) -> crate::Result<LxmertOutput> {
        let (b, l) = inputs.input_ids.dims2()?;
        if (rows.examples(), rows.seq_len()) != (b, l) {
            return Err(crate::ModelError::Input {
                name: "language_rows",
                reason: format!(
                    "rows of {} examples × {}, input_ids [{b}, {l}]",
                    rows.examples(),
                    rows.seq_len()
                ),
            });
        }
        let e = self.embed(inputs, train)?;
        let nv = e.visn.dim(1)?;
        let (language_output, vision_output) = self.encoder.forward_rows_t(
            &e.lang,
            e.lang_mask.as_ref(),
            &e.visn,
            e.visn_mask.as_ref(),
            OutputRows {
                lang: rows.rows(),
                visn: Some(Rows::all(nv)),
            },
            train,
        )?;
        let vision_output = vision_output
            .ok_or_else(|| candle_core::Error::Msg("the encoder skipped the vision rows".into()))?;
        let (pooled_output, pooler_factors) = self.pool(&language_output, Some(&vision_output))?;
        Ok(LxmertOutput {
            language_output,
            language_rows: Some(rows.clone()),
            vision_output,
            pooled_output,
            pooler_factors,
        })
    }

    /// [`Self::forward_t`]'s pooled output alone, for fine-tuning and evaluation: the last
    /// cross layer computes only the rows the poolers read
    /// ([`LxmertEncoder::forward_rows_t`]). The same values as the full forward, and
    /// when training the same dropout masks. At the paper's sizes (20 tokens, 36 regions,
    /// 5 cross layers, LXMERT-S) it skips about 12% of the backbone's multiply-adds, at the
    /// tiny preset's (20 tokens, 16 regions, 2 cross layers) about 28%.
    pub fn forward_pooled_t(
        &self,
        inputs: &LxmertInputs<'_>,
        train: bool,
    ) -> crate::Result<LxmertPooled> {
        let e = self.embed(inputs, train)?;
        let (nl, nv) = (e.lang.dim(1)?, e.visn.dim(1)?);
        let (lang0, visn0) = self.encoder.forward_rows_t(
            &e.lang,
            e.lang_mask.as_ref(),
            &e.visn,
            e.visn_mask.as_ref(),
            OutputRows {
                lang: Rows::first(1, nl),
                visn: self.pooler_f.is_some().then_some(Rows::first(1, nv)),
            },
            train,
        )?;
        let (pooled_output, pooler_factors) = self.pool(&lang0, visn0.as_ref())?;
        Ok(LxmertPooled {
            pooled_output,
            pooler_factors,
        })
    }

    /// The pooled output and, for LXMERT-S, its two factors, from the language output and
    /// (LXMERT-S) the vision output; the poolers read row 0 of each.
    fn pool(
        &self,
        lang: &Tensor,
        visn: Option<&Tensor>,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let text_pooled = self.pooler.forward(lang)?;
        match (&self.pooler_f, visn) {
            (Some(pf), Some(visn)) => {
                let visual_pooled = pf.forward(visn)?;
                Ok((
                    text_pooled.mul(&visual_pooled)?,
                    Some((text_pooled, visual_pooled)),
                ))
            }
            (Some(_), None) => candle_core::bail!("the visual pooler needs the vision output"),
            (None, _) => Ok((text_pooled, None)),
        }
    }

    /// Checks the inputs and embeds the text and the regions (with LXMERT-S's visual
    /// \[CLS\] and the IFRS permutation), with the additive attention masks.
    fn embed(&self, inputs: &LxmertInputs<'_>, train: bool) -> crate::Result<Embedded> {
        let cfg = &self.cfg;
        let ids = to_ids(inputs.input_ids, "input_ids")?;
        let (b, l) = ids.dims2().map_err(|e| crate::ModelError::Input {
            name: "input_ids",
            reason: e.to_string(),
        })?;
        let dev = ids.device().clone();
        let check2 =
            |t: &Tensor, name: &'static str, rows: usize, cols: usize| -> crate::Result<()> {
                if t.dims() != [rows, cols] {
                    return Err(crate::ModelError::Input {
                        name,
                        reason: format!("shape {:?}, expected [{rows}, {cols}]", t.dims()),
                    });
                }
                Ok(())
            };
        if l > cfg.max_position_embeddings {
            return Err(crate::ModelError::Input {
                name: "input_ids",
                reason: format!(
                    "length {l} exceeds max_position_embeddings {}",
                    cfg.max_position_embeddings
                ),
            });
        }
        let tt = match inputs.token_type_ids {
            Some(t) => {
                check2(t, "token_type_ids", b, l)?;
                to_ids(t, "token_type_ids")?
            }
            None => Tensor::zeros((b, l), DType::U32, &dev)?,
        };
        let pos = match inputs.position_ids {
            Some(t) => {
                check2(t, "position_ids", b, l)?;
                to_ids(t, "position_ids")?
            }
            None => Tensor::arange(0u32, l as u32, &dev)?
                .unsqueeze(0)?
                .broadcast_as((b, l))?
                .contiguous()?,
        };
        let dtype = self.word_embeddings().dtype();
        let lang_mask = match inputs.attention_mask {
            Some(m) => {
                check2(m, "attention_mask", b, l)?;
                Some(additive_mask(m, dtype)?)
            }
            None => None,
        };
        let feats = inputs.visual_feats;
        let boxes = inputs.visual_pos;
        let (fb, n, fd) = feats.dims3().map_err(|e| crate::ModelError::Input {
            name: "visual_feats",
            reason: e.to_string(),
        })?;
        if fb != b || fd != cfg.visual_feat_dim {
            return Err(crate::ModelError::Input {
                name: "visual_feats",
                reason: format!(
                    "shape {:?}, expected [{b}, N, {}]",
                    feats.dims(),
                    cfg.visual_feat_dim
                ),
            });
        }
        if boxes.dims() != [b, n, cfg.visual_pos_dim] {
            return Err(crate::ModelError::Input {
                name: "visual_pos",
                reason: format!(
                    "shape {:?}, expected [{b}, {n}, {}]",
                    boxes.dims(),
                    cfg.visual_pos_dim
                ),
            });
        }
        let feats = feats.to_dtype(dtype)?;
        let boxes = boxes.to_dtype(dtype)?;
        let mut vmask = inputs.visual_attention_mask.cloned();
        if let Some(m) = &vmask {
            check2(m, "visual_attention_mask", b, n)?;
        }
        let (feats, boxes) = match &self.visual_cls {
            Some(vcls) => {
                let c = vcls.reshape((1, 1, cfg.visual_feat_dim))?.broadcast_as((
                    b,
                    1,
                    cfg.visual_feat_dim,
                ))?;
                let feats = Tensor::cat(&[&c, &feats], 1)?;
                // Box (0, 0, 1, 1): the whole image as normalised (x1, y1, x2, y2); any extra
                // box dimensions are 0.
                let unit: Vec<f32> = (0..cfg.visual_pos_dim)
                    .map(|i| if (2..4).contains(&i) { 1.0 } else { 0.0 })
                    .collect();
                let unit = Tensor::from_vec(unit, (1, 1, cfg.visual_pos_dim), &dev)?
                    .to_dtype(dtype)?
                    .broadcast_as((b, 1, cfg.visual_pos_dim))?;
                let boxes = Tensor::cat(&[&unit, &boxes], 1)?;
                if let Some(m) = &vmask {
                    let ones = Tensor::ones((b, 1), m.dtype(), &dev)?;
                    vmask = Some(Tensor::cat(&[&ones, m], 1)?);
                }
                (feats, boxes)
            }
            None => (feats, boxes),
        };
        let visn_mask = match &vmask {
            Some(m) => Some(additive_mask(m, dtype)?),
            None => None,
        };
        let lang = self.embeddings.forward_t(&ids, &tt, &pos, train)?;
        let visn = self
            .encoder
            .embed_visual(&feats, &boxes, inputs.visual_permutation, train)?;
        Ok(Embedded {
            lang,
            lang_mask,
            visn,
            visn_mask,
        })
    }

    /// The device of the model's weights.
    pub fn device(&self) -> &Device {
        self.word_embeddings().device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_gathers_and_keeps_prefix() {
        let dev = Device::Cpu;
        // B = 1, m = 4 (prefix 1 + n 3), H = 2; row r = (10 r, 10 r + 1).
        let emb = Tensor::new(&[[[0f32, 1.], [10., 11.], [20., 21.], [30., 31.]]], &dev).unwrap();
        let perm = Tensor::new(&[[1u32, 2, 0]], &dev).unwrap();
        let out: Vec<Vec<Vec<f32>>> = permute_regions(&emb, &perm).unwrap().to_vec3().unwrap();
        assert_eq!(
            out[0],
            vec![vec![0., 1.], vec![20., 21.], vec![30., 31.], vec![10., 11.]]
        );
        // Without a prefix.
        let emb3 = emb.narrow(1, 1, 3).unwrap();
        let out: Vec<Vec<Vec<f32>>> = permute_regions(&emb3, &perm).unwrap().to_vec3().unwrap();
        assert_eq!(out[0], vec![vec![20., 21.], vec![30., 31.], vec![10., 11.]]);
        let bad = Tensor::new(&[[0u32, 1, 2, 3, 0]], &dev).unwrap();
        assert!(permute_regions(&emb, &bad).is_err());
    }

    #[test]
    fn permute_has_a_gradient() {
        let dev = Device::Cpu;
        let v = candle_core::Var::new(&[[[1f32], [2.], [3.]]], &dev).unwrap();
        let perm = Tensor::new(&[[2u32, 0, 1]], &dev).unwrap();
        let w = Tensor::new(&[[[1f32], [10.], [100.]]], &dev).unwrap();
        let y = permute_regions(v.as_tensor(), &perm)
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap();
        let g = y.backward().unwrap();
        // d/dv[j] = weight at the output position that reads j: v0 → pos 1, v1 → 2, v2 → 0.
        let gv: Vec<Vec<Vec<f32>>> = g.get(&v).unwrap().to_vec3().unwrap();
        assert_eq!(gv[0], vec![vec![10.], vec![100.], vec![1.]]);
    }
}
