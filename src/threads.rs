//! How many threads the compute kernels use.

use anyhow::{bail, Context, Result};

/// Sizes rayon's global pool (which candle's CPU kernels and its gemm matrix products use) and
/// returns the number of threads the matrix products will actually split into.
///
/// candle asks `candle_core::utils::get_num_threads()` for every matrix product: it reads
/// `RAYON_NUM_THREADS`, else the physical cores (or the process's CPU mask on Linux); rayon's own
/// default is the logical CPUs. With `threads` given, both are set to it. Call this before any
/// other rayon work: the global pool can be built once only.
pub fn configure_threads(threads: Option<usize>) -> Result<usize> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // Read by candle on every matrix product; set before any thread of ours starts.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot size rayon's global thread pool (it was already started)")?;
    }
    let candle = candle_core::utils::get_num_threads();
    let pool = rayon::current_num_threads();
    // gemm splits a product into `candle` tasks that run on the pool: the pool bounds the threads.
    Ok(candle.min(pool))
}

/// Compute threads for one of `processes` processes sharing this machine: the cores this
/// process may use, divided among them, unless the launcher already gave each its own cores
/// (its CPU mask is then smaller than the machine).
pub fn share_of_cores(processes: usize) -> usize {
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    if usable >= online {
        (usable / processes.max(1)).max(1)
    } else {
        usable
    }
}
