//! Fused CPU kernels with their backward pass for the encoder's two most frequent non-matrix
//! operations: LayerNorm, and the attention softmax with its padding mask. Each replaces a
//! chain of a dozen composite ops (each a pass over memory and a temporary kept for autograd)
//! by one pass forward and one backward. The composite forms in `ops.rs` stay the reference:
//! the tests below check values and gradients against them.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::ops::fast_exp;
use num_traits::Float;
use rayon::prelude::*;

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{what} must be contiguous") };
    Ok(&data[start..end])
}

/// Reads a tensor's CPU storage for `f`, without copying it.
fn with_storage<R>(t: &Tensor, f: impl FnOnce(&CpuStorage, &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { bail!("fused ops run on the CPU") };
    f(cpu, layout)
}

/// Reads a contiguous float32 CPU tensor's storage for `f`, without copying it.
pub fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    with_storage(t, |storage, layout| match storage {
        CpuStorage::F32(data) => f(contiguous(data, layout, "tensor")?),
        _ => bail!("expected a float32 tensor, got {:?}", t.dtype()),
    })
}

/// Runs `$body` with `$x` bound to the float slice of each storage, for float32 and float64.
macro_rules! float_dispatch {
    ($storage:expr, $layout:expr, |$x:ident| $body:expr) => {
        match $storage {
            CpuStorage::F32(d) => {
                let $x = contiguous(d, $layout, "input")?;
                $body
            }
            CpuStorage::F64(d) => {
                let $x = contiguous(d, $layout, "input")?;
                $body
            }
            _ => bail!("fused ops take float32 or float64"),
        }
    };
}

trait Store: Float + Send + Sync + 'static {
    fn store(v: Vec<Self>) -> CpuStorage;
    fn slice(s: &CpuStorage) -> Result<&[Self]>;
}

impl Store for f32 {
    fn store(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
    fn slice(s: &CpuStorage) -> Result<&[Self]> {
        match s {
            CpuStorage::F32(d) => Ok(d),
            _ => bail!("mixed float types in a fused op"),
        }
    }
}

impl Store for f64 {
    fn store(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
    fn slice(s: &CpuStorage) -> Result<&[Self]> {
        match s {
            CpuStorage::F64(d) => Ok(d),
            _ => bail!("mixed float types in a fused op"),
        }
    }
}

fn cast<T: Float>(x: f64) -> T {
    T::from(x).unwrap()
}

/// Mean and 1 / std of one row, with PyTorch's biased variance.
fn row_stats<T: Float>(row: &[T], eps: f64) -> (T, T) {
    let n: T = cast(row.len() as f64);
    let mean = row.iter().fold(T::zero(), |a, &x| a + x) / n;
    let var = row.iter().fold(T::zero(), |a, &x| a + (x - mean) * (x - mean)) / n;
    (mean, T::one() / (var + cast(eps)).sqrt())
}

pub struct LayerNorm {
    pub eps: f64,
}

impl LayerNorm {
    fn fwd<T: Store>(&self, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
        let h = w.len();
        let mut out = vec![T::zero(); x.len()];
        out.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(y, row)| {
            let (mean, rstd) = row_stats(row, self.eps);
            for j in 0..h {
                y[j] = (row[j] - mean) * rstd * w[j] + b[j];
            }
        });
        out
    }

