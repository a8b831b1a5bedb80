"""The launch scripts: what --dry-run prints (and that it reads back as the same
arguments), clear errors for missing options, and shellcheck."""

import glob
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = "--config.mesh=(('data', -1), ('fsdp', 4), ('model', 1))"


def launch(script, *args, expect_rc=0):
  result = subprocess.run([os.path.join(REPO, "launch", script), *args], capture_output=True,
                          text=True, check=False)
  assert result.returncode == expect_rc, result.stderr
  return result


def commands(stdout):
  """The dry-run's '+ ' lines, each split back into its arguments as a shell would."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def test_tpu_pod_dry_run_creates_copies_and_runs_on_every_worker():
  out = launch("tpu_pod.sh", "--name=sweet-v5p", "--zone=us-east5-a", "--type=v5p-32",
               "--config=configs/sweet_image.py:cpu", "--workdir=gs://bucket/run", "--dry-run",
               "--", "--config.batch_size=1024", MESH).stdout
  create, archive, scp, ssh = commands(out)
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert "--accelerator-type=v5p-32" in create and "--zone=us-east5-a" in create
  assert archive[:2] == ["git", "archive"] and archive[-1] == "HEAD"
  assert scp[3:5] == ["tpu-vm", "scp"] and "--worker=all" in scp
  assert ssh[3:5] == ["tpu-vm", "ssh"] and "--worker=all" in ssh
  (remote,) = [a[len("--command="):] for a in ssh if a.startswith("--command=")]
  setup, train = remote.split(" && ")[-2:]
  assert setup == "PYTHON=python3.11 SWEET_JAX_ACCELERATOR=tpu ensure_venv"
  assert shlex.split(train) == [
      ".venv/bin/python", "-m", "sweet_jax.main", "--config=configs/sweet_image.py:cpu",
      "--workdir=gs://bucket/run", "--distributed", "--config.batch_size=1024", MESH]


def test_tpu_pod_dry_run_through_a_queued_spot_resource():
  out = launch("tpu_pod.sh", "--name=n", "--zone=z", "--type=v5litepod-16", "--queued",
               "--spot", "--project=p", "--config=c", "--workdir=gs://b/r", "--dry-run").stdout
  create = commands(out)[0]
  assert create[3:5] == ["queued-resources", "create"]
  assert {"--node-id=n", "--spot", "--project=p", "--runtime-version=tpu-ubuntu2204-base"} <= set(
      create)
  assert "+ (wait until queued resource n is ACTIVE)" in out


@pytest.mark.parametrize("script,args,message", [
    ("tpu_pod.sh", ["--zone=z", "--type=t", "--config=c", "--workdir=w"], "--name=NAME is required"),
    ("tpu_pod.sh", ["--name=n", "--zone=z", "--config=c", "--workdir=w"], "--type=ACCELERATOR_TYPE"),
    ("tpu_pod.sh", ["--name=n", "--zone=z", "--typo=t"], "unknown option '--typo=t'"),
    ("slurm.sh", ["--config=c", "--workdir=w"], "--nodes=N"),
    ("slurm.sh", ["--nodes=2", "--gpus-per-node=eight", "--config=c", "--workdir=w"],
     "--gpus-per-node must be a positive integer, not 'eight'"),
])
def test_missing_or_bad_options_are_named(script, args, message):
  result = launch(script, *args, "--dry-run", expect_rc=2)
  assert message in result.stderr and not result.stdout


def test_slurm_dry_run_prints_the_batch_script():
  out = launch("slurm.sh", "--nodes=4", "--gpus-per-node=8", "--partition=gpu",
               "--time=1-00:00:00", "--config=configs/sweet_video.py:cpu",
               "--workdir=/shared/run", "--dry-run", "--", MESH).stdout
  lines = out.splitlines()
  assert lines[0] == "#!/usr/bin/env bash"
  sbatch = dict(line[len("#SBATCH "):].partition("=")[::2] for line in lines
                if line.startswith("#SBATCH"))
  assert sbatch["--nodes"] == "4" and sbatch["--ntasks-per-node"] == "8"
  assert sbatch["--gpus-per-node"] == "8" and sbatch["--partition"] == "gpu"
  assert sbatch["--exclusive"] == "" and sbatch["--signal"] == "TERM@120"
  assert "SWEET_JAX_ACCELERATOR=cuda12 ensure_venv" in lines
  srun = shlex.split(lines[-1])
  assert srun[:2] == ["srun", "--kill-on-bad-exit=1"]
  assert srun[2:] == [".venv/bin/python", "-m", "sweet_jax.main",
                      "--config=configs/sweet_video.py:cpu", "--workdir=/shared/run",
                      "--distributed", MESH]


def test_local_dry_run_prints_the_main_job():
  (command,) = commands(launch("local.sh", "video", "--dry-run", "--config.total_steps=3").stdout)
  assert command[0] == "env" and command[1].startswith("SWEET_JAX_DATA_DIR=")
  assert command[2:] == [".venv/bin/python", "-m", "sweet_jax.main",
                         "--config=configs/sweet_video.py:cpu",
                         "--workdir=workdirs/sweet_video_cpu", "--config.total_steps=3"]
  # The generate job: the tokenizer (no finished run here), both splits' tokens, then the
  # generator with the overrides.
  train, tokens, held_out, generator = commands(
      launch("local.sh", "generate", "--dry-run", "--config.total_steps=3").stdout)
  assert train[-1] == "--workdir=workdirs/sweet_image_cpu"
  assert "--flip" in tokens and "--split=eval" in held_out
  assert generator[3:] == ["--config=configs/ar_generator.py:cpu",
                           "--workdir=workdirs/generate/ar",
                           "--config.tokens.dir=workdirs/generate/tokens",
                           "--config.total_steps=3"]


def test_scripts_pass_shellcheck():
  shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  scripts = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh"))) + [
      os.path.join(REPO, "tests", "run.sh"), os.path.join(REPO, ".ci", "run")]
  result = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True,
                          cwd=REPO, check=False)
  assert result.returncode == 0, result.stdout
