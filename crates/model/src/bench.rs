//! Benchmark workloads: a random pre-training batch with HF's heads and its loss, GEMM speed,
//! analytic FLOPs (the training-step benchmark itself is msp-curriculum's `bench_train_*`).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::config::{Config, Variant};
use crate::error::Result;
use crate::heads::FeatRegions;
use crate::language_rows::LanguageRows;
use crate::loss::{bce_with_logits, cross_entropy, kept_rows, smooth_l1};
use crate::lxmert::LxmertInputs;
use crate::model::Lxmert;

/// A random pre-training batch with every label the pre-training heads need.
#[derive(Debug, Clone)]
pub struct SyntheticBatch {
    /// `[B, L]` u32 (first token = `cls_token_id`).
    pub input_ids: Tensor,
    /// `[B, L]` u32 ones.
    pub attention_mask: Tensor,
    /// `[B, L]` u32: 0 on the first half of each row, 1 on the second (so both token-type rows
    /// are used; row 0 gets no gradient, as `padding_idx=0`).
    pub token_type_ids: Tensor,
    /// `[B, N, F]` f32.
    pub visual_feats: Tensor,
    /// `[B, N, 4]` f32 boxes in [0, 1].
    pub visual_pos: Tensor,
    /// `[B, L]` i64: token id at masked positions (≈ 15%, at least one per row), −1 elsewhere.
    pub mlm_labels: Tensor,
    /// `[B]` u32 ITM labels.
    pub itm_labels: Tensor,
    /// `[R]` u32 flat positions into `B·N` of the masked regions (≈ 15%, at least one per
    /// example), where the feature-regression loss is computed.
    pub feat_rows: Tensor,
    /// `[B·N]` u32 object classes.
    pub obj_labels: Tensor,
    /// `[B·N]` u32 attribute classes.
    pub attr_labels: Tensor,
    /// `[B]` u32 answers (QA head).
    pub answers: Tensor,
    /// `[B, V]` f32 multi-hot topic targets.
    pub topic: Tensor,
}

