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
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
import ml_collections

from sweet_jax import curriculum, nonfinite, optim, parallel
from sweet_jax.checkpoint import (Checkpointer, abstract_with_shardings, check_free_space,
                                  check_workdir_writable)
from sweet_jax.data import pipeline
from sweet_jax.evaluate.evaluator import evaluate_params
from sweet_jax.evaluate.images import save_png
from sweet_jax.evaluate.lpips import LPIPS, load_lpips_params
from sweet_jax.evaluate.reconstruction import evaluate_reconstruction
from sweet_jax.evaluate.video import evaluate_clip_reconstruction, write_mp4, write_video_summary
from sweet_jax.models import build_model, model_class
from sweet_jax.models.discriminator import PatchDiscriminator
from sweet_jax.models.video_cqae import check_num_frames
from sweet_jax.preemption import PreemptionWatch
from sweet_jax.step import (GanOptions, TrainState, check_adaptive_layer, make_eval_step,
                            make_init_fn, make_train_step)
from sweet_jax.words import has_words, temporal_words_markdown, words_markdown


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Fails before anything compiles, naming the setting that is impossible."""
  curriculum.stages_from_config(config)  # raises on an impossible curriculum
  nonfinite.check_mode(config.on_nonfinite)
  image_size, patch = config.model.image_size, config.model.patch_size
  if image_size % patch:
    raise ValueError(f"config.model.patch_size={patch} does not divide "
                     f"config.model.image_size={image_size}")
  if config.data.image_size != image_size:
    raise ValueError(f"config.data.image_size={config.data.image_size} differs from "
                     f"config.model.image_size={image_size}")
  for prefix in ("", "encoder_", "decoder_"):  # (the 1-D tokenizers size each half)
    width, heads = f"{prefix}width", "num_heads" if not prefix else f"{prefix}heads"
    if width in config.model and config.model[width] % config.model[heads]:
      raise ValueError(f"config.model.{width}={config.model[width]} is not divisible by "
                       f"config.model.{heads}={config.model[heads]}")
  if config.loss.alignment > 0 and not config.model.get("align_width"):
    raise ValueError(f"config.loss.alignment={config.loss.alignment} needs a model with an "
                     "alignment projector: set config.model.align_width to the teacher's width "
                     "(SoftVQ-VAE), or config.loss.alignment=0")
  if config.model.get("quantizer_type") == "mlc" and config.model.code_dim % 2:
    raise ValueError(f"config.model.code_dim={config.model.code_dim} must be even: the MLC "
                     "quantizer splits each token into an adjective half and a noun half")
  if "video_data" in config:
    try:
      check_num_frames(config.video_data.num_frames, config.model.temporal_patch_size)
    except ValueError as e:
      raise ValueError(f"config.video_data.num_frames={config.video_data.num_frames}: {e}; "
                       "set it (and config.model.num_frames) to 1 + k * "
                       "config.model.temporal_patch_size") from None
    if config.video_data.num_frames != config.model.num_frames:
      raise ValueError(f"config.video_data.num_frames={config.video_data.num_frames} differs "
                       f"from config.model.num_frames={config.model.num_frames}")
    if config.video_data.image_size != image_size:
      raise ValueError(f"config.video_data.image_size={config.video_data.image_size} differs "
                       f"from config.model.image_size={image_size}")
  parallel.mesh_shape(config.mesh, num_devices)  # raises on a mismatch
  counts = ["batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps",
            "summary_every_steps"]
  if "curriculum" not in config:
    counts.append("total_steps")
  elif config.get("total_steps") is not None:
    raise ValueError("config.total_steps is derived from config.curriculum (the sum of the "
                     "stages' steps); set the stages' steps instead")
  for name in counts:
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
  groups = {"word_group": codebook.spatial}
  if hasattr(model_class(config.model.name), "temporal_word_group"):
    groups["temporal_word_group"] = codebook.temporal
  return groups


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
  """Means over fetched per-step metrics (none when every step was discarded)."""
  if not history:
    return {}
  return {k: float(np.mean([m[k] for m in history])) for k in history[0]}


@dataclasses.dataclass(frozen=True)
class BoundStep:
  """A jitted function whose last argument, the frozen networks' parameters, is bound:
  called as `(state, batch)` (or `(params, batch)`), lowered the same way. It is traced
  under the run's mesh and rules whoever calls it (trainer, planner, benchmark, tests), so
  all of them compile the trainer's program, activation constraints included."""

  jitted: Any
  frozen: dict[str, Any]
  mesh: Mesh
  rules: Sequence[tuple[str, Any]]

  def __call__(self, *args):
    with parallel.run_context(self.mesh, self.rules):
      return self.jitted(*args, self.frozen)

  def lower(self, *args):
    with parallel.run_context(self.mesh, self.rules):
      return _BoundLowered(self.jitted.lower(*args, self.frozen), self)


