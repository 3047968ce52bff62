//! The LXMERT / bottom-up-attention feature TSV: a streaming reader and an exact writer.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::error::{FeatureError, Result};

/// LXMERT's `FIELDNAMES`, the column order of the TSV.
pub const FIELDNAMES: [&str; 10] = [
    "img_id",
    "img_h",
    "img_w",
    "objects_id",
    "objects_conf",
    "attrs_id",
    "attrs_conf",
    "num_boxes",
    "boxes",
    "features",
];

/// Tolerance of the box check, as LXMERT's `np.testing.assert_array_less(-boxes, 1+1e-5)`.
pub const BOX_TOLERANCE: f32 = 1e-5;

/// One image of a feature TSV, decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TsvRecord {
    /// Image id (a string: `COCO_train2014_000000458752`, `2375429`, `train-10171-0-img0`).
    pub img_id: String,
    /// Image height in pixels.
    pub img_h: u32,
    /// Image width in pixels.
    pub img_w: u32,
    /// Object class per box (0..1599 in the VG vocabulary).
    pub objects_id: Vec<i64>,
    /// Confidence of that class.
    pub objects_conf: Vec<f32>,
    /// Attribute class per box (0..399).
    pub attrs_id: Vec<i64>,
    /// Confidence of that attribute.
    pub attrs_conf: Vec<f32>,
    /// Boxes `(x1, y1, x2, y2)` in pixels, as in the file.
    pub boxes: Vec<[f32; 4]>,
    /// Region features, `num_boxes × feature_dim`, row-major.
    pub features: Vec<f32>,
}

impl TsvRecord {
    /// Number of boxes (regions).
    pub fn num_boxes(&self) -> usize {
        self.boxes.len()
    }

    /// Feature width D (0 when there are no boxes).
    pub fn feature_dim(&self) -> usize {
        if self.boxes.is_empty() {
            0
        } else {
            self.features.len() / self.boxes.len()
        }
    }

    /// The boxes divided by the image size, `(x1/w, y1/h, x2/w, y2/h)`, clamped to [0, 1];
    /// `None` if a coordinate lies outside [0, 1] by more than [`BOX_TOLERANCE`] or is not finite.
    pub fn normalized_boxes(&self) -> Option<Vec<[f32; 4]>> {
        self.boxes
            .iter()
            .map(|b| normalize_box(b, self.img_w, self.img_h))
            .collect()
    }
}

/// Normalises one pixel box by the image size (f32 division, as LXMERT's numpy code) and clamps
/// it to [0, 1]; `None` if a coordinate is outside by more than [`BOX_TOLERANCE`] or not finite.
pub fn normalize_box(b: &[f32; 4], img_w: u32, img_h: u32) -> Option<[f32; 4]> {
    let (w, h) = (img_w as f32, img_h as f32);
    let mut out = [b[0] / w, b[1] / h, b[2] / w, b[3] / h];
    for v in &mut out {
        if !v.is_finite() || *v < -BOX_TOLERANCE || *v > 1.0 + BOX_TOLERANCE {
            return None;
        }
        *v = v.clamp(0.0, 1.0);
    }
    Some(out)
}

/// Streaming reader of a feature TSV: one reused line buffer, one line in memory at a time.
///
/// Every record is validated (column count, integers, base64, buffer lengths against
/// `num_boxes`, finite confidences/boxes/features, class ids ≥ 0, boxes inside the image within
/// 1e-5, constant feature width). After a bad line the reader can go on with the next one
/// (this is how `skip_bad` works); an I/O error ends it.
pub struct TsvReader<R = BufReader<File>> {
    reader: R,
    path: PathBuf,
    line_no: u64,
    bytes_read: u64,
    records: u64,
    line: Vec<u8>,
    scratch: Vec<u8>,
    feature_dim: Option<usize>,
    finished: bool,
}

impl TsvReader<BufReader<File>> {
    /// Opens a TSV file for streaming.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| FeatureError::io(path, e))?;
        Ok(Self::from_reader(
            BufReader::with_capacity(1 << 20, file),
            path,
        ))
    }
}

