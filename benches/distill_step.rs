//! One distillation step, timed: teacher forward (no graph), student forward and backward
//! through the triple loss, gradient clipping and the AdamW update.
//!
//! Default pair: MiniLM-sized (teacher 6 × 384, 12 heads, FFN 1536, vocabulary 30,522, random
//! weights with an MLM head; student 3 layers copied from it), 16 × 128 tokens with about 11%
//! padding. `--teacher-config DIR` takes another config.json (e.g. a BERT-base one).
//!
//! `cargo bench --bench distill_step [-- --batch 16 --seq 128 --steps 5 --student-layers 3]`;
//! on a GPU `cargo bench --features cuda --bench distill_step -- --device cuda:0 --dtype bf16`
//! (the student's forward and backward in bf16 over float32 master weights, as training runs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Var};
use distil::distill::loss::{distillation_loss, LossConfig, Rows};
use distil::distill::student::{init_student, spread_layers, StudentArch};
use distil::model::encoder::init_weights;
use distil::model::{Checkpoint, Encoder, EncoderInput, ModelConfig};
use distil::rng::Rng;
use distil::train::optim::{clip_scale, grad_norm, AdamW, AdamWConfig, Gradients};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_string())
}

/// Peak resident memory of this process so far, in GiB.
fn peak_rss_gib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kb / (1024.0 * 1024.0)
}

fn main() -> anyhow::Result<()> {
    distil::memory::keep_freed_memory();
    let device = distil::device::parse(&arg("--device", "cpu"), 0)?;
    let dtype = match arg("--dtype", "f32").as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => anyhow::bail!("--dtype {other}: expected f32, bf16 or f16"),
    };
    let config_dir =
        PathBuf::from(arg("--teacher-config", concat!(env!("CARGO_MANIFEST_DIR"), "/assets/all-MiniLM-L6-v2")));
    let (batch, seq): (usize, usize) = (arg("--batch", "16").parse()?, arg("--seq", "128").parse()?);
    let steps: usize = arg("--steps", "5").parse()?;
    let cfg = ModelConfig::from_dir(&config_dir)
        .map_err(|e| anyhow::anyhow!("{e:#} (run scripts/fetch_assets.sh for the default config)"))?;
    let student_layers: usize = arg("--student-layers", &(cfg.num_layers / 2).to_string()).parse()?;
    let mut rng = Rng::new(0);
    let teacher_ckpt = Checkpoint {
        dir: config_dir.clone(),
        weights: init_weights(&cfg, true, 0.02, &mut rng, &device)?,
        config: cfg.clone(),
        has_head: true,
        report: Default::default(),
        unused: Default::default(),
    };
    let cast = |weights: &BTreeMap<String, candle_core::Tensor>| -> anyhow::Result<_> {
        weights.iter().map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?))).collect::<anyhow::Result<_>>()
    };
    let teacher = Encoder::frozen(&cfg, &cast(&teacher_ckpt.weights)?)?;
    let init = init_student(&teacher_ckpt, &spread_layers(cfg.num_layers, student_layers), StudentArch::Same)?;
    let vars: BTreeMap<String, Var> =
        init.weights.iter().map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?))).collect::<anyhow::Result<_>>()?;
    let master = || vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect::<BTreeMap<_, _>>();
    let mut optimizer = AdamW::new(vars.clone(), AdamWConfig::default())?;

    // Rows of 100–128 real tokens (about 11% padding), 15% of them masked targets.
    let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..batch {
        let len = seq - rng.below((seq as u64 * 22 / 100).max(1)) as usize;
        let row: Vec<u32> =
            (0..seq).map(|j| if j < len { 1000 + rng.below(cfg.vocab_size as u64 - 1000) as u32 } else { 0 }).collect();
        let lab: Vec<i64> =
            (0..seq).map(|j| if j < len && rng.next_f32() < 0.15 { row[j] as i64 } else { -100 }).collect();
        mask.push((0..seq).map(|j| u32::from(j < len)).collect::<Vec<u32>>());
        ids.push(row);
        labels.push(lab);
    }
    let input = EncoderInput::from_rows(&cfg, &ids, &mask, None, &device)?;
    let rows = Rows::new(&mask, &labels, false)?;
    let real: usize = rows.real.len();
    let loss_cfg = LossConfig::default();

    let mut times = Vec::new();
    // Seconds per phase, summed over the timed steps: where a step's time goes.
    let mut phases = [0f64; 5];
    let mut dropout = Rng::new(1);
    for step in 0..=steps {
        let mut clock = Instant::now();
        let mut lap = |phase: usize| {
            if step > 0 {
                phases[phase] += clock.elapsed().as_secs_f64();
            }
            clock = Instant::now();
        };
        let start = Instant::now();
        let t_last = teacher.forward(&input, None)?.pop().unwrap();
        device.synchronize()?;
        lap(0);
        // In half precision the student computes over copies of the float32 weights, made
        // anew every step as the trainer makes them.
        let student = Encoder::new(&init.config, &cast(&master())?)?;
        let s_last = student.forward(&input, Some(&mut dropout))?.pop().unwrap();
        device.synchronize()?;
        lap(1);
        let parts = distillation_loss(&loss_cfg, &student, &s_last, &teacher, &t_last, &rows)?;
        parts.total.to_scalar::<f32>()?;
        lap(2);
        let store = parts.total.backward()?;
        let grads: Gradients = vars.iter().filter_map(|(k, v)| store.get(v).map(|g| (k.clone(), g.clone()))).collect();
        drop(store);
        device.synchronize()?;
        lap(3);
        let norm = grad_norm(&grads)?;
        optimizer.step(&grads, 1e-4, clip_scale(norm, 5.0))?;
        device.synchronize()?;
        lap(4);
        if step > 0 {
            times.push(start.elapsed().as_secs_f64()); // step 0 warms the allocator and thread pool
        }
    }
    let names = ["teacher forward", "student forward", "loss (heads + vocabulary)", "backward", "clip + AdamW"];
    let breakdown: Vec<String> =
        names.iter().zip(phases).map(|(n, t)| format!("{n} {:.2} s", t / steps as f64)).collect();
    println!("per step: {}", breakdown.join(", "));
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "distil step on {} in {dtype:?}: teacher {}x{} -> student {} layers, batch {batch}x{seq} ({real} real tokens): median {:.3} s (min {:.3}, max {:.3}), {:.0} tokens/s, peak RSS {:.2} GiB, {} threads",
        distil::device::name(&device),
        cfg.num_layers,
        cfg.hidden_size,
        student_layers,
        median,
        times[0],
        times[times.len() - 1],
        real as f64 / median,
        peak_rss_gib(),
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
