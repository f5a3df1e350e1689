//! The `distil corpus …` subcommands: argument parsing only; the work is in the modules.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::build::{build, BuildOptions, DEFAULT_SHARD_TOKENS};
use super::inspect;
use super::manifest::Split;
use super::masking::MaskingConfig;

#[derive(Subcommand)]
pub enum CorpusCommand {
    /// Tokenise text into a corpus directory: token shards, index, token counts, held-out split, manifest.
    Build {
        /// Tokenizer: a model directory (tokenizer.json or vocab.txt) or a tokenizer.json file.
        #[arg(long)]
        tokenizer: PathBuf,
        /// Text files (one sequence per non-empty line), folders of them (recursive), .gz files.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// The corpus directory to write (replaced atomically if it holds a corpus).
        #[arg(long)]
        out: PathBuf,
        /// Tokens per sequence, start and end included [default: the model's maximum from the
        /// config.json next to the tokenizer, else 512]. Longer texts are split.
        #[arg(long)]
        max_len: Option<usize>,
        /// Drop sequences shorter than this (start and end tokens included).
        #[arg(long, default_value_t = 12)]
        min_len: usize,
        /// Drop sequences whose share of unknown tokens is at least this.
        #[arg(long, default_value_t = 0.5)]
        max_unk: f64,
        /// Share of lines (documents with --documents) held out for evaluation.
        #[arg(long, default_value_t = 0.01)]
        heldout: f64,
        /// Seed of the held-out draw.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Tokenizer threads [default: every core].
        #[arg(long)]
        threads: Option<usize>,
        /// Pack consecutive lines of a document (a blank line ends one) up to the maximum length.
        #[arg(long)]
        documents: bool,
        /// Tokens per shard file.
        #[arg(long, default_value_t = DEFAULT_SHARD_TOKENS, hide = true)]
        shard_tokens: u64,
    },
    /// Counts, settings, length histogram and most frequent tokens of a corpus.
    Stats { dir: PathBuf },
    /// Decoded sequences drawn at random, optionally with the masking training would apply.
    Sample {
        dir: PathBuf,
        /// How many sequences.
        #[arg(short, default_value_t = 5)]
        n: usize,
        /// Also show the sequences as tokens with this step's masking targets in brackets.
        #[arg(long)]
        masked: bool,
        /// Seed of the draw (and of the masking).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Exponent of the masking's frequency weighting (0: uniform).
        #[arg(long, default_value_t = MaskingConfig::default().smoothing)]
        mlm_smoothing: f64,
        /// Draw from the held-out split instead of the train split.
        #[arg(long)]
        heldout: bool,
    },
}

pub fn run(command: CorpusCommand) -> Result<()> {
    match command {
        CorpusCommand::Build {
            tokenizer,
            input,
            out,
            max_len,
            min_len,
            max_unk,
            heldout,
            seed,
            threads,
            documents,
            shard_tokens,
        } => {
            let opts = BuildOptions {
                max_len,
                min_len,
                max_unk,
                heldout,
                seed,
                threads,
                documents,
                shard_tokens,
                progress: true,
                ..BuildOptions::new(tokenizer, input, &out)
            };
            let report = build(&opts)?;
            eprintln!("{}", report.summary(&out));
            Ok(())
        }
        CorpusCommand::Stats { dir } => {
            print!("{}", inspect::stats(&dir)?);
            Ok(())
        }
        CorpusCommand::Sample { dir, n, masked, seed, mlm_smoothing, heldout } => {
            let split = if heldout { Split::Heldout } else { Split::Train };
            let masking = masked.then_some(MaskingConfig { smoothing: mlm_smoothing, ..Default::default() });
            print!("{}", inspect::sample(&dir, split, n, seed, masking)?);
            Ok(())
        }
    }
}