impl<R: BufRead> TsvReader<R> {
    /// Reads from any buffered reader; `path` is used in error messages only.
    pub fn from_reader(reader: R, path: impl Into<PathBuf>) -> Self {
        Self {
            reader,
            path: path.into(),
            line_no: 0,
            bytes_read: 0,
            records: 0,
            line: Vec::new(),
            scratch: Vec::new(),
            feature_dim: None,
            finished: false,
        }
    }

    /// Declares the feature width; otherwise it is inferred from the first record with boxes.
    pub fn with_feature_dim(mut self, feature_dim: usize) -> Self {
        self.feature_dim = Some(feature_dim);
        self
    }

    /// The feature width, once declared or inferred.
    pub fn feature_dim(&self) -> Option<usize> {
        self.feature_dim
    }

    /// The file name used in errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// 1-based number of the line read last (0 before the first).
    pub fn line_number(&self) -> u64 {
        self.line_no
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Reads the next record into `rec` (reusing its buffers). `Ok(false)` at the end of the
    /// file; an empty file (no record at all) is an error. Blank lines are skipped, as
    /// Python's `csv.DictReader` does.
    pub fn read_record(&mut self, rec: &mut TsvRecord) -> Result<bool> {
        loop {
            if self.finished {
                return Ok(false);
            }
            self.line.clear();
            let n = match self.reader.read_until(b'\n', &mut self.line) {
                Ok(n) => n,
                Err(e) => {
                    self.finished = true;
                    return Err(FeatureError::io(&self.path, e));
                }
            };
            if n == 0 {
                self.finished = true;
                if self.records == 0 {
                    return Err(FeatureError::Empty {
                        path: self.path.clone(),
                    });
                }
                return Ok(false);
            }
            self.bytes_read += n as u64;
            self.line_no += 1;
            let terminated = self.line.last() == Some(&b'\n');
            let mut end = self.line.len();
            while end > 0 && matches!(self.line[end - 1], b'\n' | b'\r') {
                end -= 1;
            }
            if end == 0 {
                continue;
            }
            self.records += 1;
            let line = std::mem::take(&mut self.line);
            let result = self.parse_line(&line[..end], rec);
            self.line = line;
            return match result {
                Ok(()) => Ok(true),
                Err(FeatureError::Field {
                    path,
                    line,
                    field,
                    message,
                }) if !terminated => Err(FeatureError::Field {
                    path,
                    line,
                    field,
                    message: format!("{message} (last line has no newline: truncated file?)"),
                }),
                Err(e) => Err(e),
            };
        }
    }

    fn err(&self, field: &'static str, message: impl Into<String>) -> FeatureError {
        FeatureError::Field {
            path: self.path.clone(),
            line: self.line_no,
            field,
            message: message.into(),
        }
    }

    fn parse_line(&mut self, line: &[u8], rec: &mut TsvRecord) -> Result<()> {
        let mut cols: [&[u8]; 10] = [&[]; 10];
        let mut count = 0usize;
        for col in line.split(|&b| b == b'\t') {
            if count < 10 {
                cols[count] = col;
            }
            count += 1;
        }
        if count != 10 {
            return Err(self.err(
                "line",
                format!("expected 10 tab-separated columns, found {count}"),
            ));
        }
        let img_id = std::str::from_utf8(cols[0]).map_err(|_| self.err("img_id", "not UTF-8"))?;
        if img_id.is_empty() {
            return Err(self.err("img_id", "empty"));
        }
        let img_h = self.parse_int::<u32>(cols[1], "img_h")?;
        let img_w = self.parse_int::<u32>(cols[2], "img_w")?;
        if img_h == 0 || img_w == 0 {
            return Err(self.err(
                if img_h == 0 { "img_h" } else { "img_w" },
                "image size is 0",
            ));
        }
        let n = self.parse_int::<usize>(cols[7], "num_boxes")?;

        rec.img_id.clear();
        rec.img_id.push_str(img_id);
        rec.img_h = img_h;
        rec.img_w = img_w;

        self.decode(cols[3], "objects_id", n, 8)?;
        read_i64(&self.scratch, &mut rec.objects_id);
        self.decode(cols[4], "objects_conf", n, 4)?;
        read_f32(&self.scratch, &mut rec.objects_conf);
        self.decode(cols[5], "attrs_id", n, 8)?;
        read_i64(&self.scratch, &mut rec.attrs_id);
        self.decode(cols[6], "attrs_conf", n, 4)?;
        read_f32(&self.scratch, &mut rec.attrs_conf);
        self.decode(cols[8], "boxes", n, 16)?;
        rec.boxes.clear();
        rec.boxes.extend(self.scratch.chunks_exact(16).map(|c| {
            let f = |i: usize| f32::from_le_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
            [f(0), f(4), f(8), f(12)]
        }));

        // Features: the width is declared, or inferred from the first record with boxes.
        let d = match self.feature_dim {
            Some(d) => d,
            None if n == 0 => 0,
            None => {
                let bytes = self.decode_raw(cols[9], "features")?;
                if bytes == 0 || bytes % (4 * n) != 0 {
                    return Err(self.err(
                        "features",
                        format!("{bytes} bytes is not num_boxes ({n}) × D × 4 for any D ≥ 1"),
                    ));
                }
                bytes / (4 * n)
            }
        };
        self.decode(cols[9], "features", n, 4 * d)?;
        read_f32(&self.scratch, &mut rec.features);

        for (name, ids) in [("objects_id", &rec.objects_id), ("attrs_id", &rec.attrs_id)] {
            if let Some(v) = ids.iter().find(|&&v| !(0..=u32::MAX as i64).contains(&v)) {
                return Err(self.err(name, format!("class id {v} is negative or too large")));
            }
        }
        for (name, vals) in [
            ("objects_conf", &rec.objects_conf),
            ("attrs_conf", &rec.attrs_conf),
        ] {
            if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
                return Err(self.err(name, format!("box {i}: non-finite value {}", vals[i])));
            }
        }
        if !rec.features.iter().all(|v| v.is_finite()) {
            let i = rec
                .features
                .iter()
                .position(|v| !v.is_finite())
                .unwrap_or(0);
            return Err(self.err(
                "features",
                format!(
                    "box {}, dim {}: non-finite value {}",
                    i / d.max(1),
                    i % d.max(1),
                    rec.features[i]
                ),
            ));
        }
        for (i, b) in rec.boxes.iter().enumerate() {
            if normalize_box(b, img_w, img_h).is_none() {
                return Err(self.err(
                    "boxes",
                    format!(
                        "box {i} {b:?} lies outside the {img_w}×{img_h} image (tolerance 1e-5)"
                    ),
                ));
            }
        }
        if n > 0 && self.feature_dim.is_none() {
            self.feature_dim = Some(d);
        }
        Ok(())
    }

