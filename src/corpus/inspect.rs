//! What `distil corpus stats` and `distil corpus sample` print: a corpus described for people,
//! decoded with the copy of the tokenizer it carries.

use std::fmt::Write;
use std::path::Path;

use anyhow::Result;

use super::batches::pad;
use super::manifest::{Manifest, Split};
use super::masking::{Masker, MaskingConfig, IGNORE};
use super::shards::Corpus;
use crate::model::TextTokenizer;
use crate::rng::Rng;

const HISTOGRAM_BINS: usize = 16;
const TOP_TOKENS: usize = 20;

/// The corpus' own tokenizer, checked against the manifest.
fn open_with_tokenizer(dir: &Path, split: Split) -> Result<(Corpus, TextTokenizer)> {
    let corpus = Corpus::open(dir, split)?;
    let tokenizer = TextTokenizer::load(&Manifest::tokenizer_dir(dir))?;
    corpus.check_tokenizer(&tokenizer)?;
    Ok((corpus, tokenizer))
}

fn millions(n: u64) -> String {
    if n >= 100_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        n.to_string()
    }
}

/// Counts, settings, a histogram of the train lengths and the most frequent tokens.
pub fn stats(dir: &Path) -> Result<String> {
    let (corpus, tokenizer) = open_with_tokenizer(dir, Split::Train)?;
    let m = corpus.manifest();
    let s = &m.settings;
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "corpus      {}", dir.display())?;
    writeln!(w, "tokenizer   {} ({} tokens, {})", s.tokenizer, m.vocab_size, m.tokenizer_fingerprint)?;
    writeln!(
        w,
        "settings    {} mode, max length {}, min length {}, max unknown share {}, held out {}, seed {}",
        if s.documents { "document" } else { "line" },
        s.max_len,
        s.min_len,
        s.max_unk,
        s.heldout,
        s.seed
    )?;
    let documents = if s.documents { format!(" in {} documents", m.input.units) } else { String::new() };
    writeln!(
        w,
        "input       {} files, {:.2} MB of text, {} lines{documents} ({} lines not UTF-8, skipped)",
        m.input.files,
        m.input.bytes as f64 / 1e6,
        m.input.lines,
        m.input.invalid_utf8_lines
    )?;
    for (name, info) in [("train", &m.train), ("held out", &m.heldout)] {
        writeln!(
            w,
            "{name:<11} {} sequences, {} tokens ({:.1} per sequence), {} shard(s) of u{}",
            info.sequences,
            millions(info.tokens),
            info.tokens as f64 / info.sequences.max(1) as f64,
            info.shards.len(),
            m.token_bytes * 8
        )?;
    }
    writeln!(
        w,
        "dropped     {} shorter than {} tokens, {} with {} or more unknown; {} long texts split",
        m.dropped.too_short, s.min_len, m.dropped.too_many_unknown, s.max_unk, m.split_long
    )?;

    // Bins (b·step, (b+1)·step], so that the last one ends at the maximum length.
    let step = s.max_len.div_ceil(HISTOGRAM_BINS);
    let mut bins = [0u64; HISTOGRAM_BINS];
    corpus.lengths().iter().for_each(|&l| bins[(l as usize - 1) / step] += 1);
    let most = *bins.iter().max().unwrap_or(&1);
    writeln!(w, "lengths     (train, tokens per sequence)")?;
    for (b, &n) in bins.iter().enumerate().filter(|(_, &n)| n > 0) {
        let bar = "#".repeat((n * 40).div_ceil(most) as usize);
        writeln!(w, "  {:>5}-{:<5} {n:>10} {bar}", b * step + 1, (b + 1) * step)?;
    }

    let counts = corpus.token_counts();
    let total: u64 = counts.iter().sum();
    let mut ids: Vec<u32> = (0..counts.len() as u32).filter(|id| !m.special_ids.contains(id)).collect();
    ids.sort_by_key(|&id| std::cmp::Reverse(counts[id as usize]));
    let top: Vec<String> = ids
        .iter()
        .take(TOP_TOKENS)
        .map(|&id| {
            let n = counts[id as usize];
            format!("{} {:.2}%", tokenizer.id_to_token(id), 100.0 * n as f64 / total as f64)
        })
        .collect();
    writeln!(w, "top tokens  {}", top.join(", "))?;
    let unseen = counts.iter().filter(|&&c| c == 0).count();
    writeln!(w, "unseen      {unseen} of {} vocabulary ids never occur in the train split", counts.len())?;
    Ok(out)
}

/// `n` sequences drawn at random (from `seed`), decoded; with `masking`, also as tokens with
/// the targets that training would draw for them as one batch: `[word]` replaced by the mask
/// token, `[word→other]` by a random token, `[word=]` kept.
pub fn sample(dir: &Path, split: Split, n: usize, seed: u64, masking: Option<MaskingConfig>) -> Result<String> {
    let (corpus, tokenizer) = open_with_tokenizer(dir, split)?;
    anyhow::ensure!(!corpus.is_empty(), "corpus {} has no {} sequences", dir.display(), split.name());
    let mut rng = Rng::new(seed);
    let mut picks = distinct(n.min(corpus.len()), corpus.len(), &mut rng);
    rng.shuffle(&mut picks);
    let seqs: Vec<Vec<u32>> = picks.iter().map(|&i| corpus.sequence(i)).collect();
    let mut out = String::new();
    let masked = match masking {
        Some(config) => {
            let m = corpus.manifest();
            let masker = Masker::new(&corpus.token_counts(), &m.special_ids, m.vocab_size, m.special.mask, config)?;
            writeln!(out, "targets in brackets: [word] masked, [word→other] replaced by a random token, [word=] kept")?;
            Some(masker.mask(&pad(&seqs, m.special.pad), &mut rng))
        }
        None => None,
    };
    for (row, (&i, seq)) in picks.iter().zip(&seqs).enumerate() {
        writeln!(out, "#{i} ({} tokens): {}", seq.len(), tokenizer.decode(seq, true)?)?;
        if let Some(batch) = &masked {
            let tokens: Vec<String> = seq
                .iter()
                .enumerate()
                .map(|(c, &id)| {
                    let original = tokenizer.id_to_token(id);
                    let shown = batch.input_ids[row][c];
                    match batch.labels[row][c] {
                        IGNORE => original,
                        _ if shown == id => format!("[{original}=]"),
                        _ if shown == corpus.manifest().special.mask => format!("[{original}]"),
                        _ => format!("[{original}→{}]", tokenizer.id_to_token(shown)),
                    }
                })
                .collect();
            writeln!(out, "    {}", tokens.join(" "))?;
        }
    }
    Ok(out)
}

/// `n` distinct numbers below `len`, uniformly (Floyd's algorithm: O(n), whatever `len`).
fn distinct(n: usize, len: usize, rng: &mut Rng) -> Vec<usize> {
    let mut chosen = std::collections::HashSet::with_capacity(n);
    let mut picks = Vec::with_capacity(n);
    for j in len - n..len {
        let t = rng.below(j as u64 + 1) as usize;
        let pick = if chosen.insert(t) { t } else { j };
        chosen.insert(pick);
        picks.push(pick);
    }
    picks
}
