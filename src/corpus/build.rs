//! `distil corpus build`: text in, a corpus directory out. Three stages run at once, joined by
//! small bounded queues so that memory stays flat: a reader thread cuts the input into chunks of
//! lines, a tokenizer thread encodes each chunk on a pool of `threads` workers, and the calling
//! thread packs, cleans, splits and writes the sequences in input order (so the output does not
//! depend on the number of threads). The corpus is written into a temporary directory next to
//! the destination and renamed into place only when complete.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::input::{list_files, Chunk, ChunkReader};
use super::manifest::{
    token_bytes_for, BuildSettings, DropCounts, InputCounts, Manifest, SpecialIds, Split, FORMAT, MANIFEST_FILE,
    TOKENIZER_DIR, TOKEN_COUNTS_FILE, VERSION,
};
use super::pack::{Packer, Rules, Verdict};
use super::shards::{ChecksummedFile, SplitWriter};
use crate::model::{ModelConfig, TextTokenizer};
use crate::rng::Rng;

/// Text per chunk handed to the tokenizer: large enough to keep every worker busy, small
/// enough that the few chunks in flight take little memory.
const CHUNK_BYTES: usize = 1 << 20;
/// Used when no `config.json` next to the tokenizer says the model's maximum.
pub const DEFAULT_MAX_LEN: usize = 512;
/// The reference keeps sequences of more than 11 tokens.
pub const DEFAULT_MIN_LEN: usize = 12;
pub const DEFAULT_MAX_UNK: f64 = 0.5;
pub const DEFAULT_HELDOUT: f64 = 0.01;
/// Tokens per shard file (512 MiB of u16).
pub const DEFAULT_SHARD_TOKENS: u64 = 1 << 28;

/// The options of `distil corpus build` (also its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct BuildOptions {
    /// Tokenizer: a model directory (tokenizer.json or vocab.txt) or a tokenizer.json file.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Text files (one sequence per non-empty line), folders of them (recursive), .gz files.
    #[arg(long = "input", value_name = "PATH", required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// The corpus directory to write (replaced whole if it holds a corpus).
    #[arg(long)]
    pub out: PathBuf,
    /// Tokens per sequence, start and end included [default: the model's maximum from the
    /// config.json next to the tokenizer, else 512]. Longer texts are split.
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Drop sequences shorter than this (start and end tokens included).
    #[arg(long, default_value_t = DEFAULT_MIN_LEN)]
    pub min_len: usize,
    /// Drop sequences whose share of unknown tokens is at least this.
    #[arg(long, default_value_t = DEFAULT_MAX_UNK)]
    pub max_unk: f64,
    /// Share of lines (documents with --documents) held out for evaluation.
    #[arg(long, default_value_t = DEFAULT_HELDOUT)]
    pub heldout: f64,
    /// Seed of the held-out draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokenizer threads [default: every core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Pack consecutive lines of a document (a blank line ends one) up to the maximum length.
    #[arg(long)]
    pub documents: bool,
    /// Tokens per shard file.
    #[arg(long, default_value_t = DEFAULT_SHARD_TOKENS, hide = true)]
    pub shard_tokens: u64,
    /// Draw a progress bar on standard error (when it is a terminal); on from the command line.
    #[arg(skip = true)]
    pub progress: bool,
}

impl BuildOptions {
    /// The defaults of `distil corpus build`, without a progress bar.
    pub fn new(tokenizer: impl Into<PathBuf>, inputs: Vec<PathBuf>, out: impl Into<PathBuf>) -> Self {
        BuildOptions {
            tokenizer: tokenizer.into(),
            inputs,
            out: out.into(),
            max_len: None,
            min_len: DEFAULT_MIN_LEN,
            max_unk: DEFAULT_MAX_UNK,
            heldout: DEFAULT_HELDOUT,
            seed: 0,
            threads: None,
            documents: false,
            shard_tokens: DEFAULT_SHARD_TOKENS,
            progress: false,
        }
    }
}

/// What a build did, for the summary line.
#[derive(Debug)]
pub struct BuildReport {
    pub manifest: Manifest,
    pub seconds: f64,
    /// Tokens the tokenizer produced (text tokens, before cleaning, without start and end tokens).
    pub tokens_encoded: u64,
}

