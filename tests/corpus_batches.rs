//! Reading a corpus back: the memory-mapped reader, length-grouped batches, the ranks' parts of
//! each batch and resuming from a cursor.

mod common;
mod corpus_support;

use std::collections::HashSet;

use corpus_support::*;
use distil::corpus::batches::{epoch_batches, rank_part, LENGTH_BIN};
use distil::corpus::{BatchSize, Batcher, Corpus, Cursor, Split};
use distil::rng::Rng;

const SIZES: [BatchSize; 2] = [BatchSize::Sequences(8), BatchSize::Tokens(512)];

/// Lengths like a real corpus': many short sequences, a long tail up to 128.
fn synthetic_lengths(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| 12 + (116.0 * rng.next_f64().powi(3)) as u32).collect()
}

/// One epoch of every rank, as each would take it: the sequences of its part of every batch.
fn epoch_of_ranks(lengths: &[u32], size: BatchSize, world: usize, epoch: u64) -> Vec<Vec<Vec<usize>>> {
    (0..world)
        .map(|rank| {
            let mut b = Batcher::new(lengths, size, 42).unwrap();
            b.restore(&Cursor { epoch, offset: 0, ..b.cursor() }).unwrap();
            (0..b.batches_per_epoch())
                .map(|_| {
                    let batch = b.next_batch();
                    rank_part(&batch, lengths, rank, world).into_iter().map(|p| batch[p]).collect()
                })
                .collect()
        })
        .collect()
}

fn fits(batch: &[usize], lengths: &[u32], size: BatchSize) -> bool {
    let longest = batch.iter().map(|&i| lengths[i] as usize).max().unwrap_or(0);
    match size {
        BatchSize::Sequences(n) => batch.len() <= n,
        BatchSize::Tokens(t) => batch.len() <= 1 || batch.len() * longest <= t,
    }
}

