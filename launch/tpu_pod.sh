#!/usr/bin/env bash
# Trains on a Cloud TPU pod slice: creates the TPU VM (directly, or through a queued
# resource), copies this checkout (git HEAD) to every worker, sets up .venv there with
# jax's TPU plugin, and runs the same sweet_jax.main command on all workers at once;
# `--distributed` makes each worker join the pod (jax.distributed auto-detects it).
#
#   launch/tpu_pod.sh --name=sweet-v5p --zone=us-east5-a --type=v5p-32 \
#     --config=configs/sweet_image.py:B --workdir=gs://BUCKET/runs/image \
#     -- --config.batch_size=1024
#
# Options (values with '='):
#   --name NAME         TPU VM name (required)
#   --zone ZONE         GCP zone (required)
#   --type TYPE         accelerator type, e.g. v5p-32, v5litepod-16, v4-64 (required
#                       unless --skip-create)
#   --version VERSION   TPU runtime (default: tpu-ubuntu2204-base)
#   --project PROJECT   GCP project (default: gcloud's)
#   --queued            create through `queued-resources create` and wait until ACTIVE
#   --spot              spot capacity (preemptible: rerun with --skip-create to resume
#                       from the workdir's last checkpoint)
#   --skip-create       reuse an existing TPU VM of that name
#   --config SPEC       sweet_jax config (required), --workdir DIR (required; use gs://
#                       so that every worker and a later resume see the same checkpoints)
#   --dry-run           print the commands instead of running them
# Arguments after `--` go to sweet_jax.main.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/common.sh

name="" zone="" type="" version="tpu-ubuntu2204-base" project="" queued=0 spot=0
skip_create=0 config="" workdir=""
while (($#)); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --type=*) type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --skip-create) skip_create=1 ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (see the header of $0)" ;;
  esac
  shift
done
[[ -n "$name" ]] || die "--name=NAME is required"
[[ -n "$zone" ]] || die "--zone=ZONE is required"
[[ -n "$config" ]] || die "--config=SPEC is required"
[[ -n "$workdir" ]] || die "--workdir=DIR is required (gs://... for a pod)"
((skip_create)) || [[ -n "$type" ]] || die "--type=ACCELERATOR_TYPE is required to create"

where=(--zone="$zone")
[[ -z "$project" ]] || where+=(--project="$project")
capacity=()
if ((spot)); then capacity=(--spot); fi

if ((!skip_create)); then
  if ((queued)); then
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" \
      --accelerator-type="$type" --runtime-version="$version" "${where[@]}" "${capacity[@]}"
    if ((DRY_RUN)); then
      echo "+ (wait until queued resource $name is ACTIVE)"
    else
      until [[ "$(gcloud compute tpus queued-resources describe "$name" "${where[@]}" \
                  --format='value(state.state)')" == ACTIVE ]]; do
        sleep 30
      done
    fi
  else
    run gcloud compute tpus tpu-vm create "$name" --accelerator-type="$type" \
      --version="$version" "${where[@]}" "${capacity[@]}"
  fi
fi

# The code: HEAD of this checkout (uncommitted changes do not travel; commit first).
archive="${TMPDIR:-/tmp}/sweet_jax-$name.tar.gz"
run git archive --format=tar.gz --prefix=sweet_jax/ -o "$archive" HEAD
run gcloud compute tpus tpu-vm scp "$archive" "$name":sweet_jax.tar.gz --worker=all "${where[@]}"

train=(.venv/bin/python -m sweet_jax.main --config="$config" --workdir="$workdir" --distributed "$@")
# A re-run replaces the code but keeps the worker's .venv (and .data).
remote="mkdir -p sweet_jax && find sweet_jax -mindepth 1 -maxdepth 1 ! -name .venv ! -name .data"
remote+=" -exec rm -rf {} + && tar xzf sweet_jax.tar.gz && cd sweet_jax"
# TPU VM images ship Python 3.10; jax 0.10 needs >= 3.11 (Ubuntu 22.04 packages 3.11).
remote+=" && { command -v python3.11 >/dev/null || { sudo apt-get update -qq"
remote+=" && sudo apt-get install -y -qq python3.11 python3.11-venv; }; }"
remote+=" && source launch/venv.sh && PYTHON=python3.11 SWEET_JAX_ACCELERATOR=tpu ensure_venv"
remote+=" && $(quote "${train[@]}")"
run gcloud compute tpus tpu-vm ssh "$name" --worker=all "${where[@]}" --command="$remote"