impl BuildReport {
    pub fn summary(&self, out: &Path) -> String {
        let m = &self.manifest;
        let secs = self.seconds.max(1e-9);
        format!(
            "built corpus {}: {} train sequences ({} tokens), {} held out; dropped {} too short, {} mostly unknown; \
             {:.1} MB of text ({} tokens) in {:.1} s ({:.2} MB/s, {:.0} tokens/s)",
            out.display(),
            m.train.sequences,
            m.train.tokens,
            m.heldout.sequences,
            m.dropped.too_short,
            m.dropped.too_many_unknown,
            m.input.bytes as f64 / 1e6,
            self.tokens_encoded,
            self.seconds,
            m.input.bytes as f64 / 1e6 / secs,
            self.tokens_encoded as f64 / secs
        )
    }
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let started = Instant::now();
    check_options(opts)?;
    let tokenizer = TextTokenizer::load(&opts.tokenizer)?;
    let fingerprint = tokenizer.fingerprint()?;
    let max_len = resolve_max_len(&opts.tokenizer, opts.max_len)?;
    ensure!(
        opts.min_len <= max_len,
        "--min-len {} is longer than the maximum length {max_len}: every sequence would be dropped",
        opts.min_len
    );
    let files = list_files(&opts.inputs)?;
    let disk_total: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    let staging = Staging::new(&opts.out)?;
    copy_tokenizer(&tokenizer, &fingerprint, &staging.tmp.join(TOKENIZER_DIR))?;

    let vocab_size = tokenizer.vocab_size();
    let s = tokenizer.special;
    let rules = Rules { max_len, min_len: opts.min_len, max_unk: opts.max_unk, start: s.start, end: s.end, unk: s.unk };
    let token_bytes = token_bytes_for(vocab_size);
    let mut writer = Writer {
        documents: opts.documents,
        heldout: opts.heldout,
        salt: Rng::new(opts.seed).next_u64(),
        packer: Packer::new(rules.capacity()),
        sink: Sink {
            rules,
            train: SplitWriter::create(&staging.tmp, Split::Train, token_bytes, opts.shard_tokens)?,
            heldout: SplitWriter::create(&staging.tmp, Split::Heldout, token_bytes, opts.shard_tokens)?,
            to_heldout: false,
            counts: vec![0; vocab_size],
            dropped: DropCounts::default(),
            seq: Vec::new(),
        },
        input: InputCounts { files: files.len() as u64, ..Default::default() },
        tokens_encoded: 0,
    };

    let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let progress = progress_bar(opts.progress, disk_total);
    stream(&files, &tokenizer, threads, &mut writer, &progress, started)?;
    progress.finish_and_clear();

    let settings = BuildSettings {
        tokenizer: opts.tokenizer.display().to_string(),
        inputs: opts.inputs.iter().map(|p| p.display().to_string()).collect(),
        max_len,
        min_len: opts.min_len,
        max_unk: opts.max_unk,
        heldout: opts.heldout,
        seed: opts.seed,
        documents: opts.documents,
        shard_tokens: opts.shard_tokens,
    };
    let Writer { mut packer, mut sink, input, tokens_encoded, .. } = writer;
    packer.end_document(&mut |s| sink.accept(s))?;
    check_not_empty(&input, &sink, &settings)?;
    let mut counts_file = ChecksummedFile::create(staging.tmp.join(TOKEN_COUNTS_FILE))?;
    let counts_bytes: Vec<u8> = sink.counts.iter().flat_map(|c| c.to_le_bytes()).collect();
    counts_file.write(&counts_bytes)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        tokenizer_fingerprint: fingerprint,
        vocab_size,
        special: SpecialIds { start: s.start, end: s.end, mask: s.mask, pad: s.pad, unk: s.unk },
        special_ids: tokenizer.special_ids(),
        token_bytes,
        settings,
        input,
        dropped: sink.dropped,
        split_long: packer.split_lines,
        train: sink.train.finish()?,
        heldout: sink.heldout.finish()?,
        token_counts: counts_file.finish()?,
    };
    let mut manifest_file = ChecksummedFile::create(staging.tmp.join(MANIFEST_FILE))?;
    manifest_file.write(serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    manifest_file.finish()?;
    staging.commit()?;
    Ok(BuildReport { manifest, seconds: started.elapsed().as_secs_f64(), tokens_encoded })
}

fn check_options(opts: &BuildOptions) -> Result<()> {
    ensure!(opts.max_len.is_none_or(|n| n >= 3), "--max-len must be at least 3 (start, one token, end)");
    ensure!(opts.min_len >= 2, "--min-len must be at least 2 (a sequence holds its start and end tokens)");
    ensure!(opts.max_unk > 0.0, "--max-unk must be above 0 (a share; 1 or more keeps every sequence)");
    ensure!((0.0..1.0).contains(&opts.heldout), "--heldout must be a share from 0 to below 1, got {}", opts.heldout);
    ensure!(opts.threads != Some(0), "--threads must be at least 1");
    ensure!(opts.shard_tokens > 0, "--shard-tokens must be at least 1");
    ensure!(!opts.inputs.is_empty(), "no --input given: expected text files or folders");
    Ok(())
}

