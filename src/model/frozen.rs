//! Forward-only CPU kernels of frozen encoders (teachers, evaluation, inference), which need no
//! backward and so can skip the intermediate tensors candle's composite ops keep for one.
//!
//! They run on the real tokens alone ([`PackedRows`]): the rows of a padded batch that are not
//! padding, one sequence after another, so that no dense layer spends time on padding (at
//! batch 32 of sentences of mixed lengths, about half the rows). Their outputs at padding
//! positions are zero, where a padded forward pass leaves values that nothing should read.
//!
//! Self-attention in one kernel, from the fused query/key/value projection straight to the
//! attention's output, one task per (sequence, head), each token attending to its own
//! sequence's tokens (what the padding mask does in a padded pass). The composite path (batched products,
//! the masked softmax, and copies into and out of the heads-first layout) calls the matrix
//! product once per (sequence, head), each call split over every thread: at batch 32 that is
//! 384 small products per product per layer, each paying a thread hand-off. Here the threads take
//! whole (sequence, head) tasks instead, each running its two small products on one thread,
//! reading query, key and value where the projection wrote them and writing the output where
//! the next projection reads it.
//!
//! Dense layers accumulate their product into a tensor already holding the bias (and the
//! residual, where one follows), instead of a product, a bias pass and a residual pass.

use candle_core::{bail, CpuStorage, CustomOp1, DType, InplaceOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::ops::fast_exp;

/// Where the real (non-padding) tokens of a padded batch are: frozen encoders run on these
/// rows alone, packed one sequence after another, and put the rows back in place at the end.
#[derive(Debug, Clone)]
pub struct PackedRows {
    /// Index of each real token in the flattened (batch × sequence) batch, in order.
    pub real: Vec<u32>,
    /// Each sequence's first packed row and its number of real tokens.
    pub sequences: Vec<(usize, usize)>,
    pub batch: usize,
    pub seq_len: usize,
}

impl PackedRows {
    /// From a (batch, sequence) 0/1 attention mask.
    pub fn new(attention_mask: &Tensor) -> Result<Self> {
        let (batch, seq_len) = attention_mask.dims2()?;
        let mask: Vec<Vec<u32>> = attention_mask.to_dtype(DType::U32)?.to_vec2()?;
        let mut real = Vec::new();
        let mut sequences = Vec::with_capacity(batch);
        for (r, row) in mask.iter().enumerate() {
            let start = real.len();
            real.extend(row.iter().enumerate().filter(|(_, &m)| m != 0).map(|(c, _)| (r * seq_len + c) as u32));
            sequences.push((start, real.len() - start));
        }
        Ok(PackedRows { real, sequences, batch, seq_len })
    }

    /// The real tokens' entries of a (batch, sequence) tensor, as one flat tensor.
    pub fn pack(&self, t: &Tensor) -> Result<Tensor> {
        let index = Tensor::new(self.real.as_slice(), t.device())?;
        t.flatten_all()?.index_select(&index, 0)
    }

    /// Packed rows (real tokens, hidden) back to (batch, sequence, hidden), zero at padding.
    pub fn unpack(&self, packed: &Tensor) -> Result<Tensor> {
        let hidden = packed.dim(1)?;
        let mut out = vec![0f32; self.batch * self.seq_len * hidden];
        super::fused::with_f32_slice(&packed.contiguous()?, |rows| {
            for (row, &at) in rows.chunks_exact(hidden).zip(&self.real) {
                out[at as usize * hidden..][..hidden].copy_from_slice(row);
            }
            Ok(())
        })?;
        Tensor::from_vec(out, (self.batch, self.seq_len, hidden), packed.device())
    }
}

/// The op: input (real tokens, 3 × hidden), each row laid out as ({query, key, value}, heads,
/// head size) with the query pre-scaled by 1/√d, the sequences packed one after another;
/// output (real tokens, hidden), heads side by side. Each token attends to its own sequence.
pub struct FrozenAttention<'a> {
    pub heads: usize,
    /// Each sequence's first row and length.
    pub sequences: &'a [(usize, usize)],
}

