"""Reliability (issue #7): preemption by SIGTERM, unreadable checkpoints, the non-finite
guard's modes, bad data, fail-at-start checks, in the real trainer. (SIGKILL and exact
resumption: test_train.py's end-to-end test and test_curriculum.py's boundary test.)"""

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from configs import sweet_image, sweet_video
from sweet_jax import nonfinite
from sweet_jax.data import pipeline
from sweet_jax import experiment
from sweet_jax.train import train_and_evaluate
from conftest import main_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runlocal(data_dir):
  config = sweet_image.get_config("runlocal")  # 6 steps, checkpoint every 2
  with config.unlocked():
    config.data.data_dir = data_dir
  return config


def checkpoint_steps(workdir: str) -> list[int]:
  """The complete checkpoints' steps."""
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def _params(workdir: str, step: int):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def signal_on_line(proc, pattern: str, sig: int, delay: float = 0.0,
                   timeout: float = 300) -> tuple[str, float]:
  """Sends `sig` to `proc` `delay` seconds after it prints a line matching `pattern`;
  (its whole output, seconds from the signal to its exit)."""
  log = []
  for line in proc.stdout:
    log.append(line)
    if re.search(pattern, line):
      time.sleep(delay)
      proc.send_signal(sig)
      break
  else:
    raise AssertionError(f"never printed {pattern!r}:\n{''.join(log)[-3000:]}")
  sent = time.time()
  log.append(proc.communicate(timeout=timeout)[0])
  return "".join(log), time.time() - sent


def test_sigterm_checkpoints_the_current_step_and_exits_0(tmp_path, embedded_data_dir,
                                                          start_main):
  workdir = str(tmp_path / "run")
  proc = start_main("--config=configs/sweet_image.py:runlocal", f"--workdir={workdir}",
                    "--config.total_steps=100000", "--config.checkpoint_every_steps=100000",
                    "--config.log_every_steps=1", data_dir=embedded_data_dir)
  # SIGTERM once it is training (the scalars of step 3 are logged).
  log, seconds = signal_on_line(proc, r"step 3/", signal.SIGTERM)
  assert proc.returncode == 0, log[-4000:]
  stopped = int(re.search(r"checkpointing step (\d+) and stopping", log)[1])
  assert stopped >= 3 and seconds < 60
  assert checkpoint_steps(workdir) == [stopped], log[-2000:]  # only the preemption checkpoint
  assert os.listdir(os.path.join(workdir, "checkpoints", str(stopped), "data"))
  assert jax.tree.leaves(_params(workdir, stopped))


@pytest.mark.parametrize("phase,line,flags,checkpoints", [
    # (the handler is installed before the imports; TF's banner, printed with --verbose,
    # comes from its import, but which of its lines depends on the CPU; the codebook's line
    # comes while the run is built, if the banner has none of them)
    ("start-up", r"oneDNN custom operations|cpu_feature_guard|Language codebook",
     ("--verbose",), []),
    ("first compile", r"Stage 'train': steps", (), [1]),
    ("evaluation", r"step 2/", ("--config.summary_every_steps=2",), [3]),
    ("save", r"Writing the checkpoint of step 2", ("--config.checkpoint_every_steps=2",),
     [2, 3]),
])
def test_sigterm_in_any_phase_exits_0_with_complete_checkpoints_only(
    tmp_path, embedded_data_dir, start_main, phase, line, flags, checkpoints):
  """SIGTERM exited -15 during start-up once (issue #20): the handler came with the loop."""
  workdir = str(tmp_path / "run")
  proc = start_main("--config=configs/sweet_image.py:runlocal", f"--workdir={workdir}",
                    "--config.total_steps=100000", "--config.checkpoint_every_steps=100000",
                    "--config.summary_every_steps=100000", "--config.log_every_steps=1",
                    *flags, data_dir=embedded_data_dir)
  log, _ = signal_on_line(proc, line, signal.SIGTERM)
  assert proc.returncode == 0, f"{phase}: {log[-4000:]}"
  if not checkpoints:  # stopped before the first step
    assert "Preempted (SIGTERM) while building the run" in log, log[-2000:]
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    return
  assert checkpoint_steps(workdir) == checkpoints, log[-2000:]
  for step in checkpoints:  # each one complete: it restores
    assert jax.tree.leaves(_params(workdir, step))


