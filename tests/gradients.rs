//! Training needs gradients that reach every weight and are right: every trainable tensor of
//! each family gets a non-zero gradient after one backward pass, and the gradients agree with
//! finite differences (in float64, where the comparison is sharp).

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::fixture;
use distil::infer::BatchJson;
use distil::model::{Checkpoint, Encoder, EncoderInput};
use distil::rng::Rng;

struct Setup {
    vars: Vec<(String, Var)>,
    encoder: Encoder,
    input: EncoderInput,
    probe_hidden: Tensor,
    probe_logits: Tensor,
}

/// A model whose weights are float64 variables, one fixture batch, and fixed random
/// projections that turn the outputs into a scalar touching every position.
fn setup(name: &str) -> Setup {
    let device = Device::Cpu;
    let dir = fixture(&format!("models/{name}"));
    let ckpt = Checkpoint::load(&dir, &device).unwrap();
    let vars: Vec<(String, Var)> = ckpt
        .weights
        .iter()
        .map(|(k, t)| (k.clone(), Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap()))
        .collect();
    let weights = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let encoder = Encoder::new(&ckpt.config, &weights).unwrap();
    let batch = BatchJson::read(&dir.join("expected/batch0.json")).unwrap();
    let input = batch.to_input(&encoder, &device).unwrap();
    let (b, s) = input.input_ids.dims2().unwrap();
    let mut rng = Rng::new(5);
    let mut randn =
        |n: usize| Tensor::from_vec((0..n).map(|_| rng.normal()).collect::<Vec<f64>>(), n, &device).unwrap();
    let h = ckpt.config.hidden_size;
    let v = ckpt.config.vocab_size;
    let probe_hidden = randn(b * s * h).reshape((b, s, h)).unwrap();
    let probe_logits = randn(b * s * v).reshape((b, s, v)).unwrap();
    Setup { vars, encoder, input, probe_hidden, probe_logits }
}

fn loss(s: &Setup) -> Tensor {
    let hidden = s.encoder.forward(&s.input, None).unwrap();
    let last = hidden.last().unwrap();
    let mut l = (last * &s.probe_hidden).unwrap().sum_all().unwrap();
    if s.encoder.head().is_some() {
        let logits = s.encoder.logits(last).unwrap();
        l = (l + (logits * &s.probe_logits).unwrap().sum_all().unwrap()).unwrap();
    }
    l
}

const FAMILIES: &[&str] = &["bert_tied", "bert_untied", "roberta", "distilbert_relu"];

#[test]
fn every_weight_receives_a_gradient() {
    for name in FAMILIES {
        let s = setup(name);
        let grads = loss(&s).backward().unwrap();
        for (key, var) in &s.vars {
            let g = grads.get(var).unwrap_or_else(|| panic!("{name}: no gradient reaches `{key}`"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient of `{key}` has squared norm {norm}");
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let eps = 1e-6;
    for name in FAMILIES {
        let s = setup(name);
        let grads = loss(&s).backward().unwrap();
        let mut rng = Rng::new(11);
        for (key, var) in &s.vars {
            let analytic: Vec<f64> = grads.get(var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let original: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            // The coordinate with the largest gradient, and two random ones.
            let largest = (0..analytic.len()).max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs())).unwrap();
            let picks = [largest, rng.below(original.len() as u64) as usize, rng.below(original.len() as u64) as usize];
            for i in picks {
                let eval_at = |delta: f64| {
                    let mut w = original.clone();
                    w[i] += delta;
                    var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap()).unwrap();
                    loss(&s).to_scalar::<f64>().unwrap()
                };
                let numeric = (eval_at(eps) - eval_at(-eps)) / (2.0 * eps);
                eval_at(0.0);
                let tol = 1e-5 * analytic[largest].abs().max(1.0);
                assert!(
                    (numeric - analytic[i]).abs() <= tol,
                    "{name}: d loss / d {key}[{i}]: analytic {} vs finite difference {numeric}",
                    analytic[i]
                );
            }
        }
    }
}
