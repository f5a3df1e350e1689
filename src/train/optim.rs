//! AdamW with state that can be saved and restored, so that a resumed run continues exactly
//! (candle-nn's AdamW keeps its moments private: DESIGN.md, trap 6).
//!
//! Decoupled weight decay as in PyTorch's `AdamW`: `p ← p − lr·wd·p`, then the Adam step with
//! bias-corrected moments. Biases and LayerNorm weights are not decayed.

use std::collections::BTreeMap;
use std::path::Path;

use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::encoder::is_no_decay;
use crate::model::fused::with_f32_slice;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 5e-4, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.0 }
    }
}

/// Gradients by parameter name: the one set that exists between backward and the optimiser
/// step, summed over micro-batches (and, with several processes, averaged across them).
pub type Gradients = BTreeMap<String, Tensor>;

pub struct AdamW {
    pub config: AdamWConfig,
    params: BTreeMap<String, Var>,
    moments: BTreeMap<String, Moments>,
    /// Optimiser steps taken.
    pub step: u64,
}

/// The first and second moments of one parameter, in float32: flat vectors that the fused CPU
/// kernel updates in place, or tensors on the parameter's device (a GPU), updated by tensor ops.
enum Moments {
    Host(Vec<f32>, Vec<f32>),
    Device(Tensor, Tensor),
}

impl Moments {
    fn zeros(param: &Var) -> Result<Self> {
        Ok(if param.device().is_cpu() {
            Moments::Host(vec![0f32; param.elem_count()], vec![0f32; param.elem_count()])
        } else {
            let zeros = || param.zeros_like();
            Moments::Device(zeros()?, zeros()?)
        })
    }
}

/// The constants of one parameter's update at one step.
struct Coefficients {
    grad_scale: f32,
    lr: f32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias1: f32,
    bias2: f32,
}

/// The AdamW update of one parameter, applied in place on its storage in one parallel pass
/// over the parameter, its gradient and its moments.
struct Update<'a> {
    grad: &'a [f32],
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
    k: &'a Coefficients,
}

impl InplaceOp1 for Update<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("adamw: parameters must be contiguous float32")
        };
        let param = &mut data[start..end];
        let mut guard = self.moments.lock().unwrap();
        let (m, v) = &mut *guard;
        let k = self.k;
        const CHUNK: usize = 1 << 14;
        param.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).enumerate().for_each(
            |(c, ((p, m), v))| {
                let g = &self.grad[c * CHUNK..c * CHUNK + p.len()];
                for i in 0..p.len() {
                    let gi = g[i] * k.grad_scale;
                    m[i] = k.beta1 * m[i] + (1.0 - k.beta1) * gi;
                    v[i] = k.beta2 * v[i] + (1.0 - k.beta2) * gi * gi;
                    let update = (m[i] / k.bias1) / ((v[i] / k.bias2).sqrt() + k.eps);
                    p[i] = p[i] * (1.0 - k.lr * k.decay) - k.lr * update;
                }
            },
        );
        Ok(())
    }
}

/// The same update as [`Update`] in tensor ops, for parameters on a GPU: the new moments and
/// parameter values.
fn update_tensors(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, k: &Coefficients) -> Result<[Tensor; 3]> {
    let (b1, b2) = (k.beta1 as f64, k.beta2 as f64);
    let g = grad.to_dtype(DType::F32)?.affine(k.grad_scale as f64, 0.0)?;
    let m = (m.affine(b1, 0.0)? + g.affine(1.0 - b1, 0.0)?)?;
    let v = (v.affine(b2, 0.0)? + g.sqr()?.affine(1.0 - b2, 0.0)?)?;
    let denominator = (v.affine(1.0 / k.bias2 as f64, 0.0)?.sqrt()? + k.eps as f64)?;
    let update = (m.affine(1.0 / k.bias1 as f64, 0.0)? / denominator)?;
    let decayed = param.affine(1.0 - (k.lr * k.decay) as f64, 0.0)?;
    let param = (decayed - update.affine(k.lr as f64, 0.0)?)?;
    Ok([m, v, param])
}

