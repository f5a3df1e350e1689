//! The on-disk corpus: per split, token shards (u16 or u32, little-endian) and an index of
//! sequence offsets; one file of token counts; the manifest describing them all. Written
//! sequentially by [`SplitWriter`], read through memory maps by [`Corpus`], which checks every
//! file against the manifest (size, CRC-32, offsets) before handing out a single token.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

pub use super::manifest::Split;
use super::manifest::{FileInfo, Manifest, ShardInfo, SplitInfo, TOKEN_COUNTS_FILE};
use crate::model::TextTokenizer;

/// A file written once, front to back, whose size and CRC-32 go into the manifest.
pub(crate) struct ChecksummedFile {
    path: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl ChecksummedFile {
    pub(crate) fn create(path: PathBuf) -> Result<Self> {
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ChecksummedFile { path, out: BufWriter::with_capacity(1 << 20, file), crc: Default::default(), bytes: 0 })
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes).with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Flushes and syncs the file (the corpus directory is renamed into place afterwards, so
    /// its files must be on disk by then).
    pub(crate) fn finish(self) -> Result<FileInfo> {
        let context = || format!("cannot write {}", self.path.display());
        let file = self.out.into_inner().map_err(|e| e.into_error()).with_context(context)?;
        file.sync_all().with_context(context)?;
        let name = self.path.file_name().expect("corpus files have names").to_string_lossy().into_owned();
        Ok(FileInfo { file: name, bytes: self.bytes, crc32: self.crc.finalize() })
    }
}

/// Writes one split's sequences: shards cut at sequence boundaries, and the offsets index.
pub(crate) struct SplitWriter {
    dir: PathBuf,
    split: Split,
    token_bytes: usize,
    shard_tokens: u64,
    index: ChecksummedFile,
    shards: Vec<ShardInfo>,
    current: Option<(ChecksummedFile, ShardInfo)>,
    sequences: u64,
    tokens: u64,
    buf: Vec<u8>,
}

impl SplitWriter {
    pub(crate) fn create(dir: &Path, split: Split, token_bytes: usize, shard_tokens: u64) -> Result<Self> {
        let mut index = ChecksummedFile::create(dir.join(format!("{}.index.u64", split.name())))?;
        index.write(&0u64.to_le_bytes())?;
        Ok(SplitWriter {
            dir: dir.to_path_buf(),
            split,
            token_bytes,
            shard_tokens,
            index,
            shards: Vec::new(),
            current: None,
            sequences: 0,
            tokens: 0,
            buf: Vec::new(),
        })
    }

    pub(crate) fn push(&mut self, seq: &[u32]) -> Result<()> {
        let len = seq.len() as u64;
        let full = self.current.as_ref().is_some_and(|(_, s)| s.tokens > 0 && s.tokens + len > self.shard_tokens);
        if full {
            self.close_shard()?;
        }
        if self.current.is_none() {
            let name = format!("{}-{:05}.u{}", self.split.name(), self.shards.len(), self.token_bytes * 8);
            let file = ChecksummedFile::create(self.dir.join(&name))?;
            self.current = Some((file, ShardInfo { file: name, sequences: 0, tokens: 0, crc32: 0 }));
        }
        self.buf.clear();
        match self.token_bytes {
            2 => seq.iter().for_each(|&t| self.buf.extend_from_slice(&(t as u16).to_le_bytes())),
            _ => seq.iter().for_each(|&t| self.buf.extend_from_slice(&t.to_le_bytes())),
        }
        let (file, info) = self.current.as_mut().expect("a shard is open");
        file.write(&self.buf)?;
        info.sequences += 1;
        info.tokens += len;
        self.sequences += 1;
        self.tokens += len;
        self.index.write(&self.tokens.to_le_bytes())
    }

