//! File-to-file forward pass (HF input names in, backbone outputs out), for the CLI and for
//! comparing with other implementations.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use serde::Serialize;

use crate::checkpoint::{
    load_tensors, read_safetensors, write_safetensors, LoadOptions, LoadReport,
};
use crate::config::{Config, Variant};
use crate::error::{ModelError, Result};
use crate::lxmert::{LxmertInputs, LxmertModel};
use crate::model::build_with;

/// What [`forward_files`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardReport {
    /// How the weights loaded (backbone variables only; head tensors count as unexpected).
    pub load: LoadReport,
    /// Output names and shapes written.
    pub outputs: Vec<(String, Vec<usize>)>,
}

/// Builds the backbone for `cfg`/`variant`, loads `weights` (every backbone variable must be
/// present; other tensors, e.g. heads, are allowed), reads the HF-named `inputs`
/// (`input_ids`, `visual_feats`, `visual_pos`, optional `attention_mask`, `token_type_ids`,
/// `position_ids`, `visual_attention_mask`), runs the eval forward and writes
/// `language_output`, `vision_output`, `pooled_output` to `out` atomically.
pub fn forward_files(
    cfg: &Config,
    variant: Variant,
    weights: &Path,
    inputs: &Path,
    out: &Path,
    cls_token_id: usize,
    device: &Device,
) -> Result<ForwardReport> {
    cfg.validate()?;
    let (varmap, model) = build_with(0, device, |vb, rng| {
        LxmertModel::load(vb.pp("lxmert"), cfg, variant, rng)
    })?;
    let tensors = read_safetensors(weights)?;
    let opts = LoadOptions::allow_unexpected().with_cls_token_id(cls_token_id);
    let load = load_tensors(&varmap, tensors, weights, opts, &|_| true)?;
    let io: HashMap<_, _> = read_safetensors(inputs)?
        .into_iter()
        .map(|(k, v)| v.to_device(device).map(|v| (k, v)))
        .collect::<candle_core::Result<_>>()?;
    let need = |name: &'static str| {
        io.get(name).ok_or_else(|| ModelError::Input {
            name,
            reason: format!("missing from {}", inputs.display()),
        })
    };
    let x = LxmertInputs {
        input_ids: need("input_ids")?,
        attention_mask: io.get("attention_mask"),
        token_type_ids: io.get("token_type_ids"),
        position_ids: io.get("position_ids"),
        visual_feats: need("visual_feats")?,
        visual_pos: need("visual_pos")?,
        visual_attention_mask: io.get("visual_attention_mask"),
        visual_permutation: None,
    };
    let o = model.forward_t(&x, false)?;
    let mut result = HashMap::new();
    result.insert("language_output".to_string(), o.language_output);
    result.insert("vision_output".to_string(), o.vision_output);
    result.insert("pooled_output".to_string(), o.pooled_output);
    let mut outputs: Vec<(String, Vec<usize>)> = result
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    outputs.sort();
    write_safetensors(&result, out)?;
    Ok(ForwardReport { load, outputs })
}
