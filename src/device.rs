//! Where the compute runs: the CPU, or a CUDA GPU in a build with the `cuda` feature.

use anyhow::{bail, Result};
use candle_core::Device;

/// The device a `--device` value names: `cpu`, `cuda:N`, or `cuda` alone for the GPU of this
/// process's `local_rank` (the ranks of a machine take one GPU each).
pub fn parse(spec: &str, local_rank: usize) -> Result<Device> {
    let expected = || format!("--device {spec:?}: expected `cpu`, `cuda` or `cuda:N`");
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => local_rank,
        Some(rest) => match rest.strip_prefix(':').map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!(expected()),
        },
        None => bail!(expected()),
    };
    cuda(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    use anyhow::Context;
    Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(ordinal: usize) -> Result<Device> {
    bail!(
        "--device cuda:{ordinal}: this distil was built without CUDA; build it with \
         `cargo build --release --features cuda` where the CUDA toolkit is installed"
    )
}

/// A short name for messages: `cpu` or `cuda:N`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_or_say_what_is_expected() {
        assert!(parse("cpu", 3).unwrap().is_cpu());
        for bad in ["gpu", "cuda0", "cuda:x", "CPU"] {
            assert!(parse(bad, 0).is_err(), "{bad}");
        }
        if cfg!(not(feature = "cuda")) {
            let e = parse("cuda:1", 0).unwrap_err().to_string();
            assert!(e.contains("built without CUDA") && e.contains("--features cuda"), "{e}");
        }
    }
}
