//! The memory-mapped feature store: conversion from TSV and zero-copy random access.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt as _;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{FeatureError, Result};
use crate::tsv::{TsvReader, TsvRecord};

/// File name of the region tensors inside a store directory.
pub const REGIONS_FILE: &str = "regions.safetensors";
/// File name of the index inside a store directory.
pub const INDEX_FILE: &str = "index.json";
/// Version written to and expected in `index.json`.
pub const STORE_VERSION: u32 = 1;

/// Storage type of the `features` tensor (the other tensors have fixed types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreDtype {
    /// Half precision (round to nearest even); half the disk and page cache.
    F16,
    /// Single precision, bit-exact with the TSV.
    F32,
}

impl StoreDtype {
    fn size(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            Self::F16 => Dtype::F16,
            Self::F32 => Dtype::F32,
        }
    }
}

impl std::str::FromStr for StoreDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            other => Err(format!("unknown store dtype `{other}` (f16 or f32)")),
        }
    }
}

/// `index.json` of a store.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoreIndex {
    version: u32,
    feature_dim: usize,
    dtype: StoreDtype,
    num_images: usize,
    num_regions: usize,
    ids: Vec<String>,
}

/// What [`convert`] does.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Input TSV files, read in order; their records are concatenated.
    pub tsv: Vec<PathBuf>,
    /// Destination directory; must not exist yet.
    pub out: PathBuf,
    /// Storage type of the features.
    pub dtype: StoreDtype,
    /// Log (`tracing::warn`) and skip bad lines instead of stopping at the first.
    pub skip_bad: bool,
}

/// Progress of a conversion, passed to the callback after every record.
#[derive(Debug, Clone, Copy)]
pub struct ConvertProgress<'a> {
    /// The file being read.
    pub file: &'a Path,
    /// Bytes read of all inputs so far.
    pub bytes_read: u64,
    /// Total size of all inputs.
    pub bytes_total: u64,
    /// Images stored so far.
    pub images: usize,
    /// Lines skipped so far (only with `skip_bad`).
    pub skipped: usize,
}

/// Summary of a finished conversion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvertReport {
    /// Images stored.
    pub images: usize,
    /// Regions (boxes) stored over all images.
    pub regions: usize,
    /// Bad lines skipped (`skip_bad`).
    pub skipped: usize,
    /// Bytes of TSV read.
    pub bytes_read: u64,
    /// Feature width D.
    pub feature_dim: usize,
}

/// Removes a temporary directory unless disarmed.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The region tensors, streamed to raw files during the pass over the TSVs.
const REGION_TENSORS: [&str; 6] = [
    "features",
    "boxes",
    "objects_id",
    "objects_conf",
    "attrs_id",
    "attrs_conf",
];

