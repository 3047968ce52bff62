//! Downstream data: every feature store of a data directory behind one image-id look-up,
//! the tokenizer, and batch assembly into model inputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use msp_features::{FeatureStore, RegionBuffers};
use msp_model::LxmertInputs;
use msp_synth::layout;
use msp_text::{BertTokenizer, Encoding, PositionMode};

use crate::error::{EvalError, Result};

/// Where an image's regions are: store index and row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Index into the stores.
    pub store: usize,
    /// Row in that store.
    pub row: usize,
}

/// The downstream view of a data directory (layout of `cargo xtask synth`, SPEC §2):
/// `vocab.txt` and the feature stores `features/{train,val,test}/` (those present; LXMERT's
/// VQA, for instance, draws questions of one split from several image sets).
pub struct DownstreamData {
    /// The data directory.
    pub dir: PathBuf,
    /// Word pieces.
    pub tokenizer: BertTokenizer,
    /// The feature stores.
    pub stores: Vec<FeatureStore>,
    index: HashMap<String, ImageRef>,
}

impl std::fmt::Debug for DownstreamData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownstreamData")
            .field("dir", &self.dir)
            .field("images", &self.index.len())
            .finish_non_exhaustive()
    }
}

/// Tokenised texts of a batch as `[B, L]` u32 tensors.
#[derive(Debug, Clone)]
pub struct TextBatch {
    /// Word-piece ids.
    pub input_ids: Tensor,
    /// 1 for real pieces.
    pub attention_mask: Tensor,
    /// Zeros.
    pub token_type_ids: Tensor,
    /// Positions (word-level for LXMERT-S).
    pub position_ids: Tensor,
}

/// Region inputs of a batch.
#[derive(Debug, Clone)]
pub struct RegionInputs {
    /// `[B, n, D]` features.
    pub features: Tensor,
    /// `[B, n, 4]` normalised boxes.
    pub boxes: Tensor,
    /// `[B, n]` box mask, when some image has fewer than n boxes.
    pub mask: Option<Tensor>,
}

impl RegionInputs {
    /// Repeats each image `k` times along the batch (image i → rows i·k … i·k+k-1).
    pub fn repeat_each(&self, k: usize) -> Result<Self> {
        let rep = |t: &Tensor| -> Result<Tensor> {
            let dims = t.dims();
            let b = dims[0];
            let mut shape = vec![b, k];
            shape.extend_from_slice(&dims[1..]);
            let mut out = vec![b * k];
            out.extend_from_slice(&dims[1..]);
            Ok(t.unsqueeze(1)?
                .broadcast_as(shape)?
                .contiguous()?
                .reshape(out)?)
        };
        Ok(Self {
            features: rep(&self.features)?,
            boxes: rep(&self.boxes)?,
            mask: self.mask.as_ref().map(rep).transpose()?,
        })
    }
}

/// The backbone inputs of a text batch and a region batch of the same size.
pub fn model_inputs<'a>(text: &'a TextBatch, regions: &'a RegionInputs) -> LxmertInputs<'a> {
    LxmertInputs {
        input_ids: &text.input_ids,
        attention_mask: Some(&text.attention_mask),
        token_type_ids: Some(&text.token_type_ids),
        position_ids: Some(&text.position_ids),
        visual_feats: &regions.features,
        visual_pos: &regions.boxes,
        visual_attention_mask: regions.mask.as_ref(),
        visual_permutation: None,
    }
}