    pub(crate) fn sequences(&self) -> u64 {
        self.sequences
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some((file, mut info)) = self.current.take() {
            info.crc32 = file.finish()?.crc32;
            self.shards.push(info);
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<SplitInfo> {
        self.close_shard()?;
        let index = self.index.finish()?;
        Ok(SplitInfo { sequences: self.sequences, tokens: self.tokens, index, shards: self.shards })
    }
}

/// One split of a built corpus, memory-mapped and checked against its manifest.
pub struct Corpus {
    dir: PathBuf,
    split: Split,
    manifest: Manifest,
    index: Mmap,
    shards: Vec<Mmap>,
    /// Where each shard starts in the split's token stream.
    shard_starts: Vec<u64>,
    counts: Vec<u64>,
}

impl Corpus {
    /// Opens one split, checking sizes, checksums and offsets of every file it uses: a
    /// truncated, corrupt or foreign file is an error naming it. Reads each file once. The
    /// held-out split may be empty (`--heldout 0`); the train split never is.
    pub fn open(dir: &Path, split: Split) -> Result<Corpus> {
        let manifest = Manifest::read(dir)?;
        let info = manifest.split(split);
        if manifest.train.sequences == 0 {
            bail!("corpus {} has no train sequences", dir.display());
        }
        let index = map_checked(dir, &info.index, "index")?;
        let mut shards = Vec::with_capacity(info.shards.len());
        for shard in &info.shards {
            let expected = FileInfo {
                file: shard.file.clone(),
                bytes: shard.tokens * manifest.token_bytes as u64,
                crc32: shard.crc32,
            };
            shards.push(map_checked(dir, &expected, "shard")?);
        }
        let counts_map = map_checked(dir, &manifest.token_counts, "token counts")?;
        let counts: Vec<u64> = counts_map.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).collect();
        let corpus = Corpus {
            dir: dir.to_path_buf(),
            split,
            shard_starts: info
                .shards
                .iter()
                .scan(0, |start, s| Some(std::mem::replace(start, *start + s.tokens)))
                .collect(),
            manifest,
            index,
            shards,
            counts,
        };
        corpus.check_index()?;
        let counted: u64 = corpus.counts.iter().sum();
        if counted != corpus.manifest.train.tokens {
            bail!(
                "corpus token counts {} add up to {counted} tokens; the train split has {}",
                dir.join(TOKEN_COUNTS_FILE).display(),
                corpus.manifest.train.tokens
            );
        }
        Ok(corpus)
    }

    /// Offsets start at 0, grow by a valid sequence length each, end at the split's token count,
    /// and fall on every shard boundary (no sequence straddles two shards).
    fn check_index(&self) -> Result<()> {
        let info = self.manifest.split(self.split);
        let path = self.dir.join(&info.index.file);
        let (min, max) = (2, self.manifest.settings.max_len as u64);
        if self.offset(0) != 0 {
            bail!("corpus index {} starts at {}; expected 0", path.display(), self.offset(0));
        }
        for i in 0..self.len() {
            let len = self.offset(i + 1).wrapping_sub(self.offset(i));
            if !(min..=max).contains(&len) {
                bail!(
                    "corpus index {} gives sequence {i} {} tokens; expected {min} to {max}",
                    path.display(),
                    len as i64
                );
            }
        }
        let mut sequences = 0;
        for (shard, start) in info.shards.iter().zip(&self.shard_starts) {
            if self.offset(sequences as usize) != *start {
                bail!(
                    "corpus index {} does not match shard {}: sequence {sequences} starts at token {}, the shard at {start}",
                    path.display(),
                    shard.file,
                    self.offset(sequences as usize)
                );
            }
            sequences += shard.sequences;
        }
        if self.offset(self.len()) != info.tokens {
            bail!(
                "corpus index {} ends at token {}; expected {}",
                path.display(),
                self.offset(self.len()),
                info.tokens
            );
        }
        Ok(())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// Number of sequences in this split.
    pub fn len(&self) -> usize {
        self.manifest.split(self.split).sequences as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn offset(&self, i: usize) -> u64 {
        u64::from_le_bytes(self.index[i * 8..i * 8 + 8].try_into().unwrap())
    }

    /// Tokens in sequence `i` (start and end tokens included). Panics when `i >= len()`.
    pub fn seq_len(&self, i: usize) -> usize {
        (self.offset(i + 1) - self.offset(i)) as usize
    }

    /// Every sequence's length, in order: what [`super::Batcher`] groups by.
    pub fn lengths(&self) -> Vec<u32> {
        (0..self.len()).map(|i| self.seq_len(i) as u32).collect()
    }

    /// The token ids of sequence `i`, start and end tokens included. Panics when `i >= len()`.
    pub fn sequence(&self, i: usize) -> Vec<u32> {
        let (start, end) = (self.offset(i), self.offset(i + 1));
        let k = self.shard_starts.partition_point(|&s| s <= start) - 1;
        let w = self.manifest.token_bytes;
        let from = (start - self.shard_starts[k]) as usize * w;
        let bytes = &self.shards[k][from..from + (end - start) as usize * w];
        match w {
            2 => bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect(),
            _ => bytes.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect(),
        }
    }

    /// Occurrences of each vocabulary id in the train split (whichever split is open): the
    /// weights of masking come from them.
    pub fn token_counts(&self) -> Vec<u64> {
        self.counts.clone()
    }

    /// Refuses a tokenizer other than the one the corpus was built with.
    pub fn check_tokenizer(&self, tokenizer: &TextTokenizer) -> Result<()> {
        let theirs = tokenizer.fingerprint()?;
        let ours = &self.manifest.tokenizer_fingerprint;
        if &theirs != ours {
            bail!(
                "corpus {} was built with a different tokenizer ({}, {ours}) than {} ({theirs}); rebuild the corpus with this model's tokenizer",
                self.dir.display(),
                self.manifest.settings.tokenizer,
                tokenizer.source.display()
            );
        }
        Ok(())
    }
}

/// Maps a file the manifest describes, after checking its size and CRC-32.
fn map_checked(dir: &Path, info: &FileInfo, what: &str) -> Result<Mmap> {
    let path = dir.join(&info.file);
    let file = File::open(&path).with_context(|| {
        format!("corpus {what} {} is missing or unreadable (listed in the manifest)", path.display())
    })?;
    let bytes = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    if bytes != info.bytes {
        bail!(
            "corpus {what} {} has {bytes} bytes; the manifest expects {} (truncated, or from another build)",
            path.display(),
            info.bytes
        );
    }
    // SAFETY: the map is read-only and corpus files are never modified once built (a rebuild
    // writes a new directory and renames it into place); a file truncated by another process
    // while mapped would fault, as with any memory-mapped reader.
    let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    let crc = crc32fast::hash(&map);
    if crc != info.crc32 {
        bail!(
            "corpus {what} {} is corrupt: its CRC-32 is {crc:08x}, the manifest recorded {:08x}",
            path.display(),
            info.crc32
        );
    }
    Ok(map)
}
