//! Dynamic masking on the real sample corpus, checked by its statistics over many batches:
//! the exact number of targets, the 80/10/10 split, frequency smoothing, and that special
//! tokens and padding are never targets.

mod common;
mod corpus_support;

use std::collections::HashSet;

use corpus_support::*;
use distil::corpus::masking::IGNORE;
use distil::corpus::{pad, BatchSize, Batcher, Corpus, MaskedBatch, Masker, MaskingConfig, PaddedBatch, Split};
use distil::rng::Rng;

fn sample_corpus(dir: &std::path::Path) -> Corpus {
    build_corpus(&[&sample_text()], dir, |o| o.max_len = Some(128));
    Corpus::open(dir, Split::Train).unwrap()
}

fn masker(corpus: &Corpus, config: MaskingConfig) -> Masker {
    let m = corpus.manifest();
    Masker::new(&corpus.token_counts(), &m.special_ids, m.vocab_size, m.special.mask, config).unwrap()
}

/// `epochs` epochs of padded batches of 16 sequences.
fn batches(corpus: &Corpus, epochs: usize) -> Vec<PaddedBatch> {
    let mut batcher = Batcher::new(corpus, BatchSize::Sequences(16), 3).unwrap();
    let n = batcher.batches_per_epoch() * epochs;
    let pad_id = corpus.manifest().special.pad;
    (0..n).map(|_| pad(&batcher.next_batch().iter().map(|&i| corpus.sequence(i)).collect::<Vec<_>>(), pad_id)).collect()
}

/// Every (row, column) of a batch with its original id, what the model sees, and its label.
fn positions<'a>(padded: &'a PaddedBatch, masked: &'a MaskedBatch) -> impl Iterator<Item = (u32, u32, u32, i64)> + 'a {
    (0..padded.input_ids.len()).flat_map(move |r| {
        (0..padded.input_ids[r].len()).map(move |c| {
            (padded.input_ids[r][c], padded.attention_mask[r][c], masked.input_ids[r][c], masked.labels[r][c])
        })
    })
}

#[test]
fn exact_target_counts_the_80_10_10_split_and_never_special_or_padding() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = sample_corpus(&tmp.path().join("corpus"));
    let m = corpus.manifest();
    let specials: HashSet<u32> = m.special_ids.iter().copied().collect();
    let masker = masker(&corpus, MaskingConfig::default());
    let mut rng = Rng::new(11);
    let (mut targets, mut masked_as_mask, mut kept, mut random) = (0usize, 0usize, 0usize, 0usize);
    let all = batches(&corpus, 20);
    for padded in &all {
        let masked = masker.mask(padded, &mut rng);
        assert_eq!(masked.attention_mask, padded.attention_mask);
        let real: u32 = padded.attention_mask.iter().flatten().sum();
        let mut in_batch = 0;
        for (original, attention, shown, label) in positions(padded, &masked) {
            if label == IGNORE {
                assert_eq!(shown, original, "a position that is not a target was changed");
                continue;
            }
            assert_eq!(attention, 1, "padding chosen as a target");
            assert!(!specials.contains(&original), "special token {original} chosen as a target");
            assert_eq!(label, original as i64);
            in_batch += 1;
            match shown {
                s if s == m.special.mask => masked_as_mask += 1,
                s if s == original => kept += 1,
                s => {
                    assert!(!specials.contains(&s), "random replacement {s} is a special token");
                    random += 1;
                }
            }
        }
        assert_eq!(in_batch, (0.15 * real as f64).ceil() as usize, "targets of a batch of {real} real tokens");
        targets += in_batch;
    }
    assert!(targets > 50_000, "{targets} targets are too few for the statistics");
    let share = |n: usize| n as f64 / targets as f64;
    assert!((share(masked_as_mask) - 0.8).abs() < 0.01, "mask share {}", share(masked_as_mask));
    assert!((share(kept) - 0.1).abs() < 0.01, "kept share {}", share(kept));
    assert!((share(random) - 0.1).abs() < 0.01, "random share {}", share(random));
}

/// How often occurrences of rare tokens (seen at most twice in the corpus) and of frequent ones
/// (seen 100 times or more) are chosen, each relative to uniform choice: an occurrence in a
/// batch of `eligible` maskable tokens and `k` targets counts k / eligible expected choices.
fn selection_vs_uniform(corpus: &Corpus, config: MaskingConfig) -> (f64, f64) {
    let counts = corpus.token_counts();
    let specials = &corpus.manifest().special_ids;
    let masker = masker(corpus, config);
    let mut rng = Rng::new(5);
    // (occurrences, chosen, expected if uniform) per class.
    let (mut rare, mut frequent) = ((0usize, 0usize, 0f64), (0usize, 0usize, 0f64));
    for padded in &batches(corpus, 40) {
        let masked = masker.mask(padded, &mut rng);
        let maskable = |(o, a, _, _): &(u32, u32, u32, i64)| *a == 1 && !specials.contains(o);
        let real: u32 = padded.attention_mask.iter().flatten().sum();
        let eligible = positions(padded, &masked).filter(maskable).count();
        let uniform = ((0.15 * real as f64).ceil()).min(eligible as f64) / eligible as f64;
        for (original, _, _, label) in positions(padded, &masked).filter(maskable) {
            let class = match counts[original as usize] {
                0..=2 => &mut rare,
                100.. => &mut frequent,
                _ => continue,
            };
            class.0 += 1;
            class.1 += usize::from(label != IGNORE);
            class.2 += uniform;
        }
    }
    assert!(rare.0 > 20_000 && frequent.0 > 20_000, "too few occurrences: {rare:?} {frequent:?}");
    (rare.1 as f64 / rare.2, frequent.1 as f64 / frequent.2)
}

#[test]
fn rare_tokens_are_chosen_more_often_with_smoothing_and_equally_without() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = sample_corpus(&tmp.path().join("corpus"));
    let (rare, frequent) = selection_vs_uniform(&corpus, MaskingConfig::default());
    assert!(rare > 1.5 && frequent < 0.5, "smoothing 0.7: rare x{rare:.3}, frequent x{frequent:.3} of uniform");
    let (rare, frequent) = selection_vs_uniform(&corpus, MaskingConfig { smoothing: 0.0, ..Default::default() });
    assert!(
        (rare - 1.0).abs() < 0.03 && (frequent - 1.0).abs() < 0.03,
        "smoothing 0: rare x{rare:.4}, frequent x{frequent:.4}"
    );
}

#[test]
fn the_same_seed_gives_the_same_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = sample_corpus(&tmp.path().join("corpus"));
    let masker = masker(&corpus, MaskingConfig::default());
    let all = batches(&corpus, 1);
    let run = |seed: u64| {
        let mut rng = Rng::new(seed);
        all.iter().map(|b| masker.mask(b, &mut rng)).collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}