/// The model's maximum sequence length from `config.json` next to the tokenizer, if there is
/// one; a longer `--max-len` would give the model positions it does not have.
fn resolve_max_len(tokenizer: &Path, requested: Option<usize>) -> Result<usize> {
    let dir = if tokenizer.is_dir() { tokenizer } else { tokenizer.parent().unwrap_or(Path::new(".")) };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if !dir.join("config.json").is_file() {
        return Ok(requested.unwrap_or(DEFAULT_MAX_LEN));
    }
    let model_max = ModelConfig::from_dir(dir)
        .context("the maximum sequence length comes from the model's config.json next to the tokenizer")?
        .max_sequence_length();
    match requested {
        Some(n) if n > model_max => bail!(
            "--max-len {n} is longer than the model's maximum of {model_max} tokens ({})",
            dir.join("config.json").display()
        ),
        Some(n) => Ok(n),
        None => Ok(model_max),
    }
}

/// Runs the reader, tokenizer and writer stages until the input is exhausted or one fails.
fn stream(
    files: &[PathBuf],
    tokenizer: &TextTokenizer,
    threads: usize,
    writer: &mut Writer,
    progress: &ProgressBar,
    started: Instant,
) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("tokenize-{i}"))
        .build()
        .context("cannot start the tokenizer threads")?;
    let disk_read = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| {
        // Bounded queues: a stage that runs ahead waits, so at most a few chunks are in memory.
        let (chunk_tx, chunk_rx) = sync_channel::<Result<Chunk>>(2);
        let (encoded_tx, encoded_rx) = sync_channel::<Result<Encoded>>(2);
        let reader = ChunkReader::new(files.to_vec(), CHUNK_BYTES, disk_read.clone());
        scope.spawn(move || {
            for chunk in reader {
                let failed = chunk.is_err();
                if chunk_tx.send(chunk).is_err() || failed {
                    break;
                }
            }
        });
        let pool = &pool;
        scope.spawn(move || {
            for chunk in chunk_rx {
                let encoded = chunk.and_then(|c| encode(tokenizer, pool, c, files));
                let failed = encoded.is_err();
                if encoded_tx.send(encoded).is_err() || failed {
                    break;
                }
            }
        });
        // Returning early drops the receiver, which stops the other stages.
        for encoded in encoded_rx {
            writer.add(encoded?)?;
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            progress.set_position(disk_read.load(Ordering::Relaxed));
            progress.set_message(format!(
                "{:.2} MB/s, {:.0} tokens/s",
                writer.input.bytes as f64 / 1e6 / secs,
                writer.tokens_encoded as f64 / secs
            ));
        }
        Ok(())
    })
}

/// One chunk's token ids, with what the writer needs to know about its lines.
struct Encoded {
    ids: Vec<Vec<u32>>,
    starts_document: Vec<bool>,
    bytes: u64,
    invalid_utf8: u64,
}

fn encode(tokenizer: &TextTokenizer, pool: &rayon::ThreadPool, chunk: Chunk, files: &[PathBuf]) -> Result<Encoded> {
    let ids = pool.install(|| tokenizer.encode_unwrapped(&chunk.line_texts())).with_context(|| {
        format!("while tokenising lines {}-{} of {}", chunk.first_line, chunk.last_line, files[chunk.file].display())
    })?;
    Ok(Encoded { ids, starts_document: chunk.starts_document, bytes: chunk.bytes, invalid_utf8: chunk.invalid_utf8 })
}

/// Packs lines into sequences and routes each unit (line, or document) to a split.
struct Writer {
    documents: bool,
    heldout: f64,
    /// Drawn from the seed; each unit's split is a function of (salt, unit number) alone.
    salt: u64,
    packer: Packer,
    sink: Sink,
    input: InputCounts,
    tokens_encoded: u64,
}

impl Writer {
    fn add(&mut self, chunk: Encoded) -> Result<()> {
        self.input.bytes += chunk.bytes;
        self.input.invalid_utf8_lines += chunk.invalid_utf8;
        for (ids, &starts) in chunk.ids.iter().zip(&chunk.starts_document) {
            self.input.lines += 1;
            self.tokens_encoded += ids.len() as u64;
            if !self.documents || starts {
                self.packer.end_document(&mut |s| self.sink.accept(s))?;
                self.start_unit();
            }
            self.packer.add_line(ids, &mut |s| self.sink.accept(s))?;
        }
        Ok(())
    }

    fn start_unit(&mut self) {
        self.sink.to_heldout = Rng::new(self.salt ^ self.input.units).next_f64() < self.heldout;
        self.input.units += 1;
    }
}

/// Wraps, cleans and writes sequences; counts train tokens.
struct Sink {
    rules: Rules,
    train: SplitWriter,
    heldout: SplitWriter,
    to_heldout: bool,
    counts: Vec<u64>,
    dropped: DropCounts,
    seq: Vec<u32>,
}

