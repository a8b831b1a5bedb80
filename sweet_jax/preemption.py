"""Preemption: SIGTERM (what TPU and GPU schedulers send before taking the machines) makes
the trainer finish its current step, checkpoint that step, flush, and exit with status 0.

One process: our SIGTERM handler sets a flag that the loop reads after every step. The
entry point installs it first thing (`install`), so a SIGTERM during start-up (imports,
build, restore, the first compile) is kept too: the trainer stops at its next look, with
nothing half-written. Several processes: jax.distributed's preemption service (which
listens for SIGTERM in every process, from its start) agrees on one step at which all of
them stop; orbax exposes it as `CheckpointManager.reached_preemption(step)`, which every
process asks at every step. A SIGTERM that came before the service (to any process) stops
them all once the run is built (`requested_by_any_process`).
"""

import signal
import threading

from absl import logging

_requested = threading.Event()  # SIGTERM received (by the handler `install` put in place)
_installed = False


def _on_sigterm(signum, frame) -> None:
  del signum, frame
  _requested.set()


def install() -> None:
  """From now on SIGTERM asks the run to stop (see `requested`) instead of killing it.
  Call it from the main thread, before anything slow."""
  global _installed
  signal.signal(signal.SIGTERM, _on_sigterm)
  _installed = True


def requested() -> bool:
  """Whether SIGTERM arrived since `install` (or while a `PreemptionWatch` was open)."""
  return _requested.is_set()


def requested_by_any_process() -> bool:
  """Whether SIGTERM reached any process of the job since `install`. With several
  processes, that is during their start-up, before jax.distributed.initialize: from then
  on its preemption service takes SIGTERM over, and `PreemptionWatch` asks it at every
  step. A collective then: every process calls it at the same point."""
  import jax  # pylint: disable=g-import-not-at-top  (as in PreemptionWatch)
  if jax.process_count() == 1:
    return requested()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(requested()))))


class PreemptionWatch:
  """`reached(step)`: whether to checkpoint at `step` and stop. Use as a context manager
  (the previous SIGTERM handler is restored on exit)."""

  def __init__(self, checkpoint_manager):
    import jax  # pylint: disable=g-import-not-at-top  (this module is imported first thing)
    self._manager = checkpoint_manager
    self._multi_host = jax.process_count() > 1
    self._previous = None

  def __enter__(self) -> "PreemptionWatch":
    # (jax.distributed's service owns SIGTERM on multi-host runs; signal handlers can only
    # be installed from the main thread.)
    if (not self._multi_host and not _installed
        and threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, _on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def reached(self, step: int) -> bool:
    if self._multi_host:
      reached = self._manager.reached_preemption(step)
    else:
      reached = _requested.is_set()
    if reached:
      logging.warning("Preemption notice (SIGTERM): checkpointing step %d and stopping", step)
    return reached
