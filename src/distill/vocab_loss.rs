//! The losses over the vocabulary in one fused, row-parallel op.
//!
//! For every selected token row it computes, from the student's and the teacher's logits,
//! the KL divergence at temperature T, the cross-entropy against the true token (T = 1) and the
//! squared distance of the logits, and in the backward pass the gradient with respect to the
//! student's logits, without ever materialising a softmax, a log-softmax or their gradients as
//! (tokens × vocabulary) tensors. The logits are the largest tensors of a distillation step;
//! the composite form holds several copies of them (DESIGN.md, performance facts).
//!
//! The op returns a (rows, 3) tensor of per-row values `[kl, ce, sq]`; the caller weights and
//! averages them with ordinary tensor ops, so autograd hands the op the per-row weights of the
//! final loss and the gradient here is exact for any weighting.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Per-row constants of the forward pass, kept for the backward pass: the maxima and the
/// sums of exponentials of the student at T, the teacher at T and the student at T = 1.
#[derive(Clone, Copy, Default)]
struct RowStats {
    s_max: f32,
    s_sum: f32,
    t_max: f32,
    t_sum: f32,
    s1_max: f32,
    s1_sum: f32,
}

pub struct VocabLoss {
    /// The true token of each row, or a negative value where the row has no MLM target.
    targets: Vec<i64>,
    temperature: f32,
    stats: Mutex<Vec<RowStats>>,
}

/// Per-row `[kl_T(teacher ‖ student), ce(student, target), Σ(s − t)²]` for (rows, vocab) float32
/// logits; differentiable in `student`.
pub fn vocab_loss(student: &Tensor, teacher: &Tensor, targets: &[i64], temperature: f64) -> Result<Tensor> {
    let op = VocabLoss { targets: targets.to_vec(), temperature: temperature as f32, stats: Mutex::new(Vec::new()) };
    student.contiguous()?.apply_op2(&teacher.detach().contiguous()?, op)
}

fn rows_of<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<(&'a [f32], usize, usize)> {
    let (rows, vocab) = layout.shape().dims2()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("vocab_loss: the {what} logits must be contiguous")
    };
    let CpuStorage::F32(data) = storage else { bail!("vocab_loss: the {what} logits must be float32") };
    Ok((&data[start..end], rows, vocab))
}

