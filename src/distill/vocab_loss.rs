//! The losses over the vocabulary in one fused, row-parallel op.
//!
//! For every selected token row it computes, from the student's and the teacher's logits,
//! the KL divergence at temperature T, the cross-entropy against the true token (T = 1) and the
//! squared distance of the logits, and in the backward pass the gradient with respect to the
//! student's logits and output bias, without ever materialising a softmax, a log-softmax or
//! their gradients as (tokens × vocabulary) tensors. The logits are the largest tensors of a
//! distillation step; the composite form holds several copies of them (DESIGN.md, performance
//! facts). The output biases are added inside, so the biased logits are never stored either.
//!
//! The op returns a (rows, 3) tensor of per-row values `[kl, ce, sq]`; the caller weights and
//! averages them with ordinary tensor ops, so autograd hands the op the per-row weights of the
//! final loss and the gradient here is exact for any weighting.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::model::fused::with_f32_slice;
use crate::model::ops::{fast_exp, log_softmax};

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

struct VocabLoss {
    /// The true token of each row, or a negative value where the row has no MLM target.
    targets: Vec<i64>,
    temperature: f32,
    /// The teacher's output bias (it takes no gradient).
    teacher_bias: Vec<f32>,
    stats: Mutex<Vec<RowStats>>,
}

/// Per-row `[kl_T(teacher ‖ student), ce(student, target), Σ(s − t)²]` where `s` and `t` are the
/// (rows, vocab) logits `*_unbiased` plus their output biases; differentiable in the student's
/// logits and bias. The fused kernel takes float32 on the CPU; anything else (a GPU) takes
/// [`vocab_loss_composite`].
pub fn vocab_loss(
    student_unbiased: &Tensor,
    student_bias: &Tensor,
    teacher_unbiased: &Tensor,
    teacher_bias: &Tensor,
    targets: &[i64],
    temperature: f64,
) -> Result<Tensor> {
    let fused = [student_unbiased, student_bias, teacher_unbiased, teacher_bias]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if !fused {
        return vocab_loss_composite(
            student_unbiased,
            student_bias,
            teacher_unbiased,
            teacher_bias,
            targets,
            temperature,
        );
    }
    let teacher_bias: Vec<f32> = teacher_bias.detach().to_vec1()?;
    let op = VocabLoss {
        targets: targets.to_vec(),
        temperature: temperature as f32,
        teacher_bias,
        stats: Mutex::new(Vec::new()),
    };
    student_unbiased.contiguous()?.apply_op3(&teacher_unbiased.detach().contiguous()?, &student_bias.contiguous()?, op)
}

/// The values of [`vocab_loss`] from differentiable tensor ops, in float32 on any device: the
/// reference the fused kernel is checked against, and the form used where it does not run. It
/// holds several (rows × vocab) tensors at once, as the reference implementation does.
pub fn vocab_loss_composite(
    student_unbiased: &Tensor,
    student_bias: &Tensor,
    teacher_unbiased: &Tensor,
    teacher_bias: &Tensor,
    targets: &[i64],
    temperature: f64,
) -> Result<Tensor> {
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let s = f32(&student_unbiased.broadcast_add(student_bias)?)?;
    let t = f32(&teacher_unbiased.detach().broadcast_add(&teacher_bias.detach())?)?;
    let log_s = log_softmax(&(&s / temperature)?)?;
    let log_t = log_softmax(&(&t / temperature)?)?;
    let kl = (log_t.exp()? * (&log_t - &log_s)?)?.sum_keepdim(1)?;
    let rows = targets.len();
    let index: Vec<u32> = targets.iter().map(|&t| t.max(0) as u32).collect();
    let has_target: Vec<f32> = targets.iter().map(|&t| if t >= 0 { 1.0 } else { 0.0 }).collect();
    let index = Tensor::from_vec(index, (rows, 1), s.device())?;
    let has_target = Tensor::from_vec(has_target, (rows, 1), s.device())?;
    let ce = (log_softmax(&s)?.gather(&index, 1)? * has_target)?.neg()?;
    let sq = (&s - &t)?.sqr()?.sum_keepdim(1)?;
    Tensor::cat(&[kl, ce, sq], 1)
}

