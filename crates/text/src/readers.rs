//! Readers of caption and region-description files: COCO captions, LXMERT's pre-training
//! JSON and Visual Genome `region_descriptions.json` (streamed).

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufReader;
use std::path::Path;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{io_err, read_utf8, Result, TextError};

/// One image of a COCO captions file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    /// COCO image id.
    pub id: u64,
    /// File name, e.g. `COCO_train2014_000000458752.jpg`.
    pub file_name: String,
    /// Height in pixels (absent in some derived files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
}

/// One caption annotation of a COCO captions file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    /// Image the caption describes.
    pub image_id: u64,
    /// Annotation id.
    pub id: u64,
    /// The caption.
    pub caption: String,
}

/// A COCO `captions_*.json` file (other top-level keys are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoCaptions {
    /// `images[]`.
    pub images: Vec<CocoImage>,
    /// `annotations[]`.
    pub annotations: Vec<CocoAnnotation>,
}

impl CocoCaptions {
    /// Captions grouped by image id, in file order.
    pub fn by_image(&self) -> BTreeMap<u64, Vec<&str>> {
        let mut m: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for a in &self.annotations {
            m.entry(a.image_id).or_default().push(&a.caption);
        }
        m
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_utf8(path)?;
    serde_json::from_str(&text).map_err(|source| TextError::Json {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn bad(
    path: &Path,
    record: usize,
    field: &str,
    message: impl Into<String>,
) -> TextError {
    TextError::BadRecord {
        path: path.to_path_buf(),
        record,
        field: field.to_string(),
        message: message.into(),
    }
}

/// Reads a COCO captions file. Errors: empty caption, caption of an image not listed in
/// `images` (record = annotation index).
pub fn read_coco_captions(path: impl AsRef<Path>) -> Result<CocoCaptions> {
    let path = path.as_ref();
    let c: CocoCaptions = parse_json(path)?;
    let ids: std::collections::HashSet<u64> = c.images.iter().map(|i| i.id).collect();
    for (i, a) in c.annotations.iter().enumerate() {
        if a.caption.trim().is_empty() {
            return Err(bad(path, i, "annotations.caption", "empty caption"));
        }
        if !ids.contains(&a.image_id) {
            return Err(bad(
                path,
                i,
                "annotations.image_id",
                format!("image {} is not in `images`", a.image_id),
            ));
        }
    }
    Ok(c)
}

/// Writes a COCO captions file (atomically).
pub fn write_coco_captions(path: impl AsRef<Path>, c: &CocoCaptions) -> Result<()> {
    crate::downstream::write_json(path.as_ref(), c)
}

/// One image record of LXMERT's pre-training JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainEntry {
    /// Image id (matches the feature TSV's `img_id`).
    pub img_id: String,
    /// Sentences per source (`mscoco`, `vg`, `vqa`, `gqa`, `visual7w`).
    pub sentf: BTreeMap<String, Vec<String>>,
    /// Soft answer labels per QA source, one dict per sentence of that source.
    #[serde(default)]
    pub labelf: BTreeMap<String, Vec<BTreeMap<String, f32>>>,
}

/// Reads LXMERT's pre-training JSON (`[{img_id, sentf:{source:[sent…]}, labelf:{…}}]`).
/// Errors: empty img_id, empty sentence (field `sentf.<source>[i]`), a `labelf` source
/// whose list length differs from its `sentf` list.
pub fn read_lxmert_pretrain(path: impl AsRef<Path>) -> Result<Vec<PretrainEntry>> {
    let path = path.as_ref();
    let v: Vec<PretrainEntry> = parse_json(path)?;
    for (r, e) in v.iter().enumerate() {
        if e.img_id.is_empty() {
            return Err(bad(path, r, "img_id", "empty img_id"));
        }
        for (src, sents) in &e.sentf {
            for (i, s) in sents.iter().enumerate() {
                if s.trim().is_empty() {
                    return Err(bad(path, r, &format!("sentf.{src}[{i}]"), "empty sentence"));
                }
            }
        }
        for (src, labels) in &e.labelf {
            let n = e.sentf.get(src).map_or(0, Vec::len);
            if labels.len() != n {
                return Err(bad(
                    path,
                    r,
                    &format!("labelf.{src}"),
                    format!("{} labels for {n} sentences", labels.len()),
                ));
            }
        }
    }
    Ok(v)
}

/// Writes LXMERT's pre-training JSON (atomically).
pub fn write_lxmert_pretrain(path: impl AsRef<Path>, entries: &[PretrainEntry]) -> Result<()> {
    crate::downstream::write_json(path.as_ref(), entries)
}

/// One region of a Visual Genome image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VgRegion {
    /// Region id.
    pub region_id: u64,
    /// Image id.
    pub image_id: u64,
    /// The description.
    pub phrase: String,
    /// Left, pixels.
    pub x: i64,
    /// Top, pixels.
    pub y: i64,
    /// Width, pixels.
    pub width: i64,
    /// Height, pixels.
    pub height: i64,
}

/// One image of `region_descriptions.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VgImage {
    /// Image id.
    pub id: u64,
    /// Its regions.
    pub regions: Vec<VgRegion>,
}

struct VgSeq<'a, F> {
    f: &'a mut F,
    count: usize,
    failure: Option<(usize, String, String)>,
}

impl<'de, F> Visitor<'de> for &mut VgSeq<'_, F>
where
    F: FnMut(VgImage) -> std::result::Result<(), String>,
{
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of VG images")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        loop {
            let img: Option<VgImage> = seq
                .next_element()
                .map_err(|e| serde::de::Error::custom(format!("record {}: {e}", self.count)))?;
            let Some(img) = img else { break };
            let record = self.count;
            self.count += 1;
            if let Some((i, _)) = img
                .regions
                .iter()
                .enumerate()
                .find(|(_, r)| r.phrase.trim().is_empty())
            {
                self.failure = Some((
                    record,
                    format!("regions[{i}].phrase"),
                    "empty phrase".into(),
                ));
                return Err(serde::de::Error::custom("stopped"));
            }
            if let Err(msg) = (self.f)(img) {
                self.failure = Some((record, "(callback)".into(), msg));
                return Err(serde::de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

impl<'de, F> DeserializeSeed<'de> for &mut VgSeq<'_, F>
where
    F: FnMut(VgImage) -> std::result::Result<(), String>,
{
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

/// Streams VG `region_descriptions.json`: `f` is called once per image, in file order, and
/// only one image is in memory at a time (the real file is ~700 MB). `f` may stop the scan
/// by returning `Err(message)`, reported as a [`TextError::BadRecord`]. Returns the number of
/// images seen. An empty phrase is an error naming the image record and region index.
pub fn for_each_vg_image<F>(path: impl AsRef<Path>, mut f: F) -> Result<usize>
where
    F: FnMut(VgImage) -> std::result::Result<(), String>,
{
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 20, file));
    let mut seq = VgSeq {
        f: &mut f,
        count: 0,
        failure: None,
    };
    let res = (&mut seq).deserialize(&mut de).and_then(|()| de.end());
    if let Some((record, field, message)) = seq.failure {
        return Err(bad(path, record, &field, message));
    }
    res.map_err(|source| TextError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(seq.count)
}

/// Writes VG `region_descriptions.json` (atomically).
pub fn write_vg_regions(path: impl AsRef<Path>, images: &[VgImage]) -> Result<()> {
    crate::downstream::write_json(path.as_ref(), images)
}