/// Converts TSV files into a store directory (SPEC §2.2).
///
/// One pass over the inputs: each record is validated, its boxes normalised, and its region
/// tensors appended to raw files in a temporary directory next to `out` (memory use is one
/// line plus the id list). At the end the safetensors header is computed (the region count is
/// now known) and the raw files are copied behind it; `index.json` is written, and the
/// temporary directory is renamed to `out`. On error nothing is left at `out`.
pub fn convert(
    opts: &ConvertOptions,
    mut progress: impl FnMut(&ConvertProgress<'_>),
) -> Result<ConvertReport> {
    if opts.tsv.is_empty() {
        return Err(FeatureError::InvalidArgument("no input TSV given".into()));
    }
    if opts.out.exists() {
        return Err(FeatureError::OutputExists {
            path: opts.out.clone(),
        });
    }
    let mut bytes_total = 0;
    for p in &opts.tsv {
        bytes_total += std::fs::metadata(p)
            .map_err(|e| FeatureError::io(p, e))?
            .len();
    }
    let tmp_dir =
        crate::fresh_temp_sibling(&opts.out).map_err(|e| FeatureError::io(&opts.out, e))?;
    std::fs::create_dir_all(&tmp_dir).map_err(|e| FeatureError::io(&tmp_dir, e))?;
    let guard = TempDir(Some(tmp_dir.clone()));

    let raw_path = |name: &str| tmp_dir.join(format!("{name}.raw"));
    let mut raws = Vec::new();
    for name in REGION_TENSORS {
        let p = raw_path(name);
        let f = File::create(&p).map_err(|e| FeatureError::io(&p, e))?;
        raws.push(BufWriter::with_capacity(1 << 20, f));
    }

    let mut ids: Vec<String> = Vec::new();
    let mut seen: HashMap<String, (usize, u64)> = HashMap::new();
    let mut offsets: Vec<i64> = vec![0];
    let mut img_hw: Vec<i64> = Vec::new();
    let mut feature_dim: Option<usize> = None;
    let mut dim_source: Option<PathBuf> = None;
    let (mut skipped, mut bytes_done) = (0usize, 0u64);
    let mut rec = TsvRecord::default();
    let mut buf: Vec<u8> = Vec::new();

    for (file_idx, path) in opts.tsv.iter().enumerate() {
        let mut reader = TsvReader::open(path)?;
        if let Some(d) = feature_dim {
            reader = reader.with_feature_dim(d);
        }
        loop {
            let res = reader.read_record(&mut rec).and_then(|more| {
                if more {
                    if let Some((f, l)) = seen.get(&rec.img_id) {
                        return Err(FeatureError::DuplicateId {
                            path: path.clone(),
                            line: reader.line_number(),
                            img_id: rec.img_id.clone(),
                            first_path: opts.tsv[*f].clone(),
                            first_line: *l,
                        });
                    }
                }
                Ok(more)
            });
            match res {
                Ok(false) => break,
                Ok(true) => {}
                Err(e @ (FeatureError::Field { .. } | FeatureError::DuplicateId { .. }))
                    if opts.skip_bad =>
                {
                    tracing::warn!("skipping bad line: {e}");
                    skipped += 1;
                    continue;
                }
                Err(FeatureError::Empty { path }) if opts.skip_bad => {
                    tracing::warn!("{}: empty file, skipped", path.display());
                    break;
                }
                Err(e) => return Err(e),
            }
            let n = rec.num_boxes();
            if n > 0 && feature_dim.is_none() {
                feature_dim = Some(rec.feature_dim());
                dim_source = Some(path.clone());
            }
            if let Err(e) = append_regions(&rec, opts.dtype, &mut raws, &mut buf) {
                let e = match e {
                    Appended::Io(i, err) => FeatureError::io(raw_path(REGION_TENSORS[i]), err),
                    Appended::F16Overflow(i) => FeatureError::Field {
                        path: path.clone(),
                        line: reader.line_number(),
                        field: "features",
                        message: format!(
                            "value {} at index {i} overflows f16 (|x| > 65504); use dtype f32",
                            rec.features[i]
                        ),
                    },
                };
                // Nothing of this record was written yet (the f16 check precedes the writes).
                if opts.skip_bad && matches!(e, FeatureError::Field { .. }) {
                    tracing::warn!("skipping bad line: {e}");
                    skipped += 1;
                    continue;
                }
                return Err(e);
            }
            seen.insert(rec.img_id.clone(), (file_idx, reader.line_number()));
            ids.push(rec.img_id.clone());
            offsets.push(offsets[offsets.len() - 1] + n as i64);
            img_hw.extend([i64::from(rec.img_h), i64::from(rec.img_w)]);
            crate::pause_point("features.convert.record");
            progress(&ConvertProgress {
                file: path,
                bytes_read: bytes_done + reader.bytes_read(),
                bytes_total,
                images: ids.len(),
                skipped,
            });
        }
        // A later file with another feature width is caught by the declared width.
        if let (Some(d), Some(src)) = (feature_dim, &dim_source) {
            if reader.feature_dim().is_some_and(|rd| rd != d) {
                return Err(FeatureError::Store {
                    path: path.clone(),
                    message: format!("feature width differs from {} ({d})", src.display()),
                });
            }
        }
        bytes_done += reader.bytes_read();
    }
    if ids.is_empty() {
        return Err(FeatureError::Empty {
            path: opts.tsv[0].clone(),
        });
    }
    let d = feature_dim.unwrap_or(0);
    let regions = offsets[offsets.len() - 1] as usize;
    for (w, name) in raws.into_iter().zip(REGION_TENSORS) {
        let f = w
            .into_inner()
            .map_err(|e| FeatureError::io(raw_path(name), e.into_error()))?;
        drop(f);
    }

    // Assemble regions.safetensors: header, then the raw files and the small tensors.
    let n_img = ids.len();
    let small = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let offsets_bytes = small(&offsets);
    let hw_bytes = small(&img_hw);
    let layout: Vec<(&str, Dtype, Vec<usize>, usize)> = vec![
        (
            "features",
            opts.dtype.safetensors(),
            vec![regions, d],
            regions * d * opts.dtype.size(),
        ),
        ("boxes", Dtype::F32, vec![regions, 4], regions * 16),
        ("objects_id", Dtype::I64, vec![regions], regions * 8),
        ("objects_conf", Dtype::F32, vec![regions], regions * 4),
        ("attrs_id", Dtype::I64, vec![regions], regions * 8),
        ("attrs_conf", Dtype::F32, vec![regions], regions * 4),
        ("offsets", Dtype::I64, vec![n_img + 1], offsets_bytes.len()),
        ("img_hw", Dtype::I64, vec![n_img, 2], hw_bytes.len()),
    ];
    let mut header = serde_json::Map::new();
    let mut start = 0usize;
    for (name, dtype, shape, len) in &layout {
        header.insert(
            (*name).to_string(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [start, start + len] }),
        );
        start += len;
    }
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ "format": "msp-features", "version": STORE_VERSION.to_string() }),
    );
    let mut header = serde_json::to_vec(&header).map_err(|e| FeatureError::Json {
        path: tmp_dir.join(REGIONS_FILE),
        source: e,
    })?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let st_path = tmp_dir.join(REGIONS_FILE);
    let io = |e| FeatureError::io(&st_path, e);
    let mut out = File::create(&st_path).map_err(io)?;
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for name in REGION_TENSORS {
        let p = raw_path(name);
        let mut raw = File::open(&p).map_err(|e| FeatureError::io(&p, e))?;
        std::io::copy(&mut raw, &mut out).map_err(io)?;
        drop(raw);
        std::fs::remove_file(&p).map_err(|e| FeatureError::io(&p, e))?;
    }
    out.write_all(&offsets_bytes).map_err(io)?;
    out.write_all(&hw_bytes).map_err(io)?;
    out.sync_all().map_err(io)?;
    drop(out);

    let index = StoreIndex {
        version: STORE_VERSION,
        feature_dim: d,
        dtype: opts.dtype,
        num_images: n_img,
        num_regions: regions,
        ids,
    };
    let index_path = tmp_dir.join(INDEX_FILE);
    let json = serde_json::to_vec(&index).map_err(|e| FeatureError::Json {
        path: index_path.clone(),
        source: e,
    })?;
    std::fs::write(&index_path, json).map_err(|e| FeatureError::io(&index_path, e))?;

    crate::pause_point("features.convert.rename");
    std::fs::rename(&tmp_dir, &opts.out).map_err(|e| FeatureError::io(&opts.out, e))?;
    std::mem::forget(guard);
    Ok(ConvertReport {
        images: n_img,
        regions,
        skipped,
        bytes_read: bytes_done,
        feature_dim: d,
    })
}

