//! Hard-negative pools: computed k-NN against numpy, JSON round trip, ViLBERT's pickle.

mod common;
use common::*;

use msp_features::{
    convert, ConvertOptions, FeatureError, FeatureStore, HardNegativePool, StoreDtype,
};

fn store() -> (tempfile::TempDir, FeatureStore) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("store");
    let opts = ConvertOptions {
        tsv: vec![data("fixture.tsv")],
        out: out.clone(),
        dtype: StoreDtype::F32,
        skip_bad: false,
    };
    convert(&opts, |_| {}).unwrap();
    (dir, FeatureStore::open(out).unwrap())
}

#[test]
fn mean_pooled_features_match_numpy() {
    let exp = expected();
    let (_dir, s) = store();
    for (row, want) in f32rows(&exp["mean_pooled"]).iter().enumerate() {
        let got = s.mean_feature(row).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
        }
    }
}

#[test]
fn computed_pool_matches_numpy_knn() {
    let exp = expected();
    let (_dir, s) = store();
    let pool = HardNegativePool::compute(&s, 2).unwrap();
    assert_eq!(pool.image_ids, s.ids());
    let want: Vec<Vec<usize>> = exp["pool_top2"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        })
        .collect();
    assert_eq!(pool.pool, want);
    // top is capped at N − 1 and self never appears.
    let all = HardNegativePool::compute(&s, 100).unwrap();
    for (i, row) in all.pool.iter().enumerate() {
        assert_eq!(row.len(), 3);
        assert!(!row.contains(&i));
        assert_eq!(row[..2], want[i][..]);
    }
    assert!(matches!(
        HardNegativePool::compute(&s, 0),
        Err(FeatureError::InvalidArgument(_))
    ));
}

#[test]
fn json_round_trip_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pool.json");
    let pool = HardNegativePool {
        image_ids: vec!["a".into(), "b".into(), "c".into()],
        pool: vec![vec![1, 2], vec![0, 2], vec![1, 0]],
    };
    pool.write_json(&p).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(
        text,
        r#"{"image_ids":["a","b","c"],"pool":[[1,2],[0,2],[1,0]]}"#
    );
    assert_eq!(HardNegativePool::read_json(&p).unwrap(), pool);
    std::fs::write(&p, r#"{"image_ids":["a"],"pool":[[3]]}"#).unwrap();
    assert!(matches!(
        HardNegativePool::read_json(&p),
        Err(FeatureError::HardNegatives { .. })
    ));
    std::fs::write(&p, r#"{"image_ids":["a"]}"#).unwrap();
    assert!(matches!(
        HardNegativePool::read_json(&p),
        Err(FeatureError::Json { .. })
    ));
}

/// The pickles hold numpy's full argsort (self first); the reader drops self.
fn expected_pickle_pool() -> Vec<Vec<usize>> {
    // From make_fixture.py: pool_top2 plus the farthest image, self removed.
    let exp = expected();
    let top2 = exp["pool_top2"].as_array().unwrap();
    (0..4)
        .map(|i| {
            let mut row: Vec<usize> = top2[i]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let last = (0..4).find(|j| *j != i && !row.contains(j)).unwrap();
            row.push(last);
            row
        })
        .collect()
}

#[test]
fn reads_vilbert_pickle_float64_default_protocol() {
    let pool = HardNegativePool::read_vilbert_pickle(data("hard_negative.pkl")).unwrap();
    assert_eq!(pool.image_ids, ["42", "2375429", "10171", "7"]);
    assert_eq!(pool.pool, expected_pickle_pool());
}

#[test]
fn reads_vilbert_pickle_int64_protocol2() {
    let pool = HardNegativePool::read_vilbert_pickle(data("hard_negative_p2_int.pkl")).unwrap();
    assert_eq!(pool.image_ids, ["42", "2375429", "10171", "7"]);
    assert_eq!(pool.pool, expected_pickle_pool());
}

#[test]
fn reads_vilbert_pickle_protocols_0_and_5() {
    for name in ["hard_negative_p0.pkl", "hard_negative_p5.pkl"] {
        let pool = HardNegativePool::read_vilbert_pickle(data(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(pool.image_ids, ["42", "2375429", "10171", "7"]);
        assert_eq!(pool.pool, expected_pickle_pool(), "{name}");
    }
}

#[test]
fn bad_pickles_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pkl");
    let bytes = std::fs::read(data("hard_negative.pkl")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        HardNegativePool::read_vilbert_pickle(&p),
        Err(FeatureError::HardNegatives { .. })
    ));
    std::fs::write(&p, b"not a pickle").unwrap();
    assert!(matches!(
        HardNegativePool::read_vilbert_pickle(&p),
        Err(FeatureError::HardNegatives { .. })
    ));
}