@dataclasses.dataclass(frozen=True)
class _BoundLowered:
  lowered: Any
  step: BoundStep

  def compile(self) -> BoundStep:
    return dataclasses.replace(self.step, jitted=self.lowered.compile())

  def as_text(self) -> str:
    return self.lowered.as_text()


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
  stages: list[curriculum.Stage]
  stage_steps: dict[str, Any]  # stage name -> jitted (state, batch) -> (state, metrics)
  eval_step: Any  # jitted (params, batch) -> per-image outputs
  rng: jax.Array
  frozen: dict[str, Any]  # frozen networks' parameters (LPIPS, I3D, Inception), replicated
  # real_features -> an eval step; without the originals' features when cached
  # reference statistics replace them (the evaluator).
  make_eval_step: Callable[[bool], Any]

  @property
  def train_step(self) -> Any:
    """The first stage's step (state donated)."""
    return self.stage_steps[self.stages[0].name]

  def init_state(self) -> TrainState:
    """A fresh state, materialised directly with its shardings (never whole on one device)."""
    init = jax.jit(lambda r: nn.unbox(self.init_fn(r)), out_shardings=self.state_sharding)
    with parallel.run_context(self.mesh, self.rules):
      return init(self.rng)

  def restore_target(self) -> TrainState:
    return abstract_with_shardings(parallel.strip_boxes(self.abstract_state), self.state_sharding)


