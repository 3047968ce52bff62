//! SPEC §10, systematically: walks the bad-input corpus `tests/data/bad/` (written by its
//! `make_corpus.py`, plus the fuzzers' regression cases `fuzz-*`) through the real commands
//! and APIs. Every case must fail with an error whose message contains the words of its
//! `<case>.expect` sidecar and the case's own file name, must not panic, and must leave
//! nothing at the output path (nor any temporary file next to it).
//!
//! The corpus is organised by kind (a directory); names starting with `_` are support files
//! shared by the cases of their kind. A directory that is not a known kind fails the test, so
//! no case is silently skipped.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

use msp_eval::{DownstreamData, QaData, QaKind};
use msp_features::{convert, ConvertOptions, StoreDtype};
use msp_text::{downstream::read_vqa_checked, AnswerVocab, LabelVocab};

/// Every kind of the corpus and whether its cases are directories (else files).
const KINDS: &[(&str, bool)] = &[
    ("tsv", false),
    ("store", true),
    ("json/vqa", false),
    ("json/gqa", false),
    ("json/nlvr2", false),
    ("json/vqa_vocab", false),
    ("json/answer_vocab", true),
    ("json/refs", false),
    ("json/coco", false),
    ("json/lxmert", false),
    ("json/vg", false),
    ("json/flickr30k", false),
    ("vocab", false),
    ("vocab/labels", false),
    ("checkpoint", false),
    ("config/preset", false),
    ("config/model", false),
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/bad")
}

/// How one case went: the error message, or why the case itself failed.
type Outcome = Result<String, String>;

/// Runs the CLI on a bad input: it must exit non-zero (not by a signal) without a panic; the
/// message is stderr.
fn cli(args: &[&Path], cwd: &Path) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .map_err(|e| format!("could not run xtask: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return Err(format!("exited 0 (accepted the bad input)\n{stderr}"));
    }
    if out.status.code().is_none() {
        return Err(format!("killed by a signal ({})\n{stderr}", out.status));
    }
    if stderr.contains("panicked") {
        return Err(format!("panicked\n{stderr}"));
    }
    Ok(stderr)
}

/// Calls an API on a bad input: it must return `Err` without panicking.
fn api<T, E: std::fmt::Display>(f: impl FnOnce() -> Result<T, E>) -> Outcome {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(_) => Err("panicked".into()),
        Ok(Ok(_)) => Err("returned Ok (accepted the bad input)".into()),
        Ok(Err(e)) => Ok(e.to_string()),
    }
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// Copies a directory tree (the support data of `json/refs`).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A VQA data directory from `json/refs/_data` (store converted from its TSV) with `train`
/// as the train split.
fn refs_data(dir: &Path, train: &Path, tmp: &Path) -> Result<QaData, msp_eval::EvalError> {
    let data = tmp.join("data");
    copy_tree(&dir.join("_data"), &data);
    let tsv = data.join("regions.tsv");
    convert(
        &ConvertOptions {
            tsv: vec![tsv.clone()],
            out: data.join("features/train"),
            dtype: StoreDtype::F32,
            skip_bad: false,
        },
        |_| {},
    )
    .unwrap();
    std::fs::remove_file(tsv).unwrap();
    std::fs::copy(train, data.join("vqa/train.json")).unwrap();
    let d = DownstreamData::open(&data)?;
    QaData::read(QaKind::Vqa, &d, 12, true)
}

/// Runs one case of `kind`; `tmp` is an empty directory for outputs (it must be empty
/// again afterwards, apart from what the harness itself put there).
fn run_case(kind: &str, dir: &Path, case: &Path, tmp: &Path) -> Outcome {
    let out = tmp.join("out");
    let stem = case.file_stem().unwrap().to_string_lossy().into_owned();
    match kind {
        "tsv" => cli(
            &[
                &p("features"),
                &p("convert"),
                &p("--tsv"),
                case,
                &p("--out"),
                &out,
                &p("--dtype"),
                &p("f32"),
            ],
            tmp,
        ),
        "store" => cli(
            &[
                &p("features"),
                &p("show"),
                &p("--store"),
                case,
                &p("--img-id"),
                &p("img0"),
            ],
            tmp,
        ),
        "json/vqa" | "json/gqa" | "json/nlvr2" => {
            let task = kind.trim_start_matches("json/");
            let pred = if task == "nlvr2" {
                dir.join("_pred.csv")
            } else {
                dir.join("_pred.json")
            };
            cli(
                &[
                    &p("eval"),
                    &p("score"),
                    &p("--task"),
                    &p(task),
                    &p("--pred"),
                    &pred,
                    &p("--gold"),
                    case,
                ],
                tmp,
            )
        }
        "json/vqa_vocab" => {
            let v = AnswerVocab::read(dir.join("_ans2label.json"), dir.join("_label2ans.json"))
                .map_err(|e| format!("support vocabulary: {e}"))?;
            api(|| read_vqa_checked(case, Some(&v)))
        }
        "json/answer_vocab" => {
            api(|| AnswerVocab::read(case.join("ans2label.json"), case.join("label2ans.json")))
        }
        "json/refs" => {
            let msg = api(|| refs_data(dir, case, tmp));
            std::fs::remove_dir_all(tmp.join("data")).unwrap();
            msg
        }
        "json/coco" => api(|| msp_text::read_coco_captions(case)),
        "json/lxmert" => api(|| msp_text::read_lxmert_pretrain(case)),
        "json/vg" => api(|| msp_text::for_each_vg_image(case, |_| Ok(()))),
        "json/flickr30k" => api(|| msp_text::read_flickr30k(case)),
        "vocab" => cli(
            &[
                &p("text"),
                &p("encode"),
                &p("--vocab"),
                case,
                &p("--max-len"),
                &p("8"),
                &p("--text"),
                &p("a cat"),
            ],
            tmp,
        ),
        "vocab/labels" => api(|| LabelVocab::read(case)),
        "checkpoint" => {
            let args = forward_args(dir, case, &out);
            let args: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
            cli(&args, tmp)
        }
        "config/preset" => cli(
            &[
                &p("pretrain"),
                &p("--preset"),
                &p(&stem),
                &p("--presets-dir"),
                dir,
                &p("--data"),
                &tmp.join("no-data"),
                &p("--out"),
                &out,
            ],
            tmp,
        ),
        "config/model" => cli(&[&p("model"), &p("params"), &p("--config"), case], tmp),
        other => Err(format!("no runner for kind {other}")),
    }
}