enum Appended {
    Io(usize, std::io::Error),
    F16Overflow(usize),
}

fn append_regions(
    rec: &TsvRecord,
    dtype: StoreDtype,
    raws: &mut [BufWriter<File>],
    buf: &mut Vec<u8>,
) -> std::result::Result<(), Appended> {
    buf.clear();
    match dtype {
        StoreDtype::F32 => buf.extend(rec.features.iter().flat_map(|v| v.to_le_bytes())),
        StoreDtype::F16 => {
            for (i, v) in rec.features.iter().enumerate() {
                let h = f16::from_f32(*v);
                if h.is_infinite() {
                    return Err(Appended::F16Overflow(i));
                }
                buf.extend(h.to_le_bytes());
            }
        }
    }
    raws[0].write_all(buf).map_err(|e| Appended::Io(0, e))?;
    // Boxes were validated by the reader; normalise and clamp them here.
    buf.clear();
    for b in &rec.boxes {
        let nb = crate::tsv::normalize_box(b, rec.img_w, rec.img_h).unwrap_or([0.0; 4]);
        buf.extend(nb.iter().flat_map(|v| v.to_le_bytes()));
    }
    raws[1].write_all(buf).map_err(|e| Appended::Io(1, e))?;
    let mut put = |i: usize, bytes: &mut dyn Iterator<Item = u8>| {
        buf.clear();
        buf.extend(bytes);
        raws[i].write_all(buf).map_err(|e| Appended::Io(i, e))
    };
    put(2, &mut rec.objects_id.iter().flat_map(|v| v.to_le_bytes()))?;
    put(
        3,
        &mut rec.objects_conf.iter().flat_map(|v| v.to_le_bytes()),
    )?;
    put(4, &mut rec.attrs_id.iter().flat_map(|v| v.to_le_bytes()))?;
    put(5, &mut rec.attrs_conf.iter().flat_map(|v| v.to_le_bytes()))?;
    Ok(())
}