def build_components(config: ml_collections.ConfigDict,
                     devices: Sequence[jax.Device] | None = None,
                     workdir: str | None = None, *,
                     abstract_frozen: bool = False) -> Components:
  """Mesh (over `devices`, default all), model, optimizer, jitted steps with shardings.

  `workdir` holds (or receives) the run's copy of the language codebook, if any.
  `abstract_frozen`: the frozen networks stay shapes (the memory planner lowers steps
  without placing a replica of them on each of hundreds of virtual devices).
  """
  mesh = parallel.make_mesh(config.mesh, devices)
  rules = [tuple(rule) for rule in config.sharding_rules]
  dp = parallel.data_parallel_size(mesh, rules)
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % dp:
      raise ValueError(f"config.{name}={config[name]} is not divisible by the "
                       f"data-parallel size {dp} of mesh {dict(mesh.shape)}; use a multiple "
                       f"of {dp} (or change config.mesh)")

  stages = curriculum.stages_from_config(config)
  for stage in stages:
    if stage.batch_size % dp:
      raise ValueError(f"stage {stage.name!r} batch_size={stage.batch_size} is not divisible "
                       f"by the data-parallel size {dp} of mesh {dict(mesh.shape)}; set "
                       f"config.curriculum.stages.{stage.name}.batch_size to a multiple of {dp}")
  model = build_model(**config.model, **load_word_group(config, workdir))
  groups = [tuple(g) for g in config.optim.param_groups]
  group_names = [name for name, _ in groups]
  schedule = curriculum.learning_rate_schedule(stages, config.optim.warmup_steps,
                                               config.optim.end_lr_fraction)
  tx = optim.make_optimizer(
      schedule=schedule, groups=groups, lr_mult=dict(config.optim.lr_mult), b1=config.optim.b1,
      b2=config.optim.b2, eps=config.optim.eps, weight_decay=config.optim.weight_decay,
      clip_norm=config.optim.clip_norm,
      active=curriculum.active_schedules(stages, group_names) if len(stages) > 1 else None)
  loss_weights = gated_loss_weights(config, stages)
  takes_clips = getattr(model, "takes_clips", False)
  input_shape = (config.data.image_size, config.data.image_size, 3)
  if takes_clips:
    input_shape = (config.model.num_frames,) + input_shape
  teacher = None
  if uses_term(stages, "alignment"):
    teacher, teacher_variables = load_alignment_teacher(config, model)
  perceptual = LPIPS(config.perceptual.network) if uses_term(stages, "perceptual") else None
  discriminator = make_discriminator(config, takes_clips) if uses_term(stages, "adversarial") else None
  disc_tx = make_discriminator_optimizer(config, loss_weights) if discriminator else None
  eval_lpips = LPIPS("vgg16") if config.eval.lpips else None
  eval_i3d = eval_inception = None
  if config.eval.fvd and takes_clips:
    from sweet_jax.evaluate.i3d import I3D  # pylint: disable=g-import-not-at-top
    eval_i3d = I3D()
  if config.eval.inception_weights and not takes_clips:
    from sweet_jax.evaluate.inception import FIDInceptionV3  # pylint: disable=g-import-not-at-top
    eval_inception = FIDInceptionV3()

  with parallel.run_context(mesh, rules):
    init_fn = make_init_fn(model, tx, input_shape, ema=config.ema.decay > 0,
                           discriminator=discriminator, disc_tx=disc_tx)
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(init_fn, rng)
    state_sharding = parallel.logical_to_sharding(abstract, mesh, rules)
  batch_sharding = parallel.batch_sharding(mesh, rules)
  if discriminator is not None and config.gan.adaptive_weight:
    check_adaptive_layer(abstract.params, config.gan.adaptive_layer)
  frozen = load_frozen_networks(config, mesh, perceptual, eval_lpips, eval_i3d, eval_inception,
                                materialize=not abstract_frozen)
  if teacher is not None:
    frozen["teacher"] = replicate_frozen(teacher_variables, mesh, materialize=not abstract_frozen)
  frozen_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), frozen)
  gan = GanOptions(
      lecam_weight=config.gan.lecam_weight, lecam_decay=config.gan.lecam_decay,
      disc_loss_weight=config.gan.disc_loss_weight, adaptive_weight=config.gan.adaptive_weight,
      adaptive_max=config.gan.adaptive_max, adaptive_layer=config.gan.adaptive_layer)

  def jitted_step(variant: tuple[bool, bool, bool, bool]):
    quantizer_train, with_perceptual, with_gan, with_alignment = variant
    step = jax.jit(
        make_train_step(model, tx, learning_rate=schedule, loss_weights=loss_weights,
                        quantizer_mix=optim.linear_ramp(config.quantizer_warmup_steps),
                        quantizer_train=quantizer_train,
                        perceptual=perceptual if with_perceptual else None,
                        discriminator=discriminator if with_gan else None, disc_tx=disc_tx,
                        gan=gan, ema_decay=config.ema.decay, param_groups=tuple(groups),
                        inject_nan_at_step=config.inject_nan_at_step,
                        teacher=teacher if with_alignment else None),
        in_shardings=(state_sharding, batch_sharding, frozen_sharding),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=(0,))
    return BoundStep(step, frozen, mesh, rules)

  # One jitted function per variant (quantizer mode; perceptual, GAN and alignment terms
  # on or off): a stage switch compiles at most once (for the new batch shape or variant);
  # stages alike share the compiled step.
  def variant(stage: curriculum.Stage) -> tuple[bool, bool, bool, bool]:
    weights = dict(stage.loss)
    return (trains_quantizer(stage), perceptual is not None and weights["perceptual"] > 0,
            discriminator is not None and weights["adversarial"] > 0,
            teacher is not None and weights["alignment"] > 0)

  steps_by_variant = {v: jitted_step(v) for v in {variant(s) for s in stages}}
  stage_steps = {s.name: steps_by_variant[variant(s)] for s in stages}

  def jitted_eval_step(real_features: bool = True) -> BoundStep:
    step = make_eval_step(model, eval_lpips, eval_i3d, eval_inception, real_features)
    return BoundStep(jax.jit(step, in_shardings=(state_sharding.params, batch_sharding,
                                                 frozen_sharding)), frozen, mesh, rules)

  return Components(mesh=mesh, rules=rules, model=model, tx=tx, init_fn=init_fn,
                    abstract_state=abstract, state_sharding=state_sharding,
                    batch_sharding=batch_sharding, stages=stages, stage_steps=stage_steps,
                    eval_step=jitted_eval_step(), rng=rng, frozen=frozen,
                    make_eval_step=jitted_eval_step)


