//! The `distil corpus …` subcommands: argument parsing only; the work is in the modules.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::build::{build, BuildOptions};
use super::inspect;
use super::manifest::Split;
use super::masking::MaskingConfig;

#[derive(Subcommand)]
pub enum CorpusCommand {
    /// Tokenise text into a corpus directory: token shards, index, token counts, held-out split, manifest.
    Build(BuildOptions),
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
        CorpusCommand::Build(options) => {
            let report = build(&options)?;
            eprintln!("{}", report.summary(&options.out));
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