fn slice_of<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("vocab_loss: the {what} must be contiguous") };
    let CpuStorage::F32(data) = storage else { bail!("vocab_loss: the {what} must be float32") };
    Ok(&data[start..end])
}

/// Lanes of the row loops: independent accumulators that the compiler keeps in one vector
/// register (a float sum is not reassociated otherwise, and would not vectorise).
const LANES: usize = 8;

#[inline(always)]
fn max_of(row: &[f32], bias: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    for (r, b) in row.chunks_exact(LANES).zip(bias.chunks_exact(LANES)) {
        for l in 0..LANES {
            m[l] = m[l].max(r[l] + b[l]);
        }
    }
    let tail = row.len() - row.len() % LANES;
    let rest = row[tail..].iter().zip(&bias[tail..]).map(|(&x, &b)| x + b);
    m.into_iter().chain(rest).fold(f32::NEG_INFINITY, f32::max)
}

/// One token row's inputs: the student's and the teacher's unbiased logits with their output
/// biases, and the true token (negative where the row has none).
#[derive(Clone, Copy)]
struct Row<'a> {
    s: &'a [f32],
    sb: &'a [f32],
    t: &'a [f32],
    tb: &'a [f32],
    target: i64,
}

/// One row of the forward pass: `[kl, ce, sq]` and the constants the backward pass needs.
#[inline(always)]
fn forward_row(row: Row, inv_t: f32) -> ([f32; 3], RowStats) {
    let Row { s, sb, t, tb, target } = row;
    let (s1_max, t1_max) = (max_of(s, sb), max_of(t, tb));
    // max(x / T) = max(x) / T for T > 0.
    let (s_max, t_max) = (s1_max * inv_t, t1_max * inv_t);
    // Sums of exp(s/T − max), exp(t/T − max), exp(t/T − max)·(t − s), (s − t)², exp(s − max):
    // one float32 array of lanes each (kept in vector registers), moved into float64 every few
    // hundred entries.
    let mut total = [0f64; 5];
    let (mut a_s, mut a_t, mut a_w, mut a_q, mut a_1) =
        ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let flush = |lanes: [&mut [f32; LANES]; 5], total: &mut [f64; 5]| {
        for (t, lane) in total.iter_mut().zip(lanes) {
            *t += lane.iter().map(|&x| x as f64).sum::<f64>();
            *lane = [0.0; LANES];
        }
    };
    let n = s.len() - s.len() % LANES;
    for (c, start) in (0..n).step_by(LANES).enumerate() {
        let lane = |x: &[f32]| -> [f32; LANES] { x[start..start + LANES].try_into().unwrap() };
        let (s8, sb8, t8, tb8) = (lane(s), lane(sb), lane(t), lane(tb));
        for l in 0..LANES {
            let (sj, tj) = (s8[l] + sb8[l], t8[l] + tb8[l]);
            let et = fast_exp(tj * inv_t - t_max);
            a_s[l] += fast_exp(sj * inv_t - s_max);
            a_t[l] += et;
            a_w[l] += et * (tj - sj);
            a_q[l] += (sj - tj) * (sj - tj);
            a_1[l] += fast_exp(sj - s1_max);
        }
        if c % 32 == 31 {
            flush([&mut a_s, &mut a_t, &mut a_w, &mut a_q, &mut a_1], &mut total);
        }
    }
    for j in n..s.len() {
        let (sj, tj) = (s[j] + sb[j], t[j] + tb[j]);
        let et = fast_exp(tj * inv_t - t_max);
        a_s[0] += fast_exp(sj * inv_t - s_max);
        a_t[0] += et;
        a_w[0] += et * (tj - sj);
        a_q[0] += (sj - tj) * (sj - tj);
        a_1[0] += fast_exp(sj - s1_max);
    }
    flush([&mut a_s, &mut a_t, &mut a_w, &mut a_q, &mut a_1], &mut total);
    let [s_sum, t_sum, weighted, sq, s1_sum] = total;
    // KL = Σ p_t (t/T − s/T) − log Z_t + log Z_s, with log Z = max + log Σ exp(x/T − max).
    let kl = weighted / t_sum * inv_t as f64 - (t_max as f64 + t_sum.ln()) + (s_max as f64 + s_sum.ln());
    let ce = if target >= 0 {
        let y = target as usize;
        s1_max as f64 + s1_sum.ln() - (s[y] + sb[y]) as f64
    } else {
        0.0
    };
    let stats = RowStats { s_max, s_sum: s_sum as f32, t_max, t_sum: t_sum as f32, s1_max, s1_sum: s1_sum as f32 };
    ([kl as f32, ce as f32, sq as f32], stats)
}

