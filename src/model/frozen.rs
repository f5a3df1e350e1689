//! Forward-only CPU kernels of frozen encoders (teachers, evaluation, inference), which need no
//! backward and so can skip the intermediate tensors candle's composite ops keep for one.
//!
//! Self-attention in one kernel, from the fused query/key/value projection straight to the
//! attention's output, one task per (sequence, head). The composite path (batched products,
//! the masked softmax, and copies into and out of the heads-first layout) calls the matrix
//! product once per (sequence, head), each call split over every thread: at batch 32 that is
//! 384 small products per product per layer, each paying a thread hand-off. Here the threads take
//! whole (sequence, head) tasks instead, each running its two small products on one thread,
//! reading query, key and value where the projection wrote them and writing the output where
//! the next projection reads it.
//!
//! Dense layers accumulate their product into a tensor already holding the bias (and the
//! residual, where one follows), instead of a product, a bias pass and a residual pass.

use candle_core::{bail, CpuStorage, CustomOp2, InplaceOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::ops::fast_exp;

/// The op: input (batch, sequence, 3 × hidden) laid out as (batch, sequence, {query, key, value},
/// heads, head size) with the query pre-scaled by 1/√d, and the additive key mask
/// (batch, 1, 1, sequence); output (batch, sequence, hidden), heads side by side.
pub struct FrozenAttention {
    pub heads: usize,
}

/// The output buffer, written by many tasks at once, each to its own (sequence, head) block.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint elements (see `cpu_fwd`), and the buffer outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element `offset` of the buffer (a method, so that closures capture the whole `Out`).
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

impl FrozenAttention {
    fn forward(&self, qkv: &[f32], mask: &[f32], (b, s, three_h): (usize, usize, usize)) -> Result<Vec<f32>> {
        let h = three_h / 3;
        let heads = self.heads;
        if three_h % 3 != 0 || h % heads != 0 {
            bail!("frozen attention: {three_h} columns are not 3 × {heads} heads × a head size");
        }
        let d = h / heads;
        let mut out = vec![0f32; b * s * h];
        let out_ptr = Out(out.as_mut_ptr());
        let row = three_h as isize;
        (0..b * heads).into_par_iter().for_each_init(
            || vec![0f32; s * s],
            |scores, task| {
                let (seq, head) = (task / heads, task % heads);
                let base = seq * s * three_h + head * d;
                let (q, k, v) = (&qkv[base..], &qkv[base + h..], &qkv[base + 2 * h..]);
                let key_mask = &mask[seq * s..][..s];
                // SAFETY: every pointer stays inside its slice for the sizes and strides given
                // (s rows of `row` apart, d or s columns); `out` is written only in this task's
                // block: rows seq·s…seq·s+s, columns head·d…head·d+d.
                unsafe {
                    // scores = q kᵀ (s × s): kᵀ's rows are k's columns.
                    gemm::gemm(
                        s,
                        s,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        s as isize,
                        false,
                        q.as_ptr(),
                        1,
                        row,
                        k.as_ptr(),
                        row,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for p in scores.chunks_exact_mut(s) {
                    softmax_in_place(p, key_mask);
                }
                unsafe {
                    // out block = probabilities v (s × d).
                    gemm::gemm(
                        s,
                        d,
                        s,
                        out_ptr.at(seq * s * h + head * d),
                        1,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        s as isize,
                        v.as_ptr(),
                        1,
                        row,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            },
        );
        Ok(out)
    }
}

/// Softmax of one row of scores plus the key mask, in place.
fn softmax_in_place(p: &mut [f32], mask: &[f32]) {
    let max = p.iter().zip(mask).fold(f32::NEG_INFINITY, |a, (&x, &m)| a.max(x + m));
    let mut sum = 0.0;
    for (x, &m) in p.iter_mut().zip(mask) {
        *x = fast_exp(*x + m - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    p.iter_mut().for_each(|x| *x *= inv);
}

impl CustomOp2 for FrozenAttention {
    fn name(&self) -> &'static str {
        "frozen-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, s, three_h) = l1.shape().dims3()?;
        if l2.shape().dims4()? != (b, 1, 1, s) {
            bail!("frozen attention: projections {:?} with a key mask {:?}", l1.shape(), l2.shape());
        }
        let (CpuStorage::F32(qkv), CpuStorage::F32(mask)) = (s1, s2) else {
            bail!("frozen attention runs on float32");
        };
        let (Some((q0, q1)), Some((m0, m1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            bail!("frozen attention needs contiguous inputs");
        };
        let out = self.forward(&qkv[q0..q1], &mask[m0..m1], (b, s, three_h))?;
        Ok((CpuStorage::F32(out), Shape::from((b, s, three_h / 3))))
    }
}

/// `dst += x w` in place: `dst` (rows, out), `x` (rows, in), `w` (in, out), all contiguous
/// float32.
pub struct AddProduct;

impl InplaceOp3 for AddProduct {
    fn name(&self) -> &'static str {
        "add-product"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (rows, out) = l1.shape().dims2()?;
        let (x_rows, inner) = l2.shape().dims2()?;
        if l3.shape().dims2()? != (inner, out) || x_rows != rows {
            bail!("add-product: {:?} += {:?} × {:?}", l1.shape(), l2.shape(), l3.shape());
        }
        let (CpuStorage::F32(dst), CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2, s3) else {
            bail!("add-product runs on float32");
        };
        let (Some((d0, d1)), Some((x0, x1)), Some((w0, w1))) =
            (l1.contiguous_offsets(), l2.contiguous_offsets(), l3.contiguous_offsets())
        else {
            bail!("add-product needs contiguous tensors");
        };
        let (dst, x, w) = (&mut dst[d0..d1], &x[x0..x1], &w[w0..w1]);
        let threads = candle_core::utils::get_num_threads();
        let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // SAFETY: the three slices hold exactly rows × out, rows × inner and inner × out
        // elements (checked above), row-major.
        unsafe {
            gemm::gemm(
                rows,
                out,
                inner,
                dst.as_mut_ptr(),
                1,
                out as isize,
                true,
                x.as_ptr(),
                1,
                inner as isize,
                w.as_ptr(),
                1,
                out as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        Ok(())
    }
}
