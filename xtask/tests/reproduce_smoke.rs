//! The main job end to end: `cargo xtask reproduce --preset smoke` from nothing (world,
//! T→P→S, every downstream task, report), then `eval score` on one of its prediction files,
//! then `finetune` pointed at the reproduce directory (an error naming the run inside it),
//! then a rerun that reuses everything; then a run with bf16 products.

use std::path::Path;
use std::process::Command;

fn xtask(args: &[&str], cwd: &Path) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(cwd)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xtask {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn num(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn reproduce_smoke_writes_the_papers_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/presets");
    let args = [
        "reproduce",
        "--preset",
        "smoke",
        "--out",
        "runs/r",
        "--presets-dir",
        presets.to_str().unwrap(),
    ];
    let out = xtask(&args, root);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for heading in [
        "Table 1",
        "Table 2",
        "Table 3",
        "LXMERT-S, paper (real data)",
    ] {
        assert!(stdout.contains(heading), "{heading} missing:\n{stdout}");
    }
    let run = root.join("runs/r");
    for f in [
        "report.md",
        "report.json",
        "plots/finetune.png",
        "pretrain/summary.json",
        "pretrain/plots/sentence.png",
        "downstream/vqa/test_predict.json",
        "downstream/gqa/test_predict.json",
        "downstream/nlvr2/test_predict.csv",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    assert!(root.join("worlds/smoke-seed0/world.json").exists());

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["preset"], "smoke");
    assert_eq!(report["schedule"], "T,P,S");
    let r = &report["results"];
    let pct = |v: &serde_json::Value| {
        let x = num(v);
        assert!((0.0..=100.0).contains(&x), "{x} not a percentage");
        x
    };
    for t in ["vqa", "gqa", "nlvr2"] {
        pct(&r[t]["valid_accuracy"]);
        pct(&r[t]["test_accuracy"]);
    }
    for s in [&r["zero_shot"], &r["retrieval"]["scores"]] {
        for p in ["ir", "tr", "tr_first_caption"] {
            let (r1, r5, r10) = (pct(&s[p]["r1"]), pct(&s[p]["r5"]), pct(&s[p]["r10"]));
            assert!(r1 <= r5 && r5 <= r10);
        }
    }
    let res = &report["resources"];
    assert!(num(&res["parameters_paper_count"]) > 0.0);
    assert!(num(&res["parameters_total"]) > num(&res["parameters_paper_count"]));
    assert_eq!(res["stage_pairs"].as_array().unwrap().len(), 3);
    assert!(num(&res["seconds"]["total"]) > 0.0);
    // Synthetic world: its text-only and oracle baselines are in the report.
    assert!(!report["baselines"].as_array().unwrap().is_empty());
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("text-only baseline (world.json)") && md.contains("| 71.10 | 71.18 |"));

    // `eval score` on the VQA test predictions gives the report's number.
    let score = xtask(
        &[
            "eval",
            "score",
            "--task",
            "vqa",
            "--pred",
            "runs/r/downstream/vqa/test_predict.json",
            "--gold",
            "worlds/smoke-seed0/vqa/test.json",
            "--json",
        ],
        root,
    );
    let s: serde_json::Value = serde_json::from_slice(&score.stdout).unwrap();
    assert_eq!(s["task"], "vqa");
    assert!((num(&s["accuracy"]) - num(&r["vqa"]["test_accuracy"])).abs() < 1e-6);
    assert_eq!(s["n"], r["vqa"]["n"][1]);

    // `finetune --run` given the reproduce directory says where its pre-training run is.
    let wrong = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "finetune",
            "--run",
            "runs/r",
            "--preset",
            "smoke",
            "--presets-dir",
        ])
        .arg(&presets)
        .current_dir(root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success(), "{err}");
    assert!(
        err.contains("runs/r is a reproduce run") && err.contains("pass --run runs/r/pretrain"),
        "{err}"
    );

    // Running again reuses the world, the pre-training and every downstream result.
    let again = xtask(&args, root);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already done, skipped"), "{err}");
    assert!(err.contains("result on disk, skipped"), "{err}");
    let report2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report2["results"], report["results"]);
    assert_eq!(report["resources"]["device"], "cpu (1 thread)");

    // With bf16 products (VQA only, to keep it short): the report says so.
    let bf16 = [
        "reproduce",
        "--preset",
        "smoke",
        "--out",
        "runs/bf16",
        "--presets-dir",
        presets.to_str().unwrap(),
        "--task",
        "vqa",
        "--precision",
        "bf16",
    ];
    xtask(&bf16, root);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("runs/bf16/report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["resources"]["device"],
        "cpu (1 thread), bf16 products"
    );
    pct(&report["results"]["vqa"]["test_accuracy"]);
}
