"""Reliability (issue #7): preemption by SIGTERM, unreadable checkpoints, the non-finite
guard's modes in the real trainer."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import sweet_image
from sweet_jax import nonfinite
from sweet_jax.train import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runlocal(data_dir):
  config = sweet_image.get_config("runlocal")  # 6 steps, checkpoint every 2
  with config.unlocked():
    config.data.data_dir = data_dir
  return config


def _steps(workdir: str) -> list[int]:
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def _params(workdir: str, step: int):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def test_sigterm_checkpoints_the_current_step_and_exits_0(tmp_path, embedded_data_dir):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, SWEET_JAX_DATA_DIR=embedded_data_dir, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  proc = subprocess.Popen(
      [sys.executable, "-m", "sweet_jax.main", "--config=configs/sweet_image.py:runlocal",
       f"--workdir={workdir}", "--config.total_steps=100000",
       "--config.checkpoint_every_steps=100000", "--config.log_every_steps=1"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  log = []
  try:
    for line in proc.stdout:  # until it is training (a train/ scalar line for some step)
      log.append(line)
      if re.search(r"\[3\] .*train/loss", line):
        break
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    log.append(proc.communicate(timeout=300)[0])
  finally:
    proc.kill()
  log = "".join(log)
  assert proc.returncode == 0, log[-4000:]
  stopped = int(re.search(r"checkpointing step (\d+) and stopping", log)[1])
  assert stopped >= 3 and time.time() - sent < 120
  assert _steps(workdir) == [stopped], log[-2000:]  # only the preemption checkpoint
  assert os.listdir(os.path.join(workdir, "checkpoints", str(stopped), "data"))
  assert jax.tree.leaves(_params(workdir, stopped))


def test_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path, embedded_data_dir,
                                                                 caplog):
  config = runlocal(embedded_data_dir)
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)
  assert _steps(workdir) == [2, 4, 6]
  uninterrupted = _params(workdir, 6)
  # A crash mid-write / a bad disk: every file of the newest checkpoint cut in half.
  for folder, _, files in os.walk(os.path.join(workdir, "checkpoints", "6")):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  caplog.set_level("WARNING")
  resumed = train_and_evaluate(config, workdir)
  assert resumed["step"] == 6
  assert "Checkpoint 6 in" in caplog.text and "cannot be restored" in caplog.text
  assert "Resumed from checkpoint 4" in caplog.text
  (moved,) = os.listdir(str(tmp_path / "run" / "checkpoints_unreadable"))
  assert moved.startswith("6-")
  # Steps 5 and 6 were retrained from checkpoint 4: the same parameters, bitwise.
  for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(_params(workdir, 6))):
    np.testing.assert_array_equal(a, b)


def test_no_restorable_checkpoint_moves_nothing(tmp_path, embedded_data_dir):
  config = runlocal(embedded_data_dir)
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir, stop_at_step=2)
  with config.unlocked():
    config.model.width = 48  # a different model: the checkpoint no longer fits
  with pytest.raises(Exception, match="no checkpoint in .* can be restored .*nothing was moved"):
    train_and_evaluate(config, workdir)
  assert _steps(workdir) == [2]
  assert not os.path.exists(str(tmp_path / "run" / "checkpoints_unreadable"))


@pytest.mark.parametrize("mode", ["halt", "skip", "skip_limit"])
def test_on_nonfinite_modes(mode, tmp_path, embedded_data_dir):
  config = runlocal(embedded_data_dir)
  with config.unlocked():
    config.inject_nan_at_step = 3
    config.log_every_steps = 6
    config.on_nonfinite = "halt" if mode == "halt" else "skip"
    config.max_consecutive_nonfinite = 1 if mode == "skip_limit" else 10
  workdir = str(tmp_path)
  if mode == "skip":
    metrics = train_and_evaluate(config, workdir)
    assert metrics["step"] == 6 and metrics["nonfinite_steps"] == 1
    assert np.isfinite(metrics["psnr"])
    return
  message = ("non-finite values at step 3 .*loss terms \\[.*'recon'.*\\], gradient groups "
             "\\[.*'decoder'.*\\]")
  with pytest.raises(nonfinite.NonFiniteStepError, match=message):
    train_and_evaluate(config, workdir)
  # Checked before the step-4 save: only the step-2 checkpoint exists.
  assert _steps(workdir) == [2]


def test_on_nonfinite_must_be_known(embedded_data_dir, tmp_path):
  config = runlocal(embedded_data_dir)
  with config.unlocked():
    config.on_nonfinite = "ignore"
  with pytest.raises(ValueError, match="config.on_nonfinite='ignore'; use one of"):
    train_and_evaluate(config, str(tmp_path))
