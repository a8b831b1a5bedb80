"""The training loop: create or restore sharded state, run jitted steps, log, save, evaluate.

`train_and_evaluate(config, workdir)` is the whole job. It resumes by itself
whenever `workdir` holds a checkpoint (train state + data iterator position).
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
import ml_collections

from sweet_jax import optim, parallel
from sweet_jax.checkpoint import Checkpointer, abstract_with_shardings
from sweet_jax.data import pipeline
from sweet_jax.evaluate.images import save_png
from sweet_jax.evaluate.reconstruction import ReconstructionResult, evaluate_reconstruction
from sweet_jax.models import build_model
from sweet_jax.step import TrainState, make_eval_step, make_init_fn, make_train_step
from sweet_jax.words import has_words, words_markdown


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Fails before anything compiles, naming the setting that is impossible."""
  image_size, patch = config.model.image_size, config.model.patch_size
  if image_size % patch:
    raise ValueError(f"config.model.patch_size={patch} does not divide "
                     f"config.model.image_size={image_size}")
  if config.data.image_size != image_size:
    raise ValueError(f"config.data.image_size={config.data.image_size} differs from "
                     f"config.model.image_size={image_size}")
  if config.model.width % config.model.num_heads:
    raise ValueError(f"config.model.width={config.model.width} is not divisible by "
                     f"config.model.num_heads={config.model.num_heads}")
  if config.model.get("quantizer_type") == "mlc" and config.model.code_dim % 2:
    raise ValueError(f"config.model.code_dim={config.model.code_dim} must be even: the MLC "
                     "quantizer splits each token into an adjective half and a noun half")
  parallel.mesh_shape(config.mesh, num_devices)  # raises on a mismatch
  for name in ("total_steps", "batch_size", "eval_batch_size", "log_every_steps",
               "checkpoint_every_steps", "summary_every_steps"):
    if config[name] <= 0:
      raise ValueError(f"config.{name} must be positive, got {config[name]}")


def load_word_group(config: ml_collections.ConfigDict, workdir: str | None = None
                    ) -> dict[str, Any]:
  """The model's `word_group` field when it quantizes with the language codebook.

  A run keeps its own copy of the codebook in `workdir/codebook`: the first start
  copies it there from the build cache, later starts (resumes, the words readout)
  read that copy, so a checkpoint always meets the codebook it was trained with (later
  edits of `config.codebook` do not apply to an existing run). Remote workdirs
  (gs://...) keep no copy: every start uses the deterministic build cache.
  """
  if config.model.get("quantizer_type", "vq") != "mlc":
    return {}
  from sweet_jax.codebook import artifact  # pylint: disable=g-import-not-at-top
  run_copy = os.path.join(workdir, "codebook") if workdir and "://" not in workdir else None
  if run_copy and os.path.exists(os.path.join(run_copy, "manifest.json")):
    codebook = artifact.load(run_copy)
  else:
    from sweet_jax.codebook import build, pos  # pylint: disable=g-import-not-at-top
    cb = config.codebook
    codebook = build.cached_codebook(
        cb.cache_dir or build.default_cache_dir(), source=cb.source, embeddings=cb.embeddings,
        tensor=cb.tensor, vocab=cb.vocab, pos_dir=cb.pos_dir, cooccurrence=cb.cooccurrence,
        knn=cb.knn, min_log_prob=cb.min_log_prob, min_length=cb.min_length,
        exclude=cb.exclude or pos.EXCLUDED_WORDS_FILE, sizes=dict(cb.sizes))
    if run_copy and jax.process_index() == 0:
      artifact.save(run_copy, codebook.spatial, codebook.temporal, codebook.manifest)
  logging.info("Language codebook %s: %s", codebook.manifest["hash"][:12],
               codebook.manifest["sizes"])
  return {"word_group": codebook.spatial}


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
  fetched = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


@dataclasses.dataclass
class Components:
  """Everything a run needs besides data: mesh, model, optimizer, jitted steps."""

  mesh: Mesh
  rules: list[tuple[str, Any]]
  model: nn.Module
  tx: optax.GradientTransformation
  init_fn: Callable[[jax.Array], TrainState]
  abstract_state: TrainState  # Linen-boxed ShapeDtypeStructs
  state_sharding: TrainState
  batch_sharding: NamedSharding
  train_step: Any  # jitted (state, batch) -> (state, metrics), state donated
  eval_step: Any  # jitted (params, batch) -> per-image outputs
  rng: jax.Array

  def init_state(self) -> TrainState:
    """A fresh state, materialised directly with its shardings (never whole on one device)."""
    init = jax.jit(lambda r: nn.unbox(self.init_fn(r)), out_shardings=self.state_sharding)
    return init(self.rng)

  def restore_target(self) -> TrainState:
    return abstract_with_shardings(parallel.strip_boxes(self.abstract_state), self.state_sharding)


