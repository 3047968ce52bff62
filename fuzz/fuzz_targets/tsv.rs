//! The LXMERT TSV record parser (SPEC §2.1): arbitrary bytes as a TSV file. No panic; every
//! record it accepts is consistent (lengths, finite values, boxes inside the image).
#![no_main]

use libfuzzer_sys::fuzz_target;
use msp_features::TsvReader;

fuzz_target!(|data: &[u8]| {
    for rec in TsvReader::from_reader(data, "fuzz.tsv").take(1000) {
        let Ok(rec) = rec else { continue };
        let n = rec.num_boxes();
        assert!(!rec.img_id.is_empty());
        assert!(rec.img_h > 0 && rec.img_w > 0);
        assert_eq!(rec.objects_id.len(), n);
        assert_eq!(rec.objects_conf.len(), n);
        assert_eq!(rec.attrs_id.len(), n);
        assert_eq!(rec.attrs_conf.len(), n);
        assert_eq!(rec.boxes.len(), n);
        assert_eq!(rec.features.len(), n * rec.feature_dim());
        assert!(rec.features.iter().all(|v| v.is_finite()));
        let boxes = rec.normalized_boxes().expect("accepted boxes normalise");
        assert!(boxes.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
    }
});
