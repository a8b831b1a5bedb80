#!/usr/bin/env bash
# The main job: trains the image SweetTokenizer (CQAE + language codebook) on the
# embedded real photos on this machine's CPU, then evaluates it on held-out photos
# against a bit-matched thumbnail. Results: $WORKDIR/metrics.json and recon_grid.png.
# With `video` first: the video SweetTokenizer's three-stage curriculum on the
# embedded clips; results: metrics.json (per stage), recon*.mp4.
#
# With `generate` first: the generator job: the main job's tokenizer (trained first when
# $TOKENIZER_WORKDIR has no finished run), its tokens of the embedded photos (64 seeded
# crops of each, and their mirror images; and of the held-out crops), then an AR
# transformer over those words (configs/ar_generator.py:cpu); results: metrics.json
# (FD-VGG of samples beside the real-token and marginal-token baselines, held-out
# token NLL beside the marginals'), samples_grid.png, words.md.
#
#   ./launch/local.sh                                  # configs/sweet_image.py:cpu
#   ./launch/local.sh video                            # configs/sweet_video.py:cpu
#   ./launch/local.sh generate                         # configs/ar_generator.py:cpu
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

if [[ "${1:-}" == "generate" ]]; then
  shift
  TOKENIZER_WORKDIR="${TOKENIZER_WORKDIR:-workdirs/sweet_image_cpu}"
  WORKDIR="${WORKDIR:-workdirs/generate}"
  export SWEET_JAX_DATA_DIR="${SWEET_JAX_DATA_DIR:-$PWD/.data/tfds}"
  ((DRY_RUN)) || ensure_venv
  if [[ ! -f "$TOKENIZER_WORKDIR/metrics.json" ]]; then
    run .venv/bin/python -m sweet_jax.main --config=configs/sweet_image.py:cpu \
      --workdir="$TOKENIZER_WORKDIR"
  fi
  run .venv/bin/python -m sweet_jax.tokenize --workdir="$TOKENIZER_WORKDIR" \
    --out="$WORKDIR/tokens" --crops_per_image=64 --flip
  run .venv/bin/python -m sweet_jax.tokenize --workdir="$TOKENIZER_WORKDIR" \
    --out="$WORKDIR/tokens" --split=eval
  run .venv/bin/python -m sweet_jax.main --config="${CONFIG:-configs/ar_generator.py:cpu}" \
    --workdir="$WORKDIR/ar" --config.tokens.dir="$WORKDIR/tokens" "$@"
  exit 0
fi
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
