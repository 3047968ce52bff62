//! `cargo xtask reproduce` (the main job: world → T→P→S pre-training → every downstream
//! task → the paper's tables) and `cargo xtask ablation` (the paper's Table 4).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use msp_curriculum::{parse_device, plot_series, write_atomic, Preset, PretrainData, Schedule};
use msp_eval::ablation::{table4_markdown, table4_values, AblationRow, COLUMNS};
use msp_eval::report::markdown_table;
use msp_eval::{
    run_suite, Backbone, DownstreamData, DownstreamResults, DownstreamTask, FinetuneConfig, Report,
    Resources, Seconds,
};
use msp_tasks::{Task, TaskSet};

use crate::eval::{parse_tasks, suite_progress};
use crate::pretrain::{data_dir, open_data, pretrain_with_progress};

/// The options `reproduce` and `ablation` share.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Preset (`data/presets/<name>.toml`): smoke, tiny, tiny-gated, small, paper-shape, paper.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Data directory in the layout of `cargo xtask synth` (real data: LXMERT's file
    /// names, see README); default: the preset's synthetic world.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Number of seeds (model init, data order, masks); each seed is a full run.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the synthetic world (the same world for every run seed).
    #[arg(long, default_value_t = 0)]
    pub world_seed: u64,
    /// Downstream tasks (repeatable; default all): vqa, gqa, nlvr2, zero-shot, retrieval.
    #[arg(long)]
    pub task: Vec<String>,
    /// Output directory (default `runs/<command>-<preset>`); running again resumes.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Directory of the preset files.
    #[arg(long)]
    pub presets_dir: Option<PathBuf>,
}

/// Arguments of `cargo xtask reproduce`.
#[derive(clap::Args, Debug)]
pub struct ReproduceArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Pre-training schedule.
    #[arg(long, default_value = "T,P,S")]
    pub schedule: String,
}

/// Arguments of `cargo xtask ablation`.
#[derive(clap::Args, Debug)]
pub struct AblationArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Rows to run (repeatable, numbers 1–13 of Table 4); default all.
    #[arg(long)]
    pub row: Vec<usize>,
}

/// A pre-training variant of Table 4.
struct Variant {
    stages: &'static str,
    tasks: &'static str,
    /// `None`: no pre-training (vanilla).
    schedule: Option<&'static str>,
    without: &'static [&'static str],
    /// Task lists that replace a source's defaults: (source letter, tasks).
    tasks_override: &'static [(char, &'static str)],
}

/// Where a reproduce run keeps its pre-training run (`runs/NAME/pretrain`).
pub const PRETRAIN_DIR: &str = "pretrain";

const ROWS: [Variant; 13] = [
    Variant {
        stages: "vanilla",
        tasks: "none",
        schedule: None,
        without: &[],
        tasks_override: &[],
    },
    Variant {
        stages: "S",
        tasks: "MLM MRFR MOC TITS ITM-HS",
        schedule: Some("S"),
        without: &[],
        tasks_override: &[],
    },
    // Without hard negatives the sentence stage keeps ITM with random negatives (the paper
    // still reports zero-shot retrieval for this row, so a matching head was trained).
    Variant {
        stages: "S",
        tasks: "− ITM-HS (ITM)",
        schedule: Some("S"),
        without: &[],
        tasks_override: &[('S', "MLM,MRFR,MOC,TITS,ITM")],
    },
    Variant {
        stages: "S",
        tasks: "− ITM-HS − TITS (ITM)",
        schedule: Some("S"),
        without: &[],
        tasks_override: &[('S', "MLM,MRFR,MOC,ITM")],
    },
    Variant {
        stages: "T+P+S",
        tasks: "MLM MRFR MOC ITM",
        schedule: Some("T+P+S"),
        without: &[],
        tasks_override: &[
            ('T', "MLM,MRFR,MOC,ITM"),
            ('P', "MLM,MRFR,MOC,ITM"),
            ('S', "MLM,MRFR,MOC,ITM"),
        ],
    },
    Variant {
        stages: "T→S",
        tasks: "MLM MRFR MOC TITS ITM-HS IFRS",
        schedule: Some("T,S"),
        without: &[],
        tasks_override: &[],
    },
    Variant {
        stages: "T→S",
        tasks: "− IFRS",
        schedule: Some("T,S"),
        without: &["IFRS"],
        tasks_override: &[],
    },
    Variant {
        stages: "P→S",
        tasks: "MLM MRFR MOC TITS ITM-HS TITP",
        schedule: Some("P,S"),
        without: &[],
        tasks_override: &[],
    },
    Variant {
        stages: "P→S",
        tasks: "− TITP",
        schedule: Some("P,S"),
        without: &["TITP"],
        tasks_override: &[],
    },
    Variant {
        stages: "T→P→S",
        tasks: "MLM MRFR MOC TITS ITM-HS IFRS TITP",
        schedule: Some("T,P,S"),
        without: &[],
        tasks_override: &[],
    },
    Variant {
        stages: "T→P→S",
        tasks: "− TITP",
        schedule: Some("T,P,S"),
        without: &["TITP"],
        tasks_override: &[],
    },
    Variant {
        stages: "S→P→T",
        tasks: "MLM MRFR MOC TITS ITM-HS IFRS TITP",
        schedule: Some("S,P,T"),
        without: &[],
        tasks_override: &[],
    },
    Variant {
        stages: "P→T→S",
        tasks: "MLM MRFR MOC TITS ITM-HS IFRS TITP",
        schedule: Some("P,T,S"),
        without: &[],
        tasks_override: &[],
    },
];

