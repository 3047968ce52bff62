//! Safetensors checkpoints with HF names: partial loading with a structured report, name
//! mapping of LXMERT / LXMERT-S (`bert.` prefix, extra keys) and BERT embedding init.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::Serialize;

use crate::error::{ModelError, Result};

/// Name of the tied MLM decoder key; torch state dicts store it, the model shares the
/// word-embedding variable instead, so it is skipped on load and not written on save.
pub const TIED_DECODER_KEY: &str = "cls.predictions.decoder.weight";

/// A checkpoint tensor whose shape does not fit the model's variable (not loaded).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShapeMismatch {
    /// Model variable name.
    pub name: String,
    /// Shape of the model variable.
    pub expected: Vec<usize>,
    /// Shape in the checkpoint.
    pub found: Vec<usize>,
}

/// A checkpoint tensor stored with another dtype than the variable (converted and loaded).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DtypeMismatch {
    /// Model variable name.
    pub name: String,
    /// Variable dtype.
    pub expected: String,
    /// Checkpoint dtype.
    pub found: String,
}

/// What a (partial) load did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// Variables set from the file (model names).
    pub loaded: Vec<String>,
    /// Model variables the file does not provide (left at their current value).
    pub missing: Vec<String>,
    /// File tensors with no model variable (checkpoint names).
    pub unexpected: Vec<String>,
    /// Shape mismatches (not loaded).
    pub shape_mismatches: Vec<ShapeMismatch>,
    /// Dtype differences (converted, loaded).
    pub dtype_mismatches: Vec<DtypeMismatch>,
    /// Tensors whose dtype cannot be converted to the variable's without changing what the
    /// values mean (integer ↔ floating point); not loaded.
    pub bad_dtypes: Vec<DtypeMismatch>,
    /// Checkpoint names that were renamed (`from` → `to`).
    pub renamed: Vec<(String, String)>,
}

impl LoadReport {
    /// True when every variable was loaded and every tensor used (float dtype conversions
    /// allowed).
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.shape_mismatches.is_empty()
            && self.bad_dtypes.is_empty()
    }

    /// One line: counts and the first few names of each problem.
    pub fn summary(&self) -> String {
        let few = |v: &[String]| {
            let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 5 {
                s.push_str(&format!(", … ({} more)", v.len() - 5));
            }
            s
        };
        let shapes: Vec<String> = self
            .shape_mismatches
            .iter()
            .map(|m| format!("{} {:?} vs file {:?}", m.name, m.expected, m.found))
            .collect();
        let dtypes: Vec<String> = self
            .bad_dtypes
            .iter()
            .map(|m| format!("{} {} vs file {}", m.name, m.expected, m.found))
            .collect();
        let mut s = format!(
            "{} loaded; {} missing [{}]; {} unexpected [{}]; {} shape mismatches [{}]; {} dtype conversions",
            self.loaded.len(),
            self.missing.len(),
            few(&self.missing),
            self.unexpected.len(),
            few(&self.unexpected),
            shapes.len(),
            few(&shapes),
            self.dtype_mismatches.len()
        );
        if !dtypes.is_empty() {
            s.push_str(&format!(
                "; {} unusable dtypes [{}]",
                dtypes.len(),
                few(&dtypes)
            ));
        }
        s
    }
}

/// How strictly a checkpoint must fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Fail if a model variable is absent from the file.
    pub deny_missing: bool,
    /// Fail if the file has a tensor the model does not.
    pub deny_unexpected: bool,
    /// Fail on a shape mismatch or an unusable dtype (integer ↔ floating point).
    pub deny_shape_mismatch: bool,
    /// Row of `bert.word_embeddings` (LXMERT-S) taken as the visual \[CLS\] (the \[CLS\] id).
    pub cls_token_id: usize,
}

impl LoadOptions {
    /// Everything must fit exactly.
    pub fn strict() -> Self {
        Self {
            deny_missing: true,
            deny_unexpected: true,
            deny_shape_mismatch: true,
            cls_token_id: 101,
        }
    }
    /// Report only; never fail on fit.
    pub fn lenient() -> Self {
        Self {
            deny_missing: false,
            deny_unexpected: false,
            deny_shape_mismatch: false,
            cls_token_id: 101,
        }
    }
    /// Every model variable must be present and fit; extra tensors (other heads) are allowed.
    pub fn allow_unexpected() -> Self {
        Self {
            deny_unexpected: false,
            ..Self::strict()
        }
    }
    /// Sets the visual \[CLS\] row.
    pub fn with_cls_token_id(mut self, id: usize) -> Self {
        self.cls_token_id = id;
        self
    }
}

