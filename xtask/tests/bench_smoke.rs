//! The benchmark commands run end to end with one step (their numbers are not checked:
//! speed is measured by running them, never asserted in tests).

use std::path::Path;
use std::process::Command;

fn bench_json(args: &[&str], cwd: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .current_dir(cwd)
        .output()
        .expect("xtask runs");
    assert!(
        out.status.success(),
        "bench {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bench prints JSON")
}

fn positive(v: &serde_json::Value, pointer: &str) -> f64 {
    let x = v
        .pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing in {v}"));
    assert!(x.is_finite() && x > 0.0, "{pointer} = {x}");
    x
}

/// Multiply-adds of one forward pass of HF's LXMERT (l = r = 0) with its pre-training heads
/// but no QA head, at 4 tokens, 3 regions and 1 masked token, by hand: visual encoders
/// (features + 4 box coordinates), `x` cross layers (cross-attention both ways, then a
/// self-attention layer and an FFN per side; the last layer's language self-attention
/// queries and FFN on 3 rows: row 0, the forced masked row and, for a batch of 2, the
/// expected most of the other two masked at 15%, 1 − 0.7225² + 1 − 0.9775² = 0.52, rounded),
/// pooler, ITM, MLM at the masked token, the object head's transform and its `classes`
/// (object and attribute) outputs on every region, its feature decoder (to `feat`) at the one
/// masked region of the 3 (⌈0.15 · 3⌉).
fn hf_macs(h: f64, i: f64, x: f64, vocab: f64, feat: f64, classes: f64) -> f64 {
    let (l, n, last) = (4.0, 3.0, 3.0);
    let self_rows = |q: f64, t: f64| 2.0 * h * h * (q + t) + 2.0 * q * t * h + 2.0 * h * i * q;
    let cross = 4.0 * h * h * (l + n) + 4.0 * l * n * h;
    n * h * (feat + 4.0)
        + (x - 1.0) * (cross + self_rows(l, l) + self_rows(n, n))
        + cross
        + self_rows(last, l)
        + self_rows(n, n)
        + h * h
        + 2.0 * h
        + (h * h + h * vocab)
        + n * (h * h + h * classes)
        + h * feat
}

/// The report's analytic FLOPs per example-step are 3 passes × 2 × `macs`.
fn assert_train_flops(report: &serde_json::Value, macs: f64) {
    let flop = positive(report, "/train_gflop_per_sample") * 1e9;
    assert!(
        (flop - 6.0 * macs).abs() / flop < 1e-9,
        "{flop} vs {}",
        6.0 * macs
    );
}

#[test]
fn bench_gemm_and_train_run_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let gemm = bench_json(
        &["gemm", "--square", "64", "--rows", "32", "--reps", "1"],
        dir.path(),
    );
    assert_eq!(gemm["shapes"].as_array().map(Vec::len), Some(5));
    positive(&gemm, "/peak_gflops");

    // The paper workload (HF heads on a random batch), shrunk to 2 examples of 4 tokens.
    let paper_workload = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            "paper",
            "--batch",
            "2",
            "--text-len",
            "4",
            "--regions",
            "3",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--gemm-peak",
            "100",
        ];
        args.extend_from_slice(extra);
        bench_json(&args, dir.path())
    };
    let paper = paper_workload(&[]);
    assert_eq!(
        paper["params"].as_u64(),
        Some(128_821_544),
        "HF LXMERT l=r=0, x=5"
    );
    positive(&paper, "/runs/0/samples_per_s/median");
    assert_eq!(paper["last_language_rows"], 3);
    positive(&paper, "/runs/0/split/backward_s");
    // The analytic count at 4 tokens, 3 regions, 1 masked token, by hand (see forward_flops).
    let macs = hf_macs(768.0, 3072.0, 5.0, 30522.0, 2048.0, 1600.0 + 400.0)
        + 2.0 * 768.0 * (768.0 + 9500.0);
    assert_train_flops(&paper, macs);

    // The same workload at other sizes (`--model-config`, what `bench compare --config tiny`
    // passes both sides): hidden 64, FFN 128, 2 cross layers, no QA head.
    let sizes = dir.path().join("sizes.json");
    std::fs::write(
        &sizes,
        r#"{"vocab_size": 100, "hidden_size": 64, "num_attention_heads": 4,
            "intermediate_size": 128, "x_layers": 2, "visual_feat_dim": 16,
            "max_position_embeddings": 32, "num_qa_labels": 0, "num_object_labels": 7,
            "num_attr_labels": 5, "cls_token_id": 2}"#,
    )
    .unwrap();
    let small = paper_workload(&["--model-config", sizes.to_str().unwrap()]);
    // By hand: embeddings 100·64 + 32·64 + 2·64 + LN; visual encoders 16·64+64 + 4·64+64 + 2
    // LNs; per cross layer 3 attention blocks (4 (h² + h) + LN) and 2 FFNs (2·h·128 + 128 + h
    // + LN); pooler; MLM transform + LN + decoder bias (tied weights); ITM; object head
    // (transform + LN, decoders to 7 / 5 / 16).
    let (h, i, v) = (64u64, 128u64, 100u64);
    let attention = 4 * (h * h + h) + 2 * h;
    let ffn = 2 * h * i + i + h + 2 * h;
    let params = (v * h + 32 * h + 2 * h + 2 * h)
        + (16 * h + h + 2 * h + 4 * h + h + 2 * h)
        + 2 * (3 * attention + 2 * ffn)
        + (h * h + h)
        + (h * h + h + 2 * h + v)
        + (2 * h + 2)
        + (h * h + h + 2 * h + (h * 7 + 7) + (h * 5 + 5) + (h * 16 + 16));
    assert_eq!(small["params"].as_u64(), Some(params));
    assert_eq!(params, 192_578);
    let macs = hf_macs(64.0, 128.0, 2.0, 100.0, 16.0, 7.0 + 5.0);
    assert_train_flops(&small, macs);
    assert_eq!(small["precision"], "f32");

    // The same with bf16 products (`--precision`, a global flag), and its GEMM peak.
    let bf16 = paper_workload(&[
        "--model-config",
        sizes.to_str().unwrap(),
        "--precision",
        "bf16",
    ]);
    assert_eq!(bf16["precision"], "bf16");
    assert_eq!(bf16["params"].as_u64(), Some(params));
    positive(&bf16, "/runs/0/samples_per_s/median");
    let gemm = bench_json(
        &[
            "gemm",
            "--square",
            "64",
            "--rows",
            "32",
            "--reps",
            "1",
            "--precision",
            "bf16",
        ],
        dir.path(),
    );
    positive(&gemm, "/peak_gflops");

    // A preset on its synthetic world: in-memory batch, loader, loader alone.
    let smoke = bench_json(
        &[
            "train",
            "--config",
            "smoke",
            "--batch",
            "4",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--loader-batches",
            "2",
            "--gemm-peak",
            "100",
        ],
        dir.path(),
    );
    assert_eq!(smoke["runs"].as_array().map(Vec::len), Some(2));
    positive(&smoke, "/runs/1/samples_per_s/median");
    positive(&smoke, "/loader/batches_per_s");
    positive(&smoke, "/loader_over_step");
    assert!(dir.path().join("worlds/smoke-seed0/world.json").exists());
}

