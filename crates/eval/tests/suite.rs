//! The whole downstream suite on a generated smoke world: every task runs through the real
//! loaders, writes predictions in the public formats (re-scored here from the files), gives
//! metrics in range, and a second run reuses the results on disk.

use std::path::{Path, PathBuf};

use msp_curriculum::{resolve_config, Preset, PretrainData};
use msp_eval::{
    run_suite, score_file, Backbone, DownstreamData, DownstreamTask, FinetuneConfig, ScoredTask,
    SuiteEvent,
};
use msp_synth::{layout, World, WorldConfig, WorldSpec};

fn presets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/presets")
}

#[test]
fn committed_presets_have_finetune_tables() {
    for name in [
        "smoke",
        "tiny",
        "tiny-gated",
        "small",
        "paper-shape",
        "paper",
    ] {
        let c = FinetuneConfig::load(&presets(), name);
        assert!(c.is_ok(), "{name}: {c:?}");
    }
}

#[test]
fn smoke_suite_end_to_end_and_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = WorldSpec {
        preset: "smoke".into(),
        seed: 5,
        config: WorldConfig::from_preset(&presets(), "smoke").unwrap(),
    };
    let w = World::generate(tmp.path().join("world"), &spec, &mut |_| {}).unwrap();
    let preset = Preset::load(&presets(), "smoke").unwrap();
    let pdata = PretrainData::open(w.dir(), preset.pretrain.phrase_max_words).unwrap();
    let cfg = resolve_config("smoke", &preset, &"S".parse().unwrap(), &[], 1, &pdata).unwrap();
    let backbone = Backbone::random(cfg.model, preset.model.variant().unwrap());
    let data = DownstreamData::open(w.dir()).unwrap();
    let ft = FinetuneConfig::load(&presets(), "smoke").unwrap();
    let out = tmp.path().join("downstream");
    let dev = candle_core::Device::Cpu;
    let mut started = Vec::new();
    let res = run_suite(
        &backbone,
        &data,
        &ft,
        &DownstreamTask::ALL,
        3,
        &out,
        &dev,
        &mut |e| {
            if let SuiteEvent::TaskStart(t) = e {
                started.push(*t);
            }
        },
    )
    .unwrap();
    assert_eq!(started, DownstreamTask::ALL);

    let pct = |x: f64| (0.0..=100.0).contains(&x);
    let vqa = res.vqa.as_ref().unwrap();
    let gqa = res.gqa.as_ref().unwrap();
    let nlvr2 = res.nlvr2.as_ref().unwrap();
    assert!(pct(vqa.valid_accuracy) && pct(vqa.test_accuracy));
    assert_eq!(vqa.train.epochs.len(), 2);
    assert!(vqa.train.best_epoch >= 1 && vqa.train.best_epoch <= 2);
    // The best epoch is the one with the highest validation accuracy, and the valid
    // predictions written after reloading it score exactly that.
    let best = vqa
        .train
        .epochs
        .iter()
        .map(|e| e.valid.unwrap())
        .fold(f64::MIN, f64::max);
    assert!((vqa.valid_accuracy - best).abs() < 1e-6, "{vqa:?}");

    // Prediction files are in the public formats and score the same through `score_file`.
    let s = score_file(
        ScoredTask::Vqa,
        &vqa.predictions.1,
        &w.dir().join(layout::VQA[2]),
    )
    .unwrap();
    assert!((s.accuracy - vqa.test_accuracy).abs() < 1e-6);
    assert_eq!(s.n, vqa.n.1);
    let s = score_file(
        ScoredTask::Gqa,
        &gqa.predictions.1,
        &w.dir().join(layout::GQA[2]),
    )
    .unwrap();
    assert!((s.accuracy - gqa.test_accuracy).abs() < 1e-6);
    let s = score_file(
        ScoredTask::Nlvr2,
        &nlvr2.predictions.1,
        &w.dir().join(layout::NLVR2[2]),
    )
    .unwrap();
    assert!((s.accuracy - nlvr2.test_accuracy).abs() < 1e-6);
    let csv = std::fs::read_to_string(&nlvr2.predictions.1).unwrap();
    assert!(
        csv.lines()
            .all(|l| l.ends_with(",True") || l.ends_with(",False")),
        "{csv}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&gqa.predictions.0).unwrap()).unwrap();
    assert!(v[0]["questionId"].is_string() && v[0]["prediction"].is_string());

    // Retrieval: 8 test images × 5 captions, every metric a percentage, R@k monotone.
    for s in [
        res.zero_shot.unwrap(),
        res.retrieval.as_ref().unwrap().scores,
    ] {
        assert_eq!((s.images, s.captions), (8, 40));
        assert_eq!((s.ir.n, s.tr.n, s.tr_first_caption.n), (40, 8, 8));
        for r in [s.ir, s.tr, s.tr_first_caption] {
            assert!(pct(r.r1) && r.r1 <= r.r5 && r.r5 <= r.r10, "{r:?}");
            // Fewer than 10 candidates for TR-first: every image is within the top 10.
        }
        assert_eq!(s.tr_first_caption.r10, 100.0);
    }
    // The best-weights file is removed once a task is done; results stay.
    for t in ["vqa", "gqa", "nlvr2", "retrieval"] {
        assert!(!out.join(t).join("best.safetensors").exists());
        assert!(out.join(t).join("result.json").exists());
    }

    // A second run finds every result on disk.
    let mut cached = 0;
    let again = run_suite(
        &backbone,
        &data,
        &ft,
        &DownstreamTask::ALL,
        3,
        &out,
        &dev,
        &mut |e| {
            if matches!(e, SuiteEvent::TaskCached(_)) {
                cached += 1;
            }
            assert!(!matches!(e, SuiteEvent::TaskStart(_)));
        },
    )
    .unwrap();
    assert_eq!(cached, 5);
    assert_eq!(again, res);

    // Other fine-tuning settings never reuse those results.
    let mut other = ft.clone();
    other.lr *= 2.0;
    let e = run_suite(
        &backbone,
        &data,
        &other,
        &DownstreamTask::ALL,
        3,
        &out,
        &dev,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("config.json") && e.contains("another configuration"),
        "{e}"
    );
}

#[test]
fn unknown_image_names_the_file_and_record() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = WorldSpec {
        preset: "smoke".into(),
        seed: 6,
        config: WorldConfig::from_preset(&presets(), "smoke").unwrap(),
    };
    let w = World::generate(tmp.path().join("world"), &spec, &mut |_| {}).unwrap();
    let path = w.dir().join(layout::NLVR2[1]);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v[2]["img1"] = "424242".into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let data = DownstreamData::open(w.dir()).unwrap();
    let e = msp_eval::Nlvr2Data::read(&data, 20, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("valid.json") && e.contains("record 2") && e.contains("424242"),
        "{e}"
    );
}
