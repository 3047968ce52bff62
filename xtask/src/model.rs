//! `cargo xtask model …`: parameter counts and a file-to-file forward pass (logic in `msp-model`).

use std::path::PathBuf;

use anyhow::Context as _;
use candle_core::Device;
use clap::{Args, Subcommand};
use msp_model::{forward_files, param_count, Config, Variant};

/// Model commands.
#[derive(Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Parameter counts: the paper's (cross layers + visual encoder), total, by module.
    Params {
        /// Config JSON (HF `config.json` names); the paper's LXMERT-S when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        /// lxmert or lxmert-s.
        #[arg(long, default_value = "lxmert-s")]
        variant: Variant,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the backbone on HF-named inputs and write language/vision/pooled outputs.
    Forward {
        /// Config JSON (HF `config.json` names).
        #[arg(long)]
        config: PathBuf,
        /// Weights (safetensors; HF, LXMERT `bert.` or LXMERT-S names).
        #[arg(long)]
        weights: PathBuf,
        /// Inputs (safetensors: input_ids, visual_feats, visual_pos, optional attention_mask,
        /// token_type_ids, position_ids, visual_attention_mask).
        #[arg(long)]
        inputs: PathBuf,
        /// Output safetensors (written atomically).
        #[arg(long)]
        out: PathBuf,
        /// lxmert or lxmert-s.
        #[arg(long, default_value = "lxmert")]
        variant: Variant,
        /// Row of LXMERT-S's `bert.word_embeddings` used as the visual [CLS].
        #[arg(long, default_value_t = 101)]
        cls_token_id: usize,
        /// Print the load report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `model` subcommand.
pub fn run(args: ModelArgs) -> anyhow::Result<()> {
    match args.command {
        ModelCommand::Params {
            config,
            variant,
            json,
        } => {
            let cfg = match config {
                Some(p) => Config::from_json_file(&p)?,
                None => Config::default(),
            };
            let c = param_count(&cfg, variant)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!(
                    "paper count (cross + visual encoder + l/r layers): {}",
                    c.paper_count
                );
                println!(
                    "total (backbone + pre-training heads):            {}",
                    c.total
                );
                for (m, n) in &c.by_module {
                    println!("  {m:<40} {n:>12}");
                }
            }
        }
        ModelCommand::Forward {
            config,
            weights,
            inputs,
            out,
            variant,
            cls_token_id,
            json,
        } => {
            let cfg = Config::from_json_file(&config)?;
            let r = forward_files(
                &cfg,
                variant,
                &weights,
                &inputs,
                &out,
                cls_token_id,
                &Device::Cpu,
            )
            .with_context(|| {
                format!("forward of {} with {}", inputs.display(), weights.display())
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("weights: {}", r.load.summary());
                for (k, s) in &r.outputs {
                    println!("{k}: {s:?}");
                }
                println!("wrote {}", out.display());
            }
        }
    }
    Ok(())
}