fn max_of(row: &[f32]) -> f32 {
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

impl CustomOp2 for VocabLoss {
    fn name(&self) -> &'static str {
        "vocab-loss"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (student, rows, vocab) = rows_of(s1, l1, "student")?;
        let (teacher, t_rows, t_vocab) = rows_of(s2, l2, "teacher")?;
        if (rows, vocab) != (t_rows, t_vocab) || self.targets.len() != rows {
            bail!(
                "vocab_loss: student logits {rows}x{vocab}, teacher logits {t_rows}x{t_vocab}, {} targets",
                self.targets.len()
            )
        }
        if let Some(&target) = self.targets.iter().find(|&&y| y >= vocab as i64) {
            bail!("vocab_loss: target {target} is outside the vocabulary of {vocab}")
        }
        let inv_t = 1.0 / self.temperature;
        let results: Vec<([f32; 3], RowStats)> = student
            .par_chunks(vocab)
            .zip(teacher.par_chunks(vocab))
            .zip(self.targets.par_iter())
            .map(|((s, t), &target)| {
                let (s1_max, t1_max) = (max_of(s), max_of(t));
                // max(x / T) = max(x) / T for T > 0.
                let (s_max, t_max) = (s1_max * inv_t, t1_max * inv_t);
                let (mut s_sum, mut t_sum, mut s1_sum, mut weighted, mut sq) = (0f64, 0f64, 0f64, 0f64, 0f64);
                for (&sj, &tj) in s.iter().zip(t) {
                    let et = (tj * inv_t - t_max).exp();
                    s_sum += (sj * inv_t - s_max).exp() as f64;
                    t_sum += et as f64;
                    weighted += (et * (tj - sj)) as f64;
                    sq += ((sj - tj) * (sj - tj)) as f64;
                    if target >= 0 {
                        s1_sum += (sj - s1_max).exp() as f64;
                    }
                }
                // KL = Σ p_t (t/T − s/T) − log Z_t + log Z_s, with log Z = max + log Σ exp(x/T − max).
                let log_zs = s_max as f64 + s_sum.ln();
                let log_zt = t_max as f64 + t_sum.ln();
                let kl = weighted / t_sum * inv_t as f64 - log_zt + log_zs;
                let ce = if target >= 0 { s1_max as f64 + s1_sum.ln() - s[target as usize] as f64 } else { 0.0 };
                let stats =
                    RowStats { s_max, s_sum: s_sum as f32, t_max, t_sum: t_sum as f32, s1_max, s1_sum: s1_sum as f32 };
                ([kl as f32, ce as f32, sq as f32], stats)
            })
            .collect();
        let mut out = Vec::with_capacity(rows * 3);
        let mut stats = Vec::with_capacity(rows);
        for (values, row_stats) in results {
            out.extend(values);
            stats.push(row_stats);
        }
        *self.stats.lock().unwrap() = stats;
        Ok((CpuStorage::F32(out), Shape::from((rows, 3))))
    }

    fn bwd(
        &self,
        student: &Tensor,
        teacher: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, vocab) = student.dims2()?;
        let weights: Vec<f32> = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let s: Vec<f32> = student.flatten_all()?.to_vec1()?;
        let t: Vec<f32> = teacher.flatten_all()?.to_vec1()?;
        let stats = self.stats.lock().unwrap().clone();
        if stats.len() != rows {
            bail!("vocab_loss: backward without a matching forward pass")
        }
        let inv_t = 1.0 / self.temperature;
        let mut out = vec![0f32; rows * vocab];
        out.par_chunks_mut(vocab).enumerate().for_each(|(i, g)| {
            let (w_kl, w_ce, w_sq) = (weights[3 * i], weights[3 * i + 1], weights[3 * i + 2]);
            let st = stats[i];
            let (s, t) = (&s[i * vocab..(i + 1) * vocab], &t[i * vocab..(i + 1) * vocab]);
            let target = self.targets[i];
            // d KL / d s_j = (p_s,j − p_t,j) / T;  d ce / d s_j = softmax(s)_j − [j = y];  d sq / d s_j = 2 (s_j − t_j).
            let (kl_scale, inv_ss, inv_st, inv_s1) = (w_kl * inv_t, 1.0 / st.s_sum, 1.0 / st.t_sum, 1.0 / st.s1_sum);
            for j in 0..vocab {
                let ps = (s[j] * inv_t - st.s_max).exp() * inv_ss;
                let pt = (t[j] * inv_t - st.t_max).exp() * inv_st;
                let mut v = kl_scale * (ps - pt) + 2.0 * w_sq * (s[j] - t[j]);
                if target >= 0 && w_ce != 0.0 {
                    v += w_ce * (s[j] - st.s1_max).exp() * inv_s1;
                }
                g[j] = v;
            }
            if target >= 0 {
                g[target as usize] -= w_ce;
            }
        });
        let grad_student = Tensor::from_vec(out, (rows, vocab), student.device())?;
        Ok((Some(grad_student), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::{log_softmax, softmax};
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    /// The per-row values written as plain differentiable tensor ops.
    fn composite(s: &Tensor, t: &Tensor, targets: &[i64], temperature: f64) -> Tensor {
        let (rows, vocab) = s.dims2().unwrap();
        let ls = log_softmax(&(s / temperature).unwrap()).unwrap();
        let lt = log_softmax(&(t / temperature).unwrap()).unwrap();
        let pt = softmax(&(t / temperature).unwrap()).unwrap();
        let kl = (pt * (lt - ls).unwrap()).unwrap().sum_keepdim(1).unwrap();
        let onehot: Vec<f32> =
            (0..rows * vocab).map(|k| if targets[k / vocab] == (k % vocab) as i64 { 1.0 } else { 0.0 }).collect();
        let onehot = Tensor::from_vec(onehot, (rows, vocab), s.device()).unwrap();
        let ce = (log_softmax(s).unwrap() * onehot).unwrap().sum_keepdim(1).unwrap().neg().unwrap();
        let sq = (s - t).unwrap().sqr().unwrap().sum_keepdim(1).unwrap();
        Tensor::cat(&[kl, ce, sq], 1).unwrap()
    }

    #[test]
    fn fused_matches_composite_values_and_gradients() {
        let device = Device::Cpu;
        let mut rng = Rng::new(3);
        for &(rows, vocab, temperature) in &[(7usize, 50usize, 2.0f64), (4, 1031, 3.5), (1, 5, 1.0)] {
            let mut randn =
                |scale: f64| -> Vec<f32> { (0..rows * vocab).map(|_| (rng.normal() * scale) as f32).collect() };
            let s = Var::from_vec(randn(4.0), (rows, vocab), &device).unwrap();
            let t = Tensor::from_vec(randn(4.0), (rows, vocab), &device).unwrap();
            let targets: Vec<i64> = (0..rows).map(|i| if i % 3 == 1 { -1 } else { ((i * 7) % vocab) as i64 }).collect();
            let weights = Tensor::from_vec(randn(1.0)[..rows * 3].to_vec(), (rows, 3), &device).unwrap();

            let fused = vocab_loss(s.as_tensor(), &t, &targets, temperature).unwrap();
            let reference = composite(s.as_tensor(), &t, &targets, temperature);
            let scale = reference.abs().unwrap().maximum(1f32).unwrap();
            let rel = (&fused - &reference).unwrap().abs().unwrap().div(&scale).unwrap();
            let diff = rel.max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "values differ by {diff} (relative)");

            let g_fused = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (g_fused.get(&s).unwrap(), g_ref.get(&s).unwrap());
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff <= 1e-5 * scale.max(1.0), "gradients differ by {diff} (scale {scale})");
        }
    }
}
