#!/usr/bin/env bash
# Runs the test suite on 8 virtual CPU devices (so sharding is real), after
# creating or refreshing .venv. Extra arguments go to pytest (e.g. -k resume).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
ensure_venv

export XLA_FLAGS="--xla_force_host_platform_device_count=8${XLA_FLAGS:+ $XLA_FLAGS}"
# Two pytest-xdist workers (XLA compiles on one core; the suite is mostly compilation),
# sharing one compilation cache. SWEET_JAX_TEST_WORKERS=0 runs in this process.
SWEET_JAX_TEST_JIT_CACHE="$(mktemp -d -t sweet_jax_jit_XXXXXX)"
export SWEET_JAX_TEST_JIT_CACHE
trap 'rm -rf "$SWEET_JAX_TEST_JIT_CACHE"' EXIT
.venv/bin/python -m pytest -n "${SWEET_JAX_TEST_WORKERS:-2}" --dist worksteal "$@"