fn forward_args(dir: &Path, weights: &Path, out: &Path) -> Vec<PathBuf> {
    [
        p("model"),
        p("forward"),
        p("--config"),
        dir.join("_config.json"),
        p("--weights"),
        weights.to_path_buf(),
        p("--inputs"),
        dir.join("_inputs.safetensors"),
        p("--out"),
        out.to_path_buf(),
        p("--variant"),
        p("lxmert"),
    ]
    .to_vec()
}

fn cli_ok(args: &[PathBuf], cwd: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The expected words of a case (`<case>.expect`: one per line, `#` comments).
fn expected(case: &Path) -> Vec<String> {
    let sidecar = case.with_extension("expect");
    let text =
        std::fs::read_to_string(&sidecar).unwrap_or_else(|e| panic!("{}: {e}", sidecar.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The cases of a kind, sorted; checks that every `.expect` has its case.
fn cases(dir: &Path, dirs: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut sidecars = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('_') {
            continue;
        }
        if name.ends_with(".expect") {
            sidecars.push(path);
        } else if path.is_dir() == dirs {
            out.push(path);
        }
    }
    for s in sidecars {
        let case = s.with_extension("");
        let has_case = out.iter().any(|c| c.with_extension("") == case);
        assert!(has_case, "{}: no case for this sidecar", s.display());
    }
    out.sort();
    out
}

/// Every directory of the corpus is a kind, a case of a directory kind, or support data.
fn check_layout(root: &Path, rel: &str) {
    for e in std::fs::read_dir(root.join(rel)).unwrap() {
        let path = e.unwrap().path();
        if !path.is_dir() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let sub = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let parent_is_dir_kind = KINDS.iter().any(|(k, dirs)| *k == rel && *dirs);
        if name.starts_with('_') || parent_is_dir_kind {
            continue;
        }
        let is_kind = KINDS.iter().any(|(k, _)| *k == sub);
        let has_kinds_below = KINDS.iter().any(|(k, _)| k.starts_with(&format!("{sub}/")));
        assert!(
            is_kind || has_kinds_below,
            "{}: not a kind of the corpus (add a runner for it)",
            path.display()
        );
        check_layout(root, &sub);
    }
}

#[test]
fn every_bad_input_fails_with_a_clear_error_and_leaves_nothing() {
    let root = corpus();
    check_layout(&root, "");
    let mut failures = Vec::new();
    let mut count = 0;
    for (kind, dirs) in KINDS {
        let dir = root.join(kind);
        for case in cases(&dir, *dirs) {
            count += 1;
            let tmp = tempfile::tempdir().unwrap();
            let name = case.file_name().unwrap().to_string_lossy().into_owned();
            let mut words = expected(&case);
            // `json/refs` copies its case into a data directory as `vqa/train.json`, the
            // name its .expect asks for instead.
            if *kind != "json/refs" {
                words.push(name);
            }
            let outcome = run_case(kind, &dir, &case, tmp.path()).and_then(|msg| {
                let missing: Vec<&String> = words.iter().filter(|w| !msg.contains(*w)).collect();
                if missing.is_empty() {
                    Ok(msg)
                } else {
                    Err(format!("message lacks {missing:?}:\n{msg}"))
                }
            });
            let left: Vec<String> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let outcome = outcome.and_then(|m| {
                if left.is_empty() {
                    Ok(m)
                } else {
                    Err(format!("left behind in the output directory: {left:?}"))
                }
            });
            if let Err(why) = outcome {
                failures.push(format!("{kind}/{}: {why}", case.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // The corpus covers every class of issue 8 (more than one case for most).
    assert!(count >= 70, "only {count} cases");
}

/// The support data the cases are variations of is itself valid, so each case fails for
/// the one thing it changes.
#[test]
fn the_corpus_base_inputs_are_valid() {
    let root = corpus();
    let tmp = tempfile::tempdir().unwrap();
    cli_ok(
        &[
            p("features"),
            p("show"),
            p("--store"),
            root.join("store/_good"),
            p("--img-id"),
            p("img1"),
        ],
        tmp.path(),
    );
    let ck = root.join("checkpoint");
    let out = tmp.path().join("out.safetensors");
    cli_ok(
        &forward_args(&ck, &ck.join("_good.safetensors"), &out),
        tmp.path(),
    );
    assert!(out.exists());
    let refs = root.join("json/refs");
    let qa = refs_data(&refs, &refs.join("_data/vqa/minival.json"), tmp.path()).unwrap();
    assert_eq!(qa.train.examples.len(), 1);
    let v = root.join("json/vqa_vocab");
    let vocab = AnswerVocab::read(v.join("_ans2label.json"), v.join("_label2ans.json")).unwrap();
    assert_eq!(vocab.len(), 3);
}