impl SyntheticBatch {
    /// Draws a batch of `batch` examples, `len` tokens, `regions` boxes from `seed`.
    pub fn new(
        cfg: &Config,
        batch: usize,
        len: usize,
        regions: usize,
        seed: u64,
        dev: &Device,
    ) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let v = cfg.vocab_size as u32;
        let mut ids = Vec::with_capacity(batch * len);
        let mut mlm = Vec::with_capacity(batch * len);
        for _ in 0..batch {
            let forced = rng.random_range(1..len.max(2));
            for j in 0..len {
                let id = if j == 0 {
                    cfg.cls_token_id as u32
                } else {
                    rng.random_range(1..v)
                };
                ids.push(id);
                let masked = j > 0 && (j == forced || rng.random::<f32>() < 0.15);
                mlm.push(if masked { i64::from(id) } else { -1 });
            }
        }
        let f = cfg.visual_feat_dim;
        let feats: Vec<f32> = (0..batch * regions * f)
            .map(|_| rng.random::<f32>())
            .collect();
        let boxes: Vec<f32> = (0..batch * regions)
            .flat_map(|_| {
                let (x1, y1) = (rng.random::<f32>() * 0.5, rng.random::<f32>() * 0.5);
                [x1, y1, x1 + 0.5, y1 + 0.5]
            })
            .collect();
        let nq = cfg.num_qa_labels.max(1) as u32;
        let topic: Vec<f32> = (0..batch * cfg.vocab_size)
            .map(|_| if rng.random::<f32>() < 0.01 { 1.0 } else { 0.0 })
            .collect();
        let mut feat_rows = Vec::new();
        for b in 0..batch {
            let forced = rng.random_range(0..regions.max(1));
            feat_rows.extend(
                (0..regions)
                    .filter(|&i| i == forced || rng.random::<f32>() < 0.15)
                    .map(|i| (b * regions + i) as u32),
            );
        }
        let masked = feat_rows.len();
        Ok(Self {
            feat_rows: Tensor::from_vec(feat_rows, masked, dev)?,
            input_ids: Tensor::from_vec(ids, (batch, len), dev)?,
            attention_mask: Tensor::ones((batch, len), DType::U32, dev)?,
            token_type_ids: Tensor::from_vec(
                (0..batch * len)
                    .map(|i| u32::from(i % len >= len / 2))
                    .collect(),
                (batch, len),
                dev,
            )?,
            visual_feats: Tensor::from_vec(feats, (batch, regions, f), dev)?,
            visual_pos: Tensor::from_vec(boxes, (batch, regions, 4), dev)?,
            mlm_labels: Tensor::from_vec(mlm, (batch, len), dev)?,
            itm_labels: Tensor::from_vec(
                (0..batch).map(|_| rng.random_range(0..2u32)).collect(),
                batch,
                dev,
            )?,
            obj_labels: Tensor::from_vec(
                (0..batch * regions)
                    .map(|_| rng.random_range(0..cfg.num_object_labels.max(1) as u32))
                    .collect(),
                batch * regions,
                dev,
            )?,
            attr_labels: Tensor::from_vec(
                (0..batch * regions)
                    .map(|_| rng.random_range(0..cfg.num_attr_labels.max(1) as u32))
                    .collect(),
                batch * regions,
                dev,
            )?,
            answers: Tensor::from_vec(
                (0..batch).map(|_| rng.random_range(0..nq)).collect(),
                batch,
                dev,
            )?,
            topic: Tensor::from_vec(topic, (batch, cfg.vocab_size), dev)?,
        })
    }

    /// The model inputs of this batch.
    pub fn inputs(&self) -> LxmertInputs<'_> {
        LxmertInputs {
            attention_mask: Some(&self.attention_mask),
            token_type_ids: Some(&self.token_type_ids),
            ..LxmertInputs::new(&self.input_ids, &self.visual_feats, &self.visual_pos)
        }
    }
}

