"""Evaluating a saved run: restore a checkpoint and score it with the run's evaluator
(what `python -m sweet_jax.evaluate` does)."""

from typing import Any

import jax
import ml_collections
from clu import metric_writers

from sweet_jax import experiment, io
from sweet_jax.checkpoint import existing_checkpoints
from sweet_jax.evaluate import artifacts
from sweet_jax.evaluate.evaluator import ReconstructionEvaluator, default_cache_dir


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        dataset: str | None = None, split: str | None = None,
                        step: int | None = None) -> dict[str, Any]:
  """Restores `workdir`'s checkpoint (latest, or `step`) and evaluates its EMA weights (or
  its weights when the run keeps no EMA) on `dataset`:`split` (default: the config's
  eval data); writes `eval_<step>.json` and TensorBoard scalars; returns the record."""
  experiment.validate(config, jax.device_count())
  workdir = io.absolute(workdir)
  existing_checkpoints(workdir, " to evaluate")  # before build writes the codebook copy
  e = experiment.build(config, workdir=workdir)
  state, step = e.restore(workdir, step, purpose=" to evaluate")
  evaluator = ReconstructionEvaluator(e, dataset=dataset, split=split,
                                      reference_cache=default_cache_dir(config))
  result = evaluator.run(state.eval_params, step)
  weights = "ema" if state.ema_params is not None else "raw"
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  artifacts.record_split_evaluation(writer, workdir, result, jax.process_index() == 0)
  writer.flush()
  return dict(result.record(), weights=weights)
