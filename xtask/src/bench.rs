//! `cargo xtask bench …`: throughput measurements (logic in the crates).

use anyhow::Context;
use clap::{Args, Subcommand};
use msp_model::{Config, Variant};

/// Benchmark commands.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training-step throughput (forward, backward, optimiser, data), GFLOP/s and fraction of
    /// the GEMM peak; with a data set also the loader's throughput.
    Train(TrainArgs),
    /// `bench train --config paper` and bench/torch_lxmert.py alternately, then the ratio.
    Compare(CompareArgs),
    /// Matrix-product speed through candle, in f32 or (`--precision bf16`) bf16: the
    /// machine's GEMM peak for `bench train`.
    Gemm {
        /// Side of the square product.
        #[arg(long, default_value_t = 2048)]
        square: usize,
        /// Rows (batch × tokens) of the layer-shaped products.
        #[arg(long, default_value_t = 1152)]
        rows: usize,
        /// Timed repetitions per shape (median kept).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Device: cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Options of `bench compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// `paper`: the paper's LXMERT-S sizes. A preset name (tiny, small, …): the same
    /// workload (HF's pre-training heads, random batch) at that preset's model sizes, with
    /// its world's vocabulary and label counts, tokens and regions, on both sides.
    #[arg(long, default_value = "paper")]
    config: String,
    /// Python with torch and transformers (default: .venv-bench/bin/python, else
    /// .venv-fixture/bin/python, else python3).
    #[arg(long)]
    python: Option<std::path::PathBuf>,
    /// Rounds (each runs both once, Rust first).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Examples per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed steps per run.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// GEMM peak in GFLOP/s that the msp side reports against (default: measured by each
    /// run; on a busy machine that measurement comes out low and inflates the fraction).
    #[arg(long)]
    gemm_peak: Option<f64>,
    /// Device of both sides: cpu or cuda:N (with `--precision bf16`, PyTorch runs under
    /// bf16 autocast).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The msp side's `bench train --micro-batches` (PyTorch runs the batch whole).
    #[arg(long, default_value_t = 1)]
    micro_batches: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a `bench` subcommand.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Train(a) => run_train(a)?,
        BenchCommand::Compare(a) => run_compare(a)?,
        BenchCommand::Gemm {
            square,
            rows,
            reps,
            device,
            json,
        } => {
            let device = msp_curriculum::parse_device(&device)?;
            let r = msp_model::bench_gemm(square, rows, reps, &device)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let product = format!("{} product", msp_model::ops::precision());
                println!("{product:<48} {:>10} {:>10}", "msp ops", "candle");
                for s in &r.shapes {
                    println!(
                        "{:<48} {:>10.1} {:>10.1}  GFLOP/s",
                        s.name, s.gflops, s.candle_gflops
                    );
                }
                println!("peak: {:.1} GFLOP/s", r.peak_gflops);
            }
        }
    }
    Ok(())
}