/// The synthetic world's baselines, when the data directory is a world.
fn baselines(data_dir: &Path) -> Vec<msp_synth::TaskBaseline> {
    msp_synth::World::open(data_dir)
        .map(|w| w.manifest().baselines.clone())
        .unwrap_or_default()
}

/// Everything shared by the runs of one command.
struct Context {
    preset_name: String,
    preset: Preset,
    finetune: FinetuneConfig,
    data_dir: PathBuf,
    data: PretrainData,
    downstream: DownstreamData,
    device: candle_core::Device,
    device_name: String,
    tasks: Vec<DownstreamTask>,
    data_seconds: f64,
}

impl Context {
    fn open(args: &RunArgs) -> anyhow::Result<Self> {
        let (preset_name, device, tasks) = (&args.preset, &args.device, &args.task);
        let t0 = Instant::now();
        let presets_dir = args
            .presets_dir
            .clone()
            .unwrap_or_else(crate::synth::default_presets_dir);
        let preset = Preset::load(&presets_dir, preset_name)?;
        let finetune = FinetuneConfig::load(&presets_dir, preset_name)?;
        let data_dir = data_dir(
            preset_name,
            args.world_seed,
            args.data.clone(),
            &presets_dir,
        )?;
        let data = open_data(&data_dir, &preset)?;
        let downstream = DownstreamData::open(&data_dir)?;
        Ok(Self {
            preset_name: preset_name.to_string(),
            finetune,
            data_dir,
            data,
            downstream,
            device: parse_device(device)?,
            device_name: hardware_name(device),
            tasks: parse_tasks(tasks)?,
            data_seconds: t0.elapsed().as_secs_f64(),
            preset,
        })
    }

    /// Pre-trains (unless `schedule` is None) and runs the downstream suite into `root`.
    fn run_one(
        &self,
        preset: &Preset,
        schedule: Option<&Schedule>,
        without: &[Task],
        seed: u64,
        root: &Path,
    ) -> anyhow::Result<(Report, DownstreamResults)> {
        let t0 = Instant::now();
        let (backbone, stage_pairs, label, pretraining) = match schedule {
            Some(schedule) => {
                let pre = root.join(PRETRAIN_DIR);
                let (cfg, _) = pretrain_with_progress(
                    &self.preset_name,
                    preset,
                    schedule,
                    without,
                    seed,
                    &self.data,
                    &pre,
                    &self.device,
                )?;
                let pairs = cfg
                    .stages
                    .iter()
                    .map(|st| {
                        let n: usize = st
                            .sources
                            .iter()
                            .map(|s| self.data.examples(s.source).map_or(0, <[_]>::len))
                            .sum();
                        (st.name.clone(), n)
                    })
                    .collect();
                let summary = pretraining_summary(&cfg, preset.model.variant()?);
                (
                    Backbone::from_run(&pre)?,
                    pairs,
                    schedule.to_string(),
                    summary,
                )
            }
            None => {
                let cfg = msp_curriculum::resolve_config(
                    &self.preset_name,
                    preset,
                    &"S".parse()?,
                    &[],
                    seed,
                    &self.data,
                )?;
                let variant = preset.model.variant()?;
                (
                    Backbone::random(cfg.model, variant),
                    Vec::new(),
                    "none".into(),
                    "none (random init)".into(),
                )
            }
        };
        let pretrain_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut progress = suite_progress();
        let results = run_suite(
            &backbone,
            &self.downstream,
            &self.finetune,
            &self.tasks,
            seed,
            &root.join("downstream"),
            &self.device,
            &mut progress,
        )?;
        let downstream_s = t1.elapsed().as_secs_f64();
        let params = msp_model::param_count(&backbone.config, backbone.variant)?;
        let report = Report {
            preset: self.preset_name.clone(),
            schedule: label,
            pretraining,
            data: self.data_dir.display().to_string(),
            seed,
            resources: Resources {
                parameters_paper_count: params.paper_count,
                parameters_total: params.total,
                stage_pairs,
                device: self.device_name.clone(),
                seconds: Seconds {
                    data: self.data_seconds,
                    pretrain: pretrain_s,
                    downstream: downstream_s,
                    total: self.data_seconds + pretrain_s + downstream_s,
                },
                peak_rss_bytes: msp_model::peak_rss_bytes(),
            },
            results: results.clone(),
            baselines: baselines(&self.data_dir),
        };
        Ok((report, results))
    }
}

