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
//! With several processes (rank, world), the epoch's batches are dealt round-robin, so every
//! sequence is seen once per epoch and none is dropped. Every rank gets the same number of
//! batches, ceil(batches / world), so that ranks stay in step: when the batches do not divide
//! evenly, the last round's batches are split (the largest batch halved, repeatedly) into one
//! smaller batch per rank. Only when that round holds fewer sequences than there are ranks
//! does a rank get an empty batch, on which a trainer runs no forward pass but still joins the
//! gradient exchange (with a zero gradient and zero weight).

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

/// The position in the batch stream: what a run checkpoint stores. Ranks advance in step, so
/// one cursor serves every rank of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    /// Batches each rank has taken from this epoch.
    pub offset: usize,
    /// The setup the batches come from; a cursor restores only into the same one.
    pub seed: u64,
    pub world: usize,
    pub batch_size: BatchSize,
    pub sequences: usize,
}

pub struct Batcher {
    lengths: Vec<u32>,
    size: BatchSize,
    seed: u64,
    rank: usize,
    world: usize,
    epoch: u64,
    offset: usize,
    /// This rank's batches of the current epoch.
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
    /// Batches over `source` (a [`Corpus`] or the lengths of its sequences) for process `rank`
    /// of `world`, starting at epoch 0.
    pub fn new<S: SequenceLengths + ?Sized>(
        source: &S,
        size: BatchSize,
        seed: u64,
        rank: usize,
        world: usize,
    ) -> Result<Self> {
        let lengths = source.sequence_lengths();
        ensure!(!lengths.is_empty(), "no sequences to batch");
        ensure!(lengths.len() <= u32::MAX as usize, "{} sequences: at most 2^32 can be batched", lengths.len());
        ensure!(rank < world, "rank {rank} is outside a world of {world} processes");
        ensure!(!matches!(size, BatchSize::Sequences(0) | BatchSize::Tokens(0)), "batch size {size:?} is zero");
        let mut batcher = Batcher { lengths, size, seed, rank, world, epoch: 0, offset: 0, batches: Vec::new() };
        batcher.load_epoch(0);
        Ok(batcher)
    }

    fn load_epoch(&mut self, epoch: u64) {
        let all = epoch_batches(&self.lengths, self.size, self.seed, epoch);
        self.batches = rank_share(all, &self.lengths, self.rank, self.world);
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

    /// Batches per rank in the current epoch. Constant for `Sequences`; for `Tokens` it can
    /// differ by a few between epochs, as batches are cut from a different order.
    pub fn batches_per_epoch(&self) -> usize {
        self.batches.len()
    }

    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.epoch,
            offset: self.offset,
            seed: self.seed,
            world: self.world,
            batch_size: self.size,
            sequences: self.lengths.len(),
        }
    }

    /// Continues from `cursor`: the batches that follow are those an unbroken run would have
    /// drawn. Refuses a cursor from another seed, world size, batch size or corpus size.
    pub fn restore(&mut self, cursor: &Cursor) -> Result<()> {
        let ours = self.cursor();
        ensure!(
            (cursor.seed, cursor.world, cursor.batch_size, cursor.sequences)
                == (ours.seed, ours.world, ours.batch_size, ours.sequences),
            "cannot resume batches: the cursor is from seed {}, {} processes, batch size {:?} over {} sequences; \
             this run has seed {}, {} processes, batch size {:?} over {} sequences",
            cursor.seed,
            cursor.world,
            cursor.batch_size,
            cursor.sequences,
            ours.seed,
            ours.world,
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

/// The whole world's batches of one epoch, in the order they are dealt to ranks.
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

/// Rank `rank`'s batches: every `world`-th one, then its part of the last, split round.
fn rank_share(mut batches: Vec<Vec<u32>>, lengths: &[u32], rank: usize, world: usize) -> Vec<Vec<u32>> {
    let mut last_round = batches.split_off(batches.len() / world * world);
    let mut mine: Vec<Vec<u32>> = batches.into_iter().skip(rank).step_by(world).collect();
    if !last_round.is_empty() {
        split_into(&mut last_round, world, lengths);
        mine.push(std::mem::take(&mut last_round[rank]));
    }
    mine
}

/// Halves the largest batch until there are `parts` batches (padding with empty ones when the
/// sequences run out). A half of a batch fits any limit the batch fitted.
fn split_into(batches: &mut Vec<Vec<u32>>, parts: usize, lengths: &[u32]) {
    while batches.len() < parts {
        let (k, largest) =
            batches.iter().enumerate().fold((0, 0), |best, (k, b)| if b.len() > best.1 { (k, b.len()) } else { best });
        if largest < 2 {
            break;
        }
        let batch = &mut batches[k];
        batch.sort_by_key(|&i| (lengths[i as usize], i));
        let second = batch.split_off(largest / 2);
        batches.insert(k + 1, second);
    }
    batches.resize(parts, Vec::new());
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
    fn last_round_is_split_into_one_batch_per_rank() {
        let lengths = [10, 11, 12, 13, 14, 50, 51];
        let mut round = vec![vec![0, 1, 2, 3, 4], vec![5, 6]];
        split_into(&mut round, 4, &lengths);
        assert_eq!(round, vec![vec![0, 1], vec![2], vec![3, 4], vec![5, 6]]);
        let mut tiny = vec![vec![3]];
        split_into(&mut tiny, 3, &lengths);
        assert_eq!(tiny, vec![vec![3], vec![], vec![]]);
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
