// Shared loading of the committed fixture (made by tests/data/make_fixture.py with numpy).
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

pub fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(data("fixture_expected.json")).unwrap()).unwrap()
}

/// f32 values written by Python as the f64 repr of an f32: parse and narrow (exact).
pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn f32rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(f32s).collect()
}

pub fn i64s(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
