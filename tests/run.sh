#!/usr/bin/env bash
# Runs the test suite on 8 virtual CPU devices (so sharding is real), after
# creating or refreshing .venv. Extra arguments go to pytest (e.g. -k resume).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
ensure_venv

export XLA_FLAGS="--xla_force_host_platform_device_count=8${XLA_FLAGS:+ $XLA_FLAGS}"
exec .venv/bin/python -m pytest "$@"
