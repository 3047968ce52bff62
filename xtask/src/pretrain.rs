//! `cargo xtask pretrain`: the multi-stage pre-training of LXMERT-S (msp-curriculum).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use msp_curriculum::{
    parse_device, pretrain, resolve_config, Event, Preset, PretrainData, RunConfig, RunDir,
    RunOutcome, Schedule, StageSummary,
};
use msp_synth::{World, WorldConfig, WorldSpec};
use msp_tasks::Task;

/// Arguments of `cargo xtask pretrain`.
#[derive(clap::Args, Debug)]
pub struct PretrainArgs {
    /// Preset (`data/presets/<name>.toml`: `[model]`, `[pretrain]`, and `[world]` for the
    /// synthetic data): smoke, tiny, tiny-gated, small, paper-shape.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Stages in order (`T,P,S`, `P,S`, `S`, `S,P,T`) or the joint mix `T+P+S`.
    #[arg(long, default_value = "T,P,S")]
    pub schedule: String,
    /// Remove a task from every stage (repeatable): `--without TITP --without ITM-HS`.
    #[arg(long)]
    pub without: Vec<String>,
    /// Data directory (the layout `cargo xtask synth` writes); default: the preset's
    /// synthetic world, generated once into `worlds/<preset>-seed<S>`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run directory (default `runs/<preset>-<schedule>`); running again resumes.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed of the model init, data order and masks (and of the synthetic world).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory of the preset files.
    #[arg(long)]
    pub presets_dir: Option<PathBuf>,
    /// Print the run summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The data directory: `--data`, or the preset's synthetic world (cached).
pub fn data_dir(
    preset: &str,
    seed: u64,
    data: Option<PathBuf>,
    presets_dir: &std::path::Path,
) -> anyhow::Result<PathBuf> {
    if let Some(d) = data {
        return Ok(d);
    }
    let config = WorldConfig::from_preset(presets_dir, preset)?;
    let dir = PathBuf::from("worlds").join(format!("{preset}-seed{seed}"));
    std::fs::create_dir_all("worlds").context("creating worlds/")?;
    let spec = WorldSpec {
        preset: preset.to_string(),
        seed,
        config,
    };
    eprintln!("synthetic world {}", dir.display());
    let world = World::open_or_generate(&dir, &spec, &mut |_| {})?;
    Ok(world.dir().to_path_buf())
}

/// The default run directory of a preset and schedule: `runs/<preset>-<schedule>`.
pub fn default_out(preset: &str, schedule: &Schedule) -> PathBuf {
    PathBuf::from("runs").join(format!(
        "{preset}-{}",
        schedule.to_string().replace(',', "").replace('+', "j")
    ))
}

/// One pre-training run with progress bars: resolves the configuration, trains (or resumes)
/// every stage into `out`, and returns the configuration and the stage summaries.
#[allow(clippy::too_many_arguments)]
pub fn pretrain_with_progress(
    preset_name: &str,
    preset: &Preset,
    schedule: &Schedule,
    without: &[Task],
    seed: u64,
    data: &PretrainData,
    out: &std::path::Path,
    device: &candle_core::Device,
) -> anyhow::Result<(RunConfig, Vec<StageSummary>)> {
    let cfg = resolve_config(preset_name, preset, schedule, without, seed, data)?;
    let run_dir = RunDir::new(out);
    let style =
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg} {elapsed}<{eta}")
            .context("progress template")?
            .progress_chars("=> ");
    let mut bar: Option<ProgressBar> = None;
    let outcome = pretrain(&cfg, data, &run_dir, device, &mut |e| {
        match e {
            Event::StageStart {
                name,
                total_steps,
                done_steps,
                ..
            } => {
                let b = ProgressBar::new(*total_steps).with_style(style.clone());
                b.set_prefix(name.to_string());
                b.set_position(*done_steps);
                if *done_steps > 0 {
                    eprintln!("{name}: resuming at update {done_steps}/{total_steps}");
                }
                bar = Some(b);
            }
            Event::StageSkipped { name, .. } => eprintln!("{name}: already done, skipped"),
            Event::Step {
                step,
                loss,
                samples_per_s,
                ..
            } => {
                if let Some(b) = &bar {
                    b.set_position(*step);
                    b.set_message(format!("loss {loss:.4} {samples_per_s:.1} samples/s"));
                }
            }
            Event::StageEnd { summary } => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                let losses: Vec<String> = summary
                    .final_metrics
                    .iter()
                    .filter(|(k, _)| k.starts_with("loss."))
                    .map(|(k, v)| format!("{}={v:.4}", &k[5..]))
                    .collect();
                eprintln!(
                    "{}: {} updates, {:.1} s, {:.1} samples/s; final {}",
                    summary.name,
                    summary.steps,
                    summary.seconds,
                    summary.samples_per_s,
                    losses.join(" ")
                );
            }
        }
        ControlFlow::Continue(())
    })?;
    let RunOutcome::Finished(summaries) = outcome else {
        anyhow::bail!("pre-training stopped before the end");
    };
    Ok((cfg, summaries))
}

/// Opens the pre-training data of a directory, saying what it holds.
pub fn open_data(data_dir: &std::path::Path, preset: &Preset) -> anyhow::Result<PretrainData> {
    let t0 = Instant::now();
    let data = PretrainData::open(data_dir, preset.pretrain.phrase_max_words)
        .with_context(|| format!("reading data {}", data_dir.display()))?;
    eprintln!(
        "data: {} images, {} label texts, {} phrase texts, {} captions ({:.1} s)",
        data.store.len(),
        data.labels.len(),
        data.phrases.len(),
        data.captions.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(data)
}

/// Runs `pretrain`.
pub fn run(args: PretrainArgs) -> anyhow::Result<()> {
    let presets_dir = args
        .presets_dir
        .clone()
        .unwrap_or_else(crate::synth::default_presets_dir);
    let preset = Preset::load(&presets_dir, &args.preset)?;
    let schedule: Schedule = args.schedule.parse()?;
    let without = args
        .without
        .iter()
        .map(|t| t.parse::<Task>())
        .collect::<Result<Vec<_>, _>>()?;
    let device = parse_device(&args.device)?;
    let data_dir = data_dir(&args.preset, args.seed, args.data.clone(), &presets_dir)?;
    let data = open_data(&data_dir, &preset)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&args.preset, &schedule));
    let start = Instant::now();
    let (_, summaries) = pretrain_with_progress(
        &args.preset,
        &preset,
        &schedule,
        &without,
        args.seed,
        &data,
        &out,
        &device,
    )?;
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        let v = serde_json::json!({
            "run": out,
            "seconds": seconds,
            "stages": summaries,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "pre-training done in {seconds:.1} s: {} (metrics.jsonl, summary.json, plots/)",
            out.display()
        );
    }
    Ok(())
}
