//! Faster R-CNN region features for vision-language pre-training: a streaming reader and an
//! exact writer of LXMERT's feature TSV (`*_obj36.tsv`), and a memory-mapped store that
//! serves padded batches as candle tensors.
//!
//! **Key design choice.** The TSV is the exchange format but a poor training format (base64
//! text, ≈300 KB a line, sequential only), so it is converted once into a directory holding
//! one safetensors file of region tensors stored *flat* over all images (`features [R, D]`
//! f16 or f32, normalised `boxes [R, 4]`, labels and confidences) plus per-image
//! `offsets [N+1]` and `img_hw [N, 2]`, and an `index.json` with the ids. Flat storage lets
//! images with different box counts share one file; opening only parses the header and the
//! index and maps the file (O(1) in the data size); reading an image is a slice of the map.
//! [`FeatureStore::gather`] pads a batch to its largest box count (or a fixed one) and
//! returns the box mask with it.
//!
//! Conventions (SPEC §2.1–2.2, choices where it is silent):
//! - Boxes are `(x1, y1, x2, y2)` pixels in the TSV and in [`TsvRecord`]; the store holds
//!   them divided by the image size in f32 (as LXMERT's numpy code), checked to lie in [0, 1]
//!   within 1e-5 and clamped.
//! - Lines end in `\r\n` when written (Python's csv default); the reader accepts `\n` or
//!   `\r\n`, skips blank lines (as `csv.DictReader`), and takes any box count per line and any
//!   feature width (inferred from the first record with boxes, then checked).
//! - A conversion never overwrites: the destination must not exist. Class ids must fit u32
//!   (batches carry them as u32); features that overflow f16 are an error for `--dtype f16`.
//! - The feature store's files must not be modified while a store is open (memory map).
//!
//! ```
//! use msp_features::{convert, ConvertOptions, FeatureStore, StoreDtype, TsvRecord, TsvWriter};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let tsv = dir.path().join("tiny_obj36.tsv");
//! let mut writer = TsvWriter::create(&tsv)?;
//! for (id, n) in [("img0", 2usize), ("img1", 3)] {
//!     writer.write(&TsvRecord {
//!         img_id: id.into(),
//!         img_h: 100,
//!         img_w: 200,
//!         objects_id: vec![7; n],
//!         objects_conf: vec![0.9; n],
//!         attrs_id: vec![3; n],
//!         attrs_conf: vec![0.5; n],
//!         boxes: vec![[20.0, 10.0, 200.0, 50.0]; n],
//!         features: vec![1.5; n * 4],
//!     })?;
//! }
//! writer.finish()?;
//!
//! let store_dir = dir.path().join("store");
//! let report = convert(
//!     &ConvertOptions { tsv: vec![tsv], out: store_dir.clone(), dtype: StoreDtype::F16, skip_bad: false },
//!     |_progress| {},
//! )?;
//! assert_eq!((report.images, report.regions), (2, 5));
//!
//! let store = FeatureStore::open(&store_dir)?;
//! let row = store.row("img0").unwrap();
//! assert_eq!(store.image(row)?.boxes[0], [0.1, 0.1, 1.0, 0.5]);
//! let batch = store.gather(&[1, 0], None, &candle_core::Device::Cpu)?;
//! assert_eq!(batch.features.dims(), &[2, 3, 4]);
//! assert_eq!(batch.mask.to_vec2::<f32>()?, vec![vec![1.0, 1.0, 1.0], vec![1.0, 1.0, 0.0]]);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod error;
mod hard_negatives;
mod pause;
mod store;
mod temp;
mod tsv;

pub use error::{FeatureError, Result};
pub use hard_negatives::HardNegativePool;
pub use pause::{pause_point, PAUSED_MARKER, PAUSE_ENV};
pub use store::{
    convert, ConvertOptions, ConvertProgress, ConvertReport, FeatureStats, FeatureStore,
    ImageRegions, RegionBatch, RegionBuffers, StoreDtype, INDEX_FILE, REGIONS_FILE,
};
pub use tsv::{normalize_box, TsvReader, TsvRecord, TsvWriter, BOX_TOLERANCE, FIELDNAMES};

pub use temp::{fresh_temp_sibling, remove_stale_temps};