/// What each pre-training stage ran, for the report: tasks and peak learning rate per
/// stage, and whether LXMERT-S's gate on the visual heads was on.
fn pretraining_summary(cfg: &msp_curriculum::RunConfig, variant: msp_model::Variant) -> String {
    let stages: Vec<String> = cfg
        .stages
        .iter()
        .map(|st| {
            let tasks: Vec<String> = st
                .sources
                .iter()
                .map(|s| s.tasks.replace(',', " "))
                .collect();
            let weights: String = st
                .loss_weights
                .iter()
                .map(|(task, w)| format!("; {task} loss ×{w}"))
                .collect();
            format!(
                "{} ({}; lr {:e}{weights})",
                st.name,
                tasks.join(" + "),
                st.lr
            )
        })
        .collect();
    let mut s = stages.join(", ");
    if variant.gated_visual_heads() {
        let on = if cfg.model.gate_visual_heads {
            "on"
        } else {
            "off"
        };
        s.push_str(&format!("; LXMERT-S's gate on the visual heads {on}"));
    }
    s
}

/// Validation curves of the fine-tunings (one line per task) into `path`.
fn plot_finetuning(results: &DownstreamResults, path: &Path) -> anyhow::Result<()> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let logs = [
        ("VQA valid", results.vqa.as_ref().map(|r| &r.train)),
        ("GQA valid", results.gqa.as_ref().map(|r| &r.train)),
        ("NLVR2 valid", results.nlvr2.as_ref().map(|r| &r.train)),
    ];
    for (name, log) in logs {
        if let Some(log) = log {
            let pts: Vec<(f64, f64)> = log
                .epochs
                .iter()
                .filter_map(|e| e.valid.map(|v| (e.epoch as f64, v)))
                .collect();
            if !pts.is_empty() {
                series.insert(name.to_string(), pts);
            }
        }
    }
    if !series.is_empty() {
        plot_series(
            "validation accuracy per fine-tuning epoch",
            ("epoch", "accuracy (%)"),
            &series,
            path,
        )?;
    }
    Ok(())
}

fn write_report(root: &Path, report: &Report) -> anyhow::Result<String> {
    let md = report.markdown();
    write_atomic(&root.join("report.md"), md.as_bytes())?;
    write_atomic(
        &root.join("report.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    plot_finetuning(&report.results, &root.join("plots").join("finetune.png"))?;
    Ok(md)
}

/// Runs `reproduce`.
pub fn run_reproduce(args: ReproduceArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let schedule: Schedule = args.schedule.parse()?;
    let ctx = Context::open(&args.run)?;
    let args = &args.run;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("reproduce-{}", args.preset)));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut row = AblationRow {
        stages: schedule.to_string(),
        tasks: "all".into(),
        seeds: Vec::new(),
    };
    let mut last = String::new();
    for k in 0..args.seeds.max(1) {
        let seed = args.seed + k;
        let root = if args.seeds > 1 {
            out.join(format!("seed{seed}"))
        } else {
            out.clone()
        };
        eprintln!("== seed {seed}: {}", root.display());
        let (mut report, results) = ctx.run_one(&ctx.preset, Some(&schedule), &[], seed, &root)?;
        if k == 0 {
            report.resources.seconds.data = ctx.data_seconds;
        }
        last = write_report(&root, &report)?;
        row.seeds.push(table4_values(&results));
    }
    if args.seeds > 1 {
        let md = format!(
            "# msp reproduce, {} seeds (mean ± sample std)\n\n{}",
            args.seeds,
            table4_markdown(std::slice::from_ref(&row))
        );
        write_atomic(&out.join("seeds.md"), md.as_bytes())?;
        println!("{md}");
    } else {
        println!("{last}");
    }
    println!(
        "reproduce done in {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        out.join("report.md").display()
    );
    Ok(())
}