impl AdamW {
    pub fn new(params: BTreeMap<String, Var>, config: AdamWConfig) -> Result<Self> {
        let moments = params.iter().map(|(k, p)| Ok((k.clone(), Moments::zeros(p)?))).collect::<Result<_>>()?;
        Ok(AdamW { config, params, moments, step: 0 })
    }

    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// One update with learning rate `lr` (the schedule's value for this step), the gradients
    /// multiplied by `grad_scale` first (the clipping coefficient).
    pub fn step(&mut self, grads: &Gradients, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let c = &self.config;
        for (name, param) in &self.params {
            let Some(g) = grads.get(name) else { continue };
            if g.elem_count() != param.elem_count() {
                bail!("gradient of `{name}` has {} values, the parameter {}", g.elem_count(), param.elem_count());
            }
            let k = Coefficients {
                grad_scale: grad_scale as f32,
                lr: lr as f32,
                decay: if is_no_decay(name) { 0.0 } else { c.weight_decay as f32 },
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                bias1: (1.0 - c.beta1.powi(self.step as i32)) as f32,
                bias2: (1.0 - c.beta2.powi(self.step as i32)) as f32,
            };
            match self.moments.get_mut(name).unwrap() {
                Moments::Host(m, v) => with_f32_slice(&g.contiguous()?, |grad| {
                    let update = Update { grad, moments: Mutex::new((m.as_mut_slice(), v.as_mut_slice())), k: &k };
                    param.as_tensor().inplace_op1(&update)
                })?,
                Moments::Device(m, v) => {
                    let [new_m, new_v, new_param] = update_tensors(param.as_tensor(), g, m, v, &k)?;
                    param.set(&new_param)?;
                    (*m, *v) = (new_m, new_v);
                }
            }
        }
        Ok(())
    }

    /// Moments as `m.{name}` / `v.{name}` tensors on the CPU, for a run checkpoint.
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, moments) in &self.moments {
            let shape = self.params[name].shape();
            let (m, v) = match moments {
                Moments::Host(m, v) => {
                    (Tensor::from_slice(m, shape, &Device::Cpu)?, Tensor::from_slice(v, shape, &Device::Cpu)?)
                }
                Moments::Device(m, v) => (m.to_device(&Device::Cpu)?, v.to_device(&Device::Cpu)?),
            };
            out.insert(format!("m.{name}"), m);
            out.insert(format!("v.{name}"), v);
        }
        Ok(out)
    }

    /// Restores the moments saved by `state_tensors` from a safetensors file, onto each
    /// parameter's device.
    pub fn load_state(&mut self, path: &Path, step: u64) -> Result<()> {
        let mut saved = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read optimiser state {}", path.display()))?;
        for (name, param) in &self.params {
            let mut take = |prefix: &str| -> Result<Tensor> {
                let key = format!("{prefix}.{name}");
                let t = saved.remove(&key).with_context(|| format!("{}: no tensor `{key}`", path.display()))?;
                if t.dims() != param.dims() || t.dtype() != DType::F32 {
                    bail!(
                        "{}: `{key}` is {:?} {:?}, the parameter {:?} float32",
                        path.display(),
                        t.dtype(),
                        t.dims(),
                        param.dims()
                    );
                }
                Ok(t)
            };
            let (m, v) = (take("m")?, take("v")?);
            let moments = if param.device().is_cpu() {
                Moments::Host(m.flatten_all()?.to_vec1()?, v.flatten_all()?.to_vec1()?)
            } else {
                Moments::Device(m.to_device(param.device())?, v.to_device(param.device())?)
            };
            self.moments.insert(name.clone(), moments);
        }
        if let Some(extra) = saved.keys().next() {
            bail!("{}: unexpected tensor `{extra}` (a checkpoint of another model?)", path.display());
        }
        self.step = step;
        Ok(())
    }
}

/// Backpropagates `loss` and adds each variable's gradient into `sum` (micro-batches add up).
pub fn add_gradients(sum: &mut Gradients, vars: &BTreeMap<String, Var>, loss: &Tensor) -> Result<()> {
    let store = loss.backward()?;
    for (name, var) in vars {
        if let Some(g) = store.get(var) {
            let total = match sum.remove(name) {
                Some(s) => (s + g)?,
                None => g.clone(),
            };
            sum.insert(name.clone(), total);
        }
    }
    Ok(())
}