/// Byte range of one tensor inside the memory map.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

/// One image read from a store: boxes normalised, features widened to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRegions {
    /// Image id.
    pub img_id: String,
    /// Image height in pixels.
    pub img_h: u32,
    /// Image width in pixels.
    pub img_w: u32,
    /// Boxes `(x1/w, y1/h, x2/w, y2/h)` in [0, 1].
    pub boxes: Vec<[f32; 4]>,
    /// Object class per box.
    pub objects_id: Vec<i64>,
    /// Object confidence per box.
    pub objects_conf: Vec<f32>,
    /// Attribute class per box.
    pub attrs_id: Vec<i64>,
    /// Attribute confidence per box.
    pub attrs_conf: Vec<f32>,
    /// Features, `num_boxes × feature_dim`, row-major.
    pub features: Vec<f32>,
}

/// Summary statistics of an image's features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FeatureStats {
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Mean over all values.
    pub mean: f64,
    /// Population standard deviation over all values.
    pub std: f64,
    /// Fraction of values that are exactly zero.
    pub zero_fraction: f64,
}

#[derive(Serialize)]
struct ImageJson<'a> {
    img_id: &'a str,
    img_h: u32,
    img_w: u32,
    num_boxes: usize,
    boxes: &'a [[f32; 4]],
    objects_id: &'a [i64],
    objects_conf: &'a [f32],
    attrs_id: &'a [i64],
    attrs_conf: &'a [f32],
    features: Vec<&'a [f32]>,
}

impl ImageRegions {
    /// Number of boxes.
    pub fn num_boxes(&self) -> usize {
        self.boxes.len()
    }

    /// Feature width (0 without boxes).
    pub fn feature_dim(&self) -> usize {
        if self.boxes.is_empty() {
            0
        } else {
            self.features.len() / self.boxes.len()
        }
    }

    /// Statistics of the feature values (`None` without boxes).
    pub fn feature_stats(&self) -> Option<FeatureStats> {
        if self.features.is_empty() {
            return None;
        }
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        let (mut sum, mut sq, mut zeros) = (0f64, 0f64, 0usize);
        for &v in &self.features {
            min = min.min(v);
            max = max.max(v);
            sum += f64::from(v);
            sq += f64::from(v) * f64::from(v);
            zeros += usize::from(v == 0.0);
        }
        let n = self.features.len() as f64;
        let mean = sum / n;
        Some(FeatureStats {
            min,
            max,
            mean,
            std: (sq / n - mean * mean).max(0.0).sqrt(),
            zero_fraction: zeros as f64 / n,
        })
    }

    /// The image as one JSON object `{"img_id", "img_h", "img_w", "num_boxes", "boxes",
    /// "objects_id", "objects_conf", "attrs_id", "attrs_conf", "features"}` with all values;
    /// f32 values are printed shortest-round-trip, so they parse back bit-exactly.
    pub fn to_json(&self) -> String {
        let d = self.feature_dim().max(1);
        let view = ImageJson {
            img_id: &self.img_id,
            img_h: self.img_h,
            img_w: self.img_w,
            num_boxes: self.num_boxes(),
            boxes: &self.boxes,
            objects_id: &self.objects_id,
            objects_conf: &self.objects_conf,
            attrs_id: &self.attrs_id,
            attrs_conf: &self.attrs_conf,
            features: self.features.chunks(d).collect(),
        };
        // Serialising plain numbers and strings cannot fail.
        serde_json::to_string(&view).unwrap_or_default()
    }
}