    fn bwd_impl<T: Store>(&self, x: &[T], w: &[T], g: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let h = w.len();
        let inv_h: T = cast(1.0 / h as f64);
        let mut dx = vec![T::zero(); x.len()];
        // Rows in blocks: each block sums its share of dw and db, the blocks are then added.
        const BLOCK: usize = 64;
        let (dw, db) = dx
            .par_chunks_mut(h * BLOCK)
            .zip(x.par_chunks(h * BLOCK).zip(g.par_chunks(h * BLOCK)))
            .map(|(dx_block, (x_block, g_block))| {
                let (mut dw, mut db) = (vec![T::zero(); h], vec![T::zero(); h]);
                for ((dxr, xr), gr) in dx_block.chunks_mut(h).zip(x_block.chunks(h)).zip(g_block.chunks(h)) {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    let (mut sum_gw, mut sum_gwx) = (T::zero(), T::zero());
                    for j in 0..h {
                        let xhat = (xr[j] - mean) * rstd;
                        let gw = gr[j] * w[j];
                        sum_gw = sum_gw + gw;
                        sum_gwx = sum_gwx + gw * xhat;
                        dw[j] = dw[j] + gr[j] * xhat;
                        db[j] = db[j] + gr[j];
                    }
                    let (mean_gw, mean_gwx) = (sum_gw * inv_h, sum_gwx * inv_h);
                    for j in 0..h {
                        let xhat = (xr[j] - mean) * rstd;
                        dxr[j] = rstd * (gr[j] * w[j] - mean_gw - xhat * mean_gwx);
                    }
                }
                (dw, db)
            })
            // Blocks are added in order, not in rayon's tree: a run must be reproducible.
            .collect::<Vec<_>>()
            .into_iter()
            .fold((vec![T::zero(); h], vec![T::zero(); h]), |(mut aw, mut ab), (bw, bb)| {
                aw.iter_mut().zip(&bw).for_each(|(a, &b)| *a = *a + b);
                ab.iter_mut().zip(&bb).for_each(|(a, &b)| *a = *a + b);
                (aw, ab)
            });
        (dx, dw, db)
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
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
        float_dispatch!(s1, l1, |x| {
            let w = contiguous(Store::slice(s2)?, l2, "weight")?;
            let b = contiguous(Store::slice(s3)?, l3, "bias")?;
            if x.len() % w.len() != 0 || w.len() != b.len() {
                bail!("layer-norm: input {:?}, weight {}, bias {}", l1.shape(), w.len(), b.len())
            }
            Ok((Store::store(self.fwd(x, w, b)), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dx, dw, db) = with_storage(x, |xs, xl| {
            with_storage(w, |ws, wl| {
                with_storage(&grad, |gs, gl| {
                    float_dispatch!(xs, xl, |xv| {
                        let wv = contiguous(Store::slice(ws)?, wl, "weight")?;
                        let gv = contiguous(Store::slice(gs)?, gl, "gradient")?;
                        let (dx, dw, db) = self.bwd_impl(xv, wv, gv);
                        Ok((Store::store(dx), Store::store(dw), Store::store(db)))
                    })
                })
            })
        })?;
        let device = x.device();
        let to_tensor = |s: CpuStorage, shape: &Shape| -> Result<Tensor> {
            match s {
                CpuStorage::F32(v) => Tensor::from_vec(v, shape, device),
                CpuStorage::F64(v) => Tensor::from_vec(v, shape, device),
                _ => unreachable!(),
            }
        };
        Ok((Some(to_tensor(dx, x.shape())?), Some(to_tensor(dw, w.shape())?), Some(to_tensor(db, w.shape())?)))
    }
}

/// Softmax over the last dimension of attention scores (batch, heads, queries, keys) plus an
/// additive key mask (batch, 1, 1, keys).
pub struct MaskedSoftmax;

impl MaskedSoftmax {
    fn fwd<T: Store>(scores: &[T], mask: &[T], dims: (usize, usize, usize, usize)) -> Vec<T> {
        let (_, heads, queries, keys) = dims;
        let mut out = vec![T::zero(); scores.len()];
        out.par_chunks_mut(keys).zip(scores.par_chunks(keys)).enumerate().for_each(|(r, (p, s))| {
            let m = &mask[(r / (heads * queries)) * keys..][..keys];
            let max = s.iter().zip(m).fold(T::neg_infinity(), |a, (&x, &b)| a.max(x + b));
            let mut sum = T::zero();
            for j in 0..keys {
                p[j] = (s[j] + m[j] - max).exp();
                sum = sum + p[j];
            }
            let inv = T::one() / sum;
            p.iter_mut().for_each(|v| *v = *v * inv);
        });
        out
    }

    fn bwd_impl<T: Store>(p: &[T], g: &[T], keys: usize) -> Vec<T> {
        let mut out = vec![T::zero(); p.len()];
        out.par_chunks_mut(keys).zip(p.par_chunks(keys).zip(g.par_chunks(keys))).for_each(|(d, (p, g))| {
            let dot = p.iter().zip(g).fold(T::zero(), |a, (&pi, &gi)| a + pi * gi);
            for j in 0..keys {
                d[j] = p[j] * (g[j] - dot);
            }
        });
        out
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        let (b, one, one_, keys) = l2.shape().dims4()?;
        if (b, one, one_, keys) != (dims.0, 1, 1, dims.3) {
            bail!("masked-softmax: scores {:?} with a mask {:?}", l1.shape(), l2.shape())
        }
        float_dispatch!(s1, l1, |x| {
            let m = contiguous(Store::slice(s2)?, l2, "mask")?;
            Ok((Store::store(Self::fwd(x, m, dims)), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let keys = res.dim(3)?;
        let grad = grad.contiguous()?;
        let d = with_storage(res, |ps, pl| {
            with_storage(&grad, |gs, gl| {
                float_dispatch!(ps, pl, |p| {
                    let g = contiguous(Store::slice(gs)?, gl, "gradient")?;
                    Ok(Store::store(Self::bwd_impl(p, g, keys)))
                })
            })
        })?;
        let t = match d {
            CpuStorage::F32(v) => Tensor::from_vec(v, res.shape(), res.device())?,
            CpuStorage::F64(v) => Tensor::from_vec(v, res.shape(), res.device())?,
            _ => unreachable!(),
        };
        Ok((Some(t), None))
    }
}

/// Exact (erf) GELU on float32, `x · Φ(x)`, with its backward `Φ(x) + x · φ(x)`: the
/// standard library's erf is a scalar call that took a sixth of a forward pass.
pub struct Gelu;

/// erf(x) to within 1.5e-7 (Abramowitz and Stegun 7.1.26), branch-free so that it vectorises.
#[inline(always)]
fn fast_erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * fast_exp(-a * a);
    y.copysign(x)
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else { bail!("gelu: the fused kernel takes float32") };
        let x = contiguous(data, layout, "input")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = 0.5 * x * (1.0 + fast_erf(x * std::f32::consts::FRAC_1_SQRT_2));
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let out = with_storage(arg, |xs, xl| {
            with_storage(&grad, |gs, gl| {
                let (CpuStorage::F32(xd), CpuStorage::F32(gd)) = (xs, gs) else { bail!("gelu: float32 only") };
                let (x, g) = (contiguous(xd, xl, "input")?, contiguous(gd, gl, "gradient")?);
                let mut out = vec![0f32; x.len()];
                const INV_SQRT_2PI: f32 = 0.398_942_3;
                out.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14).zip(g.par_chunks(1 << 14))).for_each(
                    |(d, (x, g))| {
                        for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                            let cdf = 0.5 * (1.0 + fast_erf(x * std::f32::consts::FRAC_1_SQRT_2));
                            let pdf = INV_SQRT_2PI * fast_exp(-0.5 * x * x);
                            *d = g * (cdf + x * pdf);
                        }
                    },
                );
                Ok(out)
            })
        })?;
        Ok(Some(Tensor::from_vec(out, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::ops;
    use super::*;
    use crate::rng::Rng;
    use candle_core::{DType, Device, Var};

    fn randn(rng: &mut Rng, shape: &[usize], scale: f64) -> Var {
        let n = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.normal() * scale).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn layer_norm_matches_the_composite_form() {
        let mut rng = Rng::new(1);
        for (rows, h) in [(5, 7), (130, 45)] {
            let (x, w, b) = (randn(&mut rng, &[rows, h], 2.0), randn(&mut rng, &[h], 1.0), randn(&mut rng, &[h], 1.0));
            let probe = randn(&mut rng, &[rows, h], 1.0);
            let fused = x.as_tensor().apply_op3(w.as_tensor(), b.as_tensor(), LayerNorm { eps: 1e-5 }).unwrap();
            let composite = ops::layer_norm_composite(&x, &w, &b, 1e-5).unwrap();
            assert!(max_diff(&fused, &composite) < 1e-12);
            let gf = (fused * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (composite * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w, &b] {
                assert!(max_diff(gf.get(v).unwrap(), gc.get(v).unwrap()) < 1e-10);
            }
            // float32 runs the same kernel.
            let x32 = x.as_tensor().to_dtype(DType::F32).unwrap();
            let (w32, b32) = (w.as_tensor().to_dtype(DType::F32).unwrap(), b.as_tensor().to_dtype(DType::F32).unwrap());
            let f32_out = x32.apply_op3(&w32, &b32, LayerNorm { eps: 1e-5 }).unwrap().to_dtype(DType::F64).unwrap();
            let composite = ops::layer_norm_composite(&x, &w, &b, 1e-5).unwrap();
            assert!(max_diff(&f32_out, &composite) < 1e-4);
        }
    }

    #[test]
    fn gelu_matches_the_exact_form() {
        let mut rng = Rng::new(3);
        let x = randn(&mut rng, &[1000], 3.0);
        let probe = randn(&mut rng, &[1000], 1.0);
        let x32 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
        let p32 = probe.as_tensor().to_dtype(DType::F32).unwrap();
        let fused = x32.as_tensor().apply_op1(Gelu).unwrap();
        let exact = x.as_tensor().gelu_erf().unwrap();
        assert!(max_diff(&fused.to_dtype(DType::F64).unwrap(), &exact) < 1e-6);
        let gf = (fused * &p32).unwrap().sum_all().unwrap().backward().unwrap();
        let ge = (exact * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let gf = gf.get(&x32).unwrap().to_dtype(DType::F64).unwrap();
        assert!(max_diff(&gf, ge.get(&x).unwrap()) < 1e-5);
    }

    #[test]
    fn masked_softmax_matches_the_composite_form() {
        let mut rng = Rng::new(2);
        let (b, h, s) = (2, 3, 9);
        let scores = randn(&mut rng, &[b, h, s, s], 3.0);
        let mask_rows: Vec<u32> = (0..b * s).map(|i| u32::from(i % s < s - 2 * (i / s))).collect();
        let mask = Tensor::from_vec(mask_rows, (b, s), &Device::Cpu).unwrap();
        let bias = ops::attention_bias(&mask, DType::F64).unwrap();
        let probe = randn(&mut rng, &[b, h, s, s], 1.0);
        let fused = scores.as_tensor().apply_op2(&bias, MaskedSoftmax).unwrap();
        let composite = ops::softmax(&scores.as_tensor().broadcast_add(&bias).unwrap()).unwrap();
        assert!(max_diff(&fused, &composite) < 1e-14);
        let gf = (fused * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composite * probe.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(gf.get(&scores).unwrap(), gc.get(&scores).unwrap()) < 1e-12);
    }
}