impl Sink {
    fn accept(&mut self, content: &[u32]) -> Result<()> {
        self.rules.wrap(content, &mut self.seq);
        match self.rules.verdict(&self.seq) {
            Verdict::TooShort => self.dropped.too_short += 1,
            Verdict::TooManyUnknown => self.dropped.too_many_unknown += 1,
            Verdict::Keep if self.to_heldout => self.heldout.push(&self.seq)?,
            Verdict::Keep => {
                for &t in &self.seq {
                    self.counts[t as usize] += 1;
                }
                self.train.push(&self.seq)?;
            }
        }
        Ok(())
    }
}

/// An empty corpus is an error, not a directory that fails later.
fn check_not_empty(input: &InputCounts, sink: &Sink, settings: &BuildSettings) -> Result<()> {
    let inputs = settings.inputs.join(", ");
    if input.lines == 0 {
        bail!(
            "no text in the inputs ({inputs}): {} files, {} bytes, no non-empty UTF-8 line ({} lines not UTF-8)",
            input.files,
            input.bytes,
            input.invalid_utf8_lines
        );
    }
    let (train, heldout) = (sink.train.sequences(), sink.heldout.sequences());
    if train + heldout == 0 {
        bail!(
            "no sequence survived cleaning ({inputs}): of {} lines, {} sequences were shorter than --min-len {} and {} \
             had --max-unk {} or more unknown tokens",
            input.lines,
            sink.dropped.too_short,
            settings.min_len,
            sink.dropped.too_many_unknown,
            settings.max_unk
        );
    }
    if train == 0 {
        bail!("no train sequences: all {heldout} went to the held-out split (--heldout {})", settings.heldout);
    }
    Ok(())
}

fn progress_bar(enabled: bool, total_bytes: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total_bytes);
    let style = ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} read, {msg}, ETA {eta}")
        .expect("the template is valid");
    bar.set_style(style);
    bar
}

/// A copy of the tokenizer's own files inside the corpus, checked to read back identically.
fn copy_tokenizer(tokenizer: &TextTokenizer, fingerprint: &str, into: &Path) -> Result<()> {
    std::fs::create_dir(into).with_context(|| format!("cannot create {}", into.display()))?;
    let source = &tokenizer.source;
    let copy = |from: &Path, name: &str| {
        std::fs::copy(from, into.join(name))
            .with_context(|| format!("cannot copy {} to {}", from.display(), into.display()))
    };
    if source.file_name().is_some_and(|n| n == "vocab.txt") {
        copy(source, "vocab.txt")?;
        let config = source.with_file_name("tokenizer_config.json");
        if config.is_file() {
            copy(&config, "tokenizer_config.json")?;
        }
    } else {
        copy(source, "tokenizer.json")?;
    }
    let copied = TextTokenizer::load(into)?.fingerprint()?;
    ensure!(
        copied == fingerprint,
        "the copy of tokenizer {} in {} does not read back the same ({copied} vs {fingerprint})",
        source.display(),
        into.display()
    );
    Ok(())
}

/// The corpus under construction, in a hidden directory next to its destination. `commit`
/// swaps it in; dropping it uncommitted removes it, so a failed build leaves any earlier corpus
/// at the destination as it was.
struct Staging {
    out: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl Staging {
    fn new(out: &Path) -> Result<Self> {
        if out.is_file() {
            bail!("output {} is a file; expected a directory for the corpus", out.display());
        }
        if out.is_dir() && !out.join(MANIFEST_FILE).is_file() {
            let mut entries = std::fs::read_dir(out).with_context(|| format!("cannot list {}", out.display()))?;
            if entries.next().is_some() {
                bail!(
                    "refusing to replace {}: it is not empty and not a distil corpus (no {MANIFEST_FILE})",
                    out.display()
                );
            }
        }
        let name = out
            .file_name()
            .with_context(|| format!("output {} has no directory name", out.display()))?
            .to_string_lossy()
            .into_owned();
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let tmp = parent.join(format!(".{name}.building-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove stale {}", tmp.display()))?;
        }
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Staging { out: out.to_path_buf(), tmp, committed: false })
    }

    fn commit(mut self) -> Result<()> {
        let rename = |from: &Path, to: &Path| {
            std::fs::rename(from, to).with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
        };
        if self.out.exists() {
            let old = self.tmp.with_file_name(format!(
                ".{}.old-{}",
                self.out.file_name().unwrap().to_string_lossy(),
                std::process::id()
            ));
            rename(&self.out, &old)?;
            if let Err(e) = rename(&self.tmp, &self.out) {
                rename(&old, &self.out).ok();
                return Err(e);
            }
            std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove the replaced {}", old.display()))?;
        } else {
            rename(&self.tmp, &self.out)?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            std::fs::remove_dir_all(&self.tmp).ok();
        }
    }
}