def test_sigterm_while_restoring_exits_0_and_leaves_the_run_as_it_was(
    tmp_path, embedded_data_dir, start_main):
  workdir = tmp_path / "run"
  train_and_evaluate(runlocal(embedded_data_dir), str(workdir), stop_at_step=2)
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
  record = (workdir / "config.json").read_bytes()
  proc = start_main("--config=configs/sweet_image.py:runlocal", f"--workdir={workdir}",
                    data_dir=embedded_data_dir)
  log, _ = signal_on_line(proc, r"Resuming stage 'train' from the checkpoint of step 2",
                          signal.SIGTERM)
  assert proc.returncode == 0, log[-4000:]
  assert "Preempted (SIGTERM) while restoring" in log
  assert checkpoint_steps(str(workdir)) == [2]
  after = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
  assert [p for p in after if p not in before and not p.startswith("events.out")] == []
  assert (workdir / "config.json").read_bytes() == record


def test_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path, embedded_data_dir,
                                                                 caplog):
  config = runlocal(embedded_data_dir)
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)
  assert checkpoint_steps(workdir) == [2, 4, 6]
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
    train_and_evaluate(config, workdir, allow_config_change=True)  # (past the record's check)
  assert checkpoint_steps(workdir) == [2]
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
  assert checkpoint_steps(workdir) == [2]


def test_on_nonfinite_must_be_known(embedded_data_dir, tmp_path):
  config = runlocal(embedded_data_dir)
  with config.unlocked():
    config.on_nonfinite = "ignore"
  with pytest.raises(ValueError, match="config.on_nonfinite='ignore'; use one of"):
    train_and_evaluate(config, str(tmp_path))


def test_unwritable_workdir_fails_at_start(tmp_path, embedded_data_dir):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(PermissionError, match=f"the workdir {blocker}/run cannot be written"):
    train_and_evaluate(runlocal(embedded_data_dir), str(blocker / "run"))


