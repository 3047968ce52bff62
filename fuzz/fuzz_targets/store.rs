//! The feature-store reader (SPEC §2.2): `index.json` and the safetensors header of
//! `regions.safetensors`. The input is `u32 LE length of index.json`, `index.json`, then
//! `regions.safetensors`; both are written into a store directory and opened. No panic; an
//! opened store serves every image and a padded batch of all of them.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use msp_features::FeatureStore;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("msp-fuzz-store-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let rest = &data[4..];
    let (index, regions) = rest.split_at(n.min(rest.len()));
    std::fs::write(dir().join("index.json"), index).unwrap();
    std::fs::write(dir().join("regions.safetensors"), regions).unwrap();
    let Ok(store) = FeatureStore::open(dir()) else {
        return;
    };
    let rows: Vec<usize> = (0..store.len().min(64)).collect();
    for &row in &rows {
        let img = store.image(row).expect("rows of an opened store are readable");
        assert_eq!(img.features.len(), img.num_boxes() * store.feature_dim());
        assert_eq!(store.row(&img.img_id), Some(row));
    }
    if !rows.is_empty() {
        let b = store
            .gather(&rows, None, &candle_core::Device::Cpu)
            .expect("gather");
        assert_eq!(b.num_boxes.len(), rows.len());
    }
});
