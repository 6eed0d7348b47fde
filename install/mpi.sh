#!/usr/bin/env bash
# Open MPI for the multi-host launcher's tests (and for users who launch with mpirun):
# Debian's openmpi-bin, installed when mpirun is missing and apt can install it. Never
# fails: without it the tests that need mpirun skip and say why.
set -uo pipefail
if command -v mpirun >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "==> mpirun not found and cannot be installed here (needs root and apt): its tests will skip" >&2
  exit 0
fi
echo "==> installing Open MPI (openmpi-bin) for the launcher tests"
export DEBIAN_FRONTEND=noninteractive
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends openmpi-bin >/dev/null; } \
  || echo "==> installing openmpi-bin failed: the mpirun tests will skip" >&2
exit 0
