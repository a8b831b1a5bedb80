#!/usr/bin/env bash
# Trains on a multi-node GPU cluster with SLURM: writes an sbatch script and submits it.
# One task per GPU (jax.distributed's SLURM detection gives each process the GPU of its
# SLURM_LOCALID); the first node sets up .venv with jax's CUDA plugin on the shared
# filesystem, then `srun` starts sweet_jax.main with `--distributed` on every task.
#
#   launch/slurm.sh --nodes=4 --gpus-per-node=8 --partition=gpu --time=2-00:00:00 \
#     --config=configs/sweet_video.py:ucf101 --workdir=/shared/runs/video \
#     -- --config.video_data.data_dir=/shared/tfds
#
# Options (values with '='):
#   --nodes N            nodes (required)
#   --gpus-per-node G    GPUs per node = tasks per node (default 8)
#   --cpus-per-task C    CPU cores per task, for the input pipeline (default 8)
#   --partition P, --account A, --time T, --job-name J   passed to sbatch
#   --config SPEC        sweet_jax config (required)
#   --workdir DIR        run directory on a filesystem every node sees (required)
#   --dry-run            print the sbatch script instead of submitting it
# Arguments after `--` go to sweet_jax.main. Resubmitting resumes from the workdir.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/common.sh

nodes="" gpus=8 cpus=8 partition="" account="" time="" job_name="sweet_jax" config="" workdir=""
while (($#)); do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --gpus-per-node=*) gpus="${1#*=}" ;;
    --cpus-per-task=*) cpus="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --account=*) account="${1#*=}" ;;
    --time=*) time="${1#*=}" ;;
    --job-name=*) job_name="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (see the header of $0)" ;;
  esac
  shift
done
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes=N (a positive integer) is required"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer, not '$gpus'"
[[ "$cpus" =~ ^[1-9][0-9]*$ ]] || die "--cpus-per-task must be a positive integer, not '$cpus'"
[[ -n "$config" ]] || die "--config=SPEC is required"
[[ -n "$workdir" ]] || die "--workdir=DIR is required (on a filesystem every node sees)"

train=(.venv/bin/python -m sweet_jax.main --config="$config" --workdir="$workdir" --distributed "$@")
batch_script() {
  echo "#!/usr/bin/env bash"
  echo "#SBATCH --job-name=$job_name"
  echo "#SBATCH --nodes=$nodes"
  echo "#SBATCH --ntasks-per-node=$gpus"
  echo "#SBATCH --gpus-per-node=$gpus"
  echo "#SBATCH --cpus-per-task=$cpus"
  echo "#SBATCH --exclusive"
  # SIGTERM to the tasks 120 s before the time limit: the trainer checkpoints the step it
  # is on and exits 0 (README, "Reliability"); resubmitting resumes there.
  echo "#SBATCH --signal=TERM@120"
  echo "#SBATCH --output=$workdir/slurm-%j.out"
  [[ -z "$partition" ]] || echo "#SBATCH --partition=$partition"
  [[ -z "$account" ]] || echo "#SBATCH --account=$account"
  [[ -z "$time" ]] || echo "#SBATCH --time=$time"
  echo "set -euo pipefail"
  echo "cd $(quote "$PWD")"
  echo "source launch/venv.sh"
  echo "SWEET_JAX_ACCELERATOR=cuda12 ensure_venv"
  echo "srun --kill-on-bad-exit=1 $(quote "${train[@]}")"
}

if ((DRY_RUN)); then
  batch_script
else
  mkdir -p "$workdir"
  batch_script | sbatch
fi
