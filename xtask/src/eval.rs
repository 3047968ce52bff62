//! `cargo xtask finetune` and `cargo xtask eval score`: downstream fine-tuning of a
//! pre-trained run (msp-eval) and scoring of prediction files.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use msp_curriculum::{files, parse_device};
use msp_eval::{
    run_suite, score_file, Backbone, DownstreamData, DownstreamResults, DownstreamTask,
    FinetuneConfig, Progress, ScoredTask, SuiteEvent,
};

/// Arguments of `cargo xtask finetune`.
#[derive(clap::Args, Debug)]
pub struct FinetuneArgs {
    /// Pre-training run directory (`runs/NAME`); its last stage's checkpoint is the start.
    #[arg(long)]
    pub run: PathBuf,
    /// Preset whose `[finetune]` table gives the schedule.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Data directory (default: the run's).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Tasks (repeatable): vqa, gqa, nlvr2, zero-shot, retrieval. Default: all.
    #[arg(long)]
    pub task: Vec<String>,
    /// Output directory (default `<run>/downstream`); running again skips finished tasks.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed of the heads' init and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory of the preset files.
    #[arg(long)]
    pub presets_dir: Option<PathBuf>,
}

/// Arguments of `cargo xtask eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(clap::Subcommand, Debug)]
enum EvalCommand {
    /// Score a predictions file (VQA/GQA JSON, NLVR2 CSV) against a gold JSON file.
    Score {
        /// vqa, gqa or nlvr2.
        #[arg(long)]
        task: String,
        /// Predictions file.
        #[arg(long)]
        pred: PathBuf,
        /// Gold file (the downstream JSON of the data directory).
        #[arg(long)]
        gold: PathBuf,
        /// Print `{"task", "accuracy", "n"}` as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `eval`.
pub fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    match args.command {
        EvalCommand::Score {
            task,
            pred,
            gold,
            json,
        } => {
            let task: ScoredTask = task.parse()?;
            let s = score_file(task, &pred, &gold)?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!(
                    "{:?}: accuracy {:.2} % over {} items",
                    s.task, s.accuracy, s.n
                );
            }
            Ok(())
        }
    }
}

/// A progress-bar handler for [`run_suite`] events.
pub fn suite_progress() -> impl FnMut(&SuiteEvent<'_>) {
    let style =
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} {elapsed}<{eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let mut bar: Option<ProgressBar> = None;
    let mut current = String::new();
    move |e| match e {
        SuiteEvent::TaskStart(t) => {
            current = t.name().to_string();
            eprintln!("{}: fine-tuning / evaluating", t.name());
        }
        SuiteEvent::TaskCached(t) => eprintln!("{}: result on disk, skipped", t.name()),
        SuiteEvent::TaskEnd(t, s) => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            eprintln!("{}: done in {s:.1} s", t.name());
        }
        SuiteEvent::Progress(p) => match p {
            Progress::Start { total, .. } => {
                let b = ProgressBar::new(*total).with_style(style.clone());
                b.set_prefix(current.clone());
                bar = Some(b);
            }
            Progress::Step { step, loss } => {
                if let Some(b) = &bar {
                    b.set_position(*step);
                    b.set_message(format!("loss {loss:.4}"));
                }
            }
            Progress::Epoch(e) => {
                let msg = format!(
                    "{} epoch {}: loss {:.4}{} ({:.1} s, {:.1} samples/s)",
                    current,
                    e.epoch,
                    e.loss,
                    e.valid
                        .map(|v| format!(", valid {v:.2}"))
                        .unwrap_or_default(),
                    e.seconds,
                    e.samples_per_s
                );
                match &bar {
                    Some(b) if !b.is_hidden() => b.println(msg),
                    _ => eprintln!("{msg}"),
                }
            }
            Progress::Eval { what, done, total } => {
                if let Some(b) = &bar {
                    b.set_message(format!("eval {what} {done}/{total}"));
                } else if done == total {
                    eprintln!("{current}: evaluated {what} ({total})");
                }
            }
        },
    }
}

/// Parses `--task` values (default: every task).
pub fn parse_tasks(tasks: &[String]) -> anyhow::Result<Vec<DownstreamTask>> {
    if tasks.is_empty() {
        return Ok(DownstreamTask::ALL.to_vec());
    }
    Ok(tasks
        .iter()
        .map(|t| t.parse::<DownstreamTask>())
        .collect::<Result<_, _>>()?)
}

/// Runs `finetune`.
pub fn run_finetune(args: FinetuneArgs) -> anyhow::Result<()> {
    let presets_dir = args
        .presets_dir
        .clone()
        .unwrap_or_else(crate::synth::default_presets_dir);
    let cfg = FinetuneConfig::load(&presets_dir, &args.preset)?;
    let device = parse_device(&args.device)?;
    let nested = args.run.join(crate::reproduce::PRETRAIN_DIR);
    if !args.run.join(files::CONFIG).exists() && nested.join(files::CONFIG).exists() {
        anyhow::bail!(
            "{} is a reproduce run, not a pre-training run (no {}): pass --run {}",
            args.run.display(),
            files::CONFIG,
            nested.display()
        );
    }
    let backbone = Backbone::from_run(&args.run)?;
    let data_dir = match args.data.clone() {
        Some(d) => d,
        // The data directory the run was pre-trained on.
        None => PathBuf::from(msp_curriculum::RunDir::new(&args.run).read_config()?.data),
    };
    let data = DownstreamData::open(&data_dir)?;
    let tasks = parse_tasks(&args.task)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.run.join("downstream"));
    let mut progress = suite_progress();
    let res: DownstreamResults = run_suite(
        &backbone,
        &data,
        &cfg,
        &tasks,
        args.seed,
        &out,
        &device,
        &mut progress,
    )?;
    println!("{}", serde_json::to_string_pretty(&res)?);
    Ok(())
}
