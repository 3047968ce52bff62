//! ViLBERT-style hard-negative pools: nearest images by mean-pooled region features.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_pickle::{DeOptions, HashableValue, Value};

use crate::error::{FeatureError, Result};
use crate::store::FeatureStore;

/// For every image, the rows of its nearest other images (closest first).
///
/// `pool[i]` never contains `i`: [`HardNegativePool::compute`] excludes the image itself, and
/// [`HardNegativePool::read_vilbert_pickle`] removes it (ViLBERT keeps it in slot 0 and samples
/// from slots 1..), so sampling uniformly from `pool[i]` is ViLBERT's rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardNegativePool {
    /// Image ids; the values in `pool` index this list.
    pub image_ids: Vec<String>,
    /// Neighbour rows per image, nearest first.
    pub pool: Vec<Vec<usize>>,
}

impl HardNegativePool {
    /// Exact Euclidean k-nearest neighbours of the images' mean-pooled features (mean over
    /// the image's boxes; zeros for an image without boxes), self excluded, ties broken by
    /// row. `top` is capped at `len − 1`.
    ///
    /// Brute force: O(N² · D) time spread over rayon's threads, O(N · D) memory for the pooled
    /// features (f32). For N = 100k COCO/VG images and D = 2048 this is ≈ 2·10¹³ flops, hours
    /// on a laptop; a GPU matmul or an index would be the next step if that matters.
    pub fn compute(store: &FeatureStore, top: usize) -> Result<Self> {
        if top == 0 {
            return Err(FeatureError::InvalidArgument("top must be ≥ 1".into()));
        }
        let n = store.len();
        let d = store.feature_dim();
        let pooled: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|row| store.mean_feature(row))
            .collect::<Result<_>>()?;
        let k = top.min(n.saturating_sub(1));
        let pool = (0..n)
            .into_par_iter()
            .map(|i| {
                let a = &pooled[i];
                let mut dist: Vec<(f32, usize)> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| (squared_distance(a, &pooled[j], d), j))
                    .collect();
                let cmp =
                    |x: &(f32, usize), y: &(f32, usize)| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1));
                if k < dist.len() {
                    dist.select_nth_unstable_by(k, cmp);
                    dist.truncate(k);
                }
                dist.sort_unstable_by(cmp);
                dist.into_iter().map(|(_, j)| j).collect()
            })
            .collect();
        Ok(Self {
            image_ids: store.ids().to_vec(),
            pool,
        })
    }

    fn check(&self, path: &Path) -> Result<()> {
        let n = self.image_ids.len();
        if self.pool.len() != n {
            return Err(bad(
                path,
                format!("{} pool rows for {n} image ids", self.pool.len()),
            ));
        }
        for (i, row) in self.pool.iter().enumerate() {
            if let Some(j) = row.iter().find(|&&j| j >= n) {
                return Err(bad(
                    path,
                    format!("pool row {i} holds {j}, past the {n} image ids"),
                ));
            }
        }
        Ok(())
    }

    /// Reads `{"image_ids": [...], "pool": [[row, ...], ...]}`.
    pub fn read_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|e| FeatureError::io(path, e))?;
        let pool: Self = serde_json::from_slice(&text).map_err(|e| FeatureError::Json {
            path: path.into(),
            source: e,
        })?;
        pool.check(path)?;
        Ok(pool)
    }

    /// The pool saved at `path` when the file exists, else [`HardNegativePool::compute`]d
    /// over `store` with `top` neighbours (ViLBERT's default is 100).
    pub fn read_or_compute(
        path: impl AsRef<Path>,
        store: &FeatureStore,
        top: usize,
    ) -> Result<Self> {
        let path = path.as_ref();
        if path.exists() {
            Self::read_json(path)
        } else {
            Self::compute(store, top)
        }
    }

    /// Writes the JSON form (temporary name, then rename).
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let tmp = crate::fresh_temp_sibling(path).map_err(|e| FeatureError::io(path, e))?;
        let text = serde_json::to_vec(self).map_err(|e| FeatureError::Json {
            path: path.into(),
            source: e,
        })?;
        std::fs::write(&tmp, text).map_err(|e| FeatureError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            FeatureError::io(path, e)
        })
    }

    /// Reads ViLBERT's `hard_negative.pkl`: a dict with `train_hard_pool` (a numpy array
    /// `[N, k]`, float64 as pymp makes it, or any integer/float type) and `train_image_list`
    /// (ints or strings).
    ///
    /// serde-pickle decodes the structure (with `keep_restore_state`, a numpy array arrives as
    /// its `__setstate__` tuple `(version, shape, dtype_state, fortran, raw_bytes)`, or as the
    /// `_frombuffer(buffer, dtype, shape, order)` arguments under protocol 5) but not numpy's
    /// dtype: the dtype's state keeps only the byte order, its name (`'f8'`, `'i8'`) is lost.
    /// So the element size comes from the byte count, and integer vs float is decided by the
    /// values: they must all be row indices in `[0, N)`; a small integer read as a float is a
    /// denormal, and an integral float read as an integer is ≥ 2³⁰, so exactly one reading
    /// passes (both agree when every value is 0).
    pub fn read_vilbert_pickle(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| FeatureError::io(path, e))?;
        let opts = DeOptions::new()
            .keep_restore_state()
            .replace_unresolved_globals();
        let value = serde_pickle::value_from_reader(std::io::BufReader::new(file), opts)
            .map_err(|e| bad(path, format!("pickle: {e}")))?;
        let Value::Dict(dict) = value else {
            return Err(bad(path, "top level is not a dict".into()));
        };
        let get = |key: &str| {
            dict.get(&HashableValue::String(key.into()))
                .or_else(|| dict.get(&HashableValue::Bytes(key.as_bytes().to_vec())))
                .ok_or_else(|| bad(path, format!("no key `{key}`")))
        };
        let image_ids = match get("train_image_list")? {
            Value::List(items) | Value::Tuple(items) => items
                .iter()
                .map(|v| match v {
                    Value::I64(i) => Ok(i.to_string()),
                    Value::Int(i) => Ok(i.to_string()),
                    Value::String(s) => Ok(s.clone()),
                    Value::Bytes(b) => String::from_utf8(b.clone())
                        .map_err(|_| bad(path, "train_image_list: non-UTF-8 id".into())),
                    other => Err(bad(
                        path,
                        format!("train_image_list: unexpected id {other:?}"),
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            _ => return Err(bad(path, "train_image_list is not a list".into())),
        };
        let n = image_ids.len();
        let rows = decode_pool(get("train_hard_pool")?, n)
            .map_err(|m| bad(path, format!("train_hard_pool: {m}")))?;
        if rows.len() != n {
            return Err(bad(
                path,
                format!("train_hard_pool has {} rows for {n} images", rows.len()),
            ));
        }
        let pool = rows
            .into_iter()
            .enumerate()
            .map(|(i, row)| row.into_iter().filter(|&j| j != i).collect())
            .collect();
        let out = Self { image_ids, pool };
        out.check(path)?;
        Ok(out)
    }
}

fn bad(path: &Path, message: String) -> FeatureError {
    FeatureError::HardNegatives {
        path: PathBuf::from(path),
        message,
    }
}

fn squared_distance(a: &[f32], b: &[f32], d: usize) -> f32 {
    // Eight independent accumulators let the compiler vectorise the loop.
    let mut acc = [0f32; 8];
    let (a8, b8) = (a[..d].chunks_exact(8), b[..d].chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

/// Pulls (shape, raw bytes, big-endian?, fortran?) out of serde-pickle's view of an ndarray, or
/// takes a plain nested list.
fn decode_pool(v: &Value, n: usize) -> std::result::Result<Vec<Vec<usize>>, String> {
    let as_usize = |v: &Value| match v {
        Value::I64(i) => usize::try_from(*i).ok(),
        _ => None,
    };
    let shape_of = |v: &Value| match v {
        Value::Tuple(s) | Value::List(s) => s.iter().map(as_usize).collect::<Option<Vec<_>>>(),
        _ => None,
    };
    let big_endian = |dtype: &Value| match dtype {
        Value::Tuple(t) => matches!(t.get(1), Some(Value::String(s)) if s == ">"),
        _ => false,
    };
    let bytes_of = |v: &Value| match v {
        Value::Bytes(b) => Some(b.clone()),
        // Python 2 protocol-0/1 pickles carry the buffer as a latin-1 str.
        Value::String(s) => Some(s.chars().map(|c| c as u8).collect()),
        _ => None,
    };
    let (shape, raw, be, fortran) = match v {
        // numpy.core.multiarray._reconstruct + __setstate__(version, shape, dtype, fortran, data)
        Value::Tuple(t) if t.len() == 5 && shape_of(&t[1]).is_some() => (
            shape_of(&t[1]).unwrap_or_default(),
            bytes_of(&t[4]).ok_or("array data is not a byte string")?,
            big_endian(&t[2]),
            matches!(t[3], Value::Bool(true)),
        ),
        // Protocol 5: numpy.core.numeric._frombuffer(buffer, dtype, shape, order)
        Value::Tuple(t) if t.len() == 4 && shape_of(&t[2]).is_some() => (
            shape_of(&t[2]).unwrap_or_default(),
            bytes_of(&t[0]).ok_or("array data is not a byte string")?,
            big_endian(&t[1]),
            matches!(&t[3], Value::String(s) if s == "F"),
        ),
        Value::List(rows) => {
            return rows
                .iter()
                .map(|r| match r {
                    Value::List(r) | Value::Tuple(r) => r
                        .iter()
                        .map(|x| match x {
                            Value::I64(i) => usize::try_from(*i).ok(),
                            Value::F64(f) if f.fract() == 0.0 && *f >= 0.0 => Some(*f as usize),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| "row holds a non-index value".to_string()),
                    _ => Err("row is not a list".to_string()),
                })
                .collect();
        }
        other => return Err(format!("not a numpy array: {other:?}")),
    };
    let [rows, cols] = shape[..] else {
        return Err(format!("shape {shape:?} is not 2-D"));
    };
    let count = rows * cols;
    if count == 0 {
        return Ok(vec![Vec::new(); rows]);
    }
    if raw.len() % count != 0 {
        return Err(format!("{} bytes for shape {shape:?}", raw.len()));
    }
    let size = raw.len() / count;
    let word = |c: &[u8]| -> u64 {
        let mut w = [0u8; 8];
        w[..size].copy_from_slice(c);
        if be {
            w[..size].reverse();
        }
        u64::from_le_bytes(w)
    };
    let words: Vec<u64> = raw.chunks_exact(size).map(word).collect();
    let as_int = |w: u64| -> Option<usize> {
        let v = match size {
            8 => w as i64,
            4 => i64::from(w as u32 as i32),
            2 => i64::from(w as u16 as i16),
            1 => i64::from(w as u8 as i8),
            _ => return None,
        };
        usize::try_from(v).ok().filter(|&v| v < n)
    };
    let as_float = |w: u64| -> Option<usize> {
        let f = match size {
            8 => f64::from_bits(w),
            4 => f64::from(f32::from_bits(w as u32)),
            _ => return None,
        };
        (f >= 0.0 && f < n as f64 && f.fract() == 0.0).then_some(f as usize)
    };
    let values: Vec<usize> = match words.iter().map(|&w| as_int(w)).collect::<Option<Vec<_>>>() {
        Some(v) => v,
        None => words
            .iter()
            .map(|&w| as_float(w))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                format!("values are not row indices in [0, {n}) (element size {size})")
            })?,
    };
    let at = |r: usize, c: usize| {
        if fortran {
            values[c * rows + r]
        } else {
            values[r * cols + c]
        }
    };
    Ok((0..rows)
        .map(|r| (0..cols).map(|c| at(r, c)).collect())
        .collect())
}
