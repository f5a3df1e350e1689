#!/usr/bin/env bash
# check_cuda_build.sh: compiles distil with `--features nccl` (CUDA and NCCL) on a machine that
# has neither a GPU nor a CUDA toolkit, to show that the GPU code builds. Not part of CI (about
# 130 MB of downloads and 10 minutes of nvcc on 2 cores).
#
# The toolkit comes from PyPI wheels (nvcc and cicc, the CUDA runtime headers, CCCL), unpacked
# into assets/cuda-toolkit/ (safe to run twice). `cargo check` compiles every crate and runs the
# build scripts (candle's kernels go through nvcc) but links nothing, so neither the driver's
# libcuda nor NCCL's library is needed. On a machine with the CUDA toolkit installed, build the
# real thing instead: `cargo build --release --features nccl`.
#
#   scripts/check_cuda_build.sh        # prints "CUDA build check: ok" at the end
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KIT=assets/cuda-toolkit
WHEELS=(nvidia-cuda-nvcc==13.5.37 nvidia-nvvm==13.5.37 nvidia-cuda-crt==13.5.37
    nvidia-cuda-runtime==13.5.37 nvidia-cuda-cccl==13.3.5.0.6)
if [[ ! -f $KIT/.fetched ]]; then
    tmp=$(mktemp -d assets/.cuda.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download -q --no-deps -d "$tmp/wheels" "${WHEELS[@]}"
    for wheel in "$tmp"/wheels/*.whl; do
        python3 -m zipfile -e "$wheel" "$tmp/kit"
    done
    chmod +x "$tmp"/kit/nvidia/cu13/bin/* "$tmp"/kit/nvidia/cu13/nvvm/bin/*   # zip drops exec bits
    printf '%s\n' "${WHEELS[@]}" > "$tmp/kit/.fetched"
    rm -rf "$KIT"
    mv "$tmp/kit" "$KIT"
fi
CUDA_HOME=$(pwd)/$KIT/nvidia/cu13
export CUDA_HOME CUDA_PATH=$CUDA_HOME CUDA_ROOT=$CUDA_HOME PATH=$CUDA_HOME/bin:$PATH
# No GPU to ask: build the kernels for Hopper (H100/H200, compute capability 9.0).
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# cudarc 0.19.10 knows CUDA up to 13.4; the 13.5 headers serve its 13.4 bindings.
export CUDARC_CUDA_VERSION=13040
nvcc --version | tail -n 1
CARGO_TARGET_DIR=target/cuda-check cargo check --features nccl --all-targets
echo "CUDA build check: ok"