def test_full_disk_fails_at_start(tmp_path, embedded_data_dir, monkeypatch):
  import shutil  # pylint: disable=g-import-not-at-top
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
  message = r"has 0.00 GiB free, but 4 more checkpoints .*keep_checkpoints=3"
  with pytest.raises(OSError, match=message):
    train_and_evaluate(runlocal(embedded_data_dir), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def _with_own_mounts() -> list[str] | None:
  """The prefix that runs a command with mounts of its own, gone when it ends: a mount
  namespace (root), or one inside a user namespace (others); None where neither works."""
  if not shutil.which("unshare"):
    return None
  for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
    if subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode == 0:
      return prefix
  return None


def test_a_disk_that_fills_mid_run_ends_in_one_line_and_the_run_resumes(tmp_path,
                                                                        embedded_data_dir):
  # A 6 MiB disk (tmpfs) passes the start check but not the checkpoints' growth (about
  # 2 MiB each, written every step). Before issue #20 this ended in a raw traceback of
  # clu's AsyncError after orbax's and TF's threads had printed one each.
  prefix = _with_own_mounts()
  if prefix is None:
    pytest.skip("making a small disk needs util-linux `unshare` with mount namespaces")
  run, logs = tmp_path / "run", tmp_path / "logs"
  run.mkdir()
  logs.mkdir()
  main = (f"{shlex.quote(sys.executable)} -m sweet_jax.main --workdir={run} "
          "--config=configs/sweet_image.py:runlocal --config.total_steps=8 "
          "--config.checkpoint_every_steps=1 --config.summary_every_steps=100")
  subprocess.run([*prefix, "bash", "-c", f"""
      mount -t tmpfs -o size=6m tmpfs {run}
      {main} > {logs}/full.log 2>&1; echo $? > {logs}/full.rc
      mount -o remount,size=64m {run}
      {main} > {logs}/resumed.log 2>&1; echo $? > {logs}/resumed.rc
      cp {run}/metrics.json {logs}/"""], cwd=REPO, env=main_env(embedded_data_dir),
                 check=True, timeout=600)
  full = (logs / "full.log").read_text()
  assert (logs / "full.rc").read_text().strip() == "1", full[-3000:]
  assert re.fullmatch(r"error: the disk is full \(no space left on device( writing \S+)?\): "
                      r"free some space or write elsewhere, then run again \(a trainer "
                      r"resumes from its last complete checkpoint\)",
                      full.strip().splitlines()[-1]), full[-3000:]
  assert "Traceback" not in full, full  # the libraries' threads' ones too
  resumed = (logs / "resumed.log").read_text()
  assert (logs / "resumed.rc").read_text().strip() == "0", resumed[-3000:]
  assert re.search(r"Resuming stage 'train' from the checkpoint of step [1-7] ", resumed)
  assert json.loads((logs / "metrics.json").read_text())["step"] == 8


@pytest.mark.parametrize("config_name,override,message", [
    ("image", {"batch_size": 12}, r"config.batch_size=12 is not divisible by the data-parallel "
     r"size 8 .*use a multiple of 8"),
    ("image", {"model.code_dim": 7}, r"code_dim=7 must be even"),
    ("image", {"model.num_heads": 3}, r"width=32 is not divisible by config.model.num_heads=3"),
    ("video", {"video_data.num_frames": 8},
     r"config.video_data.num_frames=8: a clip must have 1 \+ k\*4 frames"),
    # orbax deleted every checkpoint at keep_checkpoints=0 (and exited 0); -1 gave a raw
    # orbax error (issue #20).
    ("image", {"keep_checkpoints": 0}, r"config.keep_checkpoints must be a positive integer, "
     r"got 0: set --config.keep_checkpoints=N with N >= 1"),
    ("image", {"keep_checkpoints": -1}, r"config.keep_checkpoints must be a positive integer"),
    ("image", {"checkpoint_every_steps": 0}, r"config.checkpoint_every_steps must be a positive"),
    ("image", {"eval.every_steps": -5}, r"config.eval.every_steps must be an integer >= 0.*"
     r"\(0: never\)"),
    ("image", {"num_word_images": -1}, r"config.num_word_images must be an integer >= 0"),
    ("image", {"ema.decay": 1.0}, r"config.ema.decay=1.0 must be in \[0, 1\)"),
    ("image", {"data.max_bad_fraction": 1.5}, r"max_bad_fraction=1.5 is not a fraction"),
    ("video", {"curriculum.stages.decoder.batch_size": 4},
     r"stage 'decoder' batch_size=4 .*set config.curriculum.stages.decoder.batch_size to a "
     r"multiple of 8"),
])
def test_impossible_settings_fail_before_compiling(config_name, override, message):
  config = (sweet_image if config_name == "image" else sweet_video).get_config("runlocal")
  with config.unlocked():
    for field, value in override.items():
      *parents, leaf = field.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      node[leaf] = value
  with pytest.raises(ValueError, match=message):
    experiment.validate(config, jax.device_count())
    experiment.build(config)


class CorruptPhotos(tfds.core.GeneratorBasedBuilder):
  """A real TFDS dataset with one undecodable PNG per split (bytes that only begin like
  a PNG): 9 training and 8 evaluation images of 48x48."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(None, None, 3))}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(9), "eval": self._generate_examples(8)}

  def _generate_examples(self, n):
    rng = np.random.default_rng(n)
    for i in range(n):
      corrupt = io.BytesIO(b"\x89PNG\r\n\x1a\nthe rest is missing")
      yield i, {"image": corrupt if i == 3 else rng.integers(0, 256, (48, 48, 3), np.uint8)}


@pytest.fixture(scope="module")
def corrupt_photos_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("corrupt_tfds"))
  CorruptPhotos(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def _corrupt_photos_config(data_dir: str, max_bad_fraction: float):
  config = runlocal(data_dir)
  with config.unlocked():
    config.data.update(name="corrupt_photos", max_bad_fraction=max_bad_fraction,
                       eval_split="eval")  # (all of it: the corrupt image is in it)
    config.log_every_steps = 3
  return config


def test_corrupt_images_are_skipped_counted_and_logged(corrupt_photos_dir, tmp_path, caplog):
  caplog.set_level("INFO")
  before = pipeline.skipped_example_count()
  metrics = train_and_evaluate(_corrupt_photos_config(corrupt_photos_dir, 0.2), str(tmp_path),
                               log_all_metrics=True)
  assert metrics["step"] == 6 and np.isfinite(metrics["psnr"])
  assert metrics["skipped_examples"] - before >= 2  # (a training read and the eval one)
  assert re.search(r"Skipping element \d of corrupt_photos/1.0.0 split 'train': OSError",
                   caplog.text)
  assert "split 'eval'" in caplog.text
  assert re.search(r"train/skipped_examples=[1-9]", caplog.text)


def test_too_many_corrupt_images_stop_the_run_naming_them(corrupt_photos_dir, tmp_path):
  with pytest.raises(pipeline.BadDataError,
                     match=r"1 of the 9 examples of corrupt_photos/1.0.0 split 'train' cannot be "
                           r"used, more than max_bad_fraction=0.1 .*ids \[\d\]"):
    train_and_evaluate(_corrupt_photos_config(corrupt_photos_dir, 0.1), str(tmp_path))


class _HalfStream(np.ndarray):
  """A clip marked to be stored with its compressed stream cut in half."""


class _ClipTensor(tfds.features.Tensor):
  """zlib-compressed uint8 clips; a `_HalfStream` clip is written truncated, so reading it
  fails in zlib as a record damaged on disk would."""

  def encode_example(self, example_data):
    encoded = super().encode_example(np.asarray(example_data))
    if isinstance(example_data, _HalfStream):
      encoded = dict(encoded, value=encoded["value"][:len(encoded["value"]) // 2])
    return encoded


class CorruptClips(tfds.core.GeneratorBasedBuilder):
  """A real TFDS video dataset of 10 training and 8 evaluation clips of 12x40x40: in each
  split one record does not decompress; in the training split another holds a clip of 4
  frames, shorter than the 9 the runlocal config takes."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "video": _ClipTensor(shape=(None, None, None, 3), dtype=np.uint8,
                             encoding=tfds.features.Encoding.ZLIB)}), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(10), "eval": self._generate_examples(8)}

  def _generate_examples(self, n):
    rng = np.random.default_rng(n)
    for i in range(n):
      clip = rng.integers(0, 256, (12, 40, 40, 3), np.uint8)
      if i == 3:
        clip = clip.view(_HalfStream)
      elif i == 6 and n == 10:
        clip = clip[:4]
      yield i, {"video": clip}