/// A padded batch of images as candle tensors (B images, n box slots).
#[derive(Debug, Clone)]
pub struct RegionBatch {
    /// `[B, n, D]` f32 features, zero in padded slots.
    pub features: Tensor,
    /// `[B, n, 4]` f32 normalised boxes, zero in padded slots.
    pub boxes: Tensor,
    /// `[B, n]` f32: 1 for a real box, 0 for padding.
    pub mask: Tensor,
    /// `[B, n]` u32 object classes (0 in padding).
    pub objects_id: Tensor,
    /// `[B, n]` f32 object confidences.
    pub objects_conf: Tensor,
    /// `[B, n]` u32 attribute classes (0 in padding).
    pub attrs_id: Tensor,
    /// `[B, n]` f32 attribute confidences.
    pub attrs_conf: Tensor,
    /// Real boxes per image (≤ n).
    pub num_boxes: Vec<usize>,
}

/// Host buffers of a padded batch, row-major in the layout of [`RegionBatch`]; reused
/// across calls of [`FeatureStore::gather_into`].
#[derive(Debug, Clone, Default)]
pub struct RegionBuffers {
    /// Images in the batch (B).
    pub batch: usize,
    /// Box slots per image (n).
    pub boxes_per_image: usize,
    /// Feature width (D).
    pub feature_dim: usize,
    /// `B × n × D` features.
    pub features: Vec<f32>,
    /// `B × n × 4` normalised boxes.
    pub boxes: Vec<f32>,
    /// `B × n` box mask (1 real, 0 padding).
    pub mask: Vec<f32>,
    /// `B × n` object classes.
    pub objects_id: Vec<u32>,
    /// `B × n` object confidences.
    pub objects_conf: Vec<f32>,
    /// `B × n` attribute classes.
    pub attrs_id: Vec<u32>,
    /// `B × n` attribute confidences.
    pub attrs_conf: Vec<f32>,
    /// Real boxes per image.
    pub num_boxes: Vec<usize>,
    half: Vec<f16>,
}

impl RegionBuffers {
    /// Copies the buffers into tensors on `device` (the buffers stay for reuse).
    pub fn to_batch(&self, device: &Device) -> Result<RegionBatch> {
        let (b, n, d) = (self.batch, self.boxes_per_image, self.feature_dim);
        Ok(RegionBatch {
            features: Tensor::from_slice(&self.features, (b, n, d), device)?,
            boxes: Tensor::from_slice(&self.boxes, (b, n, 4), device)?,
            mask: Tensor::from_slice(&self.mask, (b, n), device)?,
            objects_id: Tensor::from_slice(&self.objects_id, (b, n), device)?,
            objects_conf: Tensor::from_slice(&self.objects_conf, (b, n), device)?,
            attrs_id: Tensor::from_slice(&self.attrs_id, (b, n), device)?,
            attrs_conf: Tensor::from_slice(&self.attrs_conf, (b, n), device)?,
            num_boxes: self.num_boxes.clone(),
        })
    }

    /// Moves the buffers into tensors (no copy on the CPU device).
    pub fn into_batch(self, device: &Device) -> Result<RegionBatch> {
        let (b, n, d) = (self.batch, self.boxes_per_image, self.feature_dim);
        Ok(RegionBatch {
            features: Tensor::from_vec(self.features, (b, n, d), device)?,
            boxes: Tensor::from_vec(self.boxes, (b, n, 4), device)?,
            mask: Tensor::from_vec(self.mask, (b, n), device)?,
            objects_id: Tensor::from_vec(self.objects_id, (b, n), device)?,
            objects_conf: Tensor::from_vec(self.objects_conf, (b, n), device)?,
            attrs_id: Tensor::from_vec(self.attrs_id, (b, n), device)?,
            attrs_conf: Tensor::from_vec(self.attrs_conf, (b, n), device)?,
            num_boxes: self.num_boxes,
        })
    }
}

/// A feature store opened by memory map: O(1) in the data size (only the safetensors header
/// and `index.json` are parsed), every read goes straight to the mapped pages.
///
/// The struct owns the map and keeps byte ranges of the tensors (from the header, checked at
/// open), so there is no self-referential borrow. The files must not be modified while a store
/// is open (the usual memory-map contract).
pub struct FeatureStore {
    dir: PathBuf,
    mmap: Mmap,
    ids: Vec<String>,
    rows: HashMap<String, usize>,
    feature_dim: usize,
    dtype: StoreDtype,
    num_regions: usize,
    features: Span,
    boxes: Span,
    objects_id: Span,
    objects_conf: Span,
    attrs_id: Span,
    attrs_conf: Span,
    offsets: Span,
    img_hw: Span,
}

