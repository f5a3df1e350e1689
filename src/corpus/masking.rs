//! Dynamic masking, drawn afresh for every batch, as DistilBERT's `prepare_batch_mlm`:
//! exactly ceil(mlm_prob × real tokens) targets per batch, chosen without replacement with
//! weight max(count, 1)^-smoothing (the reference's `np.maximum(counts, 1)`: a token never
//! seen in the corpus weighs as one seen once), never a special token or padding; each target
//! independently becomes the mask token (probability `mask`), a random non-special token
//! (`random`) or stays (the rest); labels hold the original id at targets and -100 elsewhere.
//!
//! The draw without replacement uses Efraimidis–Spirakis keys: every candidate gets an
//! exponential clock E/w (E ~ Exp(1)) and the k earliest win, which has exactly the law of k
//! successive weighted draws without replacement, in O(tokens) time.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use super::batches::PaddedBatch;
use crate::rng::Rng;

/// Label of a position that is not a target (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingConfig {
    /// Share of a batch's real tokens that become targets.
    pub mlm_prob: f64,
    /// Exponent of the frequency weighting: weight = count^-smoothing; 0 is uniform.
    pub smoothing: f64,
    /// Share of targets replaced by the mask token.
    pub mask: f64,
    /// Share of targets replaced by a random non-special token (the rest stay as they are).
    pub random: f64,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig { mlm_prob: 0.15, smoothing: 0.7, mask: 0.8, random: 0.1 }
    }
}

/// A padded batch with its masking applied.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
    /// The original id at each target, [`IGNORE`] elsewhere.
    pub labels: Vec<Vec<i64>>,
}

