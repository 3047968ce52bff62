//! SPEC §10: fuzz the TSV reader (proptest): no panic on arbitrary or mutated input, and
//! writer → reader round trips bit-exactly for arbitrary valid records.

mod common;
use common::data;

use msp_features::{TsvReader, TsvRecord, TsvWriter};
use proptest::prelude::*;

fn read_bytes(bytes: &[u8]) -> Vec<Result<TsvRecord, msp_features::FeatureError>> {
    TsvReader::from_reader(bytes, "fuzz.tsv")
        .take(100)
        .collect()
}

fn fixture() -> Vec<u8> {
    std::fs::read(data("fixture.tsv")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        for r in read_bytes(&bytes) {
            if let Err(e) = r {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn mutated_fixture_never_panics_and_ok_records_are_valid(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), prop::sample::select(b"\t\r\n=A/+-09. x".to_vec())), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = fixture();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        for rec in read_bytes(&bytes).into_iter().flatten() {
            prop_assert!(rec.normalized_boxes().is_some());
            prop_assert!(rec.features.iter().all(|v| v.is_finite()));
            prop_assert_eq!(rec.objects_id.len(), rec.num_boxes());
            prop_assert_eq!(rec.features.len(), rec.num_boxes() * rec.feature_dim());
        }
    }

    #[test]
    fn write_then_read_is_exact(
        d in 1usize..6,
        images in proptest::collection::vec((0usize..5, 1u32..2000, 1u32..2000, any::<u64>()), 1..5),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.tsv");
        let mut w = TsvWriter::create(&path).unwrap();
        let mut recs = Vec::new();
        for (i, (n, h, wd, seed)) in images.into_iter().enumerate() {
            let mut s = seed | 1;
            let mut next = move || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
            let mut unit = || (next() >> 40) as f32 / (1u64 << 24) as f32;
            let rec = TsvRecord {
                img_id: format!("img{i}"),
                img_h: h,
                img_w: wd,
                objects_id: (0..n).map(|_| (unit() * 1600.0) as i64).collect(),
                objects_conf: (0..n).map(|_| unit()).collect(),
                attrs_id: (0..n).map(|_| (unit() * 400.0) as i64).collect(),
                attrs_conf: (0..n).map(|_| unit()).collect(),
                boxes: (0..n).map(|_| [unit() * wd as f32, unit() * h as f32, unit() * wd as f32, unit() * h as f32]).collect(),
                features: (0..n * d).map(|_| unit() * 1e4 - 5e3).collect(),
            };
            w.write(&rec).unwrap();
            recs.push(rec);
        }
        w.finish().unwrap();
        let back: Vec<TsvRecord> = TsvReader::open(&path).unwrap().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(back, recs);
    }
}