/// The output buffer, written by many tasks at once, each to its own (sequence, head) block.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint elements (see `forward`), and the buffer outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element `offset` of the buffer (a method, so that closures capture the whole `Out`).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl FrozenAttention<'_> {
    fn forward(&self, qkv: &[f32], (rows, three_h): (usize, usize)) -> Result<Vec<f32>> {
        let h = three_h / 3;
        let heads = self.heads;
        if three_h % 3 != 0 || h % heads != 0 {
            bail!("frozen attention: {three_h} columns are not 3 × {heads} heads × a head size");
        }
        if let Some(&(start, len)) = self.sequences.iter().find(|(start, len)| start + len > rows) {
            bail!("frozen attention: a sequence of rows {start}..{} in {rows} rows", start + len);
        }
        let d = h / heads;
        let longest = self.sequences.iter().map(|&(_, len)| len).max().unwrap_or(0);
        let mut out = vec![0f32; rows * h];
        let out_ptr = Out(out.as_mut_ptr());
        let row = three_h as isize;
        let tasks: Vec<(usize, usize, usize)> = self
            .sequences
            .iter()
            .filter(|&&(_, len)| len > 0)
            .flat_map(|&(start, len)| (0..heads).map(move |head| (start, len, head)))
            .collect();
        tasks.into_par_iter().for_each_init(
            || vec![0f32; longest * longest],
            |scores, (start, s, head)| {
                let base = start * three_h + head * d;
                let (q, k, v) = (&qkv[base..], &qkv[base + h..], &qkv[base + 2 * h..]);
                let scores = &mut scores[..s * s];
                // SAFETY: every pointer stays inside its slice for the sizes and strides given
                // (s rows of `row` apart, d or s columns; the sequence's rows are inside `qkv`,
                // checked above); `out` is written only in this task's block: rows
                // start…start+s, columns head·d…head·d+d.
                unsafe {
                    // scores = q kᵀ (s × s): kᵀ's rows are k's columns.
                    product(
                        scores.as_mut_ptr(),
                        s as isize,
                        (q.as_ptr(), row),
                        (k.as_ptr(), 1, row),
                        (s, s, d),
                        ONE_THREAD,
                    );
                    scores.chunks_exact_mut(s).for_each(softmax_in_place);
                    // out block = probabilities v (s × d).
                    product(
                        out_ptr.at(start * h + head * d),
                        h as isize,
                        (scores.as_ptr(), s as isize),
                        (v.as_ptr(), row, 1),
                        (s, d, s),
                        ONE_THREAD,
                    );
                }
            },
        );
        Ok(out)
    }
}

/// How a [`product`] runs: whether it adds onto `dst` (else overwrites it), and its threads.
#[derive(Clone, Copy)]
struct Mode {
    accumulate: bool,
    parallelism: gemm::Parallelism,
}

/// Inside one task of a parallel loop: overwrite, on the calling thread.
const ONE_THREAD: Mode = Mode { accumulate: false, parallelism: gemm::Parallelism::None };

/// `dst = lhs · rhs` (or `dst += lhs · rhs`), for (m, n, k) = `sizes`: `dst` and `lhs` have
/// contiguous columns and rows `dst_rs` and `lhs_rs` apart; `rhs` is (pointer, row stride,
/// column stride).
///
/// # Safety
/// Every element the sizes and strides reach must lie inside the buffers behind the pointers.
unsafe fn product(
    dst: *mut f32,
    dst_rs: isize,
    (lhs, lhs_rs): (*const f32, isize),
    (rhs, rhs_rs, rhs_cs): (*const f32, isize, isize),
    (m, n, k): (usize, usize, usize),
    mode: Mode,
) {
    let keep = if mode.accumulate { 1.0 } else { 0.0 };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        mode.accumulate,
        lhs,
        1,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        keep,
        1.0,
        false,
        false,
        false,
        mode.parallelism,
    );
}

/// Softmax of one row of scores, in place.
fn softmax_in_place(p: &mut [f32]) {
    let max = p.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let mut sum = 0.0;
    for x in p.iter_mut() {
        *x = fast_exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    p.iter_mut().for_each(|x| *x *= inv);
}

impl CustomOp1 for FrozenAttention<'_> {
    fn name(&self) -> &'static str {
        "frozen-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, three_h) = layout.shape().dims2()?;
        let CpuStorage::F32(qkv) = storage else { bail!("frozen attention runs on float32") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("frozen attention needs a contiguous input")
        };
        let out = self.forward(&qkv[start..end], (rows, three_h))?;
        Ok((CpuStorage::F32(out), Shape::from((rows, three_h / 3))))
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
            let mode = Mode { accumulate: true, parallelism };
            product(
                dst.as_mut_ptr(),
                out as isize,
                (x.as_ptr(), inner as isize),
                (w.as_ptr(), out as isize, 1),
                (rows, out, inner),
                mode,
            );
        }
        Ok(())
    }
}
