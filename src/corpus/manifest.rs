//! `manifest.json`: what a built corpus holds and how it was made. The reader trusts nothing on
//! disk that the manifest does not describe (file names, sizes, checksums, counts), so a
//! truncated, corrupt or mismatched file is found when the corpus is opened.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "distil-corpus";
pub const VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// A copy of the tokenizer the corpus was built with, so that `stats` and `sample` can decode.
pub const TOKENIZER_DIR: &str = "tokenizer";
/// Occurrences of each vocabulary id in the train split, little-endian u64.
pub const TOKEN_COUNTS_FILE: &str = "token_counts.u64";

/// Which part of a corpus: the sequences to train on, or those held out for evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Heldout,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub tokenizer_fingerprint: String,
    pub vocab_size: usize,
    pub special: SpecialIds,
    /// Every id the tokenizer declares special: never masked, never a random replacement.
    pub special_ids: Vec<u32>,
    /// 2 (u16 tokens) when the vocabulary fits, else 4 (u32).
    pub token_bytes: usize,
    pub settings: BuildSettings,
    pub input: InputCounts,
    pub dropped: DropCounts,
    /// Texts longer than the maximum length that were cut into several sequences.
    pub split_long: u64,
    pub train: SplitInfo,
    pub heldout: SplitInfo,
    pub token_counts: FileInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialIds {
    pub start: u32,
    pub end: u32,
    pub mask: u32,
    pub pad: u32,
    pub unk: Option<u32>,
}

/// The options of `distil corpus build` that decide its output (not `--threads`: the output
/// does not depend on it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSettings {
    pub tokenizer: String,
    pub inputs: Vec<String>,
    pub max_len: usize,
    pub min_len: usize,
    pub max_unk: f64,
    pub heldout: f64,
    pub seed: u64,
    pub documents: bool,
    pub shard_tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputCounts {
    pub files: u64,
    /// Bytes of text (after decompression).
    pub bytes: u64,
    /// Non-empty lines read.
    pub lines: u64,
    /// Documents (document mode) or lines (line mode): the units split between train and held-out.
    pub units: u64,
    /// Lines that were not valid UTF-8, skipped.
    pub invalid_utf8_lines: u64,
}

/// Sequences dropped by the cleaning rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropCounts {
    pub too_short: u64,
    pub too_many_unknown: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInfo {
    pub sequences: u64,
    pub tokens: u64,
    /// Offsets of the sequences in the split's token stream: `sequences + 1` little-endian u64.
    pub index: FileInfo,
    /// The token stream, cut at sequence boundaries into files of at most `shard_tokens` tokens.
    pub shards: Vec<ShardInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    pub file: String,
    pub sequences: u64,
    pub tokens: u64,
    pub crc32: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInfo {
    pub file: String,
    pub bytes: u64,
    pub crc32: u32,
}

impl Manifest {
    /// Reads and checks `DIR/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        if !dir.is_dir() {
            bail!("corpus directory {} does not exist", dir.display());
        }
        if !path.is_file() {
            bail!(
                "{} is not a distil corpus: it has no {MANIFEST_FILE} (make one with `distil corpus build`)",
                dir.display()
            );
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("corpus manifest {} is not a valid manifest", path.display()))?;
        if manifest.format != FORMAT || manifest.version != VERSION {
            bail!(
                "corpus manifest {} has format `{}` version {}; expected `{FORMAT}` version {VERSION}",
                path.display(),
                manifest.format,
                manifest.version
            );
        }
        manifest.check_consistent().with_context(|| format!("corpus manifest {}", path.display()))?;
        Ok(manifest)
    }

    /// Checks that the counts agree with each other (the files are checked against them later).
    fn check_consistent(&self) -> Result<()> {
        if self.token_bytes != token_bytes_for(self.vocab_size) {
            bail!(
                "token_bytes is {} but a vocabulary of {} needs {}",
                self.token_bytes,
                self.vocab_size,
                token_bytes_for(self.vocab_size)
            );
        }
        let s = &self.special;
        for id in [s.start, s.end, s.mask, s.pad].into_iter().chain(s.unk).chain(self.special_ids.iter().copied()) {
            if id as usize >= self.vocab_size {
                bail!("special id {id} is outside the vocabulary of {}", self.vocab_size);
            }
        }
        for split in [Split::Train, Split::Heldout] {
            let info = self.split(split);
            let (seqs, toks) = info.shards.iter().fold((0, 0), |(s, t), shard| (s + shard.sequences, t + shard.tokens));
            if seqs != info.sequences || toks != info.tokens {
                bail!(
                    "{} lists shards with {seqs} sequences and {toks} tokens, but says {} sequences and {} tokens",
                    split.name(),
                    info.sequences,
                    info.tokens
                );
            }
            if info.index.bytes != (info.sequences + 1) * 8 {
                bail!(
                    "{} index {} has {} bytes; {} sequences need {}",
                    split.name(),
                    info.index.file,
                    info.index.bytes,
                    info.sequences,
                    (info.sequences + 1) * 8
                );
            }
        }
        if self.token_counts.bytes != self.vocab_size as u64 * 8 {
            bail!(
                "{} has {} bytes; a vocabulary of {} needs {}",
                self.token_counts.file,
                self.token_counts.bytes,
                self.vocab_size,
                self.vocab_size * 8
            );
        }
        Ok(())
    }

    pub fn split(&self, split: Split) -> &SplitInfo {
        match split {
            Split::Train => &self.train,
            Split::Heldout => &self.heldout,
        }
    }

    pub fn tokenizer_dir(dir: &Path) -> PathBuf {
        dir.join(TOKENIZER_DIR)
    }
}

/// Bytes per stored token: u16 whenever every id fits.
pub fn token_bytes_for(vocab_size: usize) -> usize {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}