#[test]
fn the_union_over_ranks_is_each_epoch_without_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("corpus");
    build_corpus(&[&sample_text()], &dir, |o| o.max_len = Some(64));
    let real = Corpus::open(&dir, Split::Train).unwrap().lengths();
    for lengths in [real, synthetic_lengths(1001, 1), synthetic_lengths(13, 2)] {
        for size in SIZES {
            for world in 1..=4 {
                for epoch in 0..2 {
                    let ranks = epoch_of_ranks(&lengths, size, world, epoch);
                    let steps = ranks[0].len();
                    assert!(ranks.iter().all(|r| r.len() == steps), "ranks out of step: {size:?}, world {world}");
                    let mut seen: Vec<usize> = ranks.iter().flatten().flatten().copied().collect();
                    seen.sort_unstable();
                    assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>(), "{size:?}, world {world}, epoch {epoch}");
                    assert!(ranks.iter().flatten().all(|b| fits(b, &lengths, size)), "{size:?}, world {world}");
                    // The parts of one batch differ by at most one sequence.
                    for step in 0..steps {
                        let sizes: Vec<usize> = ranks.iter().map(|r| r[step].len()).collect();
                        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn batches_are_grouped_by_length_and_reshuffled_every_epoch() {
    let lengths = synthetic_lengths(4000, 3);
    let size = BatchSize::Sequences(16);
    let e0 = epoch_batches(&lengths, size, 7, 0);
    let bins = |b: &Vec<u32>| {
        let bin: Vec<u32> = b.iter().map(|&i| lengths[i as usize] / LENGTH_BIN).collect();
        (*bin.iter().min().unwrap(), *bin.iter().max().unwrap())
    };
    // Batches are cut from the sequences ordered by bin: only where a bin runs out does a batch
    // reach into the next, so at most one batch per boundary between bins mixes bins.
    let mixed = e0.iter().filter(|b| bins(b).0 != bins(b).1).count();
    let boundaries = lengths.iter().map(|l| l / LENGTH_BIN).collect::<HashSet<_>>().len() - 1;
    assert!(mixed <= boundaries, "{mixed} of {} batches mix bins", e0.len());
    let spread: u32 = e0.iter().map(|b| bins(b).1 - bins(b).0).sum();
    assert!(spread as usize <= e0.len() / 4, "batches span {spread} bins beyond their first in all");
    // The order of the batches is shuffled, not sorted by length.
    let firsts: Vec<u32> = e0.iter().map(|b| lengths[b[0] as usize]).collect();
    let ascending = firsts.windows(2).filter(|w| w[0] <= w[1]).count();
    assert!(ascending < firsts.len() * 2 / 3, "batches look sorted");
    // A new epoch is a new shuffle of the batches and of the sequences within bins.
    let e1 = epoch_batches(&lengths, size, 7, 1);
    assert_eq!(e1.len(), e0.len());
    assert_ne!(e0, e1);
    let same = e0.iter().filter(|b| e1.contains(b)).count();
    assert!(same * 10 < e0.len(), "{same} batches repeat in the next epoch");
    assert_eq!(epoch_batches(&lengths, size, 7, 1), e1, "an epoch depends on (seed, epoch) alone");
}

#[test]
fn resuming_from_a_stored_cursor_continues_the_unbroken_run() {
    let lengths = synthetic_lengths(300, 4);
    for size in SIZES {
        let mut unbroken = Batcher::new(&lengths, size, 9).unwrap();
        let per_epoch = unbroken.batches_per_epoch();
        let all: Vec<Vec<usize>> = (0..3 * per_epoch + 5).map(|_| unbroken.next_batch()).collect();
        for stop in [0, 1, per_epoch - 1, per_epoch, per_epoch + 3, 2 * per_epoch] {
            let mut first = Batcher::new(&lengths, size, 9).unwrap();
            (0..stop).for_each(|_| {
                first.next_batch();
            });
            let stored = serde_json::to_string(&first.cursor()).unwrap();
            let cursor: Cursor = serde_json::from_str(&stored).unwrap();
            let mut resumed = Batcher::new(&lengths, size, 9).unwrap();
            resumed.restore(&cursor).unwrap();
            let rest: Vec<Vec<usize>> = (stop..all.len()).map(|_| resumed.next_batch()).collect();
            assert_eq!(rest, all[stop..], "{size:?}, stopped after {stop}");
        }
    }
}

#[test]
fn a_cursor_restores_only_into_the_same_setup() {
    let lengths = synthetic_lengths(100, 5);
    let mut b = Batcher::new(&lengths, BatchSize::Sequences(8), 1).unwrap();
    b.next_batch();
    let cursor = b.cursor();
    let refused = [
        Batcher::new(&lengths, BatchSize::Sequences(8), 2),
        Batcher::new(&lengths, BatchSize::Tokens(8), 1),
        Batcher::new(&lengths[..99], BatchSize::Sequences(8), 1),
    ];
    for mut other in refused.map(Result::unwrap) {
        let e = other.restore(&cursor).unwrap_err().to_string();
        assert!(e.contains("cannot resume batches"), "{e}");
    }
    let mut beyond = cursor.clone();
    beyond.offset = 1000;
    assert!(b.restore(&beyond).unwrap_err().to_string().contains("batch 1000"));

    for size in [BatchSize::Sequences(0), BatchSize::Tokens(0)] {
        assert!(Batcher::new(&lengths, size, 1).is_err());
    }
    assert!(Batcher::new(&Vec::<u32>::new(), BatchSize::Sequences(4), 1).is_err());
}

#[test]
fn the_reader_agrees_with_the_manifest_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("corpus");
    build_corpus(&[&sample_text()], &dir, |o| {
        o.heldout = 0.2;
        o.shard_tokens = 3000;
    });
    let train = Corpus::open(&dir, Split::Train).unwrap();
    let heldout = Corpus::open(&dir, Split::Heldout).unwrap();
    let m = train.manifest();
    assert!(m.train.shards.len() > 2);
    for corpus in [&train, &heldout] {
        let info = m.split(corpus.split());
        assert_eq!(corpus.len() as u64, info.sequences);
        let seqs: Vec<Vec<u32>> = (0..corpus.len()).map(|i| corpus.sequence(i)).collect();
        assert_eq!(seqs.iter().map(|s| s.len() as u64).sum::<u64>(), info.tokens);
        assert!(seqs.iter().all(|s| s[0] == m.special.start && s[s.len() - 1] == m.special.end));
        assert_eq!(corpus.lengths(), seqs.iter().map(|s| s.len() as u32).collect::<Vec<_>>());
        assert!((0..corpus.len()).all(|i| corpus.seq_len(i) == seqs[i].len()));
    }
    let mut counts = vec![0u64; m.vocab_size];
    (0..train.len()).flat_map(|i| train.sequence(i)).for_each(|t| counts[t as usize] += 1);
    assert_eq!(heldout.token_counts(), counts, "both splits give the train split's counts");
    train.check_tokenizer(&minilm_tokenizer()).unwrap();

    let padded = distil::corpus::pad(&[train.sequence(0), train.sequence(1)], m.special.pad);
    let width = train.seq_len(0).max(train.seq_len(1));
    assert!(padded.input_ids.iter().chain(&padded.attention_mask).all(|r| r.len() == width));
    assert_eq!(padded.attention_mask[1].iter().sum::<u32>() as usize, train.seq_len(1));
}
