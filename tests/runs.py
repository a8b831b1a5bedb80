"""Run directories for tests that load a trained tokenizer without training one."""

import jax
from etils import epath

from sweet_jax import experiment, io
from sweet_jax.checkpoint import Checkpointer


def make_run(config, workdir: str, step: int = 3) -> str:
  """A run directory as the trainer leaves it (config.json, codebook copy, checkpoint),
  holding a freshly initialised state whose EMA differs from its weights."""
  e = experiment.build(config, workdir=workdir, frozen_networks=False)
  state = e.init_state()
  state = state.replace(ema_params=jax.tree.map(lambda x: 0.5 * x, state.ema_params))
  checkpointer = Checkpointer(str(epath.Path(workdir) / "checkpoints"), max_to_keep=1,
                              save_interval_steps=1)
  checkpointer.save_state(step, state)
  checkpointer.close()
  io.write_text(epath.Path(workdir) / "config.json", config.to_json_best_effort(indent=2))
  return workdir
