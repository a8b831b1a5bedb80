"""One orbax CheckpointManager for the train state and the data iterator.

Both items are saved under the same step, so a restored run continues with the
same parameters, optimizer moments, step counter *and* data position. Saves are
asynchronous; the manager keeps the newest `max_to_keep` steps.
"""

import os
import shutil
import time
from typing import Any, Callable, TypeVar

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies
from orbax.checkpoint._src.serialization import jax_array_handlers

from sweet_jax import io


T = TypeVar("T")


class NoValidCheckpointError(ValueError):
  """Every checkpoint in the directory failed to restore (none was moved or deleted): most
  often a config that no longer matches the run's."""


_array_writes_set = False


def _single_host_array_writes() -> None:
  """On one host, arrays are written without orbax's replica-parallel split.

  Replica-parallel saving has each replica of a replicated array write a slice of it,
  which spreads the writes of a multi-host job over its hosts. On one host the replicas
  share one memory and one disk, and the split only costs slicing programs: XLA compiles
  them on the first save (5 s of the runlocal config's first save here, 0.4 s without;
  later saves 0.5 s against 0.1 s). Registered process-wide, as orbax's type handlers
  are; multi-host runs keep orbax's default.
  """
  global _array_writes_set
  if jax.process_count() == 1 and not _array_writes_set:
    _array_writes_set = True
    ocp.type_handlers.register_type_handler(
        jax.Array, jax_array_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class Checkpointer:
  """Saves/restores `{"state": pytree, "data": grain iterator}` in a workdir."""

  def __init__(self, directory: str, *, max_to_keep: int, save_interval_steps: int):
    _single_host_array_writes()
    self.manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            # Every `save_interval_steps`, and at the step all hosts agree on after a
            # preemption notice; not orbax's default extra save of the first step.
            save_decision_policy=policies.AnySavePolicy([
                policies.FixedIntervalPolicy(save_interval_steps),
                policies.PreemptionCheckpointingPolicy(),
            ]),
            enable_async_checkpointing=True,
            create=True,
        ),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore_newest_valid(self, restore: Callable[[int], T]) -> tuple[int, T] | None:
    """`(step, restore(step))` for the newest step whose restore succeeds; None when there
    is no checkpoint.

    A checkpoint that fails (a crash mid-write, truncated or corrupted files) is skipped
    with a warning. Once an older one restores, the failed newer ones are moved aside to
    `<directory>_unreadable/` (so the run can save those steps again; nothing is deleted).
    If none restores, nothing is moved and NoValidCheckpointError carries the newest
    failure (often a config that no longer matches the run, not corruption).
    """
    failed: list[tuple[int, Exception]] = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = restore(step)
      except Exception as e:  # pylint: disable=broad-except; any failure means "not this one"
        logging.warning("Checkpoint %d in %s cannot be restored (%s: %s); trying the "
                        "previous one", step, self.manager.directory, type(e).__name__,
                        str(e)[:500])
        failed.append((step, e))
        continue
      if failed:
        self._move_aside([s for s, _ in failed])
        logging.warning("Resumed from checkpoint %d: the newer %s could not be restored "
                        "and were moved to %s", step, [s for s, _ in failed],
                        self._aside_directory())
      return step, restored
    if failed:
      step, error = failed[0]
      raise NoValidCheckpointError(
          f"no checkpoint in {self.manager.directory} can be restored (steps "
          f"{[s for s, _ in failed]}; nothing was moved or deleted). The newest, {step}, "
          f"failed with {type(error).__name__}: {str(error)[:1000]}. If the config changed "
          "since these were written, use a new workdir") from error
    return None

  def _aside_directory(self) -> epath.Path:
    directory = epath.Path(self.manager.directory)
    return directory.parent / f"{directory.name}_unreadable"

  def _move_aside(self, steps: list[int]) -> None:
    """Renames unreadable step directories out of the manager's view (process 0 moves,
    every process waits and re-reads the directory)."""
    if jax.process_index() == 0:
      aside = self._aside_directory()
      aside.mkdir(parents=True, exist_ok=True)
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        source = epath.Path(self.manager.directory) / str(step)
        if source.exists():
          source.rename(aside / f"{step}-{stamp}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("sweet_jax:checkpoints_moved_aside")
    self.manager.reload()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` without force would write (the interval says so)."""
    return self.manager.should_save(step)

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator, *,
           force: bool = False) -> bool:
    """Saves if the interval (or `force`) says so; returns whether a save started."""
    if not (force or self.manager.should_save(step)):
      return False
    logging.info("Writing the checkpoint of step %d", step)
    return self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        ),
        force=True,  # decided above (orbax would ask should_save again)
    )

  def save_state(self, step: int, state: Any) -> None:
    """Saves the train state alone (no data position): a checkpoint made outside a
    training loop, e.g. imported weights to evaluate; training cannot resume from it."""
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                      force=True)
    self.manager.wait_until_finished()

  def check_saved_shapes(self, step: int, abstract_state: Any) -> None:
    """Raises ValueError naming the arrays whose saved shape differs from `abstract_state`'s
    (or that only one side has): a checkpoint of another model, refused from its metadata
    before any array is read (orbax's failed reads leave hundreds of tracebacks)."""
    path = epath.Path(self.manager.directory) / str(step) / "state"
    saved = _shapes(ocp.StandardCheckpointer().metadata(path).item_metadata)
    wanted = _shapes(abstract_state)
    params_first = lambda names: sorted(names, key=lambda k: (not k.startswith("params"), k))
    problems = [f"{k}: saved {saved[k]}, this config {wanted[k]}"
                for k in params_first(set(saved) & set(wanted)) if saved[k] != wanted[k]]
    problems += [f"{k}: only in the checkpoint" for k in params_first(set(saved) - set(wanted))]
    problems += [f"{k}: not in the checkpoint" for k in params_first(set(wanted) - set(saved))]
    if problems:
      more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
      raise ValueError(f"checkpoint {step} holds another model: {'; '.join(problems[:3])}{more}")

  def restore(self, step: int, abstract_state: Any, data_iterator: grain.DatasetIterator) -> Any:
    """Restores into `abstract_state` (ShapeDtypeStructs with shardings, any mesh).

    The data iterator is repositioned in place; the restored state is returned.
    """
    self.check_saved_shapes(step, abstract_state)
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        ),
    )
    return restored.state

  def restore_state(self, step: int, abstract_state: Any) -> Any:
    """Restores only the train state (readouts and evaluators need no data iterator)."""
    self.check_saved_shapes(step, abstract_state)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored.state

  def wait_until_finished(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def check_workdir_writable(workdir: str) -> None:
  """Fails at start, not at the first save hours later, when `workdir` cannot be written
  (on any filesystem: a probe file is written and removed)."""
  probe = epath.Path(workdir) / f".write_probe_{jax.process_index()}_{os.getpid()}"
  try:
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except; OSError locally, others on buckets
    raise PermissionError(f"the workdir {workdir} cannot be written ({type(e).__name__}: {e}); "
                          "choose another --workdir") from e


def check_free_space(workdir: str, checkpoint_bytes: int, keep: int) -> None:
  """Fails at start when the workdir's disk cannot hold the checkpoints still to come:
  `keep` + 1 (orbax writes the next one before deleting the oldest) of `checkpoint_bytes`
  each, less those already there. (Object stores have no such limit: not checked.)"""
  if not io.is_local(workdir):
    return
  missing = max(keep + 1 - len(saved_steps(workdir)), 1)
  free = shutil.disk_usage(workdir).free
  need = missing * checkpoint_bytes
  if free < need:
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    raise OSError(f"the workdir {workdir} has {gib(free)} free, but {missing} more checkpoints "
                  f"of {gib(checkpoint_bytes)} need {gib(need)} (config.keep_checkpoints={keep}); "
                  "free some space, choose another --workdir, or keep fewer checkpoints")


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'params/encoder/kernel' -> shape, for a state, its abstract form or orbax's metadata."""
  def name(path) -> str:
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]
    return "/".join(str(k) for k in keys)
  return {name(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings: restore lands already sharded."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def saved_steps(workdir: str) -> list[int]:
  """The steps with a checkpoint directory in `workdir`/checkpoints (finished or not)."""
  directory = epath.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def existing_checkpoints(workdir: str, purpose: str = "") -> epath.Path:
  """`workdir`/checkpoints, or FileNotFoundError when there is none (readers check first,
  so that a misspelt workdir is reported, not created)."""
  directory = epath.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoint in {directory}{purpose}")
  return directory


def restore_run_state(workdir: str, target: Any, step: int | None = None, *,
                      purpose: str = "") -> tuple[Any, int]:
  """(train state, step) of `workdir`'s checkpoint (latest, or `step`), restored into
  `target` (ShapeDtypeStructs with shardings) without a data iterator: for readouts and
  evaluation. `purpose` ends the error message when there is no checkpoint (e.g. " to
  evaluate"). Reads only: a workdir without checkpoints is an error, not created."""
  # (orbax reads a relative local path's metadata wrongly: made absolute, as the trainer's)
  directory = existing_checkpoints(io.absolute(workdir), purpose)
  checkpointer = Checkpointer(str(directory), max_to_keep=1, save_interval_steps=1)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints{purpose}")
    return checkpointer.restore_state(step, target), step
  finally:
    checkpointer.close()