def uses_term(stages: Sequence[curriculum.Stage], term: str) -> bool:
  return any(dict(s.loss).get(term, 0.0) > 0 for s in stages)


def gated_loss_weights(config: ml_collections.ConfigDict,
                       stages: Sequence[curriculum.Stage]) -> dict[str, optim.Schedule]:
  """The stages' loss weights, with the perceptual weight ramped in over
  config.perceptual.warmup_steps and the adversarial weight 0 before config.gan.start_step."""
  weights = curriculum.loss_weight_schedules(stages)
  ramp = optim.linear_ramp(config.perceptual.warmup_steps)
  base_perceptual, base_adversarial = weights["perceptual"], weights["adversarial"]
  start = config.gan.start_step
  weights["perceptual"] = lambda step: base_perceptual(step) * ramp(step)
  weights["adversarial"] = lambda step: jnp.where(step >= start, base_adversarial(step), 0.0)
  return weights


def make_discriminator(config: ml_collections.ConfigDict, takes_clips: bool) -> nn.Module:
  kind = config.gan.discriminator
  if kind == "auto":
    kind = "patchgan3d" if takes_clips else "patchgan2d"
  if kind not in ("patchgan2d", "patchgan3d"):
    raise ValueError(f"config.gan.discriminator={kind!r}; use auto, patchgan2d or patchgan3d")
  if kind == "patchgan2d" and takes_clips:
    raise ValueError("config.gan.discriminator='patchgan2d' cannot judge the clips of a video "
                     "model; use patchgan3d (or auto)")
  return PatchDiscriminator(width=config.gan.width, depth=config.gan.depth, norm=config.gan.norm,
                            spatial_dims=3 if kind == "patchgan3d" else 2)


def make_discriminator_optimizer(config: ml_collections.ConfigDict,
                                 loss_weights: dict[str, optim.Schedule]
                                 ) -> optax.GradientTransformation:
  """The same gated chain as the tokenizer's, over one group: the discriminator learns
  while the adversarial weight is > 0; its learning rate warms up from the GAN start. Its
  step count advances every step (a zero update outside GAN stages), so it is the global
  step."""
  g = config.gan
  warmup = optim.linear_ramp(g.warmup_steps)
  schedule = lambda step: g.lr * warmup(jnp.maximum(step - g.start_step, 0))
  playing = loss_weights["adversarial"]
  return optim.make_optimizer(
      schedule=schedule, groups=(("discriminator", ".*"),), lr_mult={}, b1=g.b1, b2=g.b2,
      eps=config.optim.eps, weight_decay=g.weight_decay, clip_norm=g.clip_norm,
      active={"discriminator": lambda step: (playing(step) > 0).astype(jnp.float32)})


def load_frozen_networks(config: ml_collections.ConfigDict, mesh: Mesh,
                         perceptual: nn.Module | None, eval_lpips: nn.Module | None,
                         eval_i3d: nn.Module | None,
                         eval_inception: nn.Module | None, *,
                         materialize: bool = True) -> dict[str, Any]:
  """Parameters of the frozen networks, replicated over the mesh: "perceptual" (the loss's
  LPIPS network), "lpips" (the LPIPS-VGG16 metric; the loss's copy when it is VGG16 too),
  "i3d" (rFVD), "inception" (rFID, from the user's config.eval.inception_weights).
  Without `materialize`: their shapes, with the replicated sharding."""
  frozen = {}
  if perceptual is not None:
    frozen["perceptual"] = load_lpips_params(perceptual.network, config.perceptual.weights)
  if eval_lpips is not None:
    same = perceptual is not None and perceptual.network == eval_lpips.network
    frozen["lpips"] = frozen["perceptual"] if same else load_lpips_params(eval_lpips.network)
  if eval_i3d is not None:
    from sweet_jax.evaluate.i3d import load_i3d_variables  # pylint: disable=g-import-not-at-top
    frozen["i3d"] = load_i3d_variables(config.eval.i3d_weights)
  if eval_inception is not None:
    from sweet_jax.evaluate.inception import load_inception_variables  # pylint: disable=g-import-not-at-top
    frozen["inception"] = load_inception_variables(config.eval.inception_weights)
  return replicate_frozen(frozen, mesh, materialize=materialize)


