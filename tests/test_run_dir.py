"""A run directory nobody can corrupt (issue #20): one trainer per directory (a lock, local
and gs://), a config record that changes only with a healthy (re)start and refuses a
resume with another config, and one readable line for every error of the tools."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import fake_gcs
from configs import sweet_image
from sweet_jax import cli, run_lock, run_record
from sweet_jax.checkpoint import NoValidCheckpointError
from sweet_jax.train import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "sweet-jax-locks"


def test_a_second_owner_is_refused_naming_the_first_and_gets_it_once_released(tmp_path):
  workdir = str(tmp_path / "run")
  with run_lock.RunLock(workdir):
    with pytest.raises(run_lock.RunLockedError,
                       match=rf"in use by process {os.getpid()} on host {socket.gethostname()}"
                       r", started .*: wait for it to end or stop it, or train in another"):
      run_lock.RunLock(workdir).acquire()
  with run_lock.RunLock(workdir):  # released: free again
    pass


def test_the_lock_of_a_killed_owner_is_taken_over(tmp_path):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from sweet_jax import run_lock; "
       f"run_lock.RunLock({workdir!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(run_lock.RunLockedError, match=f"process {holder.pid} "):
      run_lock.RunLock(workdir).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with run_lock.RunLock(workdir):  # the kernel released the dead owner's flock
    pass


@pytest.fixture
def gcs(monkeypatch):
  server = fake_gcs.FakeGcsServer(buckets=[BUCKET]).start()
  for key, value in server.client_env().items():
    monkeypatch.setenv(key, value)
  yield server
  server.stop()


def _plant_lock(server, run: str, **owner) -> None:
  """A lock object as another trainer would have left it."""
  fields = dict(host=socket.gethostname(), pid=os.getpid(), started=time.time(),
                heartbeat=time.time())
  fields.update(owner)
  with server.store.lock:
    gen = server.store.next_gen()
    server.store.buckets[BUCKET][f"{run}/run.lock"] = fake_gcs._Obj(  # pylint: disable=protected-access
        json.dumps(fields).encode(), gen, "application/json", {})


def test_bucket_lock_refuses_a_live_owner_and_takes_over_a_stale_one(gcs):
  workdir = f"gs://{BUCKET}/runs/a"
  lock = run_lock.RunLock(workdir, heartbeat_s=0.05)
  lock.acquire()
  with pytest.raises(run_lock.RunLockedError, match=f"in use by process {os.getpid()} "):
    run_lock.RunLock(workdir).acquire()
  lock.release()
  with gcs.store.lock:
    assert "runs/a/run.lock" not in gcs.store.buckets[BUCKET]

  # Another host, heartbeat fresh: refused. Heartbeat older than stale_after_s: taken over.
  _plant_lock(gcs, "runs/b", host="elsewhere", pid=1)
  with pytest.raises(run_lock.RunLockedError, match="process 1 on host elsewhere"):
    run_lock.RunLock(f"gs://{BUCKET}/runs/b").acquire()
  _plant_lock(gcs, "runs/c", host="elsewhere", pid=1, heartbeat=time.time() - 3600)
  with run_lock.RunLock(f"gs://{BUCKET}/runs/c", stale_after_s=600):
    pass
  # This host, its process gone: taken over at once.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _plant_lock(gcs, "runs/d", pid=dead.pid)
  with run_lock.RunLock(f"gs://{BUCKET}/runs/d"):
    pass


def test_an_owner_whose_bucket_lock_was_taken_over_stops_at_its_next_check(gcs):
  workdir = f"gs://{BUCKET}/runs/e"
  lock = run_lock.RunLock(workdir, heartbeat_s=0.05)
  lock.acquire()
  _plant_lock(gcs, "runs/e", host="elsewhere", pid=7)  # a new generation: not the owner's
  deadline = time.time() + 10
  while not lock._lost.is_set() and time.time() < deadline:  # pylint: disable=protected-access
    time.sleep(0.05)
  with pytest.raises(run_lock.RunLockedError, match="process 7 on host elsewhere"):
    lock.check()
  lock.release()  # leaves the new owner's lock alone
  with gcs.store.lock:
    assert b'"pid": 7' in gcs.store.buckets[BUCKET]["runs/e/run.lock"].data


def runlocal(data_dir, **overrides):
  config = sweet_image.get_config("runlocal")
  with config.unlocked():
    config.data.data_dir = data_dir
    config.data.eval_split = "eval[:8]"
    config.eval_batch_size = 8
    for field, value in overrides.items():
      *groups, name = field.split(".")
      (config[groups[0]] if groups else config)[name] = value
  return config


def test_a_trainer_is_refused_on_a_locked_run_before_writing_anything(tmp_path,
                                                                     embedded_data_dir):
  workdir = str(tmp_path / "run")
  with run_lock.RunLock(workdir):
    with pytest.raises(run_lock.RunLockedError, match="in use by process"):
      train_and_evaluate(runlocal(embedded_data_dir), workdir)
  assert os.listdir(workdir) == ["run.lock"]


@pytest.mark.expensive
def test_the_record_refuses_another_config_and_survives_a_failed_start(
    tmp_path, embedded_data_dir, capfd):
  workdir = str(tmp_path / "run")
  assert train_and_evaluate(runlocal(embedded_data_dir), workdir, stop_at_step=2)["step"] == 2
  record = (tmp_path / "run" / "config.json").read_bytes()

  # Same shapes, another seed and learning rate: refused, naming both, before any build.
  with pytest.raises(ValueError, match=r"differs from the one the run in .* was started with "
                     r"\(config.json\) in optim.lr \(.* -> 0.5\), seed \(0 -> 7\): resume with "
                     r"the run's config, .*or pass --allow_config_change"):
    train_and_evaluate(runlocal(embedded_data_dir, seed=7, **{"optim.lr": 0.5}), workdir)
  # Another width, the change allowed: no checkpoint fits it. The start fails from the
  # checkpoints' metadata (no array read, none of orbax's closed-event-loop tracebacks)
  # and the record stays as it was.
  capfd.readouterr()
  with pytest.raises(NoValidCheckpointError, match=r"checkpoint 2 holds another model: "
                     r"params/.*: saved \(.*32.*\), this config \(.*48.*\)"):
    train_and_evaluate(runlocal(embedded_data_dir, **{"model.width": 48}), workdir,
                       allow_config_change=True)
  assert "Event loop is closed" not in capfd.readouterr().err
  assert (tmp_path / "run" / "config.json").read_bytes() == record
  # What a restart may change (how long, how often, where): through, recorded, the old
  # record kept beside it.
  resumed = train_and_evaluate(runlocal(embedded_data_dir, log_every_steps=1,
                                        **{"eval.every_steps": 0}), workdir, stop_at_step=2)
  assert resumed["step"] == 2
  assert json.loads((tmp_path / "run" / "config.json").read_text())["log_every_steps"] == 1
  kept = [p for p in os.listdir(workdir) if p.startswith("config_before_step_2_")]
  assert len(kept) == 1 and (tmp_path / "run" / kept[0]).read_bytes() == record


def test_changeable_fields_are_lengths_intervals_and_paths():
  assert all(run_record.is_changeable(f) for f in (
      "total_steps", "checkpoint_every_steps", "eval.every_steps", "data.data_dir",
      "video_data.data_dir", "keep_checkpoints"))
  assert not any(run_record.is_changeable(f) for f in (
      "seed", "model.width", "optim.lr", "data.name", "curriculum.stages.spatial.steps",
      "codebook.num_words"))


def _tool(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                        text=True, check=False, timeout=300)


def test_the_trainer_ends_a_bad_setting_with_one_line(tmp_path):
  workdir = tmp_path / "run"
  proc = _tool("sweet_jax.main", "--config=configs/sweet_image.py:runlocal",
               f"--workdir={workdir}", "--config.keep_checkpoints=0")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: config.keep_checkpoints must be a positive integer, got 0: set "
      "--config.keep_checkpoints=N with N >= 1")
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()  # validated before anything was written


def test_an_internal_error_is_one_line_with_its_traceback_in_a_file():
  def broken():
    raise KeyError("a bug")
  try:
    broken()
  except KeyError as e:
    line = cli.one_line_report(e)
  assert line.startswith("KeyError: 'a bug' (an internal error; its traceback is in ")
  path = line.split("its traceback is in ")[1].split(",")[0]
  with open(path) as f:
    assert "in broken" in f.read()
  os.remove(path)
  assert cli.one_line_report(ValueError("bad\n  value")) == "bad value"


def test_the_line_names_the_cause_a_library_wrapped():
  class AsyncError(Exception):  # as clu's writer thread re-raises what it hit
    pass
  try:
    try:
      raise PermissionError(13, "Permission denied: /runs/a/events")
    except PermissionError as e:
      raise AsyncError("Consider re-running the code without AsyncWriter") from e
  except AsyncError as e:
    assert cli.one_line_report(e) == "[Errno 13] Permission denied: /runs/a/events"
  full = OSError(errno.ENOSPC, "No space left on device", "/runs/a/checkpoints/4/x")
  assert cli.one_line_report(full).startswith(
      "the disk is full (no space left on device writing /runs/a/checkpoints/4/x): free some "
      "space or write elsewhere")
  # A bug met while handling a user's error is reported as the bug.
  try:
    try:
      raise ValueError("bad value")
    except ValueError:
      raise KeyError("a bug")  # pylint: disable=raise-missing-from
  except KeyError as e:
    line = cli.one_line_report(e)
  assert line.startswith("KeyError: 'a bug' (an internal error")
  os.remove(line.split("its traceback is in ")[1].split(",")[0])
