#!/usr/bin/env bash
# The main job: trains the image SweetTokenizer (CQAE + language codebook) on the
# embedded real photos on this machine's CPU, then evaluates it on held-out photos
# against a bit-matched thumbnail. Results: $WORKDIR/metrics.json and recon_grid.png.
# With `video` first: the video SweetTokenizer's three-stage curriculum on the
# embedded clips; results: metrics.json (per stage), recon*.mp4.
#
#   ./launch/local.sh                                  # configs/sweet_image.py:cpu
#   ./launch/local.sh video                            # configs/sweet_video.py:cpu
#   CONFIG=configs/sweet_image.py:runlocal ./launch/local.sh --config.total_steps=20
#
# Extra arguments go to sweet_jax.main (e.g. --config.FIELD=VALUE overrides);
# --dry-run prints the command instead of setting up and running it.
# Re-running with the same WORKDIR resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/common.sh
source launch/venv.sh

take_dry_run "$@"
set -- "${ARGS[@]}"

if [[ "${1:-}" == "video" ]]; then
  shift
  CONFIG="${CONFIG:-configs/sweet_video.py:cpu}"
  WORKDIR="${WORKDIR:-workdirs/sweet_video_cpu}"
fi
CONFIG="${CONFIG:-configs/sweet_image.py:cpu}"
WORKDIR="${WORKDIR:-workdirs/sweet_image_cpu}"
export SWEET_JAX_DATA_DIR="${SWEET_JAX_DATA_DIR:-$PWD/.data/tfds}"
train=(.venv/bin/python -m sweet_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@")
if ((DRY_RUN)); then
  run env SWEET_JAX_DATA_DIR="$SWEET_JAX_DATA_DIR" "${train[@]}"
  exit 0
fi
ensure_venv
exec "${train[@]}"