@pytest.fixture(scope="module")
def corrupt_clips_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("corrupt_clips_tfds"))
  CorruptClips(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def _corrupt_clips_config(photos_dir: str, clips_dir: str, max_bad_fraction: float):
  """The video runlocal curriculum on the corrupt clips, exactly as test_curriculum.py's
  boundary test runs it (its decoder stage without perceptual and GAN terms), so that the
  three compiled steps come from the shared compilation cache: a temporal stage of its own
  would compile one more (40 s here)."""
  config = sweet_video.get_config("runlocal")
  with config.unlocked():
    config.data.data_dir = photos_dir
    config.curriculum.stages.decoder.loss.update(perceptual=0.0, adversarial=0.0)
    config.video_data.update(name="corrupt_clips", data_dir=clips_dir,
                             max_bad_fraction=max_bad_fraction)
  return config


def test_corrupt_clips_are_skipped_counted_and_logged(corrupt_clips_dir, embedded_data_dir,
                                                      tmp_path, caplog):
  config = _corrupt_clips_config(embedded_data_dir, corrupt_clips_dir, 0.25)
  caplog.set_level("INFO")
  before = pipeline.skipped_example_count()
  metrics = train_and_evaluate(config, str(tmp_path), log_all_metrics=True)
  assert metrics["step"] == 6 and np.isfinite(metrics["psnr"])
  assert metrics["skipped_examples"] - before >= 2  # (the eval one and a training read)
  assert re.search(r"Skipping element 3 of corrupt_clips/1.0.0 split 'eval': error: Error -5 "
                   r"while decompressing", caplog.text)
  assert re.search(r"split 'train': (error: Error -5|ValueError: .*4 frames)", caplog.text)
  assert re.search(r"train/skipped_examples=[1-9]", caplog.text)


def test_too_many_corrupt_clips_stop_the_run_naming_them(corrupt_clips_dir, embedded_data_dir,
                                                         tmp_path):
  config = _corrupt_clips_config(embedded_data_dir, corrupt_clips_dir, 0.1)
  with config.unlocked():  # the clean held-out clips: the spatial stage's evaluation passes
    config.video_data.eval_split = "eval[4:]"
  with pytest.raises(pipeline.BadDataError,
                     match=r"2 of the 10 examples of corrupt_clips/1.0.0 split 'train' cannot "
                           r"be used, more than max_bad_fraction=0.1 .*ids \[3, 6\]"):
    train_and_evaluate(config, str(tmp_path))
