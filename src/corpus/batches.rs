//! Batches grouped by length, as DistilBERT's `GroupedBatchSampler`: sequences whose lengths
//! fall in the same bin of [`LENGTH_BIN`] tokens are batched together, so little of a batch is
//! padding, and the order of the batches is shuffled. Every epoch is reshuffled from
//! (seed, epoch) alone, so a [`Cursor`] of a few integers is the whole position in the stream.
//!
//! One epoch is built as follows: shuffle all sequences, order them by length bin (stably, so
//! the order within a bin stays random), cut that order into consecutive batches (a batch
//! reaches into the next bins only where a bin runs out, as the reference's leftovers do),
//! shuffle the batches.
//!
//! The batches are global: with several processes (ranks), every rank draws the same batch
//! and takes its own part of it ([`rank_part`]), so every sequence is seen once per epoch, none
//! is dropped, and the data a run sees does not depend on how many ranks share the work (a run
//! may resume with another number of ranks). Only when a batch holds fewer sequences than there
//! are ranks does a rank get an empty part, on which a trainer runs no forward pass but still
//! joins the gradient exchange.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use super::shards::Corpus;
use crate::rng::Rng;

/// Width of the length bins, in tokens (the reference's bins are 4.02 tokens wide at 512).
pub const LENGTH_BIN: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchSize {
    /// At most this many sequences per batch.
    Sequences(usize),
    /// At most this many tokens per batch once padded (sequences × longest); a single
    /// sequence longer than that is a batch of its own.
    Tokens(usize),
}

/// The position in the batch stream: what a run checkpoint stores. It holds no rank: every
/// rank of a run draws the same batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    /// Batches taken from this epoch.
    pub offset: usize,
    /// The setup the batches come from; a cursor restores only into the same one.
    pub seed: u64,
    pub batch_size: BatchSize,
    pub sequences: usize,
}

pub struct Batcher {
    lengths: Vec<u32>,
    size: BatchSize,
    seed: u64,
    epoch: u64,
    offset: usize,
    /// The batches of the current epoch.
    batches: Vec<Vec<u32>>,
}

/// What batches are drawn over: a corpus split, or just its sequences' lengths.
pub trait SequenceLengths {
    fn sequence_lengths(&self) -> Vec<u32>;
}

impl SequenceLengths for Corpus {
    fn sequence_lengths(&self) -> Vec<u32> {
        self.lengths()
    }
}

impl SequenceLengths for [u32] {
    fn sequence_lengths(&self) -> Vec<u32> {
        self.to_vec()
    }
}

impl SequenceLengths for Vec<u32> {
    fn sequence_lengths(&self) -> Vec<u32> {
        self.clone()
    }
}

impl Batcher {
    /// Batches over `source` (a [`Corpus`] or the lengths of its sequences), starting at
    /// epoch 0.
    pub fn new<S: SequenceLengths + ?Sized>(source: &S, size: BatchSize, seed: u64) -> Result<Self> {
        let lengths = source.sequence_lengths();
        ensure!(!lengths.is_empty(), "no sequences to batch");
        ensure!(lengths.len() <= u32::MAX as usize, "{} sequences: at most 2^32 can be batched", lengths.len());
        ensure!(!matches!(size, BatchSize::Sequences(0) | BatchSize::Tokens(0)), "batch size {size:?} is zero");
        let mut batcher = Batcher { lengths, size, seed, epoch: 0, offset: 0, batches: Vec::new() };
        batcher.load_epoch(0);
        Ok(batcher)
    }

    fn load_epoch(&mut self, epoch: u64) {
        self.batches = epoch_batches(&self.lengths, self.size, self.seed, epoch);
        self.epoch = epoch;
        self.offset = 0;
    }

    /// Indices of the sequences of the next batch; after the last batch of an epoch comes the
    /// first of the next, reshuffled.
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.offset == self.batches.len() {
            self.load_epoch(self.epoch + 1);
        }
        self.offset += 1;
        self.batches[self.offset - 1].iter().map(|&i| i as usize).collect()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Batches in the current epoch. Constant for `Sequences`; for `Tokens` it can
    /// differ by a few between epochs, as batches are cut from a different order.
    pub fn batches_per_epoch(&self) -> usize {
        self.batches.len()
    }

    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.epoch,
            offset: self.offset,
            seed: self.seed,
            batch_size: self.size,
            sequences: self.lengths.len(),
        }
    }

    /// Continues from `cursor`: the batches that follow are those an unbroken run would have
    /// drawn. Refuses a cursor from another seed, batch size or corpus size.
    pub fn restore(&mut self, cursor: &Cursor) -> Result<()> {
        let ours = self.cursor();
        ensure!(
            (cursor.seed, cursor.batch_size, cursor.sequences) == (ours.seed, ours.batch_size, ours.sequences),
            "cannot resume batches: the cursor is from seed {}, batch size {:?} over {} sequences; \
             this run has seed {}, batch size {:?} over {} sequences",
            cursor.seed,
            cursor.batch_size,
            cursor.sequences,
            ours.seed,
            ours.batch_size,
            ours.sequences
        );
        if cursor.epoch != self.epoch {
            self.load_epoch(cursor.epoch);
        }
        ensure!(
            cursor.offset <= self.batches.len(),
            "cannot resume batches: the cursor is at batch {} of epoch {}, which has {}",
            cursor.offset,
            cursor.epoch,
            self.batches.len()
        );
        self.offset = cursor.offset;
        Ok(())
    }
}