/// The report's hardware column: the device (the CPU with its thread count), and the
/// products' precision when it is not f32.
fn hardware_name(device: &str) -> String {
    let name = if device == "cpu" {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .map(|n| n.to_string())
            })
            .unwrap_or_default();
        let plural = if threads == "1" { "" } else { "s" };
        format!("cpu ({threads} thread{plural})")
    } else {
        device.to_string()
    };
    match msp_model::ops::precision() {
        msp_model::ops::Precision::F32 => name,
        p => format!("{name}, {p} products"),
    }
}

/// The preset a Table 4 row pre-trains with: `base` with the row's task lists. The row defines
/// the tasks: a preset's own lists (tiny's sentence stage runs ITM instead of ITM-HS) and loss
/// weights (tiny's ITM ×5) give way to the paper's defaults (every loss weighs 1), then to
/// the row's overrides. One exception: `token_dropped`, the tasks `base` drops from the
/// paper's token stage ([`token_stage_dropped`]; tiny drops MLM), stay dropped from every
/// row's token stage.
fn row_preset(base: &Preset, v: &Variant, token_dropped: &[Task]) -> anyhow::Result<Preset> {
    let mut preset = base.clone();
    for stage in [
        &mut preset.pretrain.token,
        &mut preset.pretrain.phrase,
        &mut preset.pretrain.sentence,
    ] {
        stage.tasks = None;
        stage.loss_weights.clear();
    }
    for &(letter, tasks) in v.tasks_override {
        let stage = match letter {
            'T' => &mut preset.pretrain.token,
            'P' => &mut preset.pretrain.phrase,
            _ => &mut preset.pretrain.sentence,
        };
        stage.tasks = Some(tasks.to_string());
    }
    if !token_dropped.is_empty() {
        let token = match &preset.pretrain.token.tasks {
            Some(list) => list.parse::<TaskSet>()?,
            None => TaskSet::token_stage(),
        };
        preset.pretrain.token.tasks = Some(token.without(token_dropped).to_string());
    }
    Ok(preset)
}

/// The paper's token-stage tasks that `preset`'s own token-stage list leaves out (tiny: MLM,
/// which cannot be learned from its label texts and stalls the stages after it).
fn token_stage_dropped(preset: &Preset) -> anyhow::Result<Vec<Task>> {
    let Some(list) = &preset.pretrain.token.tasks else {
        return Ok(Vec::new());
    };
    let kept: TaskSet = list
        .parse()
        .with_context(|| format!("pretrain.token.tasks = {list:?}"))?;
    Ok(TaskSet::token_stage()
        .iter()
        .filter(|t| !kept.contains(*t))
        .collect())
}