/// One row of the backward pass: the gradient with respect to the student's logits, given the
/// weights `[w_kl, w_ce, w_sq]` of the row's three values in the final loss.
#[inline(always)]
fn backward_row(g: &mut [f32], row: Row, st: RowStats, w: [f32; 3], inv_t: f32) {
    let Row { s, sb, t, tb, target } = row;
    let [w_kl, w_ce, w_sq] = w;
    // d KL / d s_j = (p_s,j − p_t,j) / T;  d ce / d s_j = softmax(s)_j − [j = y];  d sq / d s_j = 2 (s_j − t_j).
    let kl_scale = w_kl * inv_t;
    let (inv_ss, inv_st) = (1.0 / st.s_sum, 1.0 / st.t_sum);
    let ce_scale = if target >= 0 { w_ce / st.s1_sum } else { 0.0 };
    for ((gj, (&sj, &sbj)), (&tj, &tbj)) in g.iter_mut().zip(s.iter().zip(sb)).zip(t.iter().zip(tb)) {
        let (sj, tj) = (sj + sbj, tj + tbj);
        let ps = fast_exp(sj * inv_t - st.s_max) * inv_ss;
        let pt = fast_exp(tj * inv_t - st.t_max) * inv_st;
        *gj = kl_scale * (ps - pt) + 2.0 * w_sq * (sj - tj) + ce_scale * fast_exp(sj - st.s1_max);
    }
    if target >= 0 {
        g[target as usize] -= w_ce;
    }
}