/// The global L2 norm of the gradients, accumulated in float64.
pub fn grad_norm(grads: &Gradients) -> Result<f64> {
    let mut sum = 0f64;
    for g in grads.values() {
        sum += if g.device().is_cpu() {
            // Fixed blocks summed in order: rayon's own reduction order varies from run to run.
            with_f32_slice(&g.contiguous()?, |x| {
                let blocks: Vec<f64> =
                    x.par_chunks(1 << 14).map(|b| b.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect();
                Ok(blocks.into_iter().sum::<f64>())
            })?
        } else {
            g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?
        };
    }
    Ok(sum.sqrt())
}

/// PyTorch's `clip_grad_norm_` coefficient: the factor that brings the norm down to
/// `max_norm` (1 when it is below, or when clipping is off).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm.is_finite() {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_steps_match_the_adamw_formula() {
        let device = Device::Cpu;
        let p = Var::from_vec(vec![1.0f32, -2.0], 2, &device).unwrap();
        let b = Var::from_vec(vec![0.5f32], 1, &device).unwrap();
        let params: BTreeMap<String, Var> =
            [("w.weight".to_string(), p.clone()), ("w.bias".to_string(), b.clone())].into();
        let config = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.5 };
        let mut opt = AdamW::new(params, config).unwrap();
        let grads: Gradients = [
            ("w.weight".to_string(), Tensor::new(&[0.2f32, -0.4], &device).unwrap()),
            ("w.bias".to_string(), Tensor::new(&[1.0f32], &device).unwrap()),
        ]
        .into();
        opt.step(&grads, 0.1, 1.0).unwrap();
        // Step 1: m̂ = g, v̂ = g², so the update is g/(|g| + eps) ≈ sign(g); decay applies to weights only.
        let w: Vec<f32> = p.as_tensor().to_vec1().unwrap();
        let expect = [1.0 * (1.0 - 0.05) - 0.1 * 0.2 / (0.2 + 1e-6), -2.0 * (1.0 - 0.05) + 0.1 * 0.4 / (0.4 + 1e-6)];
        for (a, e) in w.iter().zip(expect) {
            assert!((*a as f64 - e).abs() < 1e-6, "{w:?} vs {expect:?}");
        }
        let bias: Vec<f32> = b.as_tensor().to_vec1().unwrap();
        assert!((bias[0] as f64 - (0.5 - 0.1 / (1.0 + 1e-6))).abs() < 1e-6, "{bias:?}");
    }

    #[test]
    fn the_tensor_update_for_gpus_matches_the_in_place_kernel() {
        let device = Device::Cpu;
        let mut rng = crate::rng::Rng::new(5);
        let mut randn = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        let names = ["a.weight", "a.bias"];
        let make = |values: &[Vec<f32>]| -> BTreeMap<String, Var> {
            names
                .iter()
                .zip(values)
                .map(|(n, v)| (n.to_string(), Var::from_slice(v, v.len(), &device).unwrap()))
                .collect()
        };
        let start = vec![randn(40_000), randn(7)];
        let config = AdamWConfig { lr: 0.01, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.1 };
        let mut fused = AdamW::new(make(&start), config.clone()).unwrap();
        let mut tensors = AdamW::new(make(&start), config).unwrap();
        // The tensor form, as parameters on a GPU get it, run here on CPU tensors.
        for (name, p) in tensors.params.clone() {
            tensors.moments.insert(name, Moments::Device(p.zeros_like().unwrap(), p.zeros_like().unwrap()));
        }
        for step in 0..3 {
            let grads: Gradients = names
                .iter()
                .zip(&start)
                .map(|(n, v)| (n.to_string(), Tensor::from_vec(randn(v.len()), v.len(), &device).unwrap()))
                .collect();
            fused.step(&grads, 0.01, 0.5).unwrap();
            tensors.step(&grads, 0.01, 0.5).unwrap();
            for name in names {
                let (a, b) = (fused.params[name].as_tensor(), tensors.params[name].as_tensor());
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-6, "step {step}, {name}: parameters differ by {diff}");
            }
        }
        let (a, b) = (fused.state_tensors().unwrap(), tensors.state_tensors().unwrap());
        for (key, t) in &a {
            let diff = (t - &b[key]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-6, "{key}: moments differ by {diff}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let device = Device::Cpu;
        let grads: Gradients = [("a".to_string(), Tensor::new(&[3.0f32, 4.0], &device).unwrap())].into();
        let norm = grad_norm(&grads).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((clip_scale(norm, 1.0) - 0.2).abs() < 1e-6);
        assert_eq!(clip_scale(norm, 10.0), 1.0);
        assert_eq!(clip_scale(norm, 0.0), 1.0);
    }
}