    fn parse_int<T: std::str::FromStr>(&self, s: &[u8], field: &'static str) -> Result<T> {
        std::str::from_utf8(s)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<T>().ok())
            .ok_or_else(|| {
                self.err(
                    field,
                    format!(
                        "not a non-negative integer: {:?}",
                        String::from_utf8_lossy(s)
                    ),
                )
            })
    }

    /// Decodes base64 into `self.scratch`, returning the byte count.
    fn decode_raw(&mut self, s: &[u8], field: &'static str) -> Result<usize> {
        self.scratch.clear();
        match STANDARD.decode_vec(s, &mut self.scratch) {
            Ok(()) => Ok(self.scratch.len()),
            Err(e) => Err(self.err(field, format!("bad base64: {e}"))),
        }
    }

    /// Decodes base64 into `self.scratch` and checks its length is `n × width` bytes.
    fn decode(&mut self, s: &[u8], field: &'static str, n: usize, width: usize) -> Result<()> {
        let got = self.decode_raw(s, field)?;
        let want = n.checked_mul(width);
        if want != Some(got) {
            return Err(self.err(
                field,
                format!("buffer has {got} bytes, expected num_boxes ({n}) × {width} bytes"),
            ));
        }
        Ok(())
    }
}

fn read_f32(bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
}