/// The row kernels compiled for AVX2 + FMA, chosen at run time where the CPU has them.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn forward_row(row: Row, inv_t: f32) -> ([f32; 3], RowStats) {
        super::forward_row(row, inv_t)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn backward_row(g: &mut [f32], row: Row, st: RowStats, w: [f32; 3], inv_t: f32) {
        super::backward_row(g, row, st, w, inv_t)
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl CustomOp3 for VocabLoss {
    fn name(&self) -> &'static str {
        "vocab-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let (student, teacher, bias) = (
            slice_of(s1, l1, "student logits")?,
            slice_of(s2, l2, "teacher logits")?,
            slice_of(s3, l3, "student bias")?,
        );
        if l2.shape().dims2()? != (rows, vocab) || bias.len() != vocab || self.teacher_bias.len() != vocab {
            bail!(
                "vocab_loss: student logits {rows}x{vocab}, teacher logits {:?}, biases {} and {}",
                l2.shape(),
                bias.len(),
                self.teacher_bias.len()
            )
        }
        if self.targets.len() != rows {
            bail!("vocab_loss: {rows} rows but {} targets", self.targets.len())
        }
        if let Some(&target) = self.targets.iter().find(|&&y| y >= vocab as i64) {
            bail!("vocab_loss: target {target} is outside the vocabulary of {vocab}")
        }
        let (inv_t, tb, avx2) = (1.0 / self.temperature, self.teacher_bias.as_slice(), has_avx2());
        let results: Vec<([f32; 3], RowStats)> = student
            .par_chunks(vocab)
            .zip(teacher.par_chunks(vocab))
            .zip(self.targets.par_iter())
            .map(|((s, t), &target)| {
                let row = Row { s, sb: bias, t, tb, target };
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    return unsafe { avx2::forward_row(row, inv_t) };
                }
                let _ = avx2;
                forward_row(row, inv_t)
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
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, vocab) = student.dims2()?;
        let weights: Vec<f32> = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let stats = self.stats.lock().unwrap().clone();
        if stats.len() != rows {
            bail!("vocab_loss: backward without a matching forward pass")
        }
        let (inv_t, tb, avx2) = (1.0 / self.temperature, self.teacher_bias.as_slice(), has_avx2());
        let mut out = vec![0f32; rows * vocab];
        with_f32_slice(student, |s| {
            with_f32_slice(teacher, |t| {
                with_f32_slice(bias, |sb| {
                    out.par_chunks_mut(vocab).enumerate().for_each(|(i, g)| {
                        let (s, t) = (&s[i * vocab..(i + 1) * vocab], &t[i * vocab..(i + 1) * vocab]);
                        let w = [weights[3 * i], weights[3 * i + 1], weights[3 * i + 2]];
                        let row = Row { s, sb, t, tb, target: self.targets[i] };
                        #[cfg(target_arch = "x86_64")]
                        if avx2 {
                            // SAFETY: the CPU has AVX2 and FMA (checked above).
                            return unsafe { avx2::backward_row(g, row, stats[i], w, inv_t) };
                        }
                        let _ = avx2;
                        backward_row(g, row, stats[i], w, inv_t)
                    });
                    Ok(())
                })
            })
        })?;
        // The bias enters every row: its gradient is the column sum.
        let grad_bias = out
            .par_chunks(vocab * 64)
            .map(|block| {
                let mut sum = vec![0f32; vocab];
                for row in block.chunks(vocab) {
                    sum.iter_mut().zip(row).for_each(|(a, &b)| *a += b);
                }
                sum
            })
            // Blocks are added in order, not in rayon's tree: a run must be reproducible.
            .collect::<Vec<_>>()
            .into_iter()
            .fold(vec![0f32; vocab], |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, &y)| *x += y);
                a
            });
        let grad_student = Tensor::from_vec(out, (rows, vocab), student.device())?;
        let grad_bias = Tensor::from_vec(grad_bias, vocab, bias.device())?;
        Ok((Some(grad_student), None, Some(grad_bias)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    #[test]
    fn fused_matches_composite_values_and_gradients() {
        let device = Device::Cpu;
        let mut rng = Rng::new(3);
        for &(rows, vocab, temperature) in &[(7usize, 50usize, 2.0f64), (4, 1031, 3.5), (1, 5, 1.0), (3, 30522, 2.0)] {
            let mut randn =
                |n: usize, scale: f64| -> Vec<f32> { (0..n).map(|_| (rng.normal() * scale) as f32).collect() };
            let s = Var::from_vec(randn(rows * vocab, 4.0), (rows, vocab), &device).unwrap();
            let sb = Var::from_vec(randn(vocab, 1.0), vocab, &device).unwrap();
            let t = Tensor::from_vec(randn(rows * vocab, 4.0), (rows, vocab), &device).unwrap();
            let tb = Tensor::from_vec(randn(vocab, 1.0), vocab, &device).unwrap();
            let targets: Vec<i64> = (0..rows).map(|i| if i % 3 == 1 { -1 } else { ((i * 7) % vocab) as i64 }).collect();
            let weights = Tensor::from_vec(randn(rows * 3, 1.0), (rows, 3), &device).unwrap();

            let fused = vocab_loss(s.as_tensor(), sb.as_tensor(), &t, &tb, &targets, temperature).unwrap();
            let reference =
                vocab_loss_composite(s.as_tensor(), sb.as_tensor(), &t, &tb, &targets, temperature).unwrap();
            let scale = reference.abs().unwrap().maximum(1f32).unwrap();
            let rel = (&fused - &reference).unwrap().abs().unwrap().div(&scale).unwrap();
            let diff = rel.max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{rows}x{vocab}: values differ by {diff} (relative)");

            let g_fused = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for var in [&s, &sb] {
                let (a, b) = (g_fused.get(var).unwrap(), g_ref.get(var).unwrap());
                let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff <= 1e-5 * scale.max(1.0), "{rows}x{vocab}: gradients differ by {diff} (scale {scale})");
            }
        }
    }
}
