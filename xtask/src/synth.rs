//! `cargo xtask synth`: generate (or reuse) a synthetic world.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use msp_synth::{World, WorldConfig, WorldSpec};

/// Arguments of `cargo xtask synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Preset name (`data/presets/<name>.toml`, `[world]` table): smoke, tiny, small, paper-shape.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// World seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (must not exist, unless `--reuse` and it holds the same world).
    #[arg(long)]
    pub out: PathBuf,
    /// Override the preset's region feature width.
    #[arg(long)]
    pub feature_dim: Option<usize>,
    /// Directory of the preset files.
    #[arg(long)]
    pub presets_dir: Option<PathBuf>,
    /// Reuse `--out` when it already holds a complete world of the same seed and knobs.
    #[arg(long)]
    pub reuse: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The default presets directory of the workspace.
pub fn default_presets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/presets")
}

/// Runs `synth`.
pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let dir = args.presets_dir.clone().unwrap_or_else(default_presets_dir);
    let mut config = WorldConfig::from_preset(&dir, &args.preset)?;
    if let Some(d) = args.feature_dim {
        config.feature_dim = d;
    }
    let spec = WorldSpec {
        preset: args.preset.clone(),
        seed: args.seed,
        config,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:>16} [{bar:40}] {pos}/{len} {elapsed}")
            .context("progress template")?
            .progress_chars("=> "),
    );
    let mut stage = String::new();
    let mut progress = |p: msp_synth::Progress<'_>| {
        if p.stage != stage {
            stage = p.stage.to_string();
            bar.set_message(stage.clone());
            bar.set_length(p.total);
        }
        bar.set_position(p.done);
    };
    let start = Instant::now();
    let world = if args.reuse {
        World::open_or_generate(&args.out, &spec, &mut progress)?
    } else {
        World::generate(&args.out, &spec, &mut progress)?
    };
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let m = world.manifest();
    let bytes: u64 = m.files.values().map(|f| f.bytes).sum();
    if args.json {
        let summary = serde_json::json!({
            "dir": world.dir(),
            "preset": m.preset,
            "seed": m.seed,
            "generator": m.generator,
            "seconds": seconds,
            "bytes": bytes,
            "sizes": m.sizes,
            "baselines": m.baselines,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "world {} (preset {}, seed {}, {}): {} files, {:.1} MB, {:.1} s",
        world.dir().display(),
        m.preset,
        m.seed,
        m.generator,
        m.files.len(),
        bytes as f64 / 1e6,
        seconds
    );
    for (k, v) in &m.sizes {
        println!("  {k:<28} {v}");
    }
    println!(
        "\n  {:<14} {:<8} {:>6}  {:<15} {:>9} {:>7}",
        "task", "split", "n", "metric", "text-only", "oracle"
    );
    for b in &m.baselines {
        println!(
            "  {:<14} {:<8} {:>6}  {:<15} {:>9.3} {:>7.3}",
            b.task, b.split, b.examples, b.metric, b.text_only, b.oracle
        );
    }
    Ok(())
}
