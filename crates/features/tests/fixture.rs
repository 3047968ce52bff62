//! The reader, writer and store against the independent numpy fixture.

mod common;
use common::*;

use candle_core::Device;
use msp_features::{
    convert, ConvertOptions, FeatureStore, StoreDtype, TsvReader, TsvRecord, TsvWriter,
};

fn records() -> Vec<TsvRecord> {
    TsvReader::open(data("fixture.tsv"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn reader_matches_numpy_fixture_bit_exactly() {
    let exp = expected();
    let recs = records();
    let images = exp["images"].as_array().unwrap();
    assert_eq!(recs.len(), images.len());
    for (r, e) in recs.iter().zip(images) {
        assert_eq!(r.img_id, e["img_id"].as_str().unwrap());
        assert_eq!(u64::from(r.img_h), e["img_h"].as_u64().unwrap());
        assert_eq!(u64::from(r.img_w), e["img_w"].as_u64().unwrap());
        assert_eq!(r.num_boxes() as u64, e["num_boxes"].as_u64().unwrap());
        assert_eq!(r.feature_dim(), 8);
        assert_eq!(r.objects_id, i64s(&e["objects_id"]));
        assert_eq!(r.attrs_id, i64s(&e["attrs_id"]));
        assert_eq!(bits(&r.objects_conf), bits(&f32s(&e["objects_conf"])));
        assert_eq!(bits(&r.attrs_conf), bits(&f32s(&e["attrs_conf"])));
        let boxes: Vec<f32> = r.boxes.iter().flatten().copied().collect();
        let want: Vec<f32> = f32rows(&e["boxes_pixels"]).concat();
        assert_eq!(bits(&boxes), bits(&want));
        let norm: Vec<f32> = r.normalized_boxes().unwrap().concat();
        assert_eq!(bits(&norm), bits(&f32rows(&e["boxes"]).concat()));
        assert_eq!(bits(&r.features), bits(&f32rows(&e["features"]).concat()));
    }
}

#[test]
fn writer_reproduces_python_csv_output_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.tsv");
    let mut w = TsvWriter::create(&out).unwrap();
    for r in records() {
        w.write(&r).unwrap();
    }
    assert_eq!(w.finish().unwrap(), 4);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(data("fixture.tsv")).unwrap()
    );
    // Only the final file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TsvWriter::create(dir.path().join("x.tsv")).unwrap();
    w.write(&records()[0]).unwrap();
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn store(dtype: StoreDtype) -> (tempfile::TempDir, FeatureStore) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("store");
    let mut calls = 0;
    let report = convert(
        &ConvertOptions {
            tsv: vec![data("fixture.tsv")],
            out: out.clone(),
            dtype,
            skip_bad: false,
        },
        |p| {
            calls += 1;
            assert_eq!(p.images, calls);
            assert!(p.bytes_read <= p.bytes_total);
        },
    )
    .unwrap();
    assert_eq!(calls, 4);
    assert_eq!(report.images, 4);
    assert_eq!(report.regions, 3 + 5 + 2 + 4);
    assert_eq!(report.feature_dim, 8);
    assert_eq!(
        report.bytes_read,
        std::fs::metadata(data("fixture.tsv")).unwrap().len()
    );
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["index.json", "regions.safetensors"]);
    // Nothing but the store in the parent directory (the temporary directory is gone).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let s = FeatureStore::open(&out).unwrap();
    (dir, s)
}

fn check_store(dtype: StoreDtype, feature_key: &str) {
    let exp = expected();
    let (_dir, s) = store(dtype);
    assert_eq!(s.len(), 4);
    assert_eq!(s.feature_dim(), 8);
    assert_eq!(s.num_regions(), 14);
    for (row, e) in exp["images"].as_array().unwrap().iter().enumerate() {
        let id = e["img_id"].as_str().unwrap();
        assert_eq!(s.row(id), Some(row));
        assert_eq!(s.ids()[row], id);
        let im = s.image(row).unwrap();
        assert_eq!(u64::from(im.img_h), e["img_h"].as_u64().unwrap());
        assert_eq!(u64::from(im.img_w), e["img_w"].as_u64().unwrap());
        assert_eq!(im.objects_id, i64s(&e["objects_id"]));
        assert_eq!(im.attrs_id, i64s(&e["attrs_id"]));
        assert_eq!(bits(&im.objects_conf), bits(&f32s(&e["objects_conf"])));
        assert_eq!(bits(&im.attrs_conf), bits(&f32s(&e["attrs_conf"])));
        assert_eq!(
            bits(&im.boxes.concat()),
            bits(&f32rows(&e["boxes"]).concat())
        );
        assert_eq!(bits(&im.features), bits(&f32rows(&e[feature_key]).concat()));
    }
    assert_eq!(s.row("nope"), None);
}

#[test]
fn f32_store_matches_fixture_bit_exactly() {
    check_store(StoreDtype::F32, "features");
}

#[test]
fn f16_store_matches_numpy_f16_rounding() {
    check_store(StoreDtype::F16, "features_f16");
}

