//! SPEC §10: every kind of bad input gives a FeatureError naming file, line and field, and a
//! failed conversion leaves nothing at the destination.

mod common;
use common::data;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use msp_features::{
    convert, ConvertOptions, FeatureError, StoreDtype, TsvReader, TsvRecord, TsvWriter,
};

fn fixture_lines() -> Vec<String> {
    let text = std::fs::read_to_string(data("fixture.tsv")).unwrap();
    text.split_terminator("\r\n").map(String::from).collect()
}

/// The fixture with column `col` of line `line` (0-based) replaced.
fn with_column(line: usize, col: usize, value: &str) -> String {
    let mut lines = fixture_lines();
    let mut cols: Vec<String> = lines[line].split('\t').map(String::from).collect();
    cols[col] = value.to_string();
    lines[line] = cols.join("\t");
    lines.iter().map(|l| format!("{l}\r\n")).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn read_all(path: &Path) -> Result<Vec<TsvRecord>, FeatureError> {
    TsvReader::open(path)?.collect()
}

/// Reads a bad file and checks the error names file, line and field; then checks a
/// conversion fails with the same error and leaves nothing behind.
fn expect_field_error(text: &str, line: u64, field: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.tsv", text);
    let err = read_all(&p).unwrap_err();
    assert_eq!(err.line(), Some(line), "{err}");
    assert_eq!(err.field(), Some(field), "{err}");
    match &err {
        FeatureError::Field { path, .. } => assert_eq!(path, &p),
        other => panic!("unexpected error {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("bad.tsv") && msg.contains(&format!(":{line}:")) && msg.contains(field),
        "{msg}"
    );
    let out = dir.path().join("store");
    let opts = ConvertOptions {
        tsv: vec![p],
        out: out.clone(),
        dtype: StoreDtype::F32,
        skip_bad: false,
    };
    let err2 = convert(&opts, |_| {}).unwrap_err();
    assert_eq!(
        (err2.line(), err2.field()),
        (Some(line), Some(field)),
        "{err2}"
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temporary files left behind"
    );
    msg
}

fn b64_f32(v: &[f32]) -> String {
    STANDARD.encode(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

#[test]
fn wrong_column_count() {
    let mut lines = fixture_lines();
    lines[1] = lines[1].rsplit_once('\t').unwrap().0.to_string();
    let text: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
    let msg = expect_field_error(&text, 2, "line");
    assert!(msg.contains("found 9"), "{msg}");
}

#[test]
fn non_integer_numbers() {
    expect_field_error(&with_column(0, 1, "48x"), 1, "img_h");
    expect_field_error(&with_column(2, 2, "-500"), 3, "img_w");
    expect_field_error(&with_column(1, 7, "5.0"), 2, "num_boxes");
    expect_field_error(&with_column(1, 2, "0"), 2, "img_w");
}

#[test]
fn bad_base64() {
    let lines = fixture_lines();
    let col: String = lines[0].split('\t').nth(4).unwrap().replacen('A', "!", 1);
    let col = if col.contains('!') {
        col
    } else {
        format!("!{}", &col[1..])
    };
    let msg = expect_field_error(&with_column(0, 4, &col), 1, "objects_conf");
    assert!(msg.contains("base64"), "{msg}");
    // Unpadded base64 is not the standard padded form.
    let feats = lines[3]
        .split('\t')
        .nth(9)
        .unwrap()
        .trim_end_matches('=')
        .to_string();
    if feats.len() % 4 != 0 {
        expect_field_error(&with_column(3, 9, &feats), 4, "features");
    }
}

#[test]
fn buffer_length_differs_from_num_boxes() {
    // num_boxes 3 → 4: the first buffer checked is too short.
    let msg = expect_field_error(&with_column(0, 7, "4"), 1, "objects_id");
    assert!(msg.contains("expected num_boxes (4)"), "{msg}");
    expect_field_error(&with_column(1, 8, &b64_f32(&[1.0; 4 * 4])), 2, "boxes");
    // A feature buffer one float short on the second line (width 8 known from line 1).
    expect_field_error(
        &with_column(1, 9, &b64_f32(&[1.0; 5 * 8 - 1])),
        2,
        "features",
    );
    // On the first line the width is inferred; a length not divisible by num_boxes fails.
    expect_field_error(
        &with_column(0, 9, &b64_f32(&[1.0; 3 * 8 + 1])),
        1,
        "features",
    );
}

#[test]
fn feature_width_must_stay_constant_and_match_a_declared_one() {
    // Line 2 with D = 4 instead of 8.
    expect_field_error(&with_column(1, 9, &b64_f32(&[1.0; 5 * 4])), 2, "features");
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "f.tsv", &fixture_lines().join("\r\n"));
    let err = TsvReader::open(&p)
        .unwrap()
        .with_feature_dim(16)
        .next()
        .unwrap()
        .unwrap_err();
    assert_eq!((err.line(), err.field()), (Some(1), Some("features")));
}

#[test]
fn non_finite_values() {
    let mut feats = vec![0.5f32; 3 * 8];
    feats[13] = f32::NAN;
    let msg = expect_field_error(&with_column(0, 9, &b64_f32(&feats)), 1, "features");
    assert!(msg.contains("box 1, dim 5"), "{msg}");
    feats[13] = f32::INFINITY;
    expect_field_error(&with_column(0, 9, &b64_f32(&feats)), 1, "features");
    expect_field_error(
        &with_column(2, 4, &b64_f32(&[0.5, f32::NEG_INFINITY])),
        3,
        "objects_conf",
    );
    expect_field_error(
        &with_column(2, 6, &b64_f32(&[f32::NAN, 0.5])),
        3,
        "attrs_conf",
    );
}

#[test]
fn boxes_outside_the_image() {
    // Image 3 is 500 wide and 375 high.
    let inside = [0.0, 0.0, 500.0, 375.0];
    let mut boxes = [inside, inside];
    boxes[1][2] = 500.0 * 1.0001;
    let flat: Vec<f32> = boxes.concat();
    let msg = expect_field_error(&with_column(2, 8, &b64_f32(&flat)), 3, "boxes");
    assert!(msg.contains("box 1"), "{msg}");
    let mut flat = [inside, inside].concat();
    flat[1] = -0.01;
    expect_field_error(&with_column(2, 8, &b64_f32(&flat)), 3, "boxes");
    // Within 1e-5 of the border: accepted and clamped to 1.
    let mut flat = [inside, inside].concat();
    flat[3] = 375.0 * (1.0 + 5e-6);
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "ok.tsv", &with_column(2, 8, &b64_f32(&flat)));
    let recs = read_all(&p).unwrap();
    assert_eq!(recs[2].normalized_boxes().unwrap()[0], [0.0, 0.0, 1.0, 1.0]);
}

#[test]
fn negative_class_id() {
    let ids = STANDARD.encode(
        [-1i64, 3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    expect_field_error(&with_column(2, 5, &ids), 3, "attrs_id");
}

#[test]
fn truncated_last_line() {
    let text = std::fs::read_to_string(data("fixture.tsv")).unwrap();
    for cut in [text.len() - 40, text.len() - 3, text.len() - 300] {
        let msg = expect_field_error(
            &text[..cut],
            4,
            if cut > text.len() - 200 {
                "features"
            } else {
                "line"
            },
        );
        assert!(msg.contains("truncated"), "{msg}");
    }
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("empty.tsv", ""), ("blank.tsv", "\r\n\n")] {
        let p = write(dir.path(), name, text);
        let err = read_all(&p).unwrap_err();
        assert!(
            matches!(&err, FeatureError::Empty { path } if path == &p),
            "{err}"
        );
        let out = dir.path().join("store");
        let opts = ConvertOptions {
            tsv: vec![p],
            out: out.clone(),
            dtype: StoreDtype::F32,
            skip_bad: true,
        };
        assert!(matches!(
            convert(&opts, |_| {}),
            Err(FeatureError::Empty { .. })
        ));
        assert!(!out.exists());
    }
}

#[test]
fn duplicate_img_id_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = data("fixture.tsv");
    let lines = fixture_lines();
    let b = write(
        dir.path(),
        "b.tsv",
        &format!(
            "{}\r\n{}\r\n",
            lines[1].replacen("2375429", "other", 1),
            lines[2]
        ),
    );
    let out = dir.path().join("store");
    let opts = ConvertOptions {
        tsv: vec![a.clone(), b.clone()],
        out: out.clone(),
        dtype: StoreDtype::F16,
        skip_bad: false,
    };
    let err = convert(&opts, |_| {}).unwrap_err();
    match &err {
        FeatureError::DuplicateId {
            path,
            line,
            img_id,
            first_path,
            first_line,
        } => {
            assert_eq!(
                (path, *line, img_id.as_str()),
                (&b, 2, "train-10171-0-img0")
            );
            assert_eq!((first_path, *first_line), (&a, 3));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // With skip_bad the duplicate is skipped and the rest converted.
    let opts = ConvertOptions {
        skip_bad: true,
        ..opts
    };
    let report = convert(&opts, |_| {}).unwrap();
    assert_eq!(
        (report.images, report.skipped, report.regions),
        (5, 1, 14 + 5)
    );
}

#[test]
fn skip_bad_skips_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.tsv", &with_column(1, 1, "x"));
    let out = dir.path().join("store");
    let opts = ConvertOptions {
        tsv: vec![p],
        out: out.clone(),
        dtype: StoreDtype::F32,
        skip_bad: true,
    };
    let report = convert(&opts, |_| {}).unwrap();
    assert_eq!((report.images, report.skipped, report.regions), (3, 1, 9));
    let store = msp_features::FeatureStore::open(&out).unwrap();
    assert_eq!(store.row("2375429"), None);
    assert_eq!(store.row("n_differs"), Some(2));
}

#[test]
fn f16_overflow_and_existing_output() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "big.tsv",
        &with_column(1, 9, &b64_f32(&[70000.0; 5 * 8])),
    );
    let out = dir.path().join("store");
    let opts = ConvertOptions {
        tsv: vec![p.clone()],
        out: out.clone(),
        dtype: StoreDtype::F16,
        skip_bad: false,
    };
    let err = convert(&opts, |_| {}).unwrap_err();
    assert_eq!(
        (err.line(), err.field()),
        (Some(2), Some("features")),
        "{err}"
    );
    assert!(!out.exists());
    // With skip_bad the line is skipped.
    let skip = ConvertOptions {
        skip_bad: true,
        out: dir.path().join("skipped"),
        ..opts.clone()
    };
    let report = convert(&skip, |_| {}).unwrap();
    assert_eq!((report.images, report.skipped, report.regions), (3, 1, 9));
    // f32 has the range; then a second conversion to the same place is refused.
    let opts = ConvertOptions {
        dtype: StoreDtype::F32,
        ..opts
    };
    convert(&opts, |_| {}).unwrap();
    assert!(matches!(
        convert(&opts, |_| {}),
        Err(FeatureError::OutputExists { .. })
    ));
}

#[test]
fn writer_rejects_inconsistent_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = TsvWriter::create(dir.path().join("w.tsv")).unwrap();
    let good = TsvRecord {
        img_id: "a".into(),
        img_h: 10,
        img_w: 10,
        objects_id: vec![1, 2],
        objects_conf: vec![0.5, 0.5],
        attrs_id: vec![1, 2],
        attrs_conf: vec![0.5, 0.5],
        boxes: vec![[0.0, 0.0, 1.0, 1.0]; 2],
        features: vec![0.0; 6],
    };
    w.write(&good).unwrap();
    let bad = TsvRecord {
        objects_conf: vec![0.5],
        ..good.clone()
    };
    assert_eq!(w.write(&bad).unwrap_err().field(), Some("objects_conf"));
    let bad = TsvRecord {
        features: vec![0.0; 8],
        ..good.clone()
    };
    assert_eq!(w.write(&bad).unwrap_err().field(), Some("features"));
    let bad = TsvRecord {
        img_id: "a\tb".into(),
        ..good
    };
    assert_eq!(w.write(&bad).unwrap_err().field(), Some("img_id"));
}
