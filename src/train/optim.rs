//! AdamW with state that can be saved and restored, so that a resumed run continues exactly
//! (candle-nn's AdamW keeps its moments private: DESIGN.md, trap 6).
//!
//! Decoupled weight decay as in PyTorch's `AdamW`: `p ← p − lr·wd·p`, then the Adam step with
//! bias-corrected moments. Biases and LayerNorm weights are not decayed.

use std::collections::BTreeMap;
use std::path::Path;

use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use candle_core::{CpuStorage, Device, InplaceOp1, Layout, Tensor, Var};
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
    /// First and second moments, flat, in the parameters' element order.
    moments: BTreeMap<String, (Vec<f32>, Vec<f32>)>,
    /// Optimiser steps taken.
    pub step: u64,
}

/// The AdamW update of one parameter, applied in place on its storage in one parallel pass
/// over the parameter, its gradient and its moments.
struct Update<'a> {
    grad: &'a [f32],
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
    grad_scale: f32,
    lr: f32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias1: f32,
    bias2: f32,
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
        const CHUNK: usize = 1 << 14;
        param.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).enumerate().for_each(
            |(c, ((p, m), v))| {
                let g = &self.grad[c * CHUNK..c * CHUNK + p.len()];
                for i in 0..p.len() {
                    let gi = g[i] * self.grad_scale;
                    m[i] = self.beta1 * m[i] + (1.0 - self.beta1) * gi;
                    v[i] = self.beta2 * v[i] + (1.0 - self.beta2) * gi * gi;
                    let update = (m[i] / self.bias1) / ((v[i] / self.bias2).sqrt() + self.eps);
                    p[i] = p[i] * (1.0 - self.lr * self.decay) - self.lr * update;
                }
            },
        );
        Ok(())
    }
}

impl AdamW {
    pub fn new(params: BTreeMap<String, Var>, config: AdamWConfig) -> Result<Self> {
        let moments =
            params.iter().map(|(k, p)| (k.clone(), (vec![0f32; p.elem_count()], vec![0f32; p.elem_count()]))).collect();
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
            let g = g.contiguous()?;
            let (m, v) = self.moments.get_mut(name).unwrap();
            with_f32_slice(&g, |grad| {
                if grad.len() != m.len() {
                    candle_core::bail!("gradient of `{name}` has {} values, the parameter {}", grad.len(), m.len());
                }
                let update = Update {
                    grad,
                    moments: Mutex::new((m.as_mut_slice(), v.as_mut_slice())),
                    grad_scale: grad_scale as f32,
                    lr: lr as f32,
                    decay: if is_no_decay(name) { 0.0 } else { c.weight_decay as f32 },
                    beta1: c.beta1 as f32,
                    beta2: c.beta2 as f32,
                    eps: c.eps as f32,
                    bias1: (1.0 - c.beta1.powi(self.step as i32)) as f32,
                    bias2: (1.0 - c.beta2.powi(self.step as i32)) as f32,
                };
                param.as_tensor().inplace_op1(&update)
            })?;
        }
        Ok(())
    }

    /// Moments as `m.{name}` / `v.{name}` tensors, for a run checkpoint.
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, (m, v)) in &self.moments {
            let shape = self.params[name].shape();
            out.insert(format!("m.{name}"), Tensor::from_slice(m, shape, &Device::Cpu)?);
            out.insert(format!("v.{name}"), Tensor::from_slice(v, shape, &Device::Cpu)?);
        }
        Ok(out)
    }

    /// Restores the moments saved by `state_tensors` from a safetensors file.
    pub fn load_state(&mut self, path: &Path, step: u64) -> Result<()> {
        let mut saved = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read optimiser state {}", path.display()))?;
        for (name, param) in &self.params {
            let mut take = |prefix: &str| -> Result<Vec<f32>> {
                let key = format!("{prefix}.{name}");
                let t = saved.remove(&key).with_context(|| format!("{}: no tensor `{key}`", path.display()))?;
                if t.dims() != param.dims() {
                    bail!("{}: `{key}` has shape {:?}, the parameter {:?}", path.display(), t.dims(), param.dims());
                }
                Ok(t.flatten_all()?.to_vec1()?)
            };
            let moments = (take("m")?, take("v")?);
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
        // Fixed blocks summed in order: rayon's own reduction order varies from run to run.
        sum += with_f32_slice(&g.contiguous()?, |x| {
            let blocks: Vec<f64> =
                x.par_chunks(1 << 14).map(|b| b.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect();
            Ok(blocks.into_iter().sum::<f64>())
        })?;
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
