//! `cargo xtask text …`: tokenizer and lexicon utilities (logic in `msp-text`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use msp_text::{BertTokenizer, PositionMode, VerbLexicon};

/// Text commands.
#[derive(Args)]
pub struct TextArgs {
    #[command(subcommand)]
    command: TextCommand,
}

#[derive(Subcommand)]
enum TextCommand {
    /// Encode one text with a BERT vocabulary.
    Encode {
        /// `vocab.txt` or `tokenizer.json` (by extension).
        #[arg(long)]
        vocab: PathBuf,
        /// Sequence length (with [CLS] and [SEP]).
        #[arg(long, default_value_t = 20)]
        max_len: usize,
        /// `word` (LXMERT-S) or `sequential` (BERT/HF LXMERT).
        #[arg(long, default_value = "word")]
        positions: String,
        /// The text.
        #[arg(long)]
        text: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate the compact verb lexicon from a WordNet 3.0 directory.
    GenLexicon {
        /// WordNet database directory.
        #[arg(long, default_value = "/usr/share/wordnet")]
        wordnet: PathBuf,
        /// Output file.
        #[arg(long, default_value = "data/lexicon/verbs.tsv")]
        out: PathBuf,
        /// Debian copyright file holding WordNet's licence; written as WORDNET-LICENSE next
        /// to `--out` (skipped with a warning when the file is absent).
        #[arg(long, default_value = "/usr/share/doc/wordnet-base/copyright")]
        license: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Say which words of a phrase the verb filter reads as verbs.
    Verbs {
        /// The phrase.
        #[arg(long)]
        phrase: String,
        /// Read WordNet from this directory instead of the committed lexicon.
        #[arg(long)]
        wordnet: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: TextArgs) -> anyhow::Result<()> {
    match args.command {
        TextCommand::Encode {
            vocab,
            max_len,
            positions,
            text,
            json,
        } => {
            let mode: PositionMode = positions.parse()?;
            let tok = if vocab.extension().is_some_and(|e| e == "json") {
                BertTokenizer::from_tokenizer_json(&vocab)?
            } else {
                BertTokenizer::from_vocab_file(&vocab)?
            };
            let enc = tok.encode(&text, max_len, mode)?;
            if json {
                println!("{}", serde_json::to_string(&enc)?);
            } else {
                println!("tokens:         {:?}", enc.tokens);
                println!("input_ids:      {:?}", enc.input_ids);
                println!("attention_mask: {:?}", enc.attention_mask);
                println!("token_type_ids: {:?}", enc.token_type_ids);
                println!("position_ids:   {:?}", enc.position_ids);
            }
        }
        TextCommand::GenLexicon {
            wordnet,
            out,
            license,
            json,
        } => {
            let lex = VerbLexicon::from_wordnet_dir(&wordnet)
                .with_context(|| format!("reading WordNet from {}", wordnet.display()))?;
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            lex.write(&out)?;
            let license_out = out.with_file_name("WORDNET-LICENSE");
            let license_written = if license.exists() {
                let text = msp_text::wordnet_license(&license)?;
                let tmp = license_out.with_extension("tmp");
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, &license_out)?;
                true
            } else {
                tracing::warn!(
                    "{} not found: WORDNET-LICENSE not written",
                    license.display()
                );
                false
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"out": out, "lemmas": lex.num_lemmas(), "license": license_written.then_some(&license_out)})
                );
            } else {
                println!("wrote {} ({} lemmas)", out.display(), lex.num_lemmas());
                if license_written {
                    println!("wrote {}", license_out.display());
                }
            }
        }
        TextCommand::Verbs {
            phrase,
            wordnet,
            json,
        } => {
            let lex = match wordnet {
                Some(dir) => VerbLexicon::from_wordnet_dir(dir)?,
                None => VerbLexicon::load_default()?,
            };
            let words: Vec<&str> = phrase.split_whitespace().collect();
            let verbs: Vec<&str> = lex
                .verb_positions(&phrase)
                .into_iter()
                .map(|i| words[i])
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"phrase": phrase, "has_verb": !verbs.is_empty(), "verbs": verbs})
                );
            } else {
                println!("has_verb: {} {:?}", !verbs.is_empty(), verbs);
            }
        }
    }
    Ok(())
}
