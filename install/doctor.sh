#!/usr/bin/env bash
# What ranch needs from this machine, each missing thing named with the command that fixes
# it. install/setup.sh runs it before building (with --build: also the disk the build takes,
# Python for Jupyter); `ranch-kernel doctor` runs this same script (embedded in the binary).
# Exits 1 when something required is missing; optional things (MPI, GPUs) are reported only.
set -uo pipefail

build=false
[ "${1:-}" = "--build" ] && build=true
missing=0
RUST_MIN=1.95

ok() { printf '  ok       %s\n' "$*"; }
note() { printf '  note     %s\n' "$*"; }
need() { printf '  MISSING  %s\n' "$*"; missing=1; }

# The command that installs a system package here: apt, dnf, else the package's name.
pkg() {
  local apt=$1 dnf=$2
  if command -v apt-get >/dev/null 2>&1; then echo "sudo apt-get install $apt"
  elif command -v dnf >/dev/null 2>&1; then echo "sudo dnf install $dnf"
  else echo "install $apt (Debian's name) with your package manager"; fi
}

version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

echo "ranch doctor: what this machine has for ranch"

# Rust: evcxr 0.22 needs 1.95; cargo and rustc on PATH (a Jupyter started without a login
# shell may not have ~/.cargo/bin: the kernelspec records it, see the README).
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
  need "Rust (cargo, rustc) is not on PATH: curl --proto '=https' -sSf https://sh.rustup.rs | sh   (then open a new shell)"
else
  rust=$(rustc --version 2>/dev/null | awk '{print $2}')
  if [ -z "$rust" ]; then
    need "rustc does not run ($(command -v rustc)): rustup default stable"
  elif version_at_least "${rust%%-*}" "$RUST_MIN"; then
    ok "Rust $rust"
  else
    need "Rust $rust is older than $RUST_MIN: rustup update stable"
  fi
  sysroot=$(rustc --print sysroot 2>/dev/null)
  if [ -n "$sysroot" ] && [ -d "$sysroot/lib/rustlib/src/rust/library" ]; then
    ok "rust-src (completion and \`name?\` read the standard library's source)"
  else
    need "rust-src (completion and \`name?\` need the standard library's source): rustup component add rust-src"
  fi
fi

# A C compiler and linker: rustc links through cc, and evcxr builds every cell.
if command -v cc >/dev/null 2>&1; then
  ok "C compiler and linker ($(command -v cc))"
else
  need "a C compiler and linker (cc), which rustc links with: $(pkg build-essential gcc)"
fi

if $build; then
  # Python with venv and pip, for the environment Jupyter is installed into.
  if ! command -v python3 >/dev/null 2>&1; then
    need "Python 3.9+ (python3): $(pkg python3 python3)"
  elif ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    need "Python 3.9+, found $(python3 --version 2>&1): install a newer python3"
  elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need "Python's venv and ensurepip, to make .venv: $(pkg python3-venv python3)"
  else
    ok "$(python3 --version 2>&1) with venv"
  fi
  # The first build (evcxr and rust-analyzer) takes about 4 GiB under CARGO_TARGET_DIR.
  target=${CARGO_TARGET_DIR:-$HOME/.cache/ranch/target}
  probe=$target
  while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done
  free_kib=$(df -Pk "$probe" 2>/dev/null | awk 'NR == 2 {print $4}')
  if [ -n "$free_kib" ] && [ "$free_kib" -lt $((6 * 1024 * 1024)) ] && [ ! -x "$target/release/ranch-kernel" ]; then
    need "6 GiB free for the first build in $target, $((free_kib / 1024 / 1024)) GiB free: free some space or set CARGO_TARGET_DIR elsewhere"
  elif [ -n "$free_kib" ]; then
    ok "$((free_kib / 1024 / 1024)) GiB free for builds ($probe)"
  fi
fi

# Ranks on one host share memory through /dev/shm; containers often give it 64 MiB.
shm_kib=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $2}')
if [ -z "$shm_kib" ]; then
  note "/dev/shm is missing: ranks on one host cannot share memory (collectives fail)"
elif [ "$shm_kib" -lt $((512 * 1024)) ]; then
  note "/dev/shm has $((shm_kib / 1024)) MiB: collectives of many ranks run slower or fail (docker: --shm-size=2g)"
else
  ok "/dev/shm: $((shm_kib / 1024 / 1024)) GiB"
fi

# Optional: MPI for --hosts, --launcher mpirun and --backend mpi; GPUs for --gpus.
if command -v mpirun >/dev/null 2>&1; then
  ok "MPI: $(mpirun --version 2>/dev/null | head -1)"
else
  note "no MPI (only for --hosts, --launcher mpirun, --backend mpi): $(pkg 'openmpi-bin libopenmpi-dev libclang-dev' 'openmpi-devel clang-devel')"
fi
if ls /dev/nvidia[0-9]* >/dev/null 2>&1 || command -v nvidia-smi >/dev/null 2>&1; then
  ok "NVIDIA GPUs: $(ls /dev/nvidia[0-9]* 2>/dev/null | wc -l) (%ranch_gpus lists them)"
else
  note "no NVIDIA GPU: ranks run on CPUs"
fi

if [ "$missing" = 0 ]; then
  echo "Everything ranch needs is here."
else
  echo "Fix what is MISSING above, then run this again."
fi
exit "$missing"