impl MaskedBatch {
    /// The sequences at `positions`, with the columns that are padding in all of them cut off
    /// (sequences are right-padded, so their real tokens come first).
    pub fn rows(&self, positions: &[usize]) -> MaskedBatch {
        let width =
            positions.iter().map(|&p| self.attention_mask[p].iter().filter(|&&m| m == 1).count()).max().unwrap_or(0);
        fn take<T: Clone>(rows: &[Vec<T>], positions: &[usize], width: usize) -> Vec<Vec<T>> {
            positions.iter().map(|&p| rows[p][..width].to_vec()).collect()
        }
        MaskedBatch {
            input_ids: take(&self.input_ids, positions, width),
            attention_mask: take(&self.attention_mask, positions, width),
            labels: take(&self.labels, positions, width),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Non-padding tokens.
    pub fn real_tokens(&self) -> usize {
        self.attention_mask.iter().flatten().filter(|&&m| m == 1).count()
    }
}

pub struct Masker {
    /// Selection weight of each vocabulary id; 0 for special tokens and for ids beyond the
    /// tokenizer's (a model's vocabulary may be padded past it).
    weights: Vec<f64>,
    /// The ids a random replacement is drawn from: every non-special one.
    replacements: Vec<u32>,
    mask_id: u32,
    config: MaskingConfig,
}

impl Masker {
    /// `token_counts` has one entry per tokenizer id; `vocab_size` is the model's vocabulary,
    /// which may be larger.
    pub fn new(
        token_counts: &[u64],
        special_ids: &[u32],
        vocab_size: usize,
        mask_id: u32,
        config: MaskingConfig,
    ) -> Result<Self> {
        let c = &config;
        ensure!(
            c.mlm_prob > 0.0 && c.mlm_prob <= 1.0,
            "masking: mlm_prob is {}; expected above 0, at most 1",
            c.mlm_prob
        );
        ensure!(c.smoothing >= 0.0, "masking: smoothing is {}; expected 0 or more", c.smoothing);
        ensure!(
            c.mask >= 0.0 && c.random >= 0.0 && c.mask + c.random <= 1.0,
            "masking: mask {} and random {} must be shares adding up to at most 1",
            c.mask,
            c.random
        );
        ensure!(
            token_counts.len() <= vocab_size,
            "masking: {} token counts for a vocabulary of {vocab_size}",
            token_counts.len()
        );
        ensure!(
            (mask_id as usize) < vocab_size,
            "masking: mask id {mask_id} is outside the vocabulary of {vocab_size}"
        );
        let mut weights: Vec<f64> = token_counts.iter().map(|&n| (n.max(1) as f64).powf(-c.smoothing)).collect();
        weights.resize(vocab_size, 0.0);
        for &id in special_ids {
            ensure!((id as usize) < vocab_size, "masking: special id {id} is outside the vocabulary of {vocab_size}");
            weights[id as usize] = 0.0;
        }
        let replacements: Vec<u32> = (0..vocab_size as u32).filter(|&id| weights[id as usize] > 0.0).collect();
        ensure!(!replacements.is_empty(), "masking: every token of the vocabulary is special");
        Ok(Masker { weights, replacements, mask_id, config })
    }

    pub fn config(&self) -> &MaskingConfig {
        &self.config
    }

    /// Chooses and applies one batch's targets; the same batch and generator state give the
    /// same result. When a batch has fewer maskable tokens than the target count (only special
    /// tokens, say), all of them are targets.
    pub fn mask(&self, batch: &PaddedBatch, rng: &mut Rng) -> MaskedBatch {
        // (clock, (row, column)) of every candidate; the earliest clocks win.
        let mut clocks: Vec<(f64, (usize, usize))> = Vec::new();
        let mut real = 0usize;
        for (r, (ids, attention)) in batch.input_ids.iter().zip(&batch.attention_mask).enumerate() {
            for (c, (&id, &a)) in ids.iter().zip(attention).enumerate() {
                if a == 0 {
                    continue;
                }
                real += 1;
                let w = self.weights[id as usize];
                if w > 0.0 {
                    // 1 - U lies in (0, 1], so the logarithm is finite.
                    clocks.push((-(1.0 - rng.next_f64()).ln() / w, (r, c)));
                }
            }
        }
        let targets = ((self.config.mlm_prob * real as f64).ceil() as usize).min(clocks.len());
        let earliest = |a: &(f64, (usize, usize)), b: &(f64, (usize, usize))| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
        if targets > 0 && targets < clocks.len() {
            clocks.select_nth_unstable_by(targets - 1, earliest);
        }
        let mut chosen: Vec<(usize, usize)> = clocks[..targets].iter().map(|&(_, p)| p).collect();
        chosen.sort_unstable();

        let mut input_ids = batch.input_ids.clone();
        let mut labels: Vec<Vec<i64>> = batch.input_ids.iter().map(|row| vec![IGNORE; row.len()]).collect();
        for (r, c) in chosen {
            labels[r][c] = input_ids[r][c] as i64;
            let u = rng.next_f64();
            if u < self.config.mask {
                input_ids[r][c] = self.mask_id;
            } else if u < self.config.mask + self.config.random {
                input_ids[r][c] = self.replacements[rng.below(self.replacements.len() as u64) as usize];
            }
        }
        MaskedBatch { input_ids, attention_mask: batch.attention_mask.clone(), labels }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::batches::pad;

    #[test]
    fn exact_target_count_and_never_special_or_padding() {
        // ids 0..3 special; 10 real tokens in all, 2 of them special: ceil(0.15 * 10) = 2 targets.
        let masker = Masker::new(&[1; 20], &[0, 1, 2, 3], 20, 3, MaskingConfig::default()).unwrap();
        let batch = pad(&[vec![1, 5, 6, 7, 8, 2], vec![1, 9, 10, 2]], 0);
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let m = masker.mask(&batch, &mut rng);
            let targets: Vec<(usize, usize)> =
                (0..2).flat_map(|r| (0..6).map(move |c| (r, c))).filter(|&(r, c)| m.labels[r][c] != IGNORE).collect();
            assert_eq!(targets.len(), 2);
            for (r, c) in targets {
                assert!(batch.input_ids[r][c] > 3 && batch.attention_mask[r][c] == 1);
                assert_eq!(m.labels[r][c], batch.input_ids[r][c] as i64);
            }
        }
        // Only special tokens: nothing to choose.
        let specials = pad(&[vec![1, 2]], 0);
        assert!(masker.mask(&specials, &mut rng).labels[0].iter().all(|&l| l == IGNORE));
    }

    #[test]
    fn rejects_bad_configs() {
        let bad = MaskingConfig { mask: 0.95, random: 0.1, ..Default::default() };
        assert!(Masker::new(&[1; 20], &[0], 20, 0, bad).is_err());
        assert!(Masker::new(&[1; 21], &[0], 20, 0, MaskingConfig::default()).is_err());
    }
}