def load_alignment_teacher(config: ml_collections.ConfigDict,
                           model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
  """The alignment term's frozen teacher (config.alignment), resampled to the model's
  patch and image size, checked against the model's projector width."""
  from sweet_jax.models import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  align_width = getattr(model, "align_width", 0)
  if not align_width:
    raise ValueError(f"config.loss.alignment > 0 needs a model with an alignment projector "
                     f"(SoftVQ-VAE: set config.model.align_width to the teacher's width); "
                     f"model {config.model.name!r} has none")
  module, variables = teacher_lib.load_teacher(
      config.alignment.teacher_path, image_size=config.model.image_size,
      patch_size=config.model.patch_size, num_heads=config.alignment.teacher_heads)
  if module.width != align_width:
    raise ValueError(f"the teacher {config.alignment.teacher_path} has width {module.width}, "
                     f"config.model.align_width={align_width}: set it to {module.width}")
  return module, variables


def replicate_frozen(tree: Any, mesh: Mesh, *, materialize: bool = True) -> Any:
  """A frozen network's parameters replicated over the mesh (without `materialize`: their
  shapes, with that sharding)."""
  replicated = parallel.replicated(mesh)
  if not materialize:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=replicated),
                        tree)
  return jax.device_put(tree, replicated)


def trains_quantizer(stage: curriculum.Stage) -> bool:
  """Whether a stage trains a quantizer/codebook group; if not, the quantizer runs as in
  evaluation (no GCN dropout) since its codes are what the decoder must learn from."""
  return any("quantizer" in g or "codebook" in g for g in stage.train)


def make_stage_iterator(config: ml_collections.ConfigDict, stages: Sequence[curriculum.Stage],
                        index: int, hosts: dict[str, int]):
  """A fresh train iterator for stage `index`: images or clips at the stage's batch size,
  seeded by (config.seed, stage index), so a resumed run rebuilds the same stream."""
  stage = stages[index]
  seed = config.seed + index
  if stage.data == "image":
    data = config.data
    source = pipeline.get_data_source(data.name, data.train_split, data.data_dir)
    return pipeline.make_train_iterator(
        source, global_batch_size=stage.batch_size, image_size=data.image_size, seed=seed,
        crop_scale=(data.crop_min_scale, data.crop_max_scale), flip=data.flip,
        num_threads=data.num_threads, prefetch_buffer_size=data.prefetch_buffer_size,
        color_jitter=data.color_jitter, max_bad_fraction=data.max_bad_fraction, **hosts)
  data = config.video_data
  source = pipeline.get_data_source(data.name, data.train_split, data.data_dir)
  return pipeline.make_clip_train_iterator(
      source, global_batch_size=stage.batch_size, num_frames=data.num_frames,
      image_size=data.image_size, seed=seed, crop_scale=(data.crop_min_scale, data.crop_max_scale),
      num_threads=data.num_threads, prefetch_buffer_size=data.prefetch_buffer_size,
      max_bad_fraction=data.max_bad_fraction, **hosts)


def stage_batch_shape(config: ml_collections.ConfigDict,
                      stage: curriculum.Stage) -> tuple[str, tuple[int, ...]]:
  """The key and global uint8 shape of a stage's training batches (what its iterator
  yields, assembled over the hosts): for the planner and the benchmark."""
  if stage.data == "image":
    size = config.data.image_size
    return "image", (stage.batch_size, size, size, 3)
  data = config.video_data
  return "video", (stage.batch_size, data.num_frames, data.image_size, data.image_size, 3)


def distinct_stage_steps(components: Components) -> dict[str, tuple]:
  """Each stage's compiled-program key: stages with equal keys run the same jitted step on
  the same batch shape, so the planner and the benchmark compile (and time) one of them."""
  return {stage.name: (id(components.stage_steps[stage.name]), stage.data, stage.batch_size)
          for stage in components.stages}


