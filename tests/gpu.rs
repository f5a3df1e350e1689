//! On a CUDA GPU, with `cargo test --features cuda --test gpu` (Cargo.toml builds this file
//! only with the feature: CI has no GPU): the forward pass and the distillation loss agree with
//! transformers and the reference formulas as closely as on the CPU, and training on the GPU
//! follows training on the CPU, in float32 and in bf16.

mod common;
mod reference;
mod train_support;

use candle_core::Device;
use common::max_abs_diff;
use distil::distill::student::{init_student, StudentArch};
use distil::model::{checkpoint, Checkpoint};
use distil::train::config::{ComputeConfig, Precision};
use distil::train::run::{train, TrainOptions};
use train_support::*;

fn gpu() -> Device {
    Device::new_cuda(0).unwrap_or_else(|e| panic!("CUDA device 0 cannot be opened ({e}): these tests need a GPU"))
}

#[test]
fn outputs_match_transformers_on_the_gpu() {
    reference::outputs_match_transformers(&gpu());
}

#[test]
fn the_loss_and_gradients_match_the_reference_on_the_gpu() {
    reference::loss_matches_the_reference(&gpu());
}

#[test]
fn training_on_the_gpu_follows_training_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let corpus = build_corpus(root);
    let teacher_dir = random_teacher(&root.join("teacher"), 0.0);
    let teacher = Checkpoint::load(&teacher_dir, &Device::Cpu).unwrap();
    let init = init_student(&teacher, &[0], StudentArch::Same).unwrap();
    let student = root.join("student");
    checkpoint::save(&student, &init.config, &init.weights, Some(&teacher_dir)).unwrap();
    let run = |name: &str, device: Device, dtype: Precision| {
        let mut config = run_config(Some(&teacher_dir), &student, &corpus, &root.join(name), 6, 1e-3);
        config.compute = ComputeConfig { dtype, teacher_dtype: dtype };
        train(&config, &TrainOptions { device, ..Default::default() }).unwrap();
        (steps(&root.join(name)), Checkpoint::load(&root.join(name).join("student"), &Device::Cpu).unwrap())
    };
    let (cpu, cpu_weights) = run("cpu", Device::Cpu, Precision::F32);
    for (name, dtype, tolerance) in [("gpu-f32", Precision::F32, 1e-4), ("gpu-bf16", Precision::Bf16, 1e-2)] {
        let (on_gpu, weights) = run(name, gpu(), dtype);
        for (g, c) in on_gpu.iter().zip(&cpu) {
            for (what, a, b) in [("total", g.loss.total, c.loss.total), ("grad_norm", g.grad_norm, c.grad_norm)] {
                assert!((a - b).abs() <= tolerance * b.abs().max(1e-3), "{name} step {}: {what} {a} vs {b}", g.step);
            }
        }
        if dtype == Precision::F32 {
            for (key, t) in &cpu_weights.weights {
                let diff = max_abs_diff(t, &weights.weights[key]);
                assert!(diff < 1e-4, "{name}: {key} differs from the CPU run's by {diff}");
            }
        }
    }
}