fn read_i64(bytes: &[u8], out: &mut Vec<i64>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
    );
}

impl<R: BufRead> Iterator for TsvReader<R> {
    type Item = Result<TsvRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut rec = TsvRecord::default();
        match self.read_record(&mut rec) {
            Ok(true) => Some(Ok(rec)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Writes the exact LXMERT TSV format, as Python's `csv.DictWriter(f, FIELDNAMES,
/// delimiter="\t")` does with `base64.b64encode(arr.tobytes())` fields: no header, `\r\n`
/// line ends. Written under a temporary name and renamed by [`TsvWriter::finish`]; dropping an
/// unfinished writer removes the temporary file.
pub struct TsvWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    records: u64,
    feature_dim: Option<usize>,
    bytes: Vec<u8>,
    text: String,
}

impl TsvWriter {
    /// Starts writing `path` (through a temporary file in the same directory).
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let tmp = crate::fresh_temp_sibling(&path).map_err(|e| FeatureError::io(&path, e))?;
        let file = File::create(&tmp).map_err(|e| FeatureError::io(&tmp, e))?;
        Ok(Self {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            path,
            records: 0,
            feature_dim: None,
            bytes: Vec::new(),
            text: String::new(),
        })
    }

    fn bad(&self, rec: &TsvRecord, field: &'static str, message: String) -> FeatureError {
        FeatureError::BadRecord {
            path: self.path.clone(),
            record: self.records + 1,
            img_id: rec.img_id.clone(),
            field,
            message,
        }
    }

    /// Appends one record. Checks that the buffers agree with `num_boxes` and that the feature
    /// width is the same as in the previous records.
    pub fn write(&mut self, rec: &TsvRecord) -> Result<()> {
        let n = rec.boxes.len();
        if rec.img_id.is_empty() || rec.img_id.contains(['\t', '\r', '\n', '"']) {
            return Err(self.bad(
                rec,
                "img_id",
                "empty or contains a tab, newline or quote".into(),
            ));
        }
        for (field, len) in [
            ("objects_id", rec.objects_id.len()),
            ("objects_conf", rec.objects_conf.len()),
            ("attrs_id", rec.attrs_id.len()),
            ("attrs_conf", rec.attrs_conf.len()),
        ] {
            if len != n {
                return Err(self.bad(rec, field, format!("{len} values for {n} boxes")));
            }
        }
        if let Some(d) = rec.features.len().checked_div(n) {
            if d == 0 || rec.features.len() % n != 0 || self.feature_dim.is_some_and(|fd| fd != d) {
                return Err(self.bad(
                    rec,
                    "features",
                    format!(
                        "{} values for {n} boxes (feature width so far: {:?})",
                        rec.features.len(),
                        self.feature_dim
                    ),
                ));
            }
            self.feature_dim = Some(d);
        } else if !rec.features.is_empty() {
            return Err(self.bad(rec, "features", "features given for 0 boxes".into()));
        }

        let mut line = std::mem::take(&mut self.text);
        line.clear();
        line.push_str(&rec.img_id);
        line.push('\t');
        line.push_str(&rec.img_h.to_string());
        line.push('\t');
        line.push_str(&rec.img_w.to_string());
        let mut bytes = std::mem::take(&mut self.bytes);
        let field = |line: &mut String, bytes: &mut Vec<u8>| {
            line.push('\t');
            STANDARD.encode_string(&bytes[..], line);
            bytes.clear();
        };
        bytes.clear();
        bytes.extend(rec.objects_id.iter().flat_map(|v| v.to_le_bytes()));
        field(&mut line, &mut bytes);
        bytes.extend(rec.objects_conf.iter().flat_map(|v| v.to_le_bytes()));
        field(&mut line, &mut bytes);
        bytes.extend(rec.attrs_id.iter().flat_map(|v| v.to_le_bytes()));
        field(&mut line, &mut bytes);
        bytes.extend(rec.attrs_conf.iter().flat_map(|v| v.to_le_bytes()));
        field(&mut line, &mut bytes);
        line.push('\t');
        line.push_str(&n.to_string());
        bytes.extend(rec.boxes.iter().flatten().flat_map(|v| v.to_le_bytes()));
        field(&mut line, &mut bytes);
        bytes.extend(rec.features.iter().flat_map(|v| v.to_le_bytes()));
        field(&mut line, &mut bytes);
        line.push_str("\r\n");
        self.bytes = bytes;

        let out = self
            .out
            .as_mut()
            .ok_or_else(|| FeatureError::io(&self.tmp, closed()))?;
        let res = out
            .write_all(line.as_bytes())
            .map_err(|e| FeatureError::io(&self.tmp, e));
        self.text = line;
        res?;
        self.records += 1;
        Ok(())
    }

    /// Flushes, syncs and renames the temporary file to the final name; returns the record count.
    pub fn finish(mut self) -> Result<u64> {
        let out = self
            .out
            .take()
            .ok_or_else(|| FeatureError::io(&self.tmp, closed()))?;
        let file = out
            .into_inner()
            .map_err(|e| FeatureError::io(&self.tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| FeatureError::io(&self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            FeatureError::io(&self.path, e)
        })?;
        Ok(self.records)
    }
}

fn closed() -> std::io::Error {
    std::io::Error::other("writer already finished")
}

impl Drop for TsvWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_box_divides_and_clamps() {
        // Hand-computed: 64/640 = 0.1, 48/480 = 0.1, 640/640 = 1, 240/480 = 0.5.
        assert_eq!(
            normalize_box(&[64.0, 48.0, 640.0, 240.0], 640, 480),
            Some([0.1, 0.1, 1.0, 0.5])
        );
        // 640.005 / 640 = 1 + 7.8e-6, inside the tolerance: clamped.
        assert_eq!(
            normalize_box(&[0.0, 0.0, 640.005, 480.0], 640, 480),
            Some([0.0, 0.0, 1.0, 1.0])
        );
        assert_eq!(normalize_box(&[0.0, 0.0, 641.0, 480.0], 640, 480), None);
        assert_eq!(normalize_box(&[-0.1, 0.0, 1.0, 1.0], 640, 480), None);
        assert_eq!(normalize_box(&[f32::NAN, 0.0, 1.0, 1.0], 640, 480), None);
    }

    #[test]
    fn parses_a_hand_written_line() {
        // One box: objects_id 5, conf 0.5, attrs_id 1, conf 0.25, box (1,2,3,4), D = 2 (1.0, -2.0).
        // base64 of the little-endian bytes, computed by hand / `base64` CLI.
        let line = "im\t10\t20\tBQAAAAAAAAA=\tAAAAPw==\tAQAAAAAAAAA=\tAACAPg==\t1\t\
                    AACAPwAAAEAAAEBAAACAQA==\tAACAPwAAAMA=\n";
        let mut r = TsvReader::from_reader(line.as_bytes(), "x.tsv");
        let rec = r.next().unwrap().unwrap();
        assert_eq!(
            rec,
            TsvRecord {
                img_id: "im".into(),
                img_h: 10,
                img_w: 20,
                objects_id: vec![5],
                objects_conf: vec![0.5],
                attrs_id: vec![1],
                attrs_conf: vec![0.25],
                boxes: vec![[1.0, 2.0, 3.0, 4.0]],
                features: vec![1.0, -2.0],
            }
        );
        assert_eq!(r.feature_dim(), Some(2));
        assert_eq!(
            rec.normalized_boxes().unwrap(),
            vec![[0.05, 0.2, 0.15, 0.4]]
        );
        assert!(r.next().is_none());
    }
}
