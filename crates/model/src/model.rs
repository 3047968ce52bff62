//! The trainable model: variables in a [`VarMap`] with seeded init, plus parameter counts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

use crate::checkpoint::{load_safetensors, save_varmap, LoadOptions, LoadReport};
use crate::config::{Config, Variant};
use crate::error::Result;
use crate::heads::LxmertForPreTraining;
use crate::lxmert::LxmertPooler;
use crate::nn::{DropoutRng, SeededVarMap, ShapeRecorder};

/// Builds any module with variables created in a fresh [`VarMap`] from a seeded init
/// (N(0, σ) weights, zero biases, LayerNorm (1, 0)); the dropout RNG is seeded from `seed` too.
pub fn build_with<T>(
    seed: u64,
    device: &Device,
    f: impl FnOnce(VarBuilder<'static>, &DropoutRng) -> candle_core::Result<T>,
) -> Result<(VarMap, T)> {
    let map = VarMap::new();
    let vb = seeded_var_builder(&map, seed, device);
    let rng = DropoutRng::new(seed ^ 0x5eed_d50f);
    let m = f(vb, &rng)?;
    Ok((map, m))
}

/// A `VarBuilder` that creates missing variables in `map` with the seeded init and returns
/// existing ones (use it to add fine-tuning heads to a model's `VarMap`).
pub fn seeded_var_builder(map: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(SeededVarMap {
            map: map.clone(),
            seed,
        }),
        DType::F32,
        device.clone(),
    )
}

/// LXMERT(-S) with its pre-training heads and the [`VarMap`] that owns every variable.
#[derive(Clone)]
pub struct Lxmert {
    varmap: VarMap,
    model: LxmertForPreTraining,
    dropout: DropoutRng,
    cfg: Config,
    variant: Variant,
    seed: u64,
    device: Device,
}

impl std::fmt::Debug for Lxmert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lxmert")
            .field("variant", &self.variant)
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Lxmert {
    /// A randomly initialised model (validated config, seeded init, f32 on `device`).
    pub fn new(cfg: &Config, variant: Variant, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let mut dropout = None;
        let (varmap, model) = build_with(seed, device, |vb, rng| {
            dropout = Some(rng.clone());
            LxmertForPreTraining::load(vb, cfg, variant, rng)
        })?;
        Ok(Self {
            varmap,
            model,
            dropout: dropout.unwrap_or_else(|| DropoutRng::new(seed)),
            cfg: cfg.clone(),
            variant,
            seed,
            device: device.clone(),
        })
    }

    /// Restarts the random stream of every dropout layer from `seed` ([`DropoutRng::reseed`]).
    pub fn reseed_dropout(&self, seed: u64) {
        self.dropout.reseed(seed);
    }

    /// The modules (backbone and heads).
    pub fn model(&self) -> &LxmertForPreTraining {
        &self.model
    }

    /// The variable store (for optimisers and checkpoints).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The variant.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// A builder that adds new variables (e.g. fine-tuning heads) to this model's store.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        seeded_var_builder(&self.varmap, self.seed ^ 0xf1e7_u64, &self.device)
    }

    /// Every variable with its HF name, sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> = match self.varmap.data().lock() {
            Ok(d) => d.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        };
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Loads a safetensors checkpoint (HF / LXMERT / LXMERT-S names).
    pub fn load_checkpoint(&self, path: &Path, opts: LoadOptions) -> Result<LoadReport> {
        load_safetensors(&self.varmap, path, opts)
    }

    /// Re-draws the pooler(s) (`lxmert.pooler.dense`, and `lxmert.pooler_f.dense` for
    /// LXMERT-S) to the values a fresh model of this seed has, by building them again with
    /// the same seeded init. Returns the names reset.
    pub fn reset_poolers(&self) -> Result<Vec<String>> {
        let fresh = VarMap::new();
        let vb = seeded_var_builder(&fresh, self.seed, &self.device).pp("lxmert");
        LxmertPooler::load(vb.pp("pooler"), &self.cfg)?;
        if self.variant.product_pooler() {
            LxmertPooler::load(vb.pp("pooler_f"), &self.cfg)?;
        }
        let poisoned = || candle_core::Error::Msg("VarMap poisoned".into());
        let fresh = fresh.data().lock().map_err(|_| poisoned())?;
        let current = self.varmap.data().lock().map_err(|_| poisoned())?;
        let mut reset = Vec::new();
        for (name, value) in fresh.iter() {
            let var = current
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no variable {name}")))?;
            var.set(value.as_tensor())?;
            reset.push(name.clone());
        }
        reset.sort();
        Ok(reset)
    }

    /// Saves every variable (HF names) atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_varmap(&self.varmap, path)
    }
}

/// Parameter counts of a configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamCount {
    /// The paper's convention (reference §6): language, relationship and cross layers plus the
    /// visual feature encoder; no embeddings, poolers or heads.
    pub paper_count: usize,
    /// Every variable of the pre-training model (backbone and heads; the tied MLM decoder
    /// counted once, with the word embeddings).
    pub total: usize,
    /// `total` split by module.
    pub by_module: BTreeMap<String, usize>,
}

/// The module a variable belongs to, for [`ParamCount::by_module`].
pub fn module_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["lxmert", "encoder", "visn_fc", ..] => "lxmert.encoder.visn_fc".into(),
        ["lxmert", "encoder", group, ..] => format!("lxmert.encoder.{group}"),
        ["lxmert", m, ..] => format!("lxmert.{m}"),
        ["cls", "seq_relationship_new", ..] | ["cls", "LayerNorm", ..] => "cls.topic".into(),
        ["cls", m, ..] => format!("cls.{m}"),
        [m, ..] => (*m).to_string(),
        [] => String::new(),
    }
}

fn is_paper_counted(name: &str) -> bool {
    [
        "lxmert.encoder.x_layers.",
        "lxmert.encoder.visn_fc.",
        "lxmert.encoder.layer.",
        "lxmert.encoder.r_layers.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// Counts the parameters of the pre-training model for `cfg` without allocating weights.
pub fn param_count(cfg: &Config, variant: Variant) -> Result<ParamCount> {
    cfg.validate()?;
    let shapes = Arc::new(Mutex::new(BTreeMap::new()));
    let vb = VarBuilder::from_backend(
        Box::new(ShapeRecorder {
            shapes: shapes.clone(),
        }),
        DType::F32,
        Device::Cpu,
    );
    let rng = DropoutRng::new(0);
    LxmertForPreTraining::load(vb, cfg, variant, &rng)?;
    let shapes = shapes.lock().map(|s| s.clone()).unwrap_or_default();
    let mut out = ParamCount {
        paper_count: 0,
        total: 0,
        by_module: BTreeMap::new(),
    };
    for (name, dims) in shapes {
        let n: usize = dims.iter().product();
        out.total += n;
        if is_paper_counted(&name) {
            out.paper_count += n;
        }
        *out.by_module.entry(module_of(&name)).or_default() += n;
    }
    Ok(out)
}
