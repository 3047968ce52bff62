//! SPEC §10 for the commands that write data: a `synth` or `features convert` killed
//! (SIGKILL) at any point leaves nothing at its output path that a later run or a loader would
//! take for complete, and the same command then produces exactly the uninterrupted output; a
//! full disk or an unwritable destination gives a clear error naming the file and leaves no
//! partial output.
//!
//! Kill points are `msp_features::pause_point`s (`MSP_TEST_PAUSE_AT=<point>#<n>`): the process
//! stops there and says so on stderr, and the test kills it.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use msp_features::FeatureStore;
use msp_synth::World;

fn xtask(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(args).env("RUST_BACKTRACE", "0");
    c
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn presets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/presets")
}

fn run_ok(args: &[&str]) {
    let out = xtask(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs until the pause point is reached and SIGKILLs the process there.
fn run_until_killed(args: &[&str], point: &str) {
    let mut child = xtask(args)
        .env(msp_features::PAUSE_ENV, point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.starts_with(msp_features::PAUSED_MARKER) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return;
        }
    }
    let status = child.wait().unwrap();
    panic!("{args:?} ended ({status}) without reaching {point}:\n{log}");
}

/// Every entry of a directory except hidden temporaries (`.name.tmp-PID`) of killed runs
/// (a rerun removes those).
fn visible(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn all(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn tree_bytes(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            for (k, v) in tree_bytes(&p) {
                out.insert(Path::new(p.file_name().unwrap()).join(k), v);
            }
        } else {
            out.insert(
                PathBuf::from(p.file_name().unwrap()),
                std::fs::read(&p).unwrap(),
            );
        }
    }
    out
}

#[test]
fn killed_synth_and_convert_leave_nothing_that_looks_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let synth = |out: &Path| {
        vec![
            "synth".to_string(),
            "--preset".into(),
            "smoke".into(),
            "--seed".into(),
            "3".into(),
            "--out".into(),
            s(out).into(),
            "--presets-dir".into(),
            s(&presets()).into(),
        ]
    };
    let reference = root.join("reference");
    let a = synth(&reference);
    run_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let killed = root.join("killed");
    std::fs::create_dir(&killed).unwrap();
    let world = killed.join("world");
    let a = synth(&world);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    // Early (vocabularies written) and late (every file and world.json written, not renamed).
    for point in ["synth.world.vocab", "synth.world.rename"] {
        run_until_killed(&a, point);
        assert!(!world.exists(), "{point}: a killed synth left {world:?}");
        assert!(World::open(&world).is_err());
        assert!(
            visible(&killed).is_empty(),
            "{point}: {:?}",
            visible(&killed)
        );
    }
    run_ok(&a);
    // The rerun removed the killed runs' temporaries.
    assert_eq!(all(&killed), ["world"]);
    let w = World::open(&world).unwrap();
    let r = World::open(&reference).unwrap();
    assert_eq!(w.manifest().files, r.manifest().files, "not the same world");
    w.verify().unwrap();

    // features convert, killed after 5 records and just before its final rename.
    let tsv = reference.join("features/train_obj36.tsv");
    let convert = |out: &Path| {
        vec![
            "features".to_string(),
            "convert".into(),
            "--tsv".into(),
            s(&tsv).into(),
            "--out".into(),
            s(out).into(),
            "--dtype".into(),
            "f32".into(),
        ]
    };
    let ref_store = root.join("ref-store");
    let a = convert(&ref_store);
    run_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let stores = root.join("stores");
    std::fs::create_dir(&stores).unwrap();
    let store = stores.join("train");
    let a = convert(&store);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    for point in ["features.convert.record#5", "features.convert.rename"] {
        run_until_killed(&a, point);
        assert!(!store.exists(), "{point}: a killed convert left {store:?}");
        assert!(FeatureStore::open(&store).is_err());
        assert!(
            visible(&stores).is_empty(),
            "{point}: {:?}",
            visible(&stores)
        );
    }
    run_ok(&a);
    assert_eq!(all(&stores), ["train"]);
    assert_eq!(tree_bytes(&store), tree_bytes(&ref_store));
    assert_eq!(FeatureStore::open(&store).unwrap().len(), 32);
}

/// Runs xtask with the file-size limit `blocks` × 512 bytes and SIGXFSZ ignored, so a write
/// past the limit fails with EFBIG ("File too large") as it would with ENOSPC on a full disk.
fn with_file_size_limit(blocks: u32, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {blocks} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn assert_clean_failure(out: &std::process::Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded:\n{stderr}");
    assert!(
        out.status.code().is_some(),
        "killed: {}\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for w in words {
        assert!(stderr.contains(w), "no {w:?} in:\n{stderr}");
    }
}

#[test]
fn full_disk_or_unwritable_output_gives_a_clear_error_and_no_partial_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // A TSV of 40 images × 10 boxes × 64-d features (about 140 KB).
    let tsv = root.join("in.tsv");
    let mut w = msp_features::TsvWriter::create(&tsv).unwrap();
    for i in 0..40 {
        let n = 10;
        w.write(&msp_features::TsvRecord {
            img_id: format!("img{i}"),
            img_h: 100,
            img_w: 100,
            objects_id: vec![1; n],
            objects_conf: vec![0.5; n],
            attrs_id: vec![2; n],
            attrs_conf: vec![0.5; n],
            boxes: vec![[1.0, 2.0, 50.0, 60.0]; n],
            features: (0..n * 64).map(|k| k as f32 * 0.01).collect(),
        })
        .unwrap();
    }
    w.finish().unwrap();

    // Disk full: the store's feature data outgrows a 32 KB limit.
    let dest = root.join("full");
    std::fs::create_dir(&dest).unwrap();
    let store = dest.join("store");
    let out = with_file_size_limit(
        64,
        &["features", "convert", "--tsv", s(&tsv), "--out", s(&store)],
    );
    assert_clean_failure(&out, &["File too large", s(&dest)]);
    assert!(all(&dest).is_empty(), "left behind: {:?}", all(&dest));

    // The same for a synthetic world (its TSVs and stores are the big files).
    let world = dest.join("world");
    let out = with_file_size_limit(
        64,
        &[
            "synth",
            "--preset",
            "smoke",
            "--out",
            s(&world),
            "--presets-dir",
            s(&presets()),
        ],
    );
    assert_clean_failure(&out, &["File too large", s(&dest)]);
    assert!(all(&dest).is_empty(), "left behind: {:?}", all(&dest));

    // An output whose parent is a file, not a directory.
    let file = root.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let bad = file.join("store");
    let out = xtask(&["features", "convert", "--tsv", s(&tsv), "--out", s(&bad)])
        .output()
        .unwrap();
    assert_clean_failure(&out, &["Not a directory", s(&file)]);
    assert_eq!(std::fs::read(&file).unwrap(), b"x");

    // A read-only directory. Root ignores permission bits, so this part only runs where
    // they are enforced (checked by trying to write there).
    let ro = root.join("read-only");
    std::fs::create_dir(&ro).unwrap();
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    std::fs::set_permissions(&ro, perms).unwrap();
    let enforced = std::fs::write(ro.join("probe"), "x").is_err();
    if enforced {
        let out = xtask(&[
            "features",
            "convert",
            "--tsv",
            s(&tsv),
            "--out",
            s(&ro.join("store")),
        ])
        .output()
        .unwrap();
        assert_clean_failure(&out, &["Permission denied", s(&ro)]);
        assert!(all(&ro).is_empty(), "left behind: {:?}", all(&ro));
    } else {
        std::fs::remove_file(ro.join("probe")).unwrap();
    }
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&ro, perms).unwrap();
}
