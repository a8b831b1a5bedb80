"""One owner per run directory: a trainer holds `workdir/run.lock` from before it writes
anything until it ends, and a second trainer on the same directory is refused, naming the
owner (host, pid, start time).

- Local disks: an exclusive `flock` on the file. The kernel releases it when its owner
  dies (even by SIGKILL), so a dead owner's lock is taken over with no waiting.
- gs:// buckets: the lock is an object created only if absent (a generation
  precondition), refreshed by its owner every `heartbeat_s` under the same kind of
  precondition. It is stale, and taken over (again under a precondition, so only one
  taker wins), when its owner's process is gone from this host or its heartbeat is
  older than `stale_after_s`. An owner whose lock was taken over finds out at its next
  heartbeat and `check()` raises.
- Other filesystems have no atomic create: the run goes on unlocked, with a warning.

Multi-host jobs: process 0 takes the lock for all of them (`acquire_for_job`).
"""

import dataclasses
import fcntl
import json
import os
import socket
import threading
import time
from typing import Any

from absl import logging
from etils import epath

from sweet_jax import io

LOCK = "run.lock"


class RunLockedError(OSError):
  """The run directory belongs to another live trainer."""


@dataclasses.dataclass(frozen=True)
class Owner:
  host: str
  pid: int
  started: float  # time.time()
  heartbeat: float

  @classmethod
  def me(cls, started: float) -> "Owner":
    return cls(socket.gethostname(), os.getpid(), started, time.time())

  @classmethod
  def parse(cls, text: str) -> "Owner | None":
    try:
      return cls(**json.loads(text))
    except (ValueError, TypeError):
      return None

  def describe(self) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
    return f"process {self.pid} on host {self.host}, started {when}"

  def alive_here(self) -> bool | None:
    """Whether the owner's process runs; None when it is on another host."""
    if self.host != socket.gethostname():
      return None
    try:
      os.kill(self.pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      return True
    return True


def _refusal(workdir: str, owner: "Owner | None", where: str) -> RunLockedError:
  who = owner.describe() if owner else "another trainer"
  return RunLockedError(
      f"the run in {workdir} is in use by {who} (lock: {where}): wait for it to end or stop "
      "it, or train in another --workdir")


class RunLock:
  """Use as a context manager around everything a trainer does in `workdir`."""

  def __init__(self, workdir: str, *, heartbeat_s: float = 60.0, stale_after_s: float = 600.0):
    self.workdir = workdir
    self.path = epath.Path(workdir) / LOCK
    self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
    self._started = time.time()
    self._fd: int | None = None
    self._blob: Any = None
    self._generation: int | None = None
    self._stop = threading.Event()
    self._lost = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    if io.is_local(self.workdir):
      self._acquire_local()
    elif str(self.workdir).startswith("gs://"):
      self._acquire_gcs()
    else:
      logging.warning("%s: no lock on this filesystem; make sure no other trainer uses it",
                      self.workdir)

  def check(self) -> None:
    """Raises if another trainer took the lock over (a heartbeat went missing too long)."""
    if self._lost.is_set():
      raise _refusal(self.workdir, Owner.parse(self._read_gcs()[0] or ""), str(self.path))

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None
    if self._blob is not None and not self._lost.is_set():
      try:
        self._blob.delete(if_generation_match=self._generation)
      except Exception as e:  # pylint: disable=broad-except; taken over since: not ours
        logging.warning("Could not remove the lock %s: %s", self.path, e)
      self._blob = None

  # Local disks: flock.

  def _acquire_local(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = Owner.parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
      os.close(fd)
      raise _refusal(self.workdir, owner, str(self.path)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(dataclasses.asdict(Owner.me(self._started))).encode(), 0)
    self._fd = fd

  # gs:// buckets: an object under generation preconditions.

  def _gcs_blob(self) -> Any:
    from google.cloud import storage  # pylint: disable=g-import-not-at-top
    bucket, _, name = str(self.path).removeprefix("gs://").partition("/")
    return storage.Client().bucket(bucket).blob(name)

  def _read_gcs(self) -> tuple[str | None, int | None]:
    from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
    blob = self._gcs_blob()
    try:
      text = blob.download_as_text()
    except exceptions.NotFound:
      return None, None
    return text, blob.generation

  def _write_gcs(self, if_generation_match: int) -> bool:
    """Writes this owner under the precondition; False when it failed (another writer)."""
    from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
    blob = self._gcs_blob()
    try:
      blob.upload_from_string(json.dumps(dataclasses.asdict(Owner.me(self._started))),
                              if_generation_match=if_generation_match)
    except exceptions.PreconditionFailed:
      return False
    self._blob, self._generation = blob, blob.generation
    return True

  def _acquire_gcs(self) -> None:
    if not self._write_gcs(if_generation_match=0):
      text, generation = self._read_gcs()
      owner = Owner.parse(text or "")
      if text is None:  # released in between
        acquired = self._write_gcs(if_generation_match=0)
      elif owner is None or owner.alive_here() is False or (
          time.time() - owner.heartbeat > self.stale_after_s):
        logging.warning("Taking over the stale lock %s of %s", self.path,
                        owner.describe() if owner else "an unreadable owner")
        acquired = self._write_gcs(if_generation_match=generation)
      else:
        acquired = False
      if not acquired:
        raise _refusal(self.workdir, owner, str(self.path))
    self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="run-lock")
    self._thread.start()

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        if not self._write_gcs(if_generation_match=self._generation):
          logging.error("The lock %s was taken over by another trainer", self.path)
          self._lost.set()
          return
      except Exception as e:  # pylint: disable=broad-except; retried at the next beat
        logging.warning("Could not refresh the lock %s: %s", self.path, e)


def acquire_for_job(workdir: str) -> RunLock:
  """The lock of a (possibly multi-host) job: process 0 takes it; every process fails when
  it could not. Release it with `.release()` (a no-op on the other processes)."""
  import jax  # pylint: disable=g-import-not-at-top
  lock = RunLock(workdir)
  if jax.process_count() == 1:
    lock.acquire()
    return lock
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except RunLockedError as e:
      error = e
  ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
  if error is not None:
    raise error
  if not ok:
    raise RunLockedError(f"the run in {workdir} is in use by another trainer (process 0 "
                         "could not take its lock; see its log)")
  return lock