#[test]
fn model_config_with_a_preset_is_an_error_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "bench",
            "train",
            "--config",
            "tiny",
            "--model-config",
            "sizes.json",
        ])
        .current_dir(dir.path())
        .output()
        .expect("xtask runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--model-config sizes.json applies to `--config paper` only"),
        "{err}"
    );
}

#[test]
fn compare_runs_both_sides_with_the_same_sizes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for PyTorch's side: records its arguments, reports 2 samples/s.
    let fake = dir.path().join("fake-python");
    let seen = dir.path().join("torch-args.txt");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" > '{}'\necho '{{\"samples_per_s\": {{\"median\": 2.0}}}}'\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let compare = |extra: &[&str]| {
        let mut args = vec![
            "compare",
            "--config",
            "smoke",
            "--python",
            fake.to_str().unwrap(),
            "--rounds",
            "1",
            "--batch",
            "2",
            "--steps",
            "1",
            "--gemm-peak",
            "100",
        ];
        args.extend_from_slice(extra);
        let cmp = bench_json(&args, dir.path());
        let torch_args = std::fs::read_to_string(&seen).unwrap();
        (cmp, torch_args)
    };
    let (cmp, args) = compare(&[]);
    let ours = &cmp["rounds"][0]["msp"];
    // The GEMM peak given to compare is the one the msp side reports against.
    assert_eq!(ours["gemm_peak_gflops"].as_f64(), Some(100.0));
    let sps = positive(ours, "/runs/0/samples_per_s/median");
    let ratio = positive(&cmp, "/median_ratio");
    assert!(
        (ratio - sps / 2.0).abs() < 1e-9 * ratio,
        "{ratio} vs {sps} / 2"
    );
    // PyTorch's side got the batch, the steps, the device and the preset's sizes that msp
    // ran with, in f32 on both sides.
    let words: Vec<&str> = args.split_whitespace().collect();
    let after = |flag: &str| {
        let i = words.iter().position(|w| *w == flag);
        i.and_then(|i| words.get(i + 1).copied())
            .unwrap_or_else(|| panic!("{flag} missing in {args}"))
    };
    assert_eq!(after("--batch"), "2");
    assert_eq!(after("--steps"), "1");
    assert_eq!(after("--device"), "cpu");
    assert_eq!(after("--text-len"), ours["text_len"].to_string());
    assert_eq!(after("--regions"), ours["regions"].to_string());
    assert!(after("--model-config").ends_with(".json"), "{args}");
    assert_eq!(ours["precision"], "f32");
    assert!(!words.contains(&"--bf16"), "{args}");

    // With bf16 products: msp runs them, PyTorch runs under autocast.
    let (cmp, args) = compare(&["--precision", "bf16"]);
    assert_eq!(cmp["rounds"][0]["msp"]["precision"], "bf16");
    assert!(args.split_whitespace().any(|w| w == "--bf16"), "{args}");
}
