"""The training loop: create or restore sharded state, run jitted steps, log, save, evaluate.

`train_and_evaluate(config, workdir)` is the whole job. It resumes by itself whenever
`workdir` (a local directory or a bucket, gs://...) holds a checkpoint (train state +
data iterator position). Everything it runs comes from `experiment.build`; evaluations
are `ReconstructionEvaluator`s for a tokenizer and a `GenerationEvaluator` for a
generator on tokens, and every file they leave is written by `evaluate.artifacts`.
"""

import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath

from sweet_jax import (curriculum, experiment, io, nonfinite, parallel, preemption, progress,
                       run_lock, run_record)
from sweet_jax.checkpoint import (Checkpointer, check_free_space, check_workdir_writable,
                                  saved_steps)
from sweet_jax.data import pipeline, streams
from sweet_jax.evaluate import artifacts
from sweet_jax.evaluate.evaluator import ReconstructionEvaluator, default_cache_dir
from sweet_jax.evaluate.generation import GenerationEvaluator


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
  """Means over fetched per-step metrics (none when every step was discarded)."""
  if not history:
    return {}
  return {k: float(np.mean([m[k] for m in history])) for k in history[0]}


def _preempted_at_start(workdir: str, phase: str) -> dict[str, Any]:
  logging.warning("Preempted (SIGTERM) while %s: stopped before training; %s is as it was",
                  phase, workdir)
  return {"step": None, "preempted": True, "train_seconds": 0.0}


