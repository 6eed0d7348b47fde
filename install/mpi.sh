#!/usr/bin/env bash
# Open MPI for the multi-host launcher and the MPI backend (and for users who launch with
# mpirun): Debian's openmpi-bin (mpirun), libopenmpi-dev (mpicc and mpi.h, which the rank
# program's MPI bindings build against) and libclang-dev (bindgen reads mpi.h with it),
# installed when missing and apt can install them. Never fails: without them the tests that
# need them skip and say why.
set -uo pipefail
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
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "==> ${wanted[*]} missing and cannot be installed here (needs root and apt): the MPI tests will skip" >&2
  exit 0
fi
echo "==> installing ${wanted[*]} for the launcher and MPI backend tests"
export DEBIAN_FRONTEND=noninteractive
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null; } \
  || echo "==> installing ${wanted[*]} failed: the MPI tests will skip" >&2
exit 0
