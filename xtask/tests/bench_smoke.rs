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
    let paper = bench_json(
        &[
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
        ],
        dir.path(),
    );
    assert_eq!(
        paper["params"].as_u64(),
        Some(128_821_544),
        "HF LXMERT l=r=0, x=5"
    );
    positive(&paper, "/runs/0/samples_per_s/median");
    positive(&paper, "/runs/0/split/backward_s");
    // The analytic count at 4 tokens, 3 regions, 1 masked token, by hand (see forward_flops):
    // 3 × 2 × (visual 3·768·2052 + 5 × cross layer + pooler + heads) multiply-adds.
    let (h, i, l, n) = (768.0f64, 3072.0f64, 4.0f64, 3.0f64);
    let self_layer = |t: f64| 4.0 * h * h * t + 2.0 * t * t * h + 2.0 * h * i * t;
    let cross = 4.0 * h * h * (l + n) + 4.0 * l * n * h;
    let macs = n * h * 2052.0
        + 5.0 * (cross + self_layer(l) + self_layer(n))
        + h * h
        + 2.0 * h
        + (h * h + h * 30522.0)
        + n * (h * h + h * (1600.0 + 400.0 + 2048.0))
        + 2.0 * h * h
        + 2.0 * h * 9500.0;
    let flop = positive(&paper, "/train_gflop_per_sample") * 1e9;
    assert!(
        (flop - 6.0 * macs).abs() / flop < 1e-9,
        "{flop} vs {}",
        6.0 * macs
    );

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
