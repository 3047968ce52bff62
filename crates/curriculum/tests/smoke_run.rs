//! A real smoke run on a generated synthetic world: T,P,S end to end, interrupted and
//! resumed, finished stages not redone, a different configuration refused.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use msp_curriculum::{
    files, pretrain, resolve_config, CurriculumError, Event, Preset, PretrainData, RunDir,
    RunOutcome,
};
use msp_synth::{World, WorldConfig, WorldSpec};

/// Mid-stage checkpoint generations (`checkpoint-<step>` / `optimizer-<step>`) in a stage dir.
fn generation_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-") || n.starts_with("optimizer-"))
        .collect();
    names.sort();
    names
}

fn presets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/presets")
}

fn world(dir: &Path) -> World {
    let config = WorldConfig::from_preset(&presets(), "smoke").unwrap();
    let spec = WorldSpec {
        preset: "smoke".into(),
        seed: 3,
        config,
    };
    World::generate(dir.join("world"), &spec, &mut |_| {}).unwrap()
}

#[test]
fn smoke_tps_interrupted_resumes_and_skips_finished_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let preset = Preset::load(&presets(), "smoke").unwrap();
    let data = PretrainData::open(w.dir(), preset.pretrain.phrase_max_words).unwrap();
    assert!(!data.labels.is_empty() && !data.phrases.is_empty() && !data.captions.is_empty());
    let cfg = resolve_config("smoke", &preset, &"T,P,S".parse().unwrap(), &[], 7, &data).unwrap();
    let run = RunDir::new(tmp.path().join("run"));
    let dev = candle_core::Device::Cpu;

    // Session 1: stop (like a kill) after 3 updates of the phrase stage.
    let mut phrase_steps = 0;
    let out = pretrain(&cfg, &data, &run, &dev, &mut |e| match e {
        Event::Step {
            stage: "phrase", ..
        } => {
            phrase_steps += 1;
            if phrase_steps == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        _ => ControlFlow::Continue(()),
    })
    .unwrap();
    assert_eq!(out, RunOutcome::Stopped);
    let token = run.stage_dir(0, "token");
    let phrase = run.stage_dir(1, "phrase");
    assert!(token.join(files::DONE).exists());
    assert!(!phrase.join(files::DONE).exists());
    // checkpoint_every = 2: the phrase stage has a mid-stage checkpoint at step 2.
    let st = RunDir::read_state(&phrase).unwrap().unwrap();
    assert_eq!(st.step, 2);
    assert!(!st.finished);
    // The mid-stage checkpoint is one generation, named by state.json (the commit point).
    assert_eq!(st.checkpoint_file, "checkpoint-2.safetensors");
    assert_eq!(st.optimizer_file, "optimizer-2.safetensors");
    assert_eq!(
        generation_files(&phrase),
        ["checkpoint-2.safetensors", "optimizer-2.safetensors"]
    );
    let token_ckpt_time = std::fs::metadata(token.join(files::CHECKPOINT))
        .unwrap()
        .modified()
        .unwrap();

    // Session 2: same command → resumes; token is skipped, phrase resumes at step 2.
    let mut events = Vec::new();
    let out = pretrain(&cfg, &data, &run, &dev, &mut |e| {
        match e {
            Event::StageSkipped { name, .. } => events.push(format!("skip {name}")),
            Event::StageStart {
                name, done_steps, ..
            } => events.push(format!("start {name} at {done_steps}")),
            _ => {}
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(
        events,
        vec!["skip token", "start phrase at 2", "start sentence at 0"]
    );
    let RunOutcome::Finished(summaries) = out else {
        panic!("not finished")
    };
    assert_eq!(summaries.len(), 3);
    assert!(summaries[0].skipped && !summaries[1].skipped);
    assert_eq!(
        std::fs::metadata(token.join(files::CHECKPOINT))
            .unwrap()
            .modified()
            .unwrap(),
        token_ckpt_time,
        "a finished stage was rewritten"
    );
    for (i, s) in ["token", "phrase", "sentence"].iter().enumerate() {
        assert!(run.stage_dir(i, s).join(files::DONE).exists());
        assert!(run.plot(s).exists());
        // A finished stage keeps only the plainly named final checkpoint.
        assert!(run.stage_dir(i, s).join(files::CHECKPOINT).exists());
        assert!(generation_files(&run.stage_dir(i, s)).is_empty());
    }
    // The metrics log has each phrase step exactly once, and every active task's loss.
    let lines = run.read_metrics().unwrap();
    let phrase_steps: Vec<u64> = lines
        .iter()
        .filter(|l| l["stage"] == "phrase")
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    let n = phrase_steps.len() as u64;
    assert_eq!(phrase_steps, (1..=n).collect::<Vec<_>>());
    let s = lines.iter().find(|l| l["stage"] == "sentence").unwrap();
    for k in [
        "loss.MLM",
        "loss.MRFR",
        "loss.MOC",
        "loss.TITS",
        "loss.ITM-HS",
        "loss.total",
        "acc.ITM-HS",
        "lr",
        "samples_per_s",
        "epoch",
    ] {
        assert!(s.get(k).is_some(), "{k} missing in {s}");
    }
    // The pooled vector's health: |x| of a tanh product lies in [0, 1], its spread ≥ 0.
    for l in &lines {
        let (m, sd) = (
            l["pooled.abs_mean"].as_f64(),
            l["pooled.batch_std"].as_f64(),
        );
        assert!(matches!(m, Some(m) if (0.0..=1.0).contains(&m)), "{l}");
        assert!(matches!(sd, Some(sd) if (0.0..=1.0).contains(&sd)), "{l}");
    }
    let t = lines.iter().find(|l| l["stage"] == "token").unwrap();
    assert!(t.get("loss.IFRS").is_some());
    assert!(t.get("loss.TITS").is_none());
    assert!(run.root.join(files::SUMMARY).exists());

    // A third call does nothing but skip.
    let mut starts = 0;
    pretrain(&cfg, &data, &run, &dev, &mut |e| {
        if matches!(e, Event::StageStart { .. }) {
            starts += 1;
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(starts, 0);

    // Another configuration in the same directory is refused.
    let other = resolve_config("smoke", &preset, &"P,S".parse().unwrap(), &[], 7, &data).unwrap();
    let e = pretrain(
        &other,
        &data,
        &run,
        &dev,
        &mut |_| ControlFlow::Continue(()),
    );
    assert!(
        matches!(&e, Err(CurriculumError::ConfigMismatch { reason, .. }) if reason.contains("schedule")),
        "{e:?}"
    );
}

#[test]
fn joint_mix_draws_batches_from_every_source() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let mut preset = Preset::load(&presets(), "smoke").unwrap();
    // One epoch of 32 label texts and 32 phrase texts in batches of 16, and 160 captions
    // in batches of 32: 2 + 2 + 5 batches.
    preset.pretrain.sentence.epochs = 1;
    preset.pretrain.sentence.max_steps = None;
    preset.pretrain.token.batch_size = 16;
    preset.pretrain.phrase.batch_size = 16;
    preset.pretrain.sentence.batch_size = 32;
    let data = PretrainData::open(w.dir(), preset.pretrain.phrase_max_words).unwrap();
    let cfg = resolve_config("smoke", &preset, &"T+P+S".parse().unwrap(), &[], 9, &data).unwrap();
    assert_eq!(cfg.stages.len(), 1);
    let run = RunDir::new(tmp.path().join("run"));
    let out = pretrain(&cfg, &data, &run, &candle_core::Device::Cpu, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(matches!(out, RunOutcome::Finished(ref s) if s[0].steps == 9));
    let lines = run.read_metrics().unwrap();
    assert_eq!(lines.len(), 9);
    // Each update is one source's batch: its own topic/IFRS/matching task shows which.
    let has = |k: &str| lines.iter().filter(|l| l.get(k).is_some()).count();
    assert_eq!(
        (has("loss.IFRS"), has("loss.TITP"), has("loss.TITS")),
        (2, 2, 5)
    );
    // Interleaved, not one source after the other.
    let order: Vec<bool> = lines.iter().map(|l| l.get("loss.TITS").is_some()).collect();
    assert!(
        order.windows(2).filter(|w| w[0] != w[1]).count() > 1,
        "{order:?}"
    );
    assert!(run.stage_dir(0, "joint").join(files::DONE).exists());
}

#[test]
fn missing_text_source_fails_only_the_stage_that_needs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    std::fs::remove_file(w.path(msp_synth::layout::VG_REGIONS)).unwrap();
    let data = PretrainData::open(w.dir(), 20).unwrap();
    assert!(data.phrases.is_empty());
    assert!(data.examples(msp_curriculum::TextSource::Captions).is_ok());
    assert!(matches!(
        data.examples(msp_curriculum::TextSource::Phrases),
        Err(CurriculumError::Data { reason, .. }) if reason.contains("phrase")
    ));
}

#[test]
fn stage_loss_weights_make_the_logged_total() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let mut preset = Preset::load(&presets(), "smoke").unwrap();
    preset.pretrain.sentence.max_steps = Some(2);
    preset.pretrain.sentence.loss_weights = [
        ("MLM".to_string(), 2.0),
        ("MRFR".to_string(), 0.0),
        ("MOC".to_string(), 0.0),
        ("TITS".to_string(), 0.0),
        ("ITM-HS".to_string(), 3.0),
    ]
    .into();
    let data = PretrainData::open(w.dir(), preset.pretrain.phrase_max_words).unwrap();
    let cfg = resolve_config("smoke", &preset, &"S".parse().unwrap(), &[], 5, &data).unwrap();
    let run = RunDir::new(tmp.path().join("run"));
    pretrain(&cfg, &data, &run, &candle_core::Device::Cpu, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let lines = run.read_metrics().unwrap();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let v = |k: &str| {
            l[k].as_f64()
                .unwrap_or_else(|| panic!("{k} missing in {l}"))
        };
        // The per-task values stay unweighted; the total is 2·MLM + 3·ITM-HS.
        assert!(v("loss.MOC") > 0.0);
        let want = 2.0 * v("loss.MLM") + 3.0 * v("loss.ITM-HS");
        assert!((v("loss.total") - want).abs() < 1e-4 * want, "{l}");
    }
}

#[test]
fn micro_batches_side_by_side_make_the_same_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let mut preset = Preset::load(&presets(), "smoke").unwrap();
    // Updates of 3 micro-batches of 8: side by side, a pair and then one alone.
    preset.pretrain.accumulation = 3;
    preset.pretrain.sentence.batch_size = 8;
    preset.pretrain.sentence.max_steps = Some(3);
    let data = PretrainData::open(w.dir(), preset.pretrain.phrase_max_words).unwrap();
    let mut train = |side_by_side: usize| {
        preset.pretrain.side_by_side = side_by_side;
        let cfg = resolve_config("smoke", &preset, &"S".parse().unwrap(), &[], 5, &data).unwrap();
        let run = RunDir::new(tmp.path().join(format!("run-{side_by_side}")));
        pretrain(&cfg, &data, &run, &candle_core::Device::Cpu, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let state = RunDir::read_state(&run.stage_dir(0, "sentence"))
            .unwrap()
            .unwrap();
        assert_eq!((state.step, state.micro_batches, state.samples), (3, 9, 72));
        let weights = candle_core::safetensors::load(
            run.stage_dir(0, "sentence").join(files::CHECKPOINT),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        (run.read_metrics().unwrap(), weights)
    };
    let (one, w1) = train(1);
    let (two, w2) = train(2);
    assert_eq!(one.len(), 3);
    assert_eq!(two.len(), 3);
    // Every update after the first starts from the weights the one before made, so equal
    // losses and gradient norms at steps 2 and 3 also check the summed gradients' update.
    for (a, b) in one.iter().zip(&two) {
        for k in [
            "loss.total",
            "loss.MLM",
            "loss.ITM-HS",
            "grad_norm",
            "pooled.abs_mean",
        ] {
            let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1e-3), "{k}: {x} vs {y}");
        }
    }
    let mut compared = 0;
    for (name, t1) in &w1 {
        let (t1, t2) = (t1.flatten_all().unwrap(), w2[name].flatten_all().unwrap());
        let d = (t1 - t2).unwrap().abs().unwrap().max(0).unwrap();
        let d = d.to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{name}: weights differ by {d}");
        compared += 1;
    }
    assert!(compared > 10);
}

#[test]
fn a_resumed_stage_ends_with_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let mut preset = Preset::load(&presets(), "smoke").unwrap();
    preset.pretrain.sentence.max_steps = Some(5);
    let data = PretrainData::open(w.dir(), preset.pretrain.phrase_max_words).unwrap();
    let cfg = resolve_config("smoke", &preset, &"S".parse().unwrap(), &[], 9, &data).unwrap();
    let dev = candle_core::Device::Cpu;
    let weights = |run: &RunDir| {
        candle_core::safetensors::load(run.stage_dir(0, "sentence").join(files::CHECKPOINT), &dev)
            .unwrap()
    };
    let whole = RunDir::new(tmp.path().join("whole"));
    pretrain(
        &cfg,
        &data,
        &whole,
        &dev,
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    // Stopped after update 3: resumes from the checkpoint of update 2 (checkpoint_every = 2).
    let resumed = RunDir::new(tmp.path().join("resumed"));
    let out = pretrain(&cfg, &data, &resumed, &dev, &mut |e| match e {
        Event::Step { step: 3, .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .unwrap();
    assert_eq!(out, RunOutcome::Stopped);
    pretrain(&cfg, &data, &resumed, &dev, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let (a, b) = (weights(&whole), weights(&resumed));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let (x, y) = (t.flatten_all().unwrap(), b[name].flatten_all().unwrap());
        let d = (x - y).unwrap().abs().unwrap().max(0).unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
}
