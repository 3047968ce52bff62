//! The checkpoint loader (SPEC §4, §10): arbitrary bytes as a safetensors file, loaded
//! strictly into the HF-fixture-sized LXMERT backbone (`crates/model/tests/data/hf0_config.json`).
//! No panic; a strict load that succeeds reports every variable loaded.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use msp_model::{build_with, load_safetensors, Config, LoadOptions, LxmertModel, Variant};

fn setup() -> &'static (candle_nn::VarMap, PathBuf) {
    static S: OnceLock<(candle_nn::VarMap, PathBuf)> = OnceLock::new();
    S.get_or_init(|| {
        let cfg = Config::from_json_str(include_str!(
            "../../crates/model/tests/data/hf0_config.json"
        ))
        .unwrap();
        let (varmap, _model) = build_with(0, &Device::Cpu, |vb, rng| {
            LxmertModel::load(vb.pp("lxmert"), &cfg, Variant::Lxmert, rng)
        })
        .unwrap();
        let d = std::env::temp_dir().join(format!("msp-fuzz-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        (varmap, d.join("weights.safetensors"))
    })
}

fuzz_target!(|data: &[u8]| {
    let (varmap, path) = setup();
    std::fs::write(path, data).unwrap();
    if let Ok(report) = load_safetensors(varmap, path, LoadOptions::strict()) {
        assert!(report.is_complete(), "{}", report.summary());
    }
});