impl DownstreamData {
    /// Opens the tokenizer and every store under `features/` of `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let tokenizer = BertTokenizer::from_vocab_file(dir.join(layout::VOCAB))?;
        let mut stores = Vec::new();
        let mut index = HashMap::new();
        for split in layout::SPLITS {
            let p = dir.join(layout::store(split));
            if !p.exists() {
                continue;
            }
            let s = FeatureStore::open(&p)?;
            let si = stores.len();
            for (row, id) in s.ids().iter().enumerate() {
                index
                    .entry(id.clone())
                    .or_insert(ImageRef { store: si, row });
            }
            stores.push(s);
        }
        if stores.is_empty() {
            return Err(EvalError::Data {
                path: dir.join("features"),
                reason: "no feature store (features/train, features/val or features/test)".into(),
            });
        }
        let d = stores[0].feature_dim();
        if let Some(s) = stores.iter().find(|s| s.feature_dim() != d) {
            return Err(EvalError::Data {
                path: s.dir().to_path_buf(),
                reason: format!("feature width {} differs from {d}", s.feature_dim()),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            stores,
            index,
        })
    }

    /// Feature width of the stores.
    pub fn feature_dim(&self) -> usize {
        self.stores[0].feature_dim()
    }

    /// The image `img_id`, or an error naming the file and record that referenced it.
    pub fn locate(&self, img_id: &str, file: &Path, record: usize) -> Result<ImageRef> {
        self.index
            .get(img_id)
            .copied()
            .ok_or_else(|| EvalError::Record {
                path: file.to_path_buf(),
                record,
                field: "img_id".into(),
                reason: format!(
                    "image {img_id:?} is in no feature store of {}",
                    self.dir.display()
                ),
            })
    }

    /// Tokenises a text (word-level positions for LXMERT-S).
    pub fn encode(&self, text: &str, max_len: usize, word_positions: bool) -> Result<Encoding> {
        let mode = if word_positions {
            PositionMode::Word
        } else {
            PositionMode::Sequential
        };
        Ok(self.tokenizer.encode(text, max_len, mode)?)
    }

    /// Region inputs of `images`, padded to the largest box count among them.
    pub fn regions(&self, images: &[ImageRef], device: &Device) -> Result<RegionInputs> {
        let mut n = 0;
        for im in images {
            n = n.max(self.stores[im.store].num_boxes(im.row)?);
        }
        let d = self.feature_dim();
        let b = images.len();
        let mut feats = Vec::with_capacity(b * n * d);
        let mut boxes = Vec::with_capacity(b * n * 4);
        let mut mask = Vec::with_capacity(b * n);
        let mut buf = RegionBuffers::default();
        for im in images {
            self.stores[im.store].gather_into(&[im.row], Some(n), &mut buf)?;
            feats.extend_from_slice(&buf.features);
            boxes.extend_from_slice(&buf.boxes);
            mask.extend_from_slice(&buf.mask);
        }
        let padded = mask.contains(&0.0);
        Ok(RegionInputs {
            features: Tensor::from_vec(feats, (b, n, d), device)?,
            boxes: Tensor::from_vec(boxes, (b, n, 4), device)?,
            mask: if padded {
                Some(Tensor::from_vec(mask, (b, n), device)?)
            } else {
                None
            },
        })
    }
}

/// Stacks encodings (all of one length) into a text batch.
pub fn text_batch(encodings: &[&Encoding], device: &Device) -> Result<TextBatch> {
    let b = encodings.len();
    let l = encodings.first().map_or(0, |e| e.input_ids.len());
    let mut ids = Vec::with_capacity(b * l);
    let mut att = Vec::with_capacity(b * l);
    let mut pos = Vec::with_capacity(b * l);
    for e in encodings {
        if e.input_ids.len() != l {
            return Err(EvalError::Metric(format!(
                "encodings of lengths {} and {l} in one batch",
                e.input_ids.len()
            )));
        }
        ids.extend_from_slice(&e.input_ids);
        att.extend_from_slice(&e.attention_mask);
        pos.extend_from_slice(&e.position_ids);
    }
    Ok(TextBatch {
        input_ids: Tensor::from_vec(ids, (b, l), device)?,
        attention_mask: Tensor::from_vec(att, (b, l), device)?,
        token_type_ids: Tensor::zeros((b, l), candle_core::DType::U32, device)?,
        position_ids: Tensor::from_vec(pos, (b, l), device)?,
    })
}
