//! Every committed preset has valid `[model]` and `[pretrain]` tables.

use std::path::Path;

#[test]
fn committed_presets_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/presets");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let name = p.file_stem().unwrap().to_str().unwrap().to_string();
        let preset = msp_curriculum::Preset::load(&dir, &name);
        assert!(preset.is_ok(), "{name}: {preset:?}");
        n += 1;
    }
    assert!(n >= 4, "{n} presets");
}