def _metric_writer(workdir: str, is_chief: bool, log_all_metrics: bool
                   ) -> metric_writers.MetricWriter:
  """TensorBoard (the chief's), and every metric in the log when `log_all_metrics`
  (otherwise the log gets the compact progress line)."""
  writers = [metric_writers.LoggingWriter()] if log_all_metrics else []
  if is_chief:
    writers.append(metric_writers.SummaryWriter(workdir))
  return metric_writers.AsyncMultiWriter(writers)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: int | None = None,
                       allow_config_change: bool = False,
                       log_all_metrics: bool = False) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if possible); returns the final eval metrics.

  With a curriculum, the held-out metrics after each stage are kept under "stages"
  (keyed by stage name). `stop_at_step` ends this invocation early (with a checkpoint)
  without changing the schedules, which stay defined by the full run: a time-boxed
  job, or a test of resumption. A resumed run's config must match the run's record
  (`run_record.CHANGEABLE` aside) unless `allow_config_change`. The log shows a compact
  progress line, or every metric with `log_all_metrics`.
  """
  experiment.validate(config, jax.device_count())
  workdir = io.absolute(workdir)  # orbax needs absolute local paths
  check_workdir_writable(workdir)
  lock = run_lock.acquire_for_job(workdir)  # before anything is written
  try:
    return _train_and_evaluate(config, workdir, stop_at_step, allow_config_change, lock,
                               log_all_metrics)
  finally:
    lock.release()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        stop_at_step: int | None, allow_config_change: bool,
                        lock: run_lock.RunLock, log_all_metrics: bool) -> dict[str, Any]:
  """`train_and_evaluate` once the run directory is this job's."""
  is_chief = jax.process_index() == 0
  if saved_steps(workdir):
    run_record.check_resume(workdir, config, allow_change=allow_config_change)
  e = experiment.build(config, workdir=workdir)
  if preemption.requested_by_any_process():  # (several processes: before they joined)
    return _preempted_at_start(workdir, "building the run")
  # (From here on a multi-host job stops only at a step that every process agrees on.)
  single = jax.process_count() == 1
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(e.restore_target()))
  check_free_space(workdir, state_bytes, keep=config.keep_checkpoints)
  stages = e.stages
  has_curriculum = "curriculum" in config
  logging.info("Curriculum: %s", curriculum.summary(stages))

  hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
  if e.kind == "generator":  # samples, decoded by the token dataset's tokenizer
    held_out = summaries = GenerationEvaluator(e, reference_cache=default_cache_dir(config))
    split_eval = None
    shown_model = held_out.shown_model
  else:
    held_out = ReconstructionEvaluator(e)  # final and end-of-stage: config's eval data
    summaries = (ReconstructionEvaluator(e, split=config.summary_eval_split)
                 if config.get("summary_eval_split") else held_out)
    split_eval = (ReconstructionEvaluator(e, dataset=config.eval.dataset,
                                          split=config.eval.split,
                                          reference_cache=default_cache_dir(config))
                  if config.eval.every_steps else None)
    shown_model = e.model
  writer = _metric_writer(workdir, is_chief, log_all_metrics)
  to_global = lambda b: parallel.to_global(b, e.batch_sharding)

  with parallel.run_context(e.mesh, e.rules):
    checkpointer = Checkpointer(str(epath.Path(workdir) / "checkpoints"),
                                max_to_keep=config.keep_checkpoints,
                                save_interval_steps=config.checkpoint_every_steps)

    def restore(step: int) -> tuple[Any, Any, int | None]:
      """(state, train iterator, its stage index) from the checkpoint of `step`."""
      index = curriculum.stage_index(stages, step)
      if step > stages[index].start:  # inside a stage: continue its data stream
        logging.info("Resuming stage %r from the checkpoint of step %d in %s",
                     stages[index].name, step, workdir)
        train_iter = streams.train_iterator(config, stages[index], index, hosts)
        return checkpointer.restore(step, e.restore_target(), train_iter), train_iter, index
      # exactly at a stage boundary: the next stage starts a fresh stream
      logging.info("Resuming at the start of stage %r (step %d) in %s",
                   stages[index].name, step, workdir)
      return checkpointer.restore_state(step, e.restore_target()), None, None

    try:
      restored = checkpointer.restore_newest_valid(restore)
    except Exception:
      checkpointer.close()
      raise
    if restored is None:
      logging.info("Starting from scratch in %s", workdir)
      state, train_iter, iter_stage = e.init_state(), None, None
    else:
      _, (state, train_iter, iter_stage) = restored
    if single and preemption.requested():
      checkpointer.close()
      return _preempted_at_start(workdir, "restoring" if restored else "initializing")
    if is_chief:  # the record changes only once the run has restored (or starts afresh)
      run_record.write(workdir, config, step=int(state.step))

    num_parameters = e.num_parameters
    logging.info("Parameters: %d", num_parameters)

    def summarize(step: int, prefix: str, evaluator: Any = held_out) -> Any:
      """The held-out evaluation of the current (EMA) weights, logged under `prefix`."""
      result = evaluator.run(state.eval_params, step)
      artifacts.log_summary(writer, result, prefix, shown_model, config.num_word_images)
      return result

    stage_results = artifacts.read_stage_metrics(workdir)
    last_result = None

    def end_of_stage(stage: curriculum.Stage, step: int) -> None:
      nonlocal last_result
      last_result = summarize(step, f"stage_{stage.name}")
      stage_results[stage.name] = dict(last_result.metrics, step=step)
      if is_chief:
        artifacts.write_stage_metrics(workdir, stage_results)
        if e.modality == "video":
          artifacts.write_stage_video(workdir, stage.name, last_result)
      logging.info("Stage %r done at step %d: %s", stage.name, step,
                   {k: v for k, v in last_result.metrics.items() if isinstance(v, float)})

    step = int(state.step)
    total = curriculum.total_steps(stages)
    last_step = total if stop_at_step is None else min(stop_at_step, total)
    if has_curriculum:  # a stage that ended just before an interruption still gets scored
      for stage in stages:
        if stage.end == step and stage.name not in stage_results:
          end_of_stage(stage, step)
    tracker = progress.TrainingProgress(total)
    history: list[dict[str, Any]] = []  # device metrics of the steps not yet fetched
    finite_history: list[dict[str, Any]] = []  # fetched, finite, not yet logged
    guard = nonfinite.NonFiniteGuard(config.on_nonfinite, config.max_consecutive_nonfinite)
    train_start = time.time()
    preempted = False
    with preemption.PreemptionWatch(checkpointer.manager) as watch:
      while step < last_step:
        lock.check()  # still this job's run directory (a flag the lock's heartbeat sets)
        index = curriculum.stage_index(stages, step)
        stage = stages[index]
        if iter_stage != index:
          logging.info("Stage %r: steps [%d, %d), %s data", stage.name, stage.start, stage.end,
                       stage.data)
          train_iter, iter_stage = streams.train_iterator(config, stage, index, hosts), index
          tracker.restart()  # (this stage's step compiles now: timed from after it)
        batch = to_global(next(train_iter))
        state, metrics = e.stage_steps[stage.name](state, batch)
        step += 1
        history.append(metrics)
        if not tracker.started:  # timing begins once the compiling step has run
          jax.block_until_ready(metrics)
          tracker.mark(step)
        preempted = watch.reached(step)
        saving = preempted or step in (last_step, stage.end) or checkpointer.should_save(step)
        log_now = step % config.log_every_steps == 0 or step == stage.end
        if log_now or saving:
          # Before anything is logged or saved: the flags of the steps since the last look.
          try:
            finite_history += guard.observe(step - len(history), jax.device_get(history),
                                            where=f" (stage {stage.name!r})")
          except nonfinite.NonFiniteStepError:
            checkpointer.close()  # after the earlier, valid saves complete
            writer.flush()
            raise
          history = []
          tracker.mark(step)
        if log_now:
          scalars = _mean_metrics(finite_history)
          finite_history = []
          scalars["nonfinite_steps"] = guard.total
          scalars["skipped_examples"] = pipeline.skipped_example_count()
          rate = tracker.steps_per_second()
          if rate is not None:
            scalars["steps_per_sec"] = rate
          writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
          logging.info("%s", tracker.line(step, scalars))
        if preempted:  # no evaluations: the scheduler's grace period is short
          checkpointer.save(step, state, train_iter, force=True)
          break
        with tracker.paused():  # (evaluations and saves are not training time)
          if step % config.summary_every_steps == 0 and step != stage.end:
            summarize(step, "eval", summaries)
          if split_eval is not None and step % config.eval.every_steps == 0:
            artifacts.record_split_evaluation(writer, workdir,
                                              split_eval.run(state.eval_params, step), is_chief)
          if has_curriculum and step == stage.end:
            end_of_stage(stage, step)
          if saving:
            checkpointer.save(step, state, train_iter, force=True)
    train_seconds = time.time() - train_start

    checkpointer.wait_until_finished()
    if preempted:
      writer.flush()
      checkpointer.close()
      logging.warning("Preempted: stopped at step %d with its checkpoint written", step)
      return {"step": step, "preempted": True, "train_seconds": round(train_seconds, 1)}
    final = last_result if last_result is not None and step == total else summarize(step, "final")
  baselines_picture = None
  if e.kind == "generator" and config.eval.baselines:
    baselines, baselines_picture = held_out.baselines(samples=held_out.shown_samples)
    final.metrics.update(baselines)
  eval_metrics = dict(final.metrics, step=step, parameters=num_parameters,
                      train_seconds=round(train_seconds, 1),
                      nonfinite_steps=guard.total,
                      skipped_examples=pipeline.skipped_example_count())
  if has_curriculum:
    eval_metrics["stages"] = stage_results
  writer.flush()
  if is_chief:
    paths = artifacts.write_run_outputs(workdir, eval_metrics, final, shown_model,
                                        picture_name="samples" if e.kind == "generator"
                                        else "recon")
    if baselines_picture is not None:
      paths.append(artifacts.write_baselines_picture(workdir, baselines_picture))
    logging.debug("Wrote %s", ", ".join(str(p) for p in paths))  # (the summary lists them)
  checkpointer.close()
  return eval_metrics
