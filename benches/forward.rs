//! Encoder forward throughput: all-MiniLM-L6-v2 (from `scripts/fetch_assets.sh`) on a batch of
//! 32 × 128 real tokens, no padding, inference mode. Prints the median of repeated passes.
//!
//! `cargo bench --bench forward [-- --batch 32 --seq 128 --repeats 10 --model DIR]`

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use distil::infer::load_encoder;
use distil::model::EncoderInput;
use distil::rng::Rng;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_string())
}

fn main() -> anyhow::Result<()> {
    distil::memory::keep_freed_memory();
    let model = PathBuf::from(arg("--model", concat!(env!("CARGO_MANIFEST_DIR"), "/assets/all-MiniLM-L6-v2")));
    let batch: usize = arg("--batch", "32").parse()?;
    let seq: usize = arg("--seq", "128").parse()?;
    let repeats: usize = arg("--repeats", "10").parse()?;
    let device = Device::Cpu;
    let (_, encoder) = load_encoder(&model, &device)
        .map_err(|e| anyhow::anyhow!("{e:#} (run scripts/fetch_assets.sh to fetch the default model)"))?;
    let cfg = &encoder.cfg;
    // Word-piece ids above the special tokens, wrapped as [CLS] … [SEP].
    let mut rng = Rng::new(0);
    let ids: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            let mut row: Vec<u32> = (0..seq).map(|_| 1000 + rng.below(cfg.vocab_size as u64 - 1000) as u32).collect();
            row[0] = 101;
            row[seq - 1] = 102;
            row
        })
        .collect();
    let mask = vec![vec![1u32; seq]; batch];
    let input = EncoderInput::from_rows(cfg, &ids, &mask, None, &device)?;
    encoder.forward(&input, None)?; // warm-up: allocator, thread pool
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        let hidden = encoder.forward(&input, None)?;
        hidden.last().unwrap().sum_all()?.to_scalar::<f32>()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = (batch * seq) as f64;
    println!(
        "distil forward {} batch {batch} x {seq}: median {:.1} ms (min {:.1}, max {:.1}) = {:.0} tokens/s, {} threads",
        model.file_name().unwrap().to_string_lossy(),
        median * 1e3,
        times[0] * 1e3,
        times[times.len() - 1] * 1e3,
        tokens / median,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
