//! `cargo xtask bench …`: throughput measurements (logic in the crates).

use candle_core::Device;
use clap::{Args, Subcommand, ValueEnum};
use msp_model::{bench_model, Config, Variant};

/// Benchmark commands.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// The paper's LXMERT-S sizes (hidden 768, x_layers 5, l = r = 0).
    Paper,
    /// The tiny test config.
    Tiny,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// f32 matrix-product speed through candle (the machine's GEMM peak for `bench train`).
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
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Model forward and training-step (fwd + bwd + SGD) samples/s on CPU f32, peak RSS.
    Model {
        /// Config preset.
        #[arg(long, value_enum, default_value = "paper")]
        config: Preset,
        /// lxmert (HF heads, comparable with bench/torch_lxmert.py) or lxmert-s (adds the
        /// visual [CLS], second pooler and topic head).
        #[arg(long, default_value = "lxmert")]
        variant: Variant,
        /// Batch size.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Tokens per example.
        #[arg(long, default_value_t = 20)]
        text_len: usize,
        /// Regions per example.
        #[arg(long, default_value_t = 36)]
        regions: usize,
        /// Timed iterations (after one warm-up).
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Composite candle ops instead of the fused kernels (msp_model::ops).
        #[arg(long)]
        composite: bool,
    },
}

/// Runs a `bench` subcommand.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Gemm {
            square,
            rows,
            reps,
            json,
        } => {
            let r = msp_model::bench_gemm(square, rows, reps, &Device::Cpu)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{:<48} {:>10} {:>10}", "f32 product", "msp ops", "candle");
                for s in &r.shapes {
                    println!(
                        "{:<48} {:>10.1} {:>10.1}  GFLOP/s",
                        s.name, s.gflops, s.candle_gflops
                    );
                }
                println!("peak: {:.1} GFLOP/s", r.peak_gflops);
            }
        }
        BenchCommand::Model {
            config,
            variant,
            batch,
            text_len,
            regions,
            iters,
            json,
            composite,
        } => {
            msp_model::ops::set_fused(!composite);
            let cfg = match config {
                Preset::Paper => Config::default(),
                Preset::Tiny => Config::tiny(),
            };
            let r = bench_model(&cfg, variant, batch, text_len, regions, iters, &Device::Cpu)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} batch {} ({} tokens, {} regions), {} params",
                    r.variant, r.batch, r.text_len, r.regions, r.params_total
                );
                println!("forward: {:.2} samples/s", r.forward_samples_per_s);
                println!(
                    "train step: {:.2} samples/s ({:.3} s: forward {:.3}, backward {:.3}, update {:.3})",
                    r.train_samples_per_s, r.train_step_s, r.train_forward_s, r.train_backward_s, r.train_update_s
                );
                if let Some(b) = r.peak_rss_bytes {
                    println!("peak RSS: {:.1} MiB", b as f64 / (1024.0 * 1024.0));
                }
            }
        }
    }
    Ok(())
}