def make_eval_batches(config: ml_collections.ConfigDict, stages: Sequence[curriculum.Stage],
                      hosts: dict[str, int]):
  """Held-out clips when any stage trains on video, held-out images otherwise."""
  if any(stage.data == "video" for stage in stages):
    data = config.video_data
    return pipeline.make_clip_eval_batches(
        pipeline.get_data_source(data.name, data.eval_split, data.data_dir),
        global_batch_size=config.eval_batch_size, num_frames=data.num_frames,
        image_size=data.image_size, max_bad_fraction=data.max_bad_fraction, **hosts)
  data = config.data
  return pipeline.make_eval_batches(
      pipeline.get_data_source(data.name, data.eval_split, data.data_dir),
      global_batch_size=config.eval_batch_size, image_size=data.image_size,
      preprocess=data.eval_preprocess, max_bad_fraction=data.max_bad_fraction, **hosts)


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, value: Any) -> None:
  """Atomically (a crash never leaves half a file)."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2)
  os.replace(path + ".tmp", path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: int | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if possible); returns the final eval metrics.

  With a curriculum, the held-out metrics after each stage are kept under "stages"
  (keyed by stage name). `stop_at_step` ends this invocation early (with a checkpoint)
  without changing the schedules, which stay defined by the full run: a time-boxed
  job, or a test of resumption.
  """
  validate_config(config, jax.device_count())
  if "://" not in workdir:  # orbax needs absolute paths; keep gs:// and friends as they are
    workdir = os.path.abspath(workdir)
  check_workdir_writable(workdir)
  is_chief = jax.process_index() == 0
  if is_chief:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  c = build_components(config, workdir=workdir)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(c.restore_target()))
  check_free_space(workdir, state_bytes, keep=config.keep_checkpoints)
  stages = c.stages
  has_curriculum = "curriculum" in config
  logging.info("Curriculum: %s", curriculum.summary(stages))

  hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
  eval_batches = make_eval_batches(config, stages, hosts)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  to_global = lambda b: parallel.to_global(b, c.batch_sharding)
  takes_clips = any(stage.data == "video" for stage in stages)
  stage_metrics_path = os.path.join(workdir, "stage_metrics.json")

  with parallel.run_context(c.mesh, c.rules):
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                max_to_keep=config.keep_checkpoints,
                                save_interval_steps=config.checkpoint_every_steps)

    def restore(step: int) -> tuple[Any, Any, int | None]:
      """(state, train iterator, its stage index) from the checkpoint of `step`."""
      index = curriculum.stage_index(stages, step)
      if step > stages[index].start:  # inside a stage: continue its data stream
        logging.info("Resuming stage %r from the checkpoint of step %d in %s",
                     stages[index].name, step, workdir)
        train_iter = make_stage_iterator(config, stages, index, hosts)
        return checkpointer.restore(step, c.restore_target(), train_iter), train_iter, index
      # exactly at a stage boundary: the next stage starts a fresh stream
      logging.info("Resuming at the start of stage %r (step %d) in %s",
                   stages[index].name, step, workdir)
      return checkpointer.restore_state(step, c.restore_target()), None, None

    try:
      restored = checkpointer.restore_newest_valid(restore)
    except Exception:
      checkpointer.close()
      raise
    if restored is None:
      logging.info("Starting from scratch in %s", workdir)
      state, train_iter, iter_stage = c.init_state(), None, None
    else:
      _, (state, train_iter, iter_stage) = restored

    num_parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(c.abstract_state.params))
    logging.info("Parameters: %d", num_parameters)

    def run_eval(step: int, prefix: str) -> Any:
      if takes_clips:
        result = evaluate_clip_reconstruction(
            c.eval_step, state.eval_params, eval_batches, to_global,
            index_groups=c.model.index_groups(), num_grid_clips=config.num_summary_images,
            bits_per_clip=c.model.bits_per_clip)
        write_video_summary(writer, step, f"{prefix}/originals_recons", result.video)
        spatial_indices = result.grid_indices["spatial"]
      else:
        result = evaluate_reconstruction(
            c.eval_step, state.eval_params, eval_batches, to_global,
            bits_per_image=c.model.bits_per_image, index_groups=c.model.index_groups(),
            num_grid_images=config.num_summary_images)
        writer.write_images(step, {f"{prefix}/originals_recons_thumbnails": result.grid[None]})
        spatial_indices = result.grid_indices
      writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in result.metrics.items()
                                  if isinstance(v, (int, float))})
      if has_words(c.model):
        indices = spatial_indices[:config.num_word_images]
        writer.write_texts(step, {f"{prefix}/words": words_markdown(c.model, indices)})
      return result

    stage_results = _read_json(stage_metrics_path)
    last_result = None

    def end_of_stage(stage: curriculum.Stage, step: int) -> None:
      nonlocal last_result
      last_result = run_eval(step, f"stage_{stage.name}")
      stage_results[stage.name] = dict(last_result.metrics, step=step)
      if is_chief:
        _write_json(stage_metrics_path, stage_results)
        if takes_clips:
          write_mp4(os.path.join(workdir, f"recon_{stage.name}.mp4"), last_result.video)
      logging.info("Stage %r done at step %d: %s", stage.name, step,
                   {k: v for k, v in last_result.metrics.items() if isinstance(v, float)})

    step = int(state.step)
    total = curriculum.total_steps(stages)
    last_step = total if stop_at_step is None else min(stop_at_step, total)
    if has_curriculum:  # a stage that ended just before an interruption still gets scored
      for stage in stages:
        if stage.end == step and stage.name not in stage_results:
          end_of_stage(stage, step)
    report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                             every_secs=30.0)
    history: list[dict[str, Any]] = []  # device metrics of the steps not yet fetched
    finite_history: list[dict[str, Any]] = []  # fetched, finite, not yet logged
    guard = nonfinite.NonFiniteGuard(config.on_nonfinite, config.max_consecutive_nonfinite)
    evaluator_steps: dict[bool, Any] = {}  # compiled once for the periodic evaluator
    train_start = time.time()
    preempted = False
    with PreemptionWatch(checkpointer.manager) as watch:
      while step < last_step:
        index = curriculum.stage_index(stages, step)
        stage = stages[index]
        if iter_stage != index:
          logging.info("Stage %r: steps [%d, %d), %s data", stage.name, stage.start, stage.end,
                       stage.data)
          train_iter, iter_stage = make_stage_iterator(config, stages, index, hosts), index
        batch = to_global(next(train_iter))
        state, metrics = c.stage_steps[stage.name](state, batch)
        step += 1
        history.append(metrics)
        report(step)
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
        if log_now:
          scalars = _mean_metrics(finite_history)
          finite_history = []
          scalars["nonfinite_steps"] = guard.total
          scalars["skipped_examples"] = pipeline.skipped_example_count()
          writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        if preempted:  # no evaluations: the scheduler's grace period is short
          checkpointer.save(step, state, train_iter, force=True)
          break
        if step % config.summary_every_steps == 0 and step != stage.end:
          run_eval(step, "eval")
        if config.eval.every_steps and step % config.eval.every_steps == 0:
          evaluate_params(config, c, state.eval_params, step, dataset=config.eval.dataset,
                          split=config.eval.split, workdir=workdir, writer=writer,
                          eval_steps=evaluator_steps)
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
    final = last_result if last_result is not None and step == total else run_eval(step, "final")
  eval_metrics = dict(final.metrics, step=step, parameters=num_parameters,
                      train_seconds=round(train_seconds, 1),
                      nonfinite_steps=guard.total,
                      skipped_examples=pipeline.skipped_example_count())
  if has_curriculum:
    eval_metrics["stages"] = stage_results
  writer.flush()
  if is_chief:
    _write_json(os.path.join(workdir, "metrics.json"), eval_metrics)
    if takes_clips:
      write_mp4(os.path.join(workdir, "recon.mp4"), final.video)
    else:
      save_png(os.path.join(workdir, "recon_grid.png"), final.grid)
    if has_words(c.model):
      indices = final.grid_indices["spatial"] if takes_clips else final.grid_indices
      with open(os.path.join(workdir, "words.md"), "w") as f:
        f.write(words_markdown(c.model, indices))
        if takes_clips and "temporal" in final.grid_indices:
          f.write("\n" + temporal_words_markdown(c.model, final.grid_indices["temporal"]))
  checkpointer.close()
  return eval_metrics
