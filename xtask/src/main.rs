//! `cargo xtask`: the msp orchestrator.
//!
//! A thin command-line layer over the workspace crates: every subcommand parses its
//! arguments here and calls into the crate that owns the logic (where it is tested).
//! One module per command family.

use clap::{Parser, Subcommand};

mod bench;
mod features;
mod model;
mod pretrain;
mod synth;
mod text;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "msp: multi-stage pre-training of LXMERT-S",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Region features: convert TSV to a store, show an image, hard-negative pools.
    Features(features::FeaturesArgs),
    /// The LXMERT(-S) model: parameter counts, forward pass on files.
    Model(model::ModelArgs),
    /// Benchmarks (`bench model`).
    Bench(bench::BenchArgs),
    /// Generate (or reuse) a synthetic world: every data set in its real format.
    Synth(synth::SynthArgs),
    /// Multi-stage pre-training (T,P,S, any order, or T+P+S), resumable.
    Pretrain(pretrain::PretrainArgs),
    /// Text: encode with a BERT vocabulary, generate the verb lexicon, test the verb filter.
    Text(text::TextArgs),
}

fn main() -> anyhow::Result<()> {
    // Restore the default SIGPIPE action, so `cargo xtask … | head` ends quietly as other
    // command-line tools do instead of panicking on a closed stdout.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Features(args) => features::run(args),
        Command::Model(args) => model::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Pretrain(args) => pretrain::run(args),
        Command::Text(args) => text::run(args),
    }
}
