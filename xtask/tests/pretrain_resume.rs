//! Kills a real `xtask pretrain` process (SIGKILL) at several deterministic points — during a
//! stage, while a checkpoint is being written, after a checkpoint is committed, just before a
//! stage is marked done — runs the same command again each time, and checks that it resumes,
//! finishes, never redoes a finished stage, and ends with the weights of an uninterrupted run.
//!
//! The points are `msp_features::pause_point`s: with `MSP_TEST_PAUSE_AT=<point>#<n>` the
//! process stops at the n-th occurrence and says so on stderr; the test then kills it.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::Tensor;

/// The smoke preset's sizes, made smaller and shorter, with dropout: the trainer reseeds the
/// dropout stream per micro-batch, so a resumed run draws the uninterrupted run's masks.
const PRESET: &str = r#"
[model]
hidden_size = 32
num_attention_heads = 2
intermediate_size = 64
x_layers = 1
max_position_embeddings = 40
dropout = 0.1

[pretrain]
lr = 1e-4
warmup = 0.1
optimizer = "bertadam"
grad_clip = 1.0
accumulation = 1
max_len = 16
token_max_len = 32
phrase_max_words = 12
checkpoint_every = 2
log_every = 1
workers = 2
token = { epochs = 2, batch_size = 8 }
phrase = { epochs = 1, batch_size = 8 }
sentence = { epochs = 1, batch_size = 8, max_steps = 4 }
"#;

fn xtask(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(args).current_dir(cwd).env("RUST_BACKTRACE", "0");
    c
}

/// Runs until the pause point `point` is reached, SIGKILLs the process there and returns its
/// stderr; fails if the process ends without reaching the point.
fn run_until_killed(args: &[&str], cwd: &Path, point: &str) -> String {
    let mut child = xtask(args, cwd)
        .env(msp_features::PAUSE_ENV, point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut log = String::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.starts_with(msp_features::PAUSED_MARKER) {
            child.kill().unwrap(); // SIGKILL
            let status = child.wait().unwrap();
            assert!(!status.success());
            return log;
        }
    }
    let status = child.wait().unwrap();
    panic!("the run ended ({status}) without reaching {point}:\n{log}");
}

fn run_to_end(args: &[&str], cwd: &Path) -> (String, serde_json::Value) {
    let out = xtask(args, cwd).arg("--json").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (stderr, serde_json::from_slice(&out.stdout).unwrap())
}

fn weights(path: &Path) -> HashMap<String, Tensor> {
    msp_model::read_safetensors(path).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// (modification time, bytes) of a file, to prove it was not rewritten.
fn stamp(path: &Path) -> (std::time::SystemTime, Vec<u8>) {
    (
        std::fs::metadata(path).unwrap().modified().unwrap(),
        std::fs::read(path).unwrap(),
    )
}

fn steps_logged(run: &Path, stage: &str) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["stage"] == stage)
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    presets: PathBuf,
    world: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let presets = root.join("presets");
    std::fs::create_dir_all(&presets).unwrap();
    std::fs::write(presets.join("mini.toml"), PRESET).unwrap();
    let world = root.join("world");
    let smoke_presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/presets");
    let st = xtask(
        &[
            "synth",
            "--preset",
            "smoke",
            "--seed",
            "1",
            "--out",
            world.to_str().unwrap(),
            "--presets-dir",
            smoke_presets.to_str().unwrap(),
        ],
        &root,
    )
    .output()
    .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    Setup {
        _tmp: tmp,
        root,
        presets,
        world,
    }
}

fn args<'a>(s: &'a Setup, run: &'a Path) -> Vec<&'a str> {
    vec![
        "pretrain",
        "--preset",
        "mini",
        "--presets-dir",
        s.presets.to_str().unwrap(),
        "--data",
        s.world.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--seed",
        "5",
    ]
}

#[test]
fn killed_pretrain_resumes_without_redoing_finished_stages_and_matches_an_uninterrupted_run() {
    let s = setup();
    let root = s.root.as_path();

    // The reference: one uninterrupted run. Stages: token 8 updates (2 epochs × 4 batches),
    // phrase 4, sentence 4; a checkpoint every 2 updates.
    let reference = root.join("reference");
    let (_, v) = run_to_end(&args(&s, &reference), root);
    let steps: Vec<u64> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["steps"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [8, 4, 4]);

    let run = root.join("run");
    let a = args(&s, &run);
    let token = run.join("stage-0-token");
    // 1. Mid-stage, between checkpoints: after update 3 (update 2 is checkpointed).
    run_until_killed(&a, root, "pretrain.step#3");
    assert!(token.join("checkpoint-2.safetensors").exists());
    assert!(!token.join("done").exists());
    // 2. While the next checkpoint is written: weights and moments of update 4 are on disk,
    //    state.json (the commit point) still names update 2.
    let log = run_until_killed(&a, root, "pretrain.checkpoint.weights#1");
    assert!(log.contains("token: resuming at update 2/8"), "{log}");
    assert!(token.join("checkpoint-4.safetensors").exists());
    let state = std::fs::read_to_string(token.join("state.json")).unwrap();
    assert!(state.contains("\"checkpoint-2.safetensors\""), "{state}");
    // 3. After the stage's final checkpoint, before its `done` marker.
    let log = run_until_killed(&a, root, "pretrain.stage.done#1");
    assert!(log.contains("token: resuming at update 2/8"), "{log}");
    assert!(!token.join("done").exists());
    // 4. The token stage completes with no update left; then the phrase stage is killed just
    //    after its first checkpoint commit (commit #1 is the token stage's final one), before
    //    old generations are removed.
    let log = run_until_killed(&a, root, "pretrain.checkpoint.committed#2");
    assert!(log.contains("token: resuming at update 8/8"), "{log}");
    assert!(token.join("done").exists());
    let token_ckpt = token.join("checkpoint.safetensors");
    let before = stamp(&token_ckpt);
    // 5. To the end.
    let (log, v) = run_to_end(&a, root);
    assert!(log.contains("token: already done, skipped"), "{log}");
    assert!(log.contains("phrase: resuming at update 2/4"), "{log}");
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    assert_eq!(stages[0]["skipped"], true);
    assert_eq!(stages[2]["steps"], 4);
    for st in ["stage-0-token", "stage-1-phrase", "stage-2-sentence"] {
        let dir = run.join(st);
        assert!(dir.join("done").exists(), "{st}");
        // No stale generation or temporary file is left in a finished stage.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "checkpoint.safetensors",
                "done",
                "optimizer.safetensors",
                "state.json"
            ],
            "{st}"
        );
    }
    assert!(
        stamp(&token_ckpt) == before,
        "the finished token stage was rewritten"
    );
    // Every update logged exactly once, as in the reference.
    for stage in ["token", "phrase", "sentence"] {
        assert_eq!(
            steps_logged(&run, stage),
            steps_logged(&reference, stage),
            "{stage}"
        );
    }
    // The final weights equal the uninterrupted run's.
    let got = weights(&run.join("stage-2-sentence/checkpoint.safetensors"));
    let want = weights(&reference.join("stage-2-sentence/checkpoint.safetensors"));
    assert_eq!(got.len(), want.len());
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(g.dims(), w.dims(), "{name}");
        let d = max_abs_diff(g, w);
        assert!(d <= 1e-5, "{name}: max |Δ| = {d}");
    }

    // A different command on the same run directory is refused with a clear message.
    let mut other = a.clone();
    other.extend(["--schedule", "S"]);
    let out = xtask(&other, root).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("different configuration"), "{stderr}");
}