/// Sum of all pre-training head losses with weight 1: MLM (masked rows only), ITM, visual
/// obj/attr (CE over all regions) and feat (Smooth-L1 at the masked regions only), QA (if
/// built) and topic (LXMERT-S).
/// The backbone runs by [`crate::LxmertModel::forward_rows_t`] on row 0 and the masked rows.
/// A benchmark/test loss; the curriculum's task weighting lives in msp-tasks.
pub fn pretraining_loss(model: &Lxmert, batch: &SyntheticBatch, train: bool) -> Result<Tensor> {
    let m = model.model();
    let rows = LanguageRows::from_labels(&batch.mlm_labels)?;
    let out = m.forward_rows_t(&batch.inputs(), &rows, train)?;
    let mut loss = cross_entropy(&m.itm.forward(&out.pooled_output)?, &batch.itm_labels)?;
    if let Some((rows, targets)) = kept_rows(&batch.mlm_labels)? {
        loss = (loss + cross_entropy(&m.mlm_logits_at(&out, &rows)?, &targets)?)?;
    }
    let vis = m.visual_predictions_with(&out, FeatRegions::At(&batch.feat_rows))?;
    if let Some(obj) = &vis.obj {
        let c = obj.dim(2)?;
        loss = (loss + cross_entropy(&obj.reshape(((), c))?, &batch.obj_labels)?)?;
    }
    if let Some(attr) = &vis.attr {
        let c = attr.dim(2)?;
        loss = (loss + cross_entropy(&attr.reshape(((), c))?, &batch.attr_labels)?)?;
    }
    if let Some(feat) = &vis.feat {
        // HF's reduction: the masked regions' losses summed over all B·N regions' mean.
        let (b, n, f) = batch.visual_feats.dims3()?;
        let target = batch
            .visual_feats
            .reshape((b * n, f))?
            .index_select(&batch.feat_rows, 0)?;
        let per_region = smooth_l1(feat, &target)?.mean(1)?;
        loss = (loss + (per_region.sum_all()? / (b * n) as f64)?)?;
    }
    if let Some(qa) = &m.answer_head {
        loss = (loss + cross_entropy(&qa.forward(&out.pooled_output)?, &batch.answers)?)?;
    }
    if let Some(topic) = &m.topic {
        loss = (loss + bce_with_logits(&topic.forward(&out.pooled_output)?, &batch.topic)?)?;
    }
    Ok(loss)
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One matrix-product shape of [`bench_gemm`] and its measured speed.
#[derive(Debug, Clone, Serialize)]
pub struct GemmShape {
    /// What the shape is (e.g. "square 2048", "visual FFN up").
    pub name: String,
    /// Rows of the left operand.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of the result.
    pub n: usize,
    /// Whether the right operand is a transposed view (as `Linear` uses its weight).
    pub rhs_transposed: bool,
    /// Median seconds per product ([`crate::ops::matmul`], the path the model uses).
    pub seconds: f64,
    /// Achieved GFLOP/s (2·m·k·n / seconds).
    pub gflops: f64,
    /// GFLOP/s of candle's own `Tensor::matmul` on the same operands.
    pub candle_gflops: f64,
}

/// Result of [`bench_gemm`]: matmul speed on this machine through candle.
#[derive(Debug, Clone, Serialize)]
pub struct GemmReport {
    /// Every shape measured.
    pub shapes: Vec<GemmShape>,
    /// The best GFLOP/s over all shapes and both paths: the machine's GEMM peak as this
    /// build reaches it.
    pub peak_gflops: f64,
}

/// Measures matrix products through candle on `dev`, in f32 or, inside
/// [`crate::ops::with_precision`]`(Bf16, …)`, on bf16 operands: a square `square`-sized product
/// and the products of one LXMERT-S layer (hidden 768, FFN 3072) for `rows` = batch ×
/// tokens, forward (`x·Wᵀ`) and weight-gradient (`dYᵀ·X`) layouts. Each is run `reps`
/// times after a warm-up; the median is kept.
pub fn bench_gemm(square: usize, rows: usize, reps: usize, dev: &Device) -> Result<GemmReport> {
    let cases: Vec<(String, usize, usize, usize, bool)> = vec![
        (format!("square {square}"), square, square, square, false),
        (
            format!("{rows} × 768 → 768 (attention projection)"),
            rows,
            768,
            768,
            true,
        ),
        (
            format!("{rows} × 768 → 3072 (FFN up)"),
            rows,
            768,
            3072,
            true,
        ),
        (
            format!("{rows} × 3072 → 768 (FFN down)"),
            rows,
            3072,
            768,
            true,
        ),
        (
            format!("768 × {rows} → 3072 (FFN weight gradient)"),
            768,
            rows,
            3072,
            false,
        ),
    ];
    let dtype = crate::ops::precision().dtype();
    let randn = |rows, cols| Tensor::randn(0f32, 1.0, (rows, cols), dev)?.to_dtype(dtype);
    let mut shapes = Vec::new();
    for (name, m, k, n, rhs_transposed) in cases {
        let a = randn(m, k)?;
        let b = if rhs_transposed {
            randn(n, k)?.t()?
        } else {
            randn(k, n)?
        };
        let median = |f: &dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>| -> Result<f64> {
            let run = || -> Result<f64> {
                let t = Instant::now();
                let c = f(&a, &b)?;
                c.device().synchronize()?;
                Ok(t.elapsed().as_secs_f64())
            };
            run()?;
            let mut times = (0..reps.max(1))
                .map(|_| run())
                .collect::<Result<Vec<_>>>()?;
            times.sort_by(f64::total_cmp);
            Ok(times[times.len() / 2])
        };
        let flop = 2.0 * (m * k * n) as f64;
        let candle_seconds = median(&|a, b| a.matmul(b))?;
        let seconds = median(&|a, b| crate::ops::matmul(a, b))?;
        shapes.push(GemmShape {
            name,
            m,
            k,
            n,
            rhs_transposed,
            seconds,
            gflops: flop / seconds / 1e9,
            candle_gflops: flop / candle_seconds / 1e9,
        });
    }
    let peak_gflops = shapes
        .iter()
        .map(|s| s.gflops.max(s.candle_gflops))
        .fold(0.0, f64::max);
    Ok(GemmReport {
        shapes,
        peak_gflops,
    })
}

/// Analytic matrix-product FLOPs (2 × multiply-adds) of one example's forward pass through
/// the backbone and the pre-training heads of [`pretraining_loss`]: `text_len` tokens,
/// `regions` regions (plus the visual \[CLS\] of [`Variant::LxmertS`]), the last cross
/// layer's language self-attention queries and FFN on `last_rows` rows (`text_len` for the
/// full forward, fewer with [`crate::LxmertModel::forward_rows_t`]), the MLM decoder at
/// `masked` positions, the feature-regression decoder at `feat_regions` regions
/// ([`crate::FeatRegions`]). Element-wise work is not counted. A training step costs ≈ 3× this
/// (backward: one product for the input gradient, one for the weight gradient).
pub fn forward_flops(
    cfg: &Config,
    variant: Variant,
    text_len: usize,
    regions: usize,
    masked: usize,
    last_rows: usize,
    feat_regions: usize,
) -> f64 {
    let h = cfg.hidden_size as f64;
    let i = cfg.intermediate_size as f64;
    let l = text_len as f64;
    let n = (regions + usize::from(variant == Variant::LxmertS)) as f64;
    // A post-LN BERT layer over `q` query rows of `t` tokens attending to themselves: Q,
    // output and FFN on the query rows, K and V on all.
    let self_rows = |q: f64, t: f64| 2.0 * h * h * (q + t) + 2.0 * q * t * h + 2.0 * h * i * q;
    let self_layer = |t: f64| self_rows(t, t);
    let mut macs = 0.0;
    // Visual feature and box encoders.
    macs += n * h * (cfg.visual_feat_dim + cfg.visual_pos_dim) as f64;
    macs += cfg.l_layers as f64 * self_layer(l) + cfg.r_layers as f64 * self_layer(n);
    // Cross-modality layer: cross-attention both ways (Q, output on the query side; K, V on
    // the other), then a self-attention layer and an FFN on each side.
    let cross = 2.0 * h * h * (l + n) + 2.0 * h * h * (n + l) + 4.0 * l * n * h;
    if cfg.x_layers > 0 {
        let last = (last_rows.min(text_len)) as f64;
        macs += (cfg.x_layers - 1) as f64 * (cross + self_layer(l) + self_layer(n));
        macs += cross + self_rows(last, l) + self_layer(n);
    }
    // Poolers (LXMERT-S has a second one over the visual [CLS]).
    let poolers = if variant == Variant::LxmertS {
        2.0
    } else {
        1.0
    };
    macs += poolers * h * h;
    // Heads: ITM, MLM at the masked positions, visual heads per region, QA, topic.
    macs += 2.0 * h;
    macs += masked as f64 * (h * h + h * cfg.vocab_size as f64);
    let mut visual_out = 0.0;
    if cfg.visual_obj_loss {
        visual_out += cfg.num_object_labels as f64;
    }
    if cfg.visual_attr_loss {
        visual_out += cfg.num_attr_labels as f64;
    }
    if visual_out > 0.0 || cfg.visual_feat_loss {
        macs += regions as f64 * (h * h + h * visual_out);
    }
    if cfg.visual_feat_loss {
        macs += feat_regions.min(regions) as f64 * h * cfg.visual_feat_dim as f64;
    }
    if cfg.num_qa_labels > 0 {
        macs += 2.0 * h * h + 2.0 * h * cfg.num_qa_labels as f64;
    }
    if variant == Variant::LxmertS {
        macs += h * cfg.vocab_size as f64;
    }
    2.0 * macs
}
