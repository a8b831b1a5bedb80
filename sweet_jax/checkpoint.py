"""One orbax CheckpointManager for the train state and the data iterator.

Both items are saved under the same step, so a restored run continues with the
same parameters, optimizer moments, step counter *and* data position. Saves are
asynchronous; the manager keeps the newest `max_to_keep` steps.
"""

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import linen as nn


class Checkpointer:
  """Saves/restores `{"state": pytree, "data": grain iterator}` in a workdir."""

  def __init__(self, directory: str, *, max_to_keep: int, save_interval_steps: int):
    self.manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=True,
            create=True,
        ),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator, *,
           force: bool = False) -> bool:
    """Saves if the interval (or `force`) says so; returns whether a save started."""
    return self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        ),
        force=force,
    )

  def save_state(self, step: int, state: Any) -> None:
    """Saves the train state alone (no data position): a checkpoint made outside a
    training loop, e.g. imported weights to evaluate; training cannot resume from it."""
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                      force=True)
    self.manager.wait_until_finished()

  def restore(self, step: int, abstract_state: Any, data_iterator: grain.DatasetIterator) -> Any:
    """Restores into `abstract_state` (ShapeDtypeStructs with shardings, any mesh).

    The data iterator is repositioned in place; the restored state is returned.
    """
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
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored.state

  def wait_until_finished(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings: restore lands already sharded."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def restore_run_state(workdir: str, components: Any, step: int | None = None, *,
                      purpose: str = "") -> tuple[Any, int]:
  """(train state, step) of `workdir`'s checkpoint (latest, or `step`), restored onto
  `components`' mesh without a data iterator: for readouts and evaluation. `purpose`
  ends the error message when there is no checkpoint (e.g. " to evaluate")."""
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1,
                              save_interval_steps=1)
  step = checkpointer.latest_step() if step is None else step
  if step is None:
    checkpointer.close()
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints{purpose}")
  with jax.set_mesh(components.mesh), nn.logical_axis_rules(components.rules):
    state = checkpointer.restore_state(step, components.restore_target())
  checkpointer.close()
  return state, step
