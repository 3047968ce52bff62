//! `cargo xtask`: the msp orchestrator.
//!
//! A thin command-line layer over the workspace crates: every subcommand parses its
//! arguments here and calls into the crate that owns the logic (where it is tested).
//! One module per command family.

use clap::{Parser, Subcommand};

mod bench;
mod eval;
mod features;
mod model;
mod pretrain;
mod reproduce;
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
    /// Precision of the model's matrix products: `f32`, or `bf16` (autocast as PyTorch's:
    /// f32 weights, gradients, LayerNorm, softmax, losses and optimiser; for the GPU, where
    /// bf16 products run on tensor cores; on the CPU candle widens them back to f32).
    #[arg(long, global = true, default_value = "f32")]
    precision: msp_model::ops::Precision,
    /// Keep denormal floats (|x| < 1.18e-38) instead of flushing them to zero (x86-64's FTZ
    /// and DAZ modes, PyTorch's `torch.set_flush_denormal(True)`). On Intel cores each
    /// denormal costs a microcode assist (msp_model::ops::set_flush_denormals).
    #[arg(long, global = true)]
    keep_denormals: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Region features: convert TSV to a store, show an image, hard-negative pools.
    Features(features::FeaturesArgs),
    /// The LXMERT(-S) model: parameter counts, forward pass on files.
    Model(model::ModelArgs),
    /// Benchmarks (`bench train`, `bench compare`, `bench gemm`).
    Bench(bench::BenchArgs),
    /// Generate (or reuse) a synthetic world: every data set in its real format.
    Synth(synth::SynthArgs),
    /// Multi-stage pre-training (T,P,S, any order, or T+P+S), resumable.
    Pretrain(pretrain::PretrainArgs),
    /// The main job: world → T→P→S pre-training → every downstream task → the paper's tables.
    Reproduce(reproduce::ReproduceArgs),
    /// The paper's Table 4: pre-training variants, each fine-tuned and evaluated.
    Ablation(reproduce::AblationArgs),
    /// Fine-tune and evaluate a pre-trained run on the downstream tasks.
    Finetune(eval::FinetuneArgs),
    /// Score prediction files against gold files.
    Eval(eval::EvalArgs),
    /// Text: encode with a BERT vocabulary, generate the verb lexicon, test the verb filter.
    Text(text::TextArgs),
}

/// mimalloc keeps freed memory mapped (purge delay −1 below): a training step frees and
/// re-allocates the same large buffers every step, and glibc returned those above 32 MiB to
/// the kernel each time (page faults, zeroing, TLB shootdowns).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Restore the default SIGPIPE action, so `cargo xtask … | head` ends quietly as other
    // command-line tools do instead of panicking on a closed stdout.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Keep freed memory mapped instead of returning it to the kernel: training allocates
    // and frees the same large tensor buffers every step, and returning them turns into page
    // faults and zeroing (measured with glibc's defaults: 23.5 s of a 46 s tiny VQA
    // fine-tuning spent in the kernel). `mi_option_purge_delay` (−1: never purge) is option 15
    // of mimalloc's `mi_option_t` (v2 and v3); libmimalloc-sys names only the options around it.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets an allocator option before any other thread starts.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
    // candle's element-wise ops run on a barrier pool of its own beside rayon (which runs the
    // matrix products of msp_model::ops); its idle worker spins and competes with rayon's
    // threads for the cores (perf of a tiny step: a third of the samples in `candle-bp-0`).
    // Without that pool (element-wise ops on the calling thread) a tiny pre-training step ran
    // 189.5 vs 174.4 samples/s and the paper config 3.87 vs 3.77 (medians, alternating in
    // one run). An explicit CANDLE_NUM_THREADS is kept.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Run the command on one of rayon's workers (as many as cores), not beside them: the
    // matrix products of msp_model::ops split their work over rayon, and a caller outside the
    // pool blocks while the workers run, then the idle workers spin for the cores while the
    // caller runs the serial ops. Inside the pool the caller takes a share of every product
    // and there are as many threads as cores. Tiny pre-training step, alternating in one run:
    // 291.6 / 242.2 / 244.0 samples/s inside against 216.3 / 211.3 / 228.7 outside; paper
    // config 4.08 / 4.09 against 4.01 / 3.87. The workers get the main thread's usual 8 MiB
    // of stack (rayon's default is 2 MiB): candle walks the backward graph recursively.
    // The other workers poll for work between products instead of sleeping (small-config
    // step, alternating: best steps 148–154 against 146–151 samples/s).
    // Denormals flushed on this thread and on every worker (the mode is per thread).
    let flush = !cli.keep_denormals;
    // SAFETY: only values below 1.18e-38 differ, as under PyTorch's set_flush_denormal.
    let set_mode = move || unsafe {
        msp_model::ops::set_flush_denormals(flush);
    };
    set_mode();
    rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .start_handler(move |_| set_mode())
        .build()?
        .install(|| {
            msp_model::ops::with_polling_workers(|| {
                msp_model::ops::with_precision(cli.precision, || dispatch(cli))
            })
        })
}

/// Runs one subcommand.
fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Features(args) => features::run(args),
        Command::Model(args) => model::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Pretrain(args) => pretrain::run(args),
        Command::Text(args) => text::run(args),
        Command::Reproduce(args) => reproduce::run_reproduce(args),
        Command::Ablation(args) => reproduce::run_ablation(args),
        Command::Finetune(args) => eval::run_finetune(args),
        Command::Eval(args) => eval::run_eval(args),
    }
}
