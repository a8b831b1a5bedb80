#!/usr/bin/env bash
# The README's tokenizer comparison: SweetTokenizer, SoftVQ-VAE and TiTok CPU configs
# (matched parameter counts, equal steps, batch and data: the embedded photos), trained
# one after the other on this machine, then compared on the held-out photos:
# $OUT/compare.md (the table, also printed), compare.json and compare.png.
#
#   ./launch/compare.sh                       # about 30 minutes on 2 CPU cores
#   ./launch/compare.sh --config.total_steps=200   # every run shorter (a quick look)
#
# Extra arguments go to every run; --dry-run prints the commands. Re-running resumes
# unfinished runs from their checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/common.sh
source launch/venv.sh

take_dry_run "$@"
set -- "${ARGS[@]}"

OUT="${OUT:-workdirs/compare}"
export SWEET_JAX_DATA_DIR="${SWEET_JAX_DATA_DIR:-$PWD/.data/tfds}"
((DRY_RUN)) || ensure_venv
workdirs=()
for entry in sweet:configs/sweet_image.py:cpu softvq:configs/softvq.py:cpu titok:configs/titok.py:cpu; do
  name="${entry%%:*}"
  workdirs+=("$OUT/$name")
  run .venv/bin/python -m sweet_jax.main --config="${entry#*:}" --workdir="$OUT/$name" "$@"
done
run .venv/bin/python -m sweet_jax.compare --workdirs="$(IFS=,; echo "${workdirs[*]}")" --out="$OUT"
