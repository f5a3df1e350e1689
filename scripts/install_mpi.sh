#!/usr/bin/env bash
# install_mpi.sh: makes sure Open MPI's `mpirun` and its library are on this machine, for
# multi-process training (`mpirun -np N distil train ...`) and the multi-rank test.
#
# distil opens Open MPI's library (libmpi.so.40) at run time, so building distil needs no MPI;
# only running it under mpirun does. Installs Debian's openmpi-bin when `mpirun` is missing
# (apt-get update first, as a fresh machine has no package lists); does nothing when it is
# there. Needs apt-get and root or sudo. Safe to run twice.
set -euo pipefail

if command -v mpirun >/dev/null && ldconfig -p 2>/dev/null | grep -q 'libmpi\.so\.40'; then
    echo "ok: Open MPI $(mpirun --version 2>/dev/null | head -n 1 | sed 's/.*) //') (already installed)"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "error: mpirun not found, and no apt-get to install Open MPI with; install Open MPI 4 or 5" >&2
    exit 1
fi
sudo=()
if [[ $EUID -ne 0 ]]; then sudo=(sudo); fi
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends openmpi-bin >/dev/null
echo "installed: Open MPI $(mpirun --version 2>/dev/null | head -n 1 | sed 's/.*) //') (Debian openmpi-bin)"