/// The batches of one epoch, in the order they are drawn.
pub fn epoch_batches(lengths: &[u32], size: BatchSize, seed: u64, epoch: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(Rng::new(seed).next_u64() ^ epoch);
    let mut order: Vec<u32> = (0..lengths.len() as u32).collect();
    rng.shuffle(&mut order);

    // A stable counting sort by bin keeps the random order within each bin.
    let bin = |i: u32| (lengths[i as usize] / LENGTH_BIN) as usize;
    let bins = lengths.iter().max().map_or(0, |&m| (m / LENGTH_BIN) as usize + 1);
    let mut next = vec![0usize; bins + 1];
    order.iter().for_each(|&i| next[bin(i) + 1] += 1);
    (1..next.len()).for_each(|b| next[b] += next[b - 1]);
    let mut sorted = vec![0u32; order.len()];
    for &i in &order {
        sorted[next[bin(i)]] = i;
        next[bin(i)] += 1;
    }

    let mut batches = Vec::new();
    let mut batch: Vec<u32> = Vec::new();
    let mut longest = 0;
    for &i in &sorted {
        let len = lengths[i as usize] as usize;
        let full = match size {
            BatchSize::Sequences(n) => batch.len() == n,
            BatchSize::Tokens(t) => !batch.is_empty() && (batch.len() + 1) * longest.max(len) > t,
        };
        if full {
            batches.push(std::mem::take(&mut batch));
            longest = 0;
        }
        batch.push(i);
        longest = longest.max(len);
    }
    batches.push(batch);
    rng.shuffle(&mut batches);
    batches
}

/// The positions within `batch` (indices into `lengths`) that rank `rank` of `world` takes:
/// the batch ordered by length and dealt round-robin, so the ranks' parts differ by at most one
/// sequence and have much the same padded width. Empty when the batch holds fewer sequences
/// than there are ranks and this rank's turn does not come.
pub fn rank_part(batch: &[usize], lengths: &[u32], rank: usize, world: usize) -> Vec<usize> {
    assert!(rank < world, "rank {rank} is outside a world of {world}");
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&p| (lengths[batch[p]], batch[p]));
    let mut mine: Vec<usize> = order.into_iter().skip(rank).step_by(world).collect();
    mine.sort_unstable();
    mine
}

/// Sequences right-padded to the longest, with their attention mask (1 = token, 0 = padding).
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
}

pub fn pad(seqs: &[Vec<u32>], pad_id: u32) -> PaddedBatch {
    let width = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let row = |s: &Vec<u32>, fill: u32, value: Option<u32>| {
        let mut r: Vec<u32> = value.map_or_else(|| s.clone(), |v| vec![v; s.len()]);
        r.resize(width, fill);
        r
    };
    PaddedBatch {
        input_ids: seqs.iter().map(|s| row(s, pad_id, None)).collect(),
        attention_mask: seqs.iter().map(|s| row(s, 0, Some(1))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_parts_partition_the_batch_by_length() {
        let lengths = [10, 50, 12, 30, 11, 40, 13];
        let batch = vec![0, 1, 2, 3, 4, 5, 6];
        let parts: Vec<Vec<usize>> = (0..3).map(|r| rank_part(&batch, &lengths, r, 3)).collect();
        // By length: 0 (10), 4 (11), 2 (12), 6 (13), 3 (30), 5 (40), 1 (50).
        assert_eq!(parts, vec![vec![0, 1, 6], vec![3, 4], vec![2, 5]]);
        assert_eq!(rank_part(&[7], &[0, 0, 0, 0, 0, 0, 0, 5], 1, 2), Vec::<usize>::new());
        assert_eq!(rank_part(&batch, &lengths, 0, 1), batch);
    }

    #[test]
    fn token_budget_counts_padding() {
        let lengths = [8, 8, 8, 8, 8, 30];
        let batches = epoch_batches(&lengths, BatchSize::Tokens(24), 1, 0);
        let mut sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        sizes.sort();
        assert_eq!(sizes, [1, 2, 3], "{batches:?}");
    }

    #[test]
    fn pads_right() {
        let p = pad(&[vec![5, 6, 7], vec![8]], 0);
        assert_eq!(p.input_ids, vec![vec![5, 6, 7], vec![8, 0, 0]]);
        assert_eq!(p.attention_mask, vec![vec![1, 1, 1], vec![1, 0, 0]]);
    }
}
