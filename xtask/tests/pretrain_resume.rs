//! Kills a real `xtask pretrain` process mid-run, runs the same command again and checks
//! that it resumes, finishes, and does not redo the finished stage.

use std::path::Path;
use std::process::Command;

const PRESET: &str = r#"
[model]
hidden_size = 32
num_attention_heads = 2
intermediate_size = 64
x_layers = 1
max_position_embeddings = 40

[pretrain]
lr = 1e-4
warmup = 0.1
optimizer = "bertadam"
grad_clip = 1.0
accumulation = 1
max_len = 16
token_max_len = 32
phrase_max_words = 12
checkpoint_every = 1
log_every = 1
workers = 2
token = { epochs = 1, batch_size = 8 }
phrase = { epochs = 2, batch_size = 4 }
sentence = { epochs = 1, batch_size = 8, max_steps = 3 }
"#;

fn xtask(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(args).current_dir(cwd);
    c
}

#[test]
fn killed_pretrain_resumes_without_redoing_finished_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
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
        root,
    )
    .output()
    .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let run = root.join("run");
    let args = [
        "pretrain",
        "--preset",
        "mini",
        "--presets-dir",
        presets.to_str().unwrap(),
        "--data",
        world.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--seed",
        "5",
    ];
    // Session 1: kill the process as soon as the phrase stage has a checkpoint.
    let mut child = xtask(&args, root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let phrase_state = run.join("stage-1-phrase/state.json");
    loop {
        if phrase_state.exists() {
            child.kill().unwrap();
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pre-training ended ({status}) before it could be interrupted");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.wait().unwrap();
    let token_done = run.join("stage-0-token/done");
    assert!(token_done.exists());
    assert!(!run.join("stage-2-sentence/done").exists());
    let token_ckpt = run.join("stage-0-token/checkpoint.safetensors");
    let before = std::fs::metadata(&token_ckpt).unwrap().modified().unwrap();

    // Session 2: the same command resumes and finishes.
    let out = xtask(&args, root).arg("--json").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("token: already done, skipped"), "{stderr}");
    assert!(stderr.contains("phrase: resuming at update"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    assert_eq!(stages[0]["skipped"], true);
    assert_eq!(stages[2]["steps"], 3);
    for s in ["stage-0-token", "stage-1-phrase", "stage-2-sentence"] {
        assert!(run.join(s).join("done").exists(), "{s}");
    }
    let after = std::fs::metadata(&token_ckpt).unwrap().modified().unwrap();
    assert_eq!(before, after, "the finished token stage was redone");

    // A different command on the same run directory is refused with a clear message.
    let mut other: Vec<&str> = args.to_vec();
    other.extend(["--schedule", "S"]);
    let out = xtask(&other, root).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("different configuration"), "{stderr}");
}