impl std::fmt::Debug for FeatureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureStore")
            .field("dir", &self.dir)
            .field("images", &self.ids.len())
            .field("regions", &self.num_regions)
            .field("feature_dim", &self.feature_dim)
            .field("dtype", &self.dtype)
            .finish()
    }
}

fn le_i64(b: &[u8], i: usize) -> i64 {
    let s = &b[i * 8..i * 8 + 8];
    i64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
}

fn le_f32(b: &[u8], i: usize) -> f32 {
    let s = &b[i * 4..i * 4 + 4];
    f32::from_le_bytes([s[0], s[1], s[2], s[3]])
}

impl FeatureStore {
    /// Opens a store directory written by [`convert`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let index_path = dir.join(INDEX_FILE);
        let text = std::fs::read(&index_path).map_err(|e| FeatureError::io(&index_path, e))?;
        let index: StoreIndex = serde_json::from_slice(&text).map_err(|e| FeatureError::Json {
            path: index_path.clone(),
            source: e,
        })?;
        let bad = |path: &Path, message: String| FeatureError::Store {
            path: path.to_path_buf(),
            message,
        };
        if index.version != STORE_VERSION {
            return Err(bad(
                &index_path,
                format!("version {} (expected {STORE_VERSION})", index.version),
            ));
        }
        if index.ids.len() != index.num_images {
            return Err(bad(&index_path, "ids and num_images disagree".into()));
        }
        let st_path = dir.join(REGIONS_FILE);
        let file = File::open(&st_path).map_err(|e| FeatureError::io(&st_path, e))?;
        // SAFETY: the map is read-only; the store's files are not modified while open
        // (documented contract of FeatureStore, as for every memory-mapped format).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| FeatureError::io(&st_path, e))?;
        let (header_len, meta) = SafeTensors::read_metadata(&mmap[..])
            .map_err(|e| bad(&st_path, format!("safetensors header: {e}")))?;
        // read_metadata checks the offsets cover the data buffer; the data follows the header.
        let data_start = 8 + header_len;
        let (r, n, d) = (index.num_regions, index.num_images, index.feature_dim);
        let span = |name: &str, dtype: Dtype, shape: &[usize]| -> Result<Span> {
            let info = meta
                .info(name)
                .ok_or_else(|| bad(&st_path, format!("missing tensor `{name}`")))?;
            if info.dtype != dtype || info.shape != shape {
                return Err(bad(
                    &st_path,
                    format!(
                        "tensor `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
                        info.dtype, info.shape
                    ),
                ));
            }
            let (s, e) = info.data_offsets;
            if data_start + e > mmap.len()
                || e - s != shape.iter().product::<usize>() * (dtype.bitsize() / 8)
            {
                return Err(bad(
                    &st_path,
                    format!("tensor `{name}` has a bad byte range"),
                ));
            }
            Ok(Span {
                start: data_start + s,
                end: data_start + e,
            })
        };
        let mut store = Self {
            features: span("features", index.dtype.safetensors(), &[r, d])?,
            boxes: span("boxes", Dtype::F32, &[r, 4])?,
            objects_id: span("objects_id", Dtype::I64, &[r])?,
            objects_conf: span("objects_conf", Dtype::F32, &[r])?,
            attrs_id: span("attrs_id", Dtype::I64, &[r])?,
            attrs_conf: span("attrs_conf", Dtype::F32, &[r])?,
            offsets: span("offsets", Dtype::I64, &[n + 1])?,
            img_hw: span("img_hw", Dtype::I64, &[n, 2])?,
            dir,
            mmap,
            rows: HashMap::with_capacity(n),
            ids: Vec::new(),
            feature_dim: d,
            dtype: index.dtype,
            num_regions: r,
        };
        // Check the per-image tables once (O(N), no region data touched) so reads cannot fail.
        let offs = store.bytes(store.offsets);
        let mut prev = 0i64;
        for i in 0..=n {
            let o = le_i64(offs, i);
            if (i == 0 && o != 0) || o < prev || o as usize > r || (i == n && o as usize != r) {
                return Err(bad(
                    &st_path,
                    format!("offsets[{i}] = {o} is not a valid region offset"),
                ));
            }
            prev = o;
        }
        let hw = store.bytes(store.img_hw);
        if let Some(i) = (0..2 * n).find(|&i| !(1..=u32::MAX as i64).contains(&le_i64(hw, i))) {
            return Err(bad(
                &st_path,
                format!("img_hw of image {} is not a positive u32", i / 2),
            ));
        }
        for (row, id) in index.ids.iter().enumerate() {
            if store.rows.insert(id.clone(), row).is_some() {
                return Err(bad(&index_path, format!("duplicate img_id `{id}`")));
            }
        }
        store.ids = index.ids;
        Ok(store)
    }

    fn bytes(&self, s: Span) -> &[u8] {
        &self.mmap[s.start..s.end]
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the store has no image (never true for a store written by [`convert`]).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Total number of regions.
    pub fn num_regions(&self) -> usize {
        self.num_regions
    }

    /// Feature width D.
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    /// Storage type of the features.
    pub fn dtype(&self) -> StoreDtype {
        self.dtype
    }

    /// Image ids in row order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Row of an image id.
    pub fn row(&self, img_id: &str) -> Option<usize> {
        self.rows.get(img_id).copied()
    }

    fn check_row(&self, row: usize) -> Result<()> {
        if row >= self.ids.len() {
            return Err(FeatureError::RowOutOfRange {
                row,
                len: self.ids.len(),
            });
        }
        Ok(())
    }

    /// Region index range of an image (`offsets[row]..offsets[row+1]`).
    pub fn region_range(&self, row: usize) -> Result<std::ops::Range<usize>> {
        self.check_row(row)?;
        let o = self.bytes(self.offsets);
        Ok(le_i64(o, row) as usize..le_i64(o, row + 1) as usize)
    }

    /// Number of boxes of an image.
    pub fn num_boxes(&self, row: usize) -> Result<usize> {
        Ok(self.region_range(row)?.len())
    }

    /// `(img_h, img_w)` of an image.
    pub fn image_size(&self, row: usize) -> Result<(u32, u32)> {
        self.check_row(row)?;
        let hw = self.bytes(self.img_hw);
        Ok((le_i64(hw, 2 * row) as u32, le_i64(hw, 2 * row + 1) as u32))
    }

    /// Writes the features of regions `range` (widened to f32) into `out`
    /// (`out.len() == range.len() × D`).
    fn features_into(&self, range: std::ops::Range<usize>, out: &mut [f32], tmp: &mut Vec<f16>) {
        let d = self.feature_dim;
        let bytes = self.bytes(self.features);
        match self.dtype {
            StoreDtype::F32 => {
                let src = &bytes[range.start * d * 4..range.end * d * 4];
                for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            StoreDtype::F16 => {
                let src = &bytes[range.start * d * 2..range.end * d * 2];
                tmp.clear();
                tmp.extend(
                    src.chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]])),
                );
                tmp.convert_to_f32_slice(out);
            }
        }
    }

    /// Mean of an image's region features (zeros for an image without boxes).
    pub fn mean_feature(&self, row: usize) -> Result<Vec<f32>> {
        let range = self.region_range(row)?;
        let d = self.feature_dim;
        let mut feats = vec![0f32; range.len() * d];
        self.features_into(range.clone(), &mut feats, &mut Vec::new());
        let mut sum = vec![0f64; d];
        for r in feats.chunks_exact(d.max(1)) {
            for (s, v) in sum.iter_mut().zip(r) {
                *s += f64::from(*v);
            }
        }
        let n = range.len().max(1) as f64;
        Ok(sum.into_iter().map(|s| (s / n) as f32).collect())
    }

    /// One image, fully decoded.
    pub fn image(&self, row: usize) -> Result<ImageRegions> {
        let range = self.region_range(row)?;
        let (img_h, img_w) = self.image_size(row)?;
        let mut features = vec![0f32; range.len() * self.feature_dim];
        self.features_into(range.clone(), &mut features, &mut Vec::new());
        let bx = self.bytes(self.boxes);
        let (oi, oc) = (self.bytes(self.objects_id), self.bytes(self.objects_conf));
        let (ai, ac) = (self.bytes(self.attrs_id), self.bytes(self.attrs_conf));
        Ok(ImageRegions {
            img_id: self.ids[row].clone(),
            img_h,
            img_w,
            boxes: range
                .clone()
                .map(|i| {
                    [
                        le_f32(bx, 4 * i),
                        le_f32(bx, 4 * i + 1),
                        le_f32(bx, 4 * i + 2),
                        le_f32(bx, 4 * i + 3),
                    ]
                })
                .collect(),
            objects_id: range.clone().map(|i| le_i64(oi, i)).collect(),
            objects_conf: range.clone().map(|i| le_f32(oc, i)).collect(),
            attrs_id: range.clone().map(|i| le_i64(ai, i)).collect(),
            attrs_conf: range.clone().map(|i| le_f32(ac, i)).collect(),
            features,
        })
    }

    /// A batch of images as padded tensors on `device`.
    ///
    /// The box dimension is `pad_to` if given, else the largest box count in the batch. An
    /// image with more boxes than `pad_to` keeps its first `pad_to` boxes (the extractor
    /// sorts nothing, so this is "the first n", like slicing `[:n]` in LXMERT's loaders).
    /// Allocates fresh buffers that the tensors then own; a loader that wants to reuse host
    /// memory calls [`FeatureStore::gather_into`] and [`RegionBuffers::to_batch`].
    pub fn gather(
        &self,
        rows: &[usize],
        pad_to: Option<usize>,
        device: &Device,
    ) -> Result<RegionBatch> {
        let mut buf = RegionBuffers::default();
        self.gather_into(rows, pad_to, &mut buf)?;
        buf.into_batch(device)
    }

    /// Fills reusable host buffers with a padded batch (same layout and rules as
    /// [`FeatureStore::gather`]); the buffers only grow, so a loop does not allocate.
    pub fn gather_into(
        &self,
        rows: &[usize],
        pad_to: Option<usize>,
        buf: &mut RegionBuffers,
    ) -> Result<()> {
        buf.num_boxes.clear();
        let mut ranges = Vec::with_capacity(rows.len());
        for &row in rows {
            ranges.push(self.region_range(row)?);
        }
        let n = pad_to.unwrap_or_else(|| ranges.iter().map(|r| r.len()).max().unwrap_or(0));
        let (b, d) = (rows.len(), self.feature_dim);
        buf.batch = b;
        buf.boxes_per_image = n;
        buf.feature_dim = d;
        let fit = |v: &mut Vec<f32>, len: usize| {
            v.truncate(len);
            v.resize(len, 0.0);
        };
        // Only the feature buffer is big: it is resized without clearing (every value is
        // overwritten below); the small ones are simply zeroed.
        fit(&mut buf.features, b * n * d);
        for v in [
            &mut buf.boxes,
            &mut buf.mask,
            &mut buf.objects_conf,
            &mut buf.attrs_conf,
        ] {
            v.clear();
        }
        fit(&mut buf.boxes, b * n * 4);
        fit(&mut buf.mask, b * n);
        fit(&mut buf.objects_conf, b * n);
        fit(&mut buf.attrs_conf, b * n);
        buf.objects_id.clear();
        buf.objects_id.resize(b * n, 0);
        buf.attrs_id.clear();
        buf.attrs_id.resize(b * n, 0);
        let bx = self.bytes(self.boxes);
        let (oi, oc) = (self.bytes(self.objects_id), self.bytes(self.objects_conf));
        let (ai, ac) = (self.bytes(self.attrs_id), self.bytes(self.attrs_conf));
        for (bi, range) in ranges.into_iter().enumerate() {
            let k = range.len().min(n);
            let range = range.start..range.start + k;
            buf.num_boxes.push(k);
            let img = &mut buf.features[bi * n * d..(bi + 1) * n * d];
            let (real, pad) = img.split_at_mut(k * d);
            self.features_into(range.clone(), real, &mut buf.half);
            pad.fill(0.0);
            for (j, r) in range.enumerate() {
                let s = bi * n + j;
                for c in 0..4 {
                    buf.boxes[4 * s + c] = le_f32(bx, 4 * r + c);
                }
                buf.mask[s] = 1.0;
                // Ids were checked to fit u32 when the TSV was read.
                buf.objects_id[s] = le_i64(oi, r) as u32;
                buf.objects_conf[s] = le_f32(oc, r);
                buf.attrs_id[s] = le_i64(ai, r) as u32;
                buf.attrs_conf[s] = le_f32(ac, r);
            }
        }
        Ok(())
    }
}
