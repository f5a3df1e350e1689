//! AdamW with state that can be saved and restored, so that a resumed run continues exactly
//! (candle-nn's AdamW keeps its moments private: DESIGN.md, trap 6).
//!
//! Decoupled weight decay as in PyTorch's `AdamW`: `p ← p − lr·wd·p`, then the Adam step with
//! bias-corrected moments. Biases and LayerNorm weights are not decayed.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::model::encoder::is_no_decay;

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
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    /// Optimiser steps taken.
    pub step: u64,
}

impl AdamW {
    pub fn new(params: BTreeMap<String, Var>, config: AdamWConfig) -> Result<Self> {
        let zeros = |p: &Var| p.zeros_like();
        let m = params.iter().map(|(k, p)| Ok((k.clone(), zeros(p)?))).collect::<Result<_>>()?;
        let v = params.iter().map(|(k, p)| Ok((k.clone(), zeros(p)?))).collect::<Result<_>>()?;
        Ok(AdamW { config, params, m, v, step: 0 })
    }

    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// One update with learning rate `lr` (the schedule's value for this step).
    pub fn step(&mut self, grads: &Gradients, lr: f64) -> Result<()> {
        self.step += 1;
        let c = &self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        for (name, param) in &self.params {
            let Some(g) = grads.get(name) else { continue };
            let m = ((&self.m[name] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[name] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bias1)? / ((&v / bias2)?.sqrt()? + c.eps)?)?;
            let decay = if is_no_decay(name) { 0.0 } else { c.weight_decay };
            let p = param.as_tensor();
            let next = ((p * (1.0 - lr * decay))? - (update * lr)?)?;
            param.set(&next)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// Moments as `m.{name}` / `v.{name}` tensors, for a run checkpoint.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let m = self.m.iter().map(|(k, t)| (format!("m.{k}"), t.clone()));
        let v = self.v.iter().map(|(k, t)| (format!("v.{k}"), t.clone()));
        m.chain(v).collect()
    }

    /// Restores the moments saved by `state_tensors` from a safetensors file.
    pub fn load_state(&mut self, path: &Path, step: u64, device: &Device) -> Result<()> {
        let mut saved = candle_core::safetensors::load(path, device)
            .with_context(|| format!("cannot read optimiser state {}", path.display()))?;
        for (name, param) in &self.params {
            for (prefix, map) in [("m", &mut self.m), ("v", &mut self.v)] {
                let key = format!("{prefix}.{name}");
                let t = saved.remove(&key).with_context(|| format!("{}: no tensor `{key}`", path.display()))?;
                if t.dims() != param.dims() {
                    bail!("{}: `{key}` has shape {:?}, the parameter {:?}", path.display(), t.dims(), param.dims());
                }
                map.insert(name.clone(), t);
            }
        }
        if let Some(extra) = saved.keys().next() {
            bail!("{}: unexpected tensor `{extra}` (a checkpoint of another model?)", path.display());
        }
        self.step = step;
        Ok(())
    }
}

/// Scales the gradients so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping (PyTorch's `clip_grad_norm_`).
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: f64) -> Result<f64> {
    let mut sum = 0f64;
    for g in grads.values() {
        sum += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    }
    let norm = sum.sqrt();
    if max_norm > 0.0 && norm.is_finite() {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.values_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
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
        opt.step(&grads, 0.1).unwrap();
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
        let mut grads: Gradients = [("a".to_string(), Tensor::new(&[3.0f32, 4.0], &device).unwrap())].into();
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let v: Vec<f32> = grads["a"].to_vec1().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5, "{v:?}");
    }
}