def build_components(config: ml_collections.ConfigDict,
                     devices: Sequence[jax.Device] | None = None,
                     workdir: str | None = None) -> Components:
  """Mesh (over `devices`, default all), model, optimizer, jitted steps with shardings.

  `workdir` holds (or receives) the run's copy of the language codebook, if any.
  """
  mesh = parallel.make_mesh(config.mesh, devices)
  rules = [tuple(rule) for rule in config.sharding_rules]
  dp = parallel.data_parallel_size(mesh, rules)
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % dp:
      raise ValueError(f"config.{name}={config[name]} is not divisible by the "
                       f"data-parallel size {dp} of mesh {dict(mesh.shape)}")

  model = build_model(**config.model, **load_word_group(config, workdir))
  schedule = optim.warmup_cosine(config.optim.lr, config.optim.warmup_steps,
                                 config.total_steps, config.optim.end_lr_fraction)
  tx = optim.make_optimizer(
      schedule=schedule, groups=[tuple(g) for g in config.optim.param_groups],
      lr_mult=dict(config.optim.lr_mult), b1=config.optim.b1, b2=config.optim.b2,
      eps=config.optim.eps, weight_decay=config.optim.weight_decay, clip_norm=config.optim.clip_norm)
  loss_weights = {name: optax.constant_schedule(float(w)) for name, w in config.loss.items()}
  image_shape = (config.data.image_size, config.data.image_size, 3)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init_fn = make_init_fn(model, tx, image_shape)
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(init_fn, rng)
    state_sharding = parallel.logical_to_sharding(abstract, mesh, rules)
  batch_sharding = parallel.batch_sharding(mesh, rules)
  train_step = jax.jit(
      make_train_step(model, tx, learning_rate=schedule, loss_weights=loss_weights,
                      quantizer_mix=optim.linear_ramp(config.quantizer_warmup_steps)),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, parallel.replicated(mesh)),
      donate_argnums=(0,))
  eval_step = jax.jit(make_eval_step(model), in_shardings=(state_sharding.params, batch_sharding))
  return Components(mesh=mesh, rules=rules, model=model, tx=tx, init_fn=init_fn,
                    abstract_state=abstract, state_sharding=state_sharding,
                    batch_sharding=batch_sharding, train_step=train_step, eval_step=eval_step,
                    rng=rng)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: int | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if possible); returns the final eval metrics.

  `stop_at_step` ends this invocation early (with a checkpoint) without changing
  the schedules, which stay defined by `config.total_steps`: a time-boxed job,
  or a test of resumption.
  """
  validate_config(config, jax.device_count())
  if "://" not in workdir:  # orbax needs absolute paths; keep gs:// and friends as they are
    workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_chief = jax.process_index() == 0
  if is_chief:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  c = build_components(config, workdir=workdir)

  data = config.data
  hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
  train_source = pipeline.get_data_source(data.name, data.train_split, data.data_dir)
  eval_source = pipeline.get_data_source(data.name, data.eval_split, data.data_dir)
  train_iter = pipeline.make_train_iterator(
      train_source, global_batch_size=config.batch_size, image_size=data.image_size,
      seed=config.seed, crop_scale=(data.crop_min_scale, data.crop_max_scale), flip=data.flip,
      num_threads=data.num_threads, prefetch_buffer_size=data.prefetch_buffer_size,
      color_jitter=data.color_jitter, **hosts)
  eval_batches = pipeline.make_eval_batches(
      eval_source, global_batch_size=config.eval_batch_size, image_size=data.image_size,
      preprocess=data.eval_preprocess, **hosts)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  to_global = lambda b: parallel.to_global(b, c.batch_sharding)

  with jax.set_mesh(c.mesh), nn.logical_axis_rules(c.rules):
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                max_to_keep=config.keep_checkpoints,
                                save_interval_steps=config.checkpoint_every_steps)
    latest = checkpointer.latest_step()
    if latest is not None:
      logging.info("Resuming from the checkpoint of step %d in %s", latest, workdir)
      state = checkpointer.restore(latest, c.restore_target(), train_iter)
    else:
      logging.info("Starting from scratch in %s", workdir)
      state = c.init_state()
      logging.info("Parameters: %d",
                   sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)))

    def run_eval(step: int, prefix: str) -> ReconstructionResult:
      result = evaluate_reconstruction(
          c.eval_step, state.params, eval_batches, to_global,
          bits_per_image=c.model.bits_per_image, index_groups=c.model.index_groups(),
          num_grid_images=config.num_summary_images)
      writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in result.metrics.items()
                                  if isinstance(v, (int, float))})
      writer.write_images(step, {f"{prefix}/originals_recons_thumbnails": result.grid[None]})
      if has_words(c.model):
        indices = result.grid_indices[:config.num_word_images]
        writer.write_texts(step, {f"{prefix}/words": words_markdown(c.model, indices)})
      return result

    step = int(state.step)
    last_step = config.total_steps
    if stop_at_step is not None:
      last_step = min(stop_at_step, last_step)
    report = periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer,
                                             every_secs=30.0)
    history: list[dict[str, Any]] = []
    train_start = time.time()
    while step < last_step:
      batch = to_global(next(train_iter))
      state, metrics = c.train_step(state, batch)
      step += 1
      history.append(metrics)
      report(step)
      if step % config.log_every_steps == 0 or step == config.total_steps:
        scalars = _mean_metrics(history)
        history = []
        writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        if not np.isfinite(scalars["loss"]):
          raise FloatingPointError(f"non-finite training loss at step {step}: {scalars}")
      if step % config.summary_every_steps == 0:
        run_eval(step, "eval")
      checkpointer.save(step, state, train_iter, force=step == last_step)
    train_seconds = time.time() - train_start

    checkpointer.wait_until_finished()
    final = run_eval(step, "final")
  eval_metrics = dict(final.metrics, step=step, train_seconds=round(train_seconds, 1))
  writer.flush()
  if is_chief:
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(eval_metrics, f, indent=2)
    save_png(os.path.join(workdir, "recon_grid.png"), final.grid)
    if has_words(c.model):
      with open(os.path.join(workdir, "words.md"), "w") as f:
        f.write(words_markdown(c.model, final.grid_indices))
  checkpointer.close()
  return eval_metrics
