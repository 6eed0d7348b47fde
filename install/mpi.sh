#!/usr/bin/env bash
# Open MPI for the multi-host launcher and the MPI backend (and for users who launch with
# mpirun): Debian's openmpi-bin (mpirun), libopenmpi-dev (mpicc and mpi.h, which the rank
# program's MPI bindings build against) and libclang-dev (bindgen reads mpi.h with it),
# installed when missing, with consent (see `system_packages` in env.sh). Never fails:
# without them the tests that need them skip and say why.
set -uo pipefail
source "$(dirname "$0")/env.sh"
have_libclang() {
  compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null \
    || { [ -n "${LIBCLANG_PATH:-}" ] && compgen -G "$LIBCLANG_PATH/libclang*.so*" >/dev/null; }
}
wanted=()
command -v mpirun >/dev/null 2>&1 || wanted+=(openmpi-bin)
command -v mpicc >/dev/null 2>&1 || wanted+=(libopenmpi-dev)
have_libclang || wanted+=(libclang-dev)
if [ ${#wanted[@]} = 0 ]; then
  exit 0
fi
system_packages "the MPI and simulated-host tests" "${wanted[@]}"
exit 0
