//! The numerical building blocks of the encoder, written so that autograd flows through them.
//!
//! candle-nn's fused `LayerNorm`, `rms_norm` and `softmax_last_dim` have no backward and cut
//! the gradient without a word (DESIGN.md, trap 5); everything here is built from candle ops
//! that do have one, and `tests/gradients.rs` checks it against finite differences.

use candle_core::{DType, Result, Tensor, D};

use super::config::Activation;
use super::frozen;
use super::fused;
use crate::rng::Rng;

/// `y = x Wᵀ + b` over the last dimension, for inputs of any rank; `weight` is [out, in] as
/// checkpoints store it.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let weight = weight.t()?;
    let y = rows_product(x, &weight)?.reshape(linear_out_dims(x, &weight)?)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// `y = x W + b` over the last dimension, with `weight` laid out [in, out]. A contiguous
/// [in, out] matrix is read in place by the matrix product, where the [out, in] one `linear`
/// takes is repacked on every call.
pub fn linear_in_out(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let out_dims = linear_out_dims(x, weight)?;
    match bias {
        Some(b) if accumulates_in_place(&[x, weight, b]) => {
            // A tensor of its own (`copy`, so that no reshape can leave it sharing the bias's
            // storage) holding the bias in every row, for the product to land on.
            accumulate_product(b.broadcast_as(out_dims)?.copy()?, x, weight)
        }
        Some(b) => rows_product(x, weight)?.reshape(out_dims)?.broadcast_add(b),
        None => rows_product(x, weight)?.reshape(out_dims),
    }
}

/// `x W + b + residual`, with `weight` laid out [in, out]: the residual connection of a frozen
/// layer, the product added onto bias and residual in place where possible.
pub fn linear_in_out_residual(x: &Tensor, weight: &Tensor, bias: &Tensor, residual: &Tensor) -> Result<Tensor> {
    if accumulates_in_place(&[x, weight, bias, residual]) {
        accumulate_product(residual.broadcast_add(bias)?, x, weight)
    } else {
        linear_in_out(x, weight, Some(bias))? + residual
    }
}

fn linear_out_dims(x: &Tensor, weight: &Tensor) -> Result<Vec<usize>> {
    let mut dims = x.dims().to_vec();
    *dims.last_mut().unwrap() = weight.dim(1)?;
    Ok(dims)
}

/// `x` flattened to (rows, in) times `weight`.
fn rows_product(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let in_features = x.dim(D::Minus1)?;
    x.reshape((x.elem_count() / in_features, in_features))?.matmul(weight)
}

/// Whether a product can be accumulated in place: float32 CPU tensors, none of them in an
/// autograd graph (an in-place op records no backward).
fn accumulates_in_place(operands: &[&Tensor]) -> bool {
    operands.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

/// `fresh + x W`, written into `fresh`, which must be a tensor no one else holds, of the
/// output's shape.
fn accumulate_product(fresh: Tensor, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let out_dims = fresh.dims().to_vec();
    let out_features = weight.dim(1)?;
    let rows = fresh.elem_count() / out_features;
    let x = x.contiguous()?;
    let x = x.reshape((rows, x.dim(D::Minus1)?))?;
    let y = fresh.reshape((rows, out_features))?;
    y.inplace_op3(&x, &weight.contiguous()?, &frozen::AddProduct)?;
    y.reshape(out_dims)
}

/// The rows `rows` of a (batch, sequence, hidden) tensor, flattened to (rows, hidden).
pub fn gather_rows(hidden: &Tensor, rows: &[u32]) -> Result<Tensor> {
    let (b, s, h) = hidden.dims3()?;
    let index = Tensor::new(rows, hidden.device())?;
    hidden.reshape((b * s, h))?.index_select(&index, 0)
}

fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// LayerNorm over the last dimension, with a biased variance as PyTorch computes it: the fused
/// kernel on the CPU, the composite form elsewhere. Half-precision inputs are normalised in
/// float32 (as mixed precision does everywhere): their mean and variance would lose too much.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if is_half(x.dtype()) {
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        return layer_norm(&f32(x)?, &f32(weight)?, &f32(bias)?, eps)?.to_dtype(x.dtype());
    }
    if x.device().is_cpu() {
        x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, fused::LayerNorm { eps })
    } else {
        layer_norm_composite(x, weight, bias, eps)
    }
}

/// LayerNorm from differentiable candle ops: the reference the fused kernel is checked against.
pub fn layer_norm_composite(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension, shifted by the row maximum for stability.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Attention probabilities: softmax over the keys of `scores` (batch, heads, queries, keys)
/// plus the additive key `mask` (batch, 1, 1, keys); in float32 for half-precision scores.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if is_half(scores.dtype()) {
        return masked_softmax(&scores.to_dtype(DType::F32)?, &mask.to_dtype(DType::F32)?)?.to_dtype(scores.dtype());
    }
    if scores.device().is_cpu() {
        scores.contiguous()?.apply_op2(&mask.contiguous()?, fused::MaskedSoftmax)
    } else {
        softmax(&scores.broadcast_add(mask)?)
    }
}

/// `log softmax` over the last dimension, without ever taking the log of a probability.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        // The fused kernel is float32; other types (the float64 gradient checks) take candle's.
        Activation::Gelu if x.device().is_cpu() && x.dtype() == DType::F32 => x.contiguous()?.apply_op1(fused::Gelu),
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
    }
}

/// Inverted dropout with a mask drawn from our own generator, so that a resumed run draws
/// the same masks as an unbroken one. With no generator (evaluation) it is the identity.
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut Rng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let scale = (1.0 / (1.0 - p)) as f32;
    let p = p as f32;
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.next_f32() < p { 0.0 } else { scale }).collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

/// The additive attention bias: 0 where a key is real, the dtype's lowest value where it is
/// padding, shaped (batch, 1, 1, seq) to broadcast over heads and queries.
pub fn attention_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let lowest = match dtype {
        DType::F64 => f64::MIN,
        DType::F16 => half::f16::MIN.to_f64(),
        DType::BF16 => half::bf16::MIN.to_f64(),
        _ => f32::MIN as f64,
    };
    let keep = mask.to_dtype(dtype)?;
    ((keep - 1.0)? * (-lowest))?.reshape((b, 1, 1, s))
}

/// `exp(x)` to within about 2 ulp for x ≤ 88, written without branches or library calls so
/// that loops over it vectorise. Arguments below −87 give about 1e-38 instead of 0, which no
/// sum of probabilities can tell apart.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so that n · ln 2 is exact in its high part.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 · 2^23 rounds to the nearest integer in float arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) for |r| ≤ ln 2 / 2: Taylor to degree 7, error below 1e-8 relative.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_close_to_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((fast_exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst:e}");
        assert!(fast_exp(-1000.0) < 1e-37 && fast_exp(-1000.0) >= 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
    }
}