/// Maps a checkpoint key to this crate's name. LXMERT / LXMERT-S keys (`bert.`,
/// `module.bert.`, `lxrt_encoder.model.bert.`) become `lxmert.`; `bert.word_embeddings`
/// (LXMERT-S's visual \[CLS\] table) becomes `lxmert.visual_cls.weight` (one row taken);
/// BERT's `gamma`/`beta` become `weight`/`bias`.
pub fn map_key(key: &str) -> String {
    let mut k = key;
    for p in ["module.", "lxrt_encoder.model."] {
        if let Some(r) = k.strip_prefix(p) {
            k = r;
        }
    }
    let mut out = match k.strip_prefix("bert.") {
        Some("word_embeddings.weight") => "lxmert.visual_cls.weight".to_string(),
        Some(rest) => format!("lxmert.{rest}"),
        None => k.to_string(),
    };
    if let Some(s) = out.strip_suffix(".gamma") {
        out = format!("{s}.weight");
    } else if let Some(s) = out.strip_suffix(".beta") {
        out = format!("{s}.bias");
    }
    out
}

fn var_snapshot(varmap: &VarMap) -> Result<BTreeMap<String, candle_core::Var>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| ModelError::Candle(candle_core::Error::Msg("VarMap poisoned".into())))?;
    Ok(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Loads `tensors` (checkpoint names) into `varmap`, keeping only model names accepted by
/// `filter`; returns the report and fails as `opts` says.
pub fn load_tensors(
    varmap: &VarMap,
    tensors: HashMap<String, Tensor>,
    path: &Path,
    opts: LoadOptions,
    filter: &dyn Fn(&str) -> bool,
) -> Result<LoadReport> {
    let vars = var_snapshot(varmap)?;
    let mut report = LoadReport::default();
    let mut seen = std::collections::BTreeSet::new();
    let mut keys: Vec<_> = tensors.keys().cloned().collect();
    keys.sort();
    for key in keys {
        let t = &tensors[&key];
        if key == TIED_DECODER_KEY {
            continue;
        }
        let name = map_key(&key);
        if !filter(&name) {
            continue;
        }
        if name != key {
            report.renamed.push((key.clone(), name.clone()));
        }
        let Some(var) = vars.get(&name) else {
            report.unexpected.push(key.clone());
            continue;
        };
        let mut value = t.clone();
        if name == "lxmert.visual_cls.weight" && value.rank() == 2 {
            // LXMERT-S stores a [vocab, feat] table; only the [CLS] row is ever used.
            let rows = value.dim(0)?;
            if opts.cls_token_id >= rows {
                report.shape_mismatches.push(ShapeMismatch {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: value.dims().to_vec(),
                });
                continue;
            }
            value = value.get(opts.cls_token_id)?;
        }
        if value.dims() != var.dims() {
            report.shape_mismatches.push(ShapeMismatch {
                name: name.clone(),
                expected: var.dims().to_vec(),
                found: value.dims().to_vec(),
            });
            continue;
        }
        if value.dtype() != var.dtype() {
            let mismatch = DtypeMismatch {
                name: name.clone(),
                expected: format!("{:?}", var.dtype()),
                found: format!("{:?}", value.dtype()),
            };
            // f16/bf16/f64 weights convert to the variable's float type; integers do not
            // hold weights (a checkpoint with them is corrupt or not a weight file).
            if value.dtype().is_float() != var.dtype().is_float() {
                report.bad_dtypes.push(mismatch);
                continue;
            }
            report.dtype_mismatches.push(mismatch);
        }
        let value = value.to_dtype(var.dtype())?.to_device(var.device())?;
        var.set(&value)?;
        seen.insert(name.clone());
        report.loaded.push(name);
    }
    report.missing = vars
        .keys()
        .filter(|n| filter(n) && !seen.contains(*n))
        .cloned()
        .collect();
    let fail = (opts.deny_missing && !report.missing.is_empty())
        || (opts.deny_unexpected && !report.unexpected.is_empty())
        || (opts.deny_shape_mismatch
            && !(report.shape_mismatches.is_empty() && report.bad_dtypes.is_empty()));
    if fail {
        return Err(ModelError::Checkpoint {
            path: path.to_path_buf(),
            report: Box::new(report),
        });
    }
    Ok(report)
}

/// Loads a safetensors checkpoint (HF, LXMERT or LXMERT-S names) into `varmap`.
pub fn load_safetensors(varmap: &VarMap, path: &Path, opts: LoadOptions) -> Result<LoadReport> {
    let tensors = read_safetensors(path)?;
    load_tensors(varmap, tensors, path, opts, &|_| true)
}

/// Reads every tensor of a safetensors file onto the CPU. Errors name the file (a truncated
/// or corrupt file is a [`ModelError::BadFile`]).
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(ModelError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| ModelError::BadFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes `tensors` to `path` atomically (temporary file in the same folder, then rename).
pub fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = tmp_path(path);
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|source| ModelError::Io {
        op: "renaming",
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|s| s.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Saves every variable of `varmap` (HF names; the tied decoder is not written) atomically.
pub fn save_varmap(varmap: &VarMap, path: &Path) -> Result<()> {
    let vars = var_snapshot(varmap)?;
    let tensors: HashMap<String, Tensor> = vars
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    write_safetensors(&tensors, path)
}

/// Where BERT weights come from.
#[derive(Debug, Clone)]
pub enum BertSource {
    /// A `model.safetensors` file with `bert.embeddings.*` keys.
    Path(PathBuf),
    /// The local hf-hub cache (`HF_HOME`), e.g. `bert-base-uncased`; never downloads.
    HubCache {
        /// Model id.
        model_id: String,
    },
}

impl BertSource {
    /// Resolves to a local file (error naming the id when it is not in the cache).
    pub fn resolve(&self) -> Result<PathBuf> {
        match self {
            BertSource::Path(p) => Ok(p.clone()),
            BertSource::HubCache { model_id } => hf_hub::Cache::from_env()
                .model(model_id.clone())
                .get("model.safetensors")
                .ok_or_else(|| {
                    ModelError::BertNotFound(format!(
                        "{model_id}/model.safetensors is not in the local hf-hub cache (HF_HOME); \
                         download it or pass a path"
                    ))
                }),
        }
    }
}

/// Initialises `lxmert.embeddings.*` from BERT (`bert.embeddings.*`; other BERT tensors are
/// ignored and not reported). Fails unless every embedding variable was set.
pub fn init_embeddings_from_bert(varmap: &VarMap, source: &BertSource) -> Result<LoadReport> {
    let path = source.resolve()?;
    let tensors: HashMap<String, Tensor> = read_safetensors(&path)?
        .into_iter()
        .filter(|(k, _)| k.starts_with("bert.embeddings."))
        .collect();
    let opts = LoadOptions {
        deny_missing: true,
        deny_unexpected: false,
        deny_shape_mismatch: true,
        cls_token_id: 0,
    };
    load_tensors(varmap, tensors, &path, opts, &|n| {
        n.starts_with("lxmert.embeddings.")
    })
}

/// All variables as (name, dtype, shape), sorted by name.
pub fn describe(varmap: &VarMap) -> Result<Vec<(String, DType, Vec<usize>)>> {
    Ok(var_snapshot(varmap)?
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.dims().to_vec()))
        .collect())
}

/// Copies the value of every variable `from.<rest>` into `to.<rest>` (e.g. the retrieval match
/// head from the pre-trained ITM head, as LXMERT-S's `load_image_retrieval.py` does with
/// `cls.seq_relationship` → `seq_relationship_new`). Returns the names written; fails when a
/// target is absent or has another shape.
pub fn copy_prefix(varmap: &VarMap, from: &str, to: &str) -> Result<Vec<String>> {
    let vars = var_snapshot(varmap)?;
    let from_dot = format!("{from}.");
    let mut written = Vec::new();
    for (name, var) in &vars {
        let Some(rest) = name.strip_prefix(&from_dot) else {
            continue;
        };
        let target_name = format!("{to}.{rest}");
        let target = vars.get(&target_name).ok_or_else(|| {
            ModelError::Candle(candle_core::Error::Msg(format!(
                "copy {name}: no variable {target_name}"
            )))
        })?;
        if target.dims() != var.dims() {
            return Err(ModelError::Candle(candle_core::Error::Msg(format!(
                "copy {name} {:?} into {target_name} {:?}: shapes differ",
                var.dims(),
                target.dims()
            ))));
        }
        target.set(var.as_tensor())?;
        written.push(target_name);
    }
    Ok(written)
}