/// Runs `ablation`.
pub fn run_ablation(args: AblationArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let run = &args.run;
    let ctx = Context::open(run)?;
    let out = run
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("ablation-{}", run.preset)));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let picked: Vec<usize> = if args.row.is_empty() {
        (1..=ROWS.len()).collect()
    } else {
        args.row.clone()
    };
    let dropped = token_stage_dropped(&ctx.preset)?;
    let mut rows = Vec::new();
    for &r in &picked {
        let v = ROWS
            .get(r.wrapping_sub(1))
            .with_context(|| format!("--row {r}: Table 4 has rows 1 to {}", ROWS.len()))?;
        let preset = row_preset(&ctx.preset, v, &dropped)?;
        let schedule: Option<Schedule> = v.schedule.map(str::parse).transpose()?;
        let without = v
            .without
            .iter()
            .map(|t| t.parse::<Task>())
            .collect::<Result<Vec<_>, _>>()?;
        let mut row = AblationRow {
            stages: v.stages.to_string(),
            tasks: v.tasks.to_string(),
            seeds: Vec::new(),
        };
        for k in 0..run.seeds.max(1) {
            let seed = run.seed + k;
            let root = out.join(format!("row{r:02}")).join(format!("seed{seed}"));
            eprintln!("== Table 4 row {r} ({} {}), seed {seed}", v.stages, v.tasks);
            let (report, results) =
                ctx.run_one(&preset, schedule.as_ref(), &without, seed, &root)?;
            write_report(&root, &report)?;
            row.seeds.push(table4_values(&results));
        }
        rows.push(row);
    }
    let dropped_note = if dropped.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = dropped.iter().map(|t| t.name()).collect();
        format!(
            " The preset's token stage leaves out {}, so every row's token stage does too.",
            names.join(", ")
        )
    };
    let md = format!(
        "# msp ablation (the paper's Table 4), preset `{}`, {} seed(s)\n\nData: `{}`. Columns: \
         VQA test, GQA testdev, NLVR2 test (accuracy, %), and the mean of R@1/5/10 for \
         image retrieval (IR), text retrieval (TR, first-caption protocol) and their \
         zero-shot versions.{}\n\n{}",
        run.preset,
        run.seeds,
        ctx.data_dir.display(),
        dropped_note,
        table4_markdown(&rows)
    );
    write_atomic(&out.join("table4.md"), md.as_bytes())?;
    write_atomic(
        &out.join("table4.json"),
        serde_json::to_string_pretty(&rows)?.as_bytes(),
    )?;
    // One line per column across the rows run (x = Table 4 row number).
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (r, row) in picked.iter().zip(&rows) {
        for (c, v) in row.summary().iter().enumerate() {
            if let Some((m, _)) = v {
                series
                    .entry(COLUMNS[c].to_string())
                    .or_default()
                    .push((*r as f64, *m));
            }
        }
    }
    if !series.is_empty() {
        plot_series(
            "Table 4: downstream results per pre-training variant",
            ("Table 4 row", "accuracy / mean recall (%)"),
            &series,
            &out.join("plots").join("table4.png"),
        )?;
    }
    println!("{md}");
    let mut t = vec![vec!["row".to_string(), "stages".into(), "tasks".into()]];
    for &r in &picked {
        let v = &ROWS[r - 1];
        t.push(vec![r.to_string(), v.stages.into(), v.tasks.into()]);
    }
    eprintln!("{}", markdown_table(&t));
    println!(
        "ablation done in {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        out.join("table4.md").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table4_rows_define_the_tasks_whatever_the_preset_sets() -> anyhow::Result<()> {
        let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/presets");
        let mut base = Preset::load(&presets, "smoke")?;
        base.pretrain.sentence.tasks = Some("MLM,ITM".into());
        base.pretrain.sentence.loss_weights = [("ITM".to_string(), 5.0)].into();
        // Row 2 (S with the paper's tasks): the preset's lists are dropped.
        let row2 = row_preset(&base, &ROWS[1], &[])?;
        assert_eq!(row2.pretrain.sentence.tasks, None);
        assert_eq!(row2.pretrain.token.tasks, None);
        // Row 3 (S with ITM instead of ITM-HS): the row's own list.
        let row3 = row_preset(&base, &ROWS[2], &[])?;
        assert_eq!(
            row3.pretrain.sentence.tasks.as_deref(),
            Some("MLM,MRFR,MOC,TITS,ITM")
        );
        assert_eq!(row3.pretrain.phrase.tasks, None);
        // The rows weigh every loss 1, as the paper.
        assert!(row3.pretrain.sentence.loss_weights.is_empty());
        Ok(())
    }

    #[test]
    fn tasks_the_preset_drops_from_the_token_stage_stay_dropped_in_every_row() -> anyhow::Result<()>
    {
        let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/presets");
        let mut base = Preset::load(&presets, "smoke")?;
        base.pretrain.token.tasks = Some("IFRS,MOC,MRFR".into());
        let dropped = token_stage_dropped(&base)?;
        assert_eq!(dropped, vec![Task::Mlm]);
        // Row 10 (T→P→S, the paper's lists): the token stage loses MLM only.
        let row10 = row_preset(&base, &ROWS[9], &dropped)?;
        assert_eq!(row10.pretrain.token.tasks.as_deref(), Some("MRFR,MOC,IFRS"));
        assert_eq!(row10.pretrain.sentence.tasks, None);
        // Row 5 (T+P+S with MLM MRFR MOC ITM everywhere): MLM leaves the token source only.
        let row5 = row_preset(&base, &ROWS[4], &dropped)?;
        assert_eq!(row5.pretrain.token.tasks.as_deref(), Some("MRFR,MOC,ITM"));
        assert_eq!(
            row5.pretrain.phrase.tasks.as_deref(),
            Some("MLM,MRFR,MOC,ITM")
        );
        // A preset with the paper's token stage keeps it.
        base.pretrain.token.tasks = None;
        let none = token_stage_dropped(&base)?;
        assert!(none.is_empty());
        assert_eq!(
            row_preset(&base, &ROWS[9], &none)?.pretrain.token.tasks,
            None
        );
        // A bad list is named.
        base.pretrain.token.tasks = Some("MLM,BOGUS".into());
        let err = format!("{:#}", token_stage_dropped(&base).unwrap_err());
        assert!(err.contains("pretrain.token.tasks"), "{err}");
        Ok(())
    }
}