#[test]
fn gather_pads_to_batch_max_and_masks() {
    let exp = expected();
    let (_dir, s) = store(StoreDtype::F32);
    let b = s.gather(&[2, 1, 2], None, &Device::Cpu).unwrap();
    assert_eq!(b.features.dims(), &[3, 5, 8]);
    assert_eq!(b.boxes.dims(), &[3, 5, 4]);
    assert_eq!(b.num_boxes, vec![2, 5, 2]);
    let mask = b.mask.to_vec2::<f32>().unwrap();
    assert_eq!(mask[0], [1.0, 1.0, 0.0, 0.0, 0.0]);
    assert_eq!(mask[1], [1.0; 5]);
    let feats = b.features.to_vec3::<f32>().unwrap();
    let img2 = f32rows(&exp["images"][2]["features"]);
    assert_eq!(feats[0][1], img2[1]);
    assert_eq!(feats[2][0], img2[0]);
    assert_eq!(feats[0][2], vec![0.0; 8]);
    let img1_boxes = f32rows(&exp["images"][1]["boxes"]);
    assert_eq!(b.boxes.to_vec3::<f32>().unwrap()[1], img1_boxes);
    let oid = b.objects_id.to_vec2::<u32>().unwrap();
    let want: Vec<u32> = i64s(&exp["images"][1]["objects_id"])
        .iter()
        .map(|&v| v as u32)
        .collect();
    assert_eq!(oid[1], want);
    assert_eq!(oid[0][2..], [0, 0, 0]);
    let aconf = b.attrs_conf.to_vec2::<f32>().unwrap();
    assert_eq!(aconf[0][..2], f32s(&exp["images"][2]["attrs_conf"])[..]);

    // A fixed n: shorter images are padded, longer ones keep their first n boxes.
    let b = s.gather(&[0, 1], Some(4), &Device::Cpu).unwrap();
    assert_eq!(b.features.dims(), &[2, 4, 8]);
    assert_eq!(b.num_boxes, vec![3, 4]);
    assert_eq!(
        b.mask.to_vec2::<f32>().unwrap(),
        vec![vec![1.0, 1.0, 1.0, 0.0], vec![1.0; 4]]
    );
    assert_eq!(
        b.features.to_vec3::<f32>().unwrap()[1][3],
        f32rows(&exp["images"][1]["features"])[3]
    );

    // Reused buffers give the same batch, also after a bigger and a smaller batch.
    let mut buf = msp_features::RegionBuffers::default();
    for rows in [&[1usize, 1, 1][..], &[0, 3], &[2, 1, 2]] {
        s.gather_into(rows, None, &mut buf).unwrap();
    }
    let again = buf.to_batch(&Device::Cpu).unwrap();
    let b = s.gather(&[2, 1, 2], None, &Device::Cpu).unwrap();
    assert_eq!(
        again.features.to_vec3::<f32>().unwrap(),
        b.features.to_vec3::<f32>().unwrap()
    );
    assert_eq!(
        again.mask.to_vec2::<f32>().unwrap(),
        b.mask.to_vec2::<f32>().unwrap()
    );
    assert_eq!(
        again.boxes.to_vec3::<f32>().unwrap(),
        b.boxes.to_vec3::<f32>().unwrap()
    );
    assert_eq!(
        again.attrs_id.to_vec2::<u32>().unwrap(),
        b.attrs_id.to_vec2::<u32>().unwrap()
    );
    assert_eq!(again.num_boxes, b.num_boxes);

    assert!(matches!(
        s.gather(&[4], None, &Device::Cpu),
        Err(msp_features::FeatureError::RowOutOfRange { row: 4, len: 4 })
    ));
}

#[test]
fn show_json_round_trips_f32_values() {
    let exp = expected();
    let (_dir, s) = store(StoreDtype::F32);
    let json: serde_json::Value = serde_json::from_str(&s.image(1).unwrap().to_json()).unwrap();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 10);
    let e = &exp["images"][1];
    assert_eq!(json["img_id"], e["img_id"]);
    assert_eq!(json["num_boxes"], 5);
    assert_eq!(json["objects_id"], e["objects_id"]);
    // Shortest f32 repr parses back to the same f32 bits.
    let feats = f32rows(&json["features"]);
    assert_eq!(
        bits(&feats.concat()),
        bits(&f32rows(&e["features"]).concat())
    );
    assert_eq!(
        bits(&f32rows(&json["boxes"]).concat()),
        bits(&f32rows(&e["boxes"]).concat())
    );
    let stats = s.image(1).unwrap().feature_stats().unwrap();
    let all = f32rows(&e["features"]).concat();
    let mean = all.iter().map(|&v| f64::from(v)).sum::<f64>() / all.len() as f64;
    assert!((stats.mean - mean).abs() < 1e-9);
    assert_eq!(stats.max, all.iter().copied().fold(f32::MIN, f32::max));
}

#[test]
fn store_open_reads_no_region_data_and_rejects_corruption() {
    let (dir, s) = store(StoreDtype::F32);
    drop(s);
    let st = dir.path().join("store/regions.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    // Truncated safetensors file: a clear store error, no panic.
    std::fs::write(&st, &bytes[..bytes.len() - 3]).unwrap();
    let err = FeatureStore::open(dir.path().join("store")).unwrap_err();
    assert!(
        matches!(err, msp_features::FeatureError::Store { .. }),
        "{err}"
    );
}