/// `bench train` options.
#[derive(Args)]
struct TrainArgs {
    /// `paper`: the paper's LXMERT-S sizes with HF's pre-training heads on a random in-memory
    /// batch (the workload of bench/torch_lxmert.py). A preset name (tiny, small, smoke,
    /// paper-shape, …): that preset's model and a pre-training stage on its synthetic world
    /// (or `--data`), first on one batch kept in memory, then through the loader.
    #[arg(long, default_value = "paper")]
    config: String,
    /// Examples per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed steps (median and spread reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// `paper` config: the model sizes of this HF-style config.json instead of the paper's
    /// (`bench compare --config PRESET` writes one for a preset).
    #[arg(long)]
    model_config: Option<std::path::PathBuf>,
    /// Tokens per example (`paper` config).
    #[arg(long, default_value_t = 20)]
    text_len: usize,
    /// Regions per example (`paper` config).
    #[arg(long, default_value_t = 36)]
    regions: usize,
    /// Stage whose tasks and texts make the batches (preset configs): token, phrase, sentence.
    #[arg(long, default_value = "sentence")]
    stage: String,
    /// Data directory (preset configs; default: the preset's synthetic world, generated once).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Batches drawn for the loader-only throughput (preset configs; 0 skips it).
    #[arg(long, default_value_t = 20)]
    loader_batches: usize,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// GEMM peak in GFLOP/s to report against (default: measured now with `bench gemm`'s
    /// shapes).
    #[arg(long)]
    gemm_peak: Option<f64>,
    /// Composite candle ops instead of the fused kernels (msp_model::ops), for A/B runs.
    #[arg(long)]
    composite: bool,
    /// `paper` config: micro-batches each step's batch is split into, run side by side on
    /// one thread each, their gradients summed (1: the whole batch, each product split
    /// between the threads).
    #[arg(long, default_value_t = 1)]
    micro_batches: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One timing of `bench train` with its FLOP rate.
#[derive(serde::Serialize)]
struct TrainRun {
    #[serde(flatten)]
    timing: msp_curriculum::StepTiming,
    /// Analytic FLOP/s at the median step.
    gflops: f64,
    /// `gflops` / the GEMM peak.
    fraction_of_peak: f64,
}

/// The `bench train` report.
#[derive(serde::Serialize)]
struct TrainReport {
    config: String,
    variant: String,
    device: String,
    fused_kernels: bool,
    /// Precision of the matrix products (`f32` or `bf16`).
    precision: String,
    /// Whether denormal floats were flushed to zero (the global `--keep-denormals` unset).
    flush_denormals: bool,
    params: usize,
    text_len: usize,
    regions: usize,
    /// Language rows per example the last cross layer computes (row 0 and the MLM rows,
    /// padded to the batch's most; expected value for the synthetic masking).
    last_language_rows: usize,
    /// Analytic matmul FLOPs of one example's training step (3 × forward).
    train_gflop_per_sample: f64,
    gemm_peak_gflops: f64,
    runs: Vec<TrainRun>,
    loader: Option<msp_curriculum::LoaderThroughput>,
    /// Loader batches/s over training steps/s (loader run).
    loader_over_step: Option<f64>,
    peak_rss_bytes: Option<u64>,
}

fn run_train(a: TrainArgs) -> anyhow::Result<()> {
    use msp_curriculum::{
        bench_loader, bench_train_data, bench_train_synthetic, parse_device, OptimizerConfig,
        TrainBenchOptions,
    };
    if a.config != "paper" {
        if let Some(path) = &a.model_config {
            anyhow::bail!(
                "--model-config {} applies to `--config paper` only; `--config {}` takes its \
                 sizes from the preset (use `bench compare --config {}` for the HF workload at \
                 the preset's sizes)",
                path.display(),
                a.config,
                a.config
            );
        }
    }
    msp_model::ops::set_fused(!a.composite);
    let device = parse_device(&a.device)?;
    let gemm_peak = match a.gemm_peak {
        Some(p) => p,
        None => msp_model::bench_gemm(1024, 1152, 3, &device)?.peak_gflops,
    };
    let opts = TrainBenchOptions {
        warmup: a.warmup,
        steps: a.steps.max(1),
        optimizer: OptimizerConfig::bert_adam(),
        micro_batches: a.micro_batches,
    };
    let (cfg, variant, text_len, regions, mlm, timings, loader) = if a.config == "paper" {
        let cfg = match &a.model_config {
            Some(path) => Config::from_json_file(path)?,
            None => Config::default(),
        };
        let variant = Variant::Lxmert;
        let t = bench_train_synthetic(
            &cfg,
            variant,
            (a.batch, a.text_len, a.regions),
            &opts,
            &device,
        )?;
        (cfg, variant, a.text_len, a.regions, true, vec![t], None)
    } else {
        let PresetWorkload {
            run,
            data,
            stage,
            text_len,
            regions,
        } = PresetWorkload::load(&a.config, a.data.clone(), &a.stage)?;
        let workers = run.pretrain.workers;
        let timings = bench_train_data(&run, &data, stage, a.batch, workers, &opts, &device)?;
        let loader = if a.loader_batches > 0 {
            Some(bench_loader(
                &run,
                &data,
                stage,
                a.batch,
                workers,
                a.loader_batches,
                &device,
            )?)
        } else {
            None
        };
        let variant = run.model_preset.variant()?;
        let mlm = run.stages[stage].sources.iter().any(|s| {
            s.tasks
                .parse::<msp_tasks::TaskSet>()
                .is_ok_and(|t| t.contains(msp_tasks::Task::Mlm))
        });
        (
            run.model.clone(),
            variant,
            text_len,
            regions,
            mlm,
            timings.to_vec(),
            loader,
        )
    };
    // MLM and the feature regression at ≈ 15% of the positions and regions (at least one
    // each), as the batches mask.
    let at_15_percent = |n: usize| (n as f64 * 0.15).ceil().max(1.0) as usize;
    let masked = at_15_percent(text_len);
    let last_language_rows = if mlm {
        expected_language_rows(text_len, a.batch)
    } else {
        1
    };
    let feat_regions = at_15_percent(regions);
    let train_flop = 3.0
        * msp_model::forward_flops(
            &cfg,
            variant,
            text_len,
            regions,
            masked,
            last_language_rows,
            feat_regions,
        );
    let params = msp_model::param_count(&cfg, variant)?.total;
    let runs: Vec<TrainRun> = timings
        .into_iter()
        .map(|t| {
            let gflops = train_flop * t.batch_size as f64 / t.step_s.median / 1e9;
            TrainRun {
                timing: t,
                gflops,
                fraction_of_peak: gflops / gemm_peak,
            }
        })
        .collect();
    let loader_over_step = loader
        .as_ref()
        .zip(runs.last())
        .map(|(l, r)| l.batches_per_s * r.timing.step_s.median);
    let report = TrainReport {
        config: a.config.clone(),
        variant: variant.to_string(),
        device: a.device.clone(),
        fused_kernels: !a.composite,
        precision: msp_model::ops::precision().to_string(),
        flush_denormals: msp_model::ops::flushes_denormals(),
        params,
        text_len,
        regions,
        last_language_rows,
        train_gflop_per_sample: train_flop / 1e9,
        gemm_peak_gflops: gemm_peak,
        runs,
        loader,
        loader_over_step,
        peak_rss_bytes: msp_model::peak_rss_bytes(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} ({}), {} parameters, {} tokens + {} regions, {:.2} GFLOP per example-step (analytic), {} GEMM peak {:.1} GFLOP/s, fused kernels {}, denormals flushed {}",
        report.config, report.variant, report.params, text_len, regions, report.train_gflop_per_sample, report.precision, gemm_peak, report.fused_kernels, report.flush_denormals
    );
    for r in &report.runs {
        let t = &r.timing;
        let s = &t.split;
        println!(
            "{}: batch {}, {} steps: {:.2} samples/s (min {:.2}, max {:.2}); step {:.3} s = data {:.3} + forward {:.3} + backward {:.3} + optimiser {:.3}; {:.1} GFLOP/s = {:.0}% of peak",
            t.batches, t.batch_size, t.steps, t.samples_per_s.median, t.samples_per_s.min, t.samples_per_s.max,
            t.step_s.median, s.data_s, s.forward_s, s.backward_s, s.optimizer_s, r.gflops, 100.0 * r.fraction_of_peak
        );
    }
    if let (Some(l), Some(x)) = (&report.loader, report.loader_over_step) {
        println!(
            "loader alone: {:.1} batches/s ({:.0} samples/s, {} worker(s)) = {:.1}× the training-step rate",
            l.batches_per_s, l.samples_per_s, l.workers, x
        );
    }
    if let Some(b) = report.peak_rss_bytes {
        println!("peak RSS: {:.2} GiB", b as f64 / (1u64 << 30) as f64);
    }
    Ok(())
}

/// The language rows per example the last cross layer computes with MLM in a batch of
/// `batch` texts of `len` tokens (`msp_model::LanguageRows`: row 0 and the masked rows,
/// padded to the batch's most), expected under the synthetic batch's masking (one forced
/// position and each other one of the `len − 2` at 15%): `2 + E[max of batch Bin(len − 2,
/// 0.15)]`, rounded, at most `len`.
fn expected_language_rows(len: usize, batch: usize) -> usize {
    let n = len.saturating_sub(2);
    let p = 0.15f64;
    // pmf of Bin(n, p), then E[max] = Σ_{k ≥ 1} P(max ≥ k) = Σ (1 − F(k − 1)^batch).
    let mut pmf = vec![(1.0 - p).powi(n as i32); n + 1];
    for k in 1..=n {
        pmf[k] = pmf[k - 1] * (n - k + 1) as f64 / k as f64 * p / (1.0 - p);
    }
    let mut cdf = 0.0;
    let mut expected_max = 0.0;
    for &q in &pmf[..n] {
        cdf += q;
        expected_max += 1.0 - cdf.powi(batch.max(1) as i32);
    }
    ((2.0 + expected_max).round() as usize).min(len.max(1))
}

/// A preset's pre-training workload: its resolved run (T,P,S, seed 0), data and one stage.
struct PresetWorkload {
    run: msp_curriculum::RunConfig,
    data: msp_curriculum::PretrainData,
    /// Index of the chosen stage in `run.stages`.
    stage: usize,
    /// Longest text of the stage's sources (tokens).
    text_len: usize,
    /// Regions per image of the data.
    regions: usize,
}

impl PresetWorkload {
    /// Loads preset `name`, its data (`data`, or its synthetic world, generated once) and the
    /// stage whose name contains `stage`.
    fn load(name: &str, data: Option<std::path::PathBuf>, stage: &str) -> anyhow::Result<Self> {
        use msp_curriculum::{resolve_config, Preset, Schedule};
        let presets_dir = crate::synth::default_presets_dir();
        let preset = Preset::load(&presets_dir, name)?;
        let data_dir = crate::pretrain::data_dir(name, 0, data, &presets_dir)?;
        let data = crate::pretrain::open_data(&data_dir, &preset)?;
        let run = resolve_config(name, &preset, &"T,P,S".parse::<Schedule>()?, &[], 0, &data)?;
        let index = run
            .stages
            .iter()
            .position(|s| s.name.contains(stage))
            .ok_or_else(|| {
                let names: Vec<&str> = run.stages.iter().map(|s| s.name.as_str()).collect();
                anyhow::anyhow!("no stage named {stage:?} (stages: {})", names.join(", "))
            })?;
        let text_len = run.stages[index]
            .sources
            .iter()
            .map(|s| s.max_len)
            .max()
            .unwrap_or(0);
        let regions = data.store.num_boxes(0)?;
        Ok(Self {
            run,
            data,
            stage: index,
            text_len,
            regions,
        })
    }
}

/// Runs a command and parses its standard output as JSON.
fn json_of(cmd: &mut std::process::Command) -> anyhow::Result<serde_json::Value> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("JSON from {cmd:?}"))
}

