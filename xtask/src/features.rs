//! `cargo xtask features …`: region-feature conversion and inspection (logic in `msp-features`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use msp_features::{convert, ConvertOptions, FeatureStore, HardNegativePool, StoreDtype};

/// Region-feature commands.
#[derive(Args)]
pub struct FeaturesArgs {
    #[command(subcommand)]
    command: FeaturesCommand,
}

#[derive(Subcommand)]
enum FeaturesCommand {
    /// Convert LXMERT feature TSVs into a memory-mapped store directory.
    Convert {
        /// Input TSV (repeat for several; records are concatenated in order).
        #[arg(long, required = true)]
        tsv: Vec<PathBuf>,
        /// Output store directory (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Storage type of the features: f16 or f32.
        #[arg(long, default_value = "f16")]
        dtype: StoreDtype,
        /// Log and skip bad lines instead of stopping at the first.
        #[arg(long)]
        skip_bad: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one image of a store.
    Show {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// Image id.
        #[arg(long)]
        img_id: String,
        /// Print every value as JSON.
        #[arg(long)]
        json: bool,
    },
    /// ViLBERT-style hard-negative pool: k nearest images by mean-pooled features.
    HardNegatives {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// Neighbours per image.
        #[arg(long, default_value_t = 100)]
        top: usize,
        /// Output JSON file.
        #[arg(long)]
        out: PathBuf,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `features` subcommand.
pub fn run(args: FeaturesArgs) -> anyhow::Result<()> {
    match args.command {
        FeaturesCommand::Convert {
            tsv,
            out,
            dtype,
            skip_bad,
            json,
        } => {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                )
                .context("progress template")?,
            );
            let opts = ConvertOptions {
                tsv,
                out: out.clone(),
                dtype,
                skip_bad,
            };
            let report = convert(&opts, |p| {
                bar.set_length(p.bytes_total);
                bar.set_position(p.bytes_read);
                if p.images % 64 == 1 {
                    bar.set_message(format!("{} images, {} skipped", p.images, p.skipped));
                }
            });
            bar.finish_and_clear();
            let report = report.with_context(|| format!("converting into {}", out.display()))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "wrote {}: {} images, {} regions, D = {}, {} bad lines skipped, {} bytes read",
                    out.display(),
                    report.images,
                    report.regions,
                    report.feature_dim,
                    report.skipped,
                    report.bytes_read
                );
            }
        }
        FeaturesCommand::Show {
            store,
            img_id,
            json,
        } => {
            let s = FeatureStore::open(&store)?;
            let row = s
                .row(&img_id)
                .with_context(|| format!("img_id `{img_id}` is not in {}", store.display()))?;
            let im = s.image(row)?;
            if json {
                println!("{}", im.to_json());
                return Ok(());
            }
            println!(
                "{} (row {row} of {}): {}×{} pixels (h×w), {} boxes, features [{}, {}] stored as {:?}",
                im.img_id,
                s.len(),
                im.img_h,
                im.img_w,
                im.num_boxes(),
                im.num_boxes(),
                s.feature_dim(),
                s.dtype()
            );
            if let Some(st) = im.feature_stats() {
                println!(
                    "features: min {:.4} max {:.4} mean {:.4} std {:.4} zeros {:.1}%",
                    st.min,
                    st.max,
                    st.mean,
                    st.std,
                    100.0 * st.zero_fraction
                );
            }
            println!("  box  x1/w   y1/h   x2/w   y2/h   object (conf)     attr (conf)");
            for i in 0..im.num_boxes() {
                let b = im.boxes[i];
                println!(
                    "  {i:>3}  {:.3}  {:.3}  {:.3}  {:.3}  {:>6} ({:.3})  {:>6} ({:.3})",
                    b[0],
                    b[1],
                    b[2],
                    b[3],
                    im.objects_id[i],
                    im.objects_conf[i],
                    im.attrs_id[i],
                    im.attrs_conf[i]
                );
            }
        }
        FeaturesCommand::HardNegatives {
            store,
            top,
            out,
            json,
        } => {
            let s = FeatureStore::open(&store)?;
            let started = std::time::Instant::now();
            let pool = HardNegativePool::compute(&s, top)?;
            pool.write_json(&out)?;
            let secs = started.elapsed().as_secs_f64();
            if json {
                let summary = serde_json::json!({
                    "images": pool.image_ids.len(),
                    "top": pool.pool.first().map_or(0, Vec::len),
                    "out": out,
                    "seconds": secs,
                });
                println!("{summary}");
            } else {
                println!(
                    "wrote {}: {} images × {} neighbours in {secs:.1} s",
                    out.display(),
                    pool.image_ids.len(),
                    pool.pool.first().map_or(0, Vec::len)
                );
            }
        }
    }
    Ok(())
}