/// Median samples/s of a `bench train` or torch_lxmert.py report.
fn median_sps(v: &serde_json::Value) -> anyhow::Result<f64> {
    let runs = v.get("runs").and_then(|r| r.get(0)).unwrap_or(v);
    runs.pointer("/samples_per_s/median")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| anyhow::anyhow!("no samples_per_s.median in {v}"))
}

fn run_compare(a: CompareArgs) -> anyhow::Result<()> {
    let CompareArgs {
        config,
        python,
        rounds,
        batch,
        steps,
        gemm_peak,
        device,
        micro_batches,
        json,
    } = a;
    let config = config.as_str();
    msp_curriculum::parse_device(&device)?;
    // Both sides on the same device, at the same precision.
    let precision = msp_model::ops::precision();
    let mut msp_side: Vec<String> = [
        "--device",
        &device,
        "--precision",
        &precision.to_string(),
        "--micro-batches",
        &micro_batches.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut torch_side = vec!["--device".to_string(), device.clone()];
    if precision == msp_model::ops::Precision::Bf16 {
        torch_side.push("--bf16".into());
    }
    // Both sides in the same denormal mode: this process's (the global `--keep-denormals`).
    if msp_model::ops::flushes_denormals() {
        torch_side.push("--flush-denormal".into());
    } else {
        msp_side.push("--keep-denormals".into());
    }
    let python = python.unwrap_or_else(|| {
        [".venv-bench/bin/python", ".venv-fixture/bin/python"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| "python3".into())
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/torch_lxmert.py");
    let exe = std::env::current_exe()?;
    let (b, st) = (batch.to_string(), steps.to_string());
    // Both sides get the same sizes: the paper's by default, else the preset's, through a
    // config.json that lives as long as this command.
    let mut sizes: Vec<std::ffi::OsString> = Vec::new();
    // The msp side only: PyTorch's script reports no fraction of peak.
    let peak_args: Vec<String> = gemm_peak
        .map(|p| vec!["--gemm-peak".into(), p.to_string()])
        .unwrap_or_default();
    let _model_config = if config == "paper" {
        None
    } else {
        let w = PresetWorkload::load(config, None, "sentence")?;
        let mut file = tempfile::Builder::new()
            .prefix(&format!("msp-bench-{config}-"))
            .suffix(".json")
            .tempfile()?;
        std::io::Write::write_all(&mut file, w.run.model.to_json().as_bytes())?;
        let (text_len, regions) = (w.text_len.to_string(), w.regions.to_string());
        for a in [
            "--text-len",
            &text_len,
            "--regions",
            &regions,
            "--model-config",
        ] {
            sizes.push(a.into());
        }
        sizes.push(file.path().into());
        Some(file)
    };
    let mut results = Vec::new();
    for round in 0..rounds.max(1) {
        eprintln!("round {}: candle (msp)…", round + 1);
        let ours = json_of(
            std::process::Command::new(&exe)
                .args([
                    "bench", "train", "--config", "paper", "--batch", &b, "--steps", &st, "--json",
                ])
                .args(&peak_args)
                .args(&msp_side)
                .args(&sizes),
        )?;
        eprintln!("round {}: PyTorch…", round + 1);
        let torch = json_of(
            std::process::Command::new(&python)
                .arg(&script)
                .args(["--batch", &b, "--steps", &st])
                .args(&torch_side)
                .args(&sizes),
        )?;
        let (o, t) = (median_sps(&ours)?, median_sps(&torch)?);
        eprintln!(
            "round {}: msp {o:.2} samples/s, PyTorch {t:.2} samples/s, ratio {:.2}",
            round + 1,
            o / t
        );
        results.push(serde_json::json!({"msp": ours, "torch": torch, "ratio": o / t}));
    }
    let mut ratios: Vec<f64> = results.iter().filter_map(|r| r["ratio"].as_f64()).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"rounds": results, "median_ratio": median})
            )?
        );
    } else {
        println!(
            "msp / PyTorch training-step samples/s, per round: {ratios:.2?}; median {median:.2}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::expected_language_rows;

    #[test]
    fn expected_language_rows_by_hand() {
        // 4 tokens: 2 + E[Bin(2, 0.15)] = 2.3 for one example; the most of many is 2 + 2.
        assert_eq!(expected_language_rows(4, 1), 2);
        assert_eq!(expected_language_rows(4, 1000), 4);
        // 20 tokens, 32 examples: 8.148 by the same sum in Python (exact binomials), 8.14 by
        // a Monte Carlo of the synthetic batch's masking.
        assert_eq!(expected_language_rows(20, 32), 8);
        assert_eq!(expected_language_rows(1, 32), 1);
    }
}
