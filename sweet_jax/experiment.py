"""The assembly: a config becomes everything a run needs, without the training loop.

`validate(config, num_devices)` fails before anything compiles, naming the setting that
is impossible. `build(config, ...)` returns an `Experiment`: the mesh and logical rules,
the tokenizer, the optimizer chain, the frozen networks, the abstract state with its
shardings, and the jitted steps, each built by its own domain (codebook.run,
curriculum, optim, models.discriminator, nets.frozen, parallel, step). The trainer, the
evaluator, the planner, the benchmark, the words readout and the public API import this
module; nothing here imports them.
"""

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding

from sweet_jax import curriculum, nonfinite, optim, parallel
from sweet_jax.checkpoint import abstract_with_shardings, restore_run_state
from sweet_jax.codebook import run as run_codebook
from sweet_jax.data import tokens as token_data
from sweet_jax.generator_step import make_generator_init_fn, make_generator_train_step
from sweet_jax.losses.gan import GanOptions
from sweet_jax.models import (GENERATORS, build_model, discriminator as discriminator_lib,
                              is_generator, model_class)
from sweet_jax.models.token_layout import TokenLayout
from sweet_jax.models.video_cqae import check_num_frames
from sweet_jax.nets import frozen as frozen_lib
from sweet_jax.parallel import BoundStep
from sweet_jax.sampling import ar as ar_sampling, maskgit as maskgit_sampling
from sweet_jax.step import (TrainState, check_adaptive_layer, make_eval_step, make_init_fn,
                            make_train_step)


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Fails before anything compiles, naming the setting that is impossible."""
  if is_generator(config.model.name):
    return _validate_generator(config, num_devices)
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
  if model_class(config.model.name).modality == "video" and "video_data" not in config:
    raise ValueError(f"model {config.model.name!r} takes clips: the config needs a "
                     "config.video_data section (see configs/sweet_video.py)")
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
  counts += ["keep_checkpoints"]  # orbax deletes every checkpoint at 0
  _check_counts(config, counts)
  nonnegative = {"eval.every_steps": config.eval.every_steps,
                 "num_summary_images": config.num_summary_images,
                 "num_word_images": config.num_word_images,
                 "max_consecutive_nonfinite": config.max_consecutive_nonfinite,
                 "quantizer_warmup_steps": config.get("quantizer_warmup_steps", 0)}
  _check_nonnegative(nonnegative)
  if not 0 <= config.ema.decay < 1:
    raise ValueError(f"config.ema.decay={config.ema.decay} must be in [0, 1) (0: no EMA)")
  if not 0 <= config.data.max_bad_fraction <= 1:
    raise ValueError(f"config.data.max_bad_fraction={config.data.max_bad_fraction} is not a "
                     "fraction: set it in [0, 1]")


def _check_counts(config: ml_collections.ConfigDict, counts: Sequence[str]) -> None:
  for name in counts:
    if not isinstance(config[name], int) or config[name] <= 0:
      raise ValueError(f"config.{name} must be a positive integer, got {config[name]!r}: "
                       f"set --config.{name}=N with N >= 1")


def _check_nonnegative(values: dict[str, Any]) -> None:
  for name, value in values.items():
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"config.{name} must be an integer >= 0, got {value!r}: set "
                       f"--config.{name}=N with N >= 0" + (" (0: never)" if name ==
                                                          "eval.every_steps" else ""))


def _validate_generator(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """`validate` for a generator on tokens (configs/ar_generator.py, configs/maskgit.py)."""
  nonfinite.check_mode(config.on_nonfinite)
  parallel.mesh_shape(config.mesh, num_devices)
  _check_counts(config, ["batch_size", "eval_batch_size", "log_every_steps",
                         "checkpoint_every_steps", "summary_every_steps", "total_steps",
                         "keep_checkpoints", "eval.num_samples", "eval.reference_examples"])
  _check_nonnegative({"num_summary_images": config.num_summary_images,
                      "max_consecutive_nonfinite": config.max_consecutive_nonfinite,
                      "model.num_classes": config.model.num_classes})
  if config.model.width % config.model.num_heads:
    raise ValueError(f"config.model.width={config.model.width} is not divisible by "
                     f"config.model.num_heads={config.model.num_heads}")
  if not config.tokens.dir and None in (config.model.vocab_size, config.model.seq_len):
    raise ValueError("config.tokens.dir is not set: write a token dataset with python -m "
                     "sweet_jax.tokenize --workdir=TOKENIZER_RUN --out=DIR, then pass "
                     "--config.tokens.dir=DIR")
  if not 0 <= config.ema.decay < 1:
    raise ValueError(f"config.ema.decay={config.ema.decay} must be in [0, 1) (0: no EMA)")


@dataclasses.dataclass
class Experiment:
  """Everything a run needs besides data: mesh, model, optimizer, frozen networks, steps."""

  config: ml_collections.ConfigDict
  mesh: Mesh
  rules: list[tuple[str, Any]]
  model: nn.Module  # a Tokenizer, or a generator on tokens (kind "generator")
  tx: optax.GradientTransformation
  init_fn: Callable[[jax.Array], TrainState]
  abstract_state: TrainState  # Linen-boxed ShapeDtypeStructs
  state_sharding: TrainState
  batch_sharding: NamedSharding
  stages: list[curriculum.Stage]
  stage_steps: dict[str, BoundStep]  # stage name -> jitted (state, batch) -> (state, metrics)
  eval_step: BoundStep  # jitted (params, batch) -> per-example outputs
  rng: jax.Array
  nets: frozen_lib.FrozenNets  # frozen networks; their parameters replicated in .params
  # real_features -> an eval step; without the originals' features when cached reference
  # statistics replace them (the evaluator).
  make_eval_step: Callable[[bool], BoundStep]
  # A generator: its token dataset's record (data/tokens.py) and flat layout; its eval
  # step samples token sequences, (params, labels [B], rng) -> [B, seq_len].
  token_metadata: dict[str, Any] | None = None
  layout: TokenLayout | None = None

  @property
  def kind(self) -> str:
    """"tokenizer" or "generator"."""
    return "generator" if is_generator(self.config.model.name) else "tokenizer"

  @property
  def modality(self) -> str:
    """"image" or "video": what the model takes and the run evaluates on (a generator:
    what the tokenizer of its token dataset codes)."""
    if self.kind == "generator":
      if self.token_metadata is None:
        raise ValueError("a generator without a token dataset (config.tokens.dir) has no "
                         "tokenizer to decode with")
      return model_class(self.token_metadata["tokenizer"]["model"]).modality
    return self.model.modality

  @property
  def frozen(self) -> dict[str, Any]:
    """The frozen networks' replicated parameters by name (the steps' last argument)."""
    return self.nets.params

  @property
  def eval_features(self) -> tuple[str, ...]:
    """The originals' feature statistics the eval step computes (cacheable)."""
    return self.nets.eval_features(self.modality)

  @property
  def num_parameters(self) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_state.params))

  @property
  def train_step(self) -> BoundStep:
    """The first stage's step (state donated)."""
    return self.stage_steps[self.stages[0].name]

  def distinct_stage_steps(self) -> dict[str, tuple]:
    """Each stage's compiled-program key: stages with equal keys run the same jitted step
    on the same batch shape, so the planner and the benchmark compile (and time) one."""
    return {stage.name: (id(self.stage_steps[stage.name]), stage.data, stage.batch_size)
            for stage in self.stages}

  def init_state(self) -> TrainState:
    """A fresh state, materialised directly with its shardings (never whole on one device)."""
    init = jax.jit(lambda r: nn.unbox(self.init_fn(r)), out_shardings=self.state_sharding)
    with parallel.run_context(self.mesh, self.rules):
      return init(self.rng)

  def restore_target(self) -> TrainState:
    return abstract_with_shardings(parallel.strip_boxes(self.abstract_state), self.state_sharding)

  def restore(self, workdir: str, step: int | None = None, *, purpose: str = ""
              ) -> tuple[TrainState, int]:
    """(state, step) of `workdir`'s checkpoint (latest, or `step`) on this mesh, without
    the data position: for evaluation, readouts and loaded tokenizers."""
    with parallel.run_context(self.mesh, self.rules):
      return restore_run_state(workdir, self.restore_target(), step, purpose=purpose)


def _mesh_and_rules(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None
                    ) -> tuple[Mesh, list[tuple[str, Any]], int]:
  """The mesh, the logical rules and the data-parallel size (which the batches divide)."""
  mesh = parallel.make_mesh(config.mesh, devices)
  rules = [tuple(rule) for rule in config.sharding_rules]
  dp = parallel.data_parallel_size(mesh, rules)
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % dp:
      raise ValueError(f"config.{name}={config[name]} is not divisible by the "
                       f"data-parallel size {dp} of mesh {dict(mesh.shape)}; use a multiple "
                       f"of {dp} (or change config.mesh)")
  return mesh, rules, dp


def build(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None,
          workdir: str | None = None, *, abstract_frozen: bool = False,
          frozen_networks: bool = True) -> Experiment:
  """Mesh (over `devices`, default all), model, optimizer, jitted steps with shardings.

  `workdir` holds (or receives) the run's copy of the language codebook, if any.
  `abstract_frozen`: the frozen networks stay shapes (the memory planner lowers steps
  without placing a replica of them on each of hundreds of virtual devices).
  `frozen_networks=False` loads none (a tokenizer loaded for use: its steps, which would
  need them, are never called). A generator's config builds a generator (`build_generator`).
  """
  if is_generator(config.model.name):
    return build_generator(config, devices)
  mesh, rules, dp = _mesh_and_rules(config, devices)
  stages = curriculum.stages_from_config(config)
  for stage in stages:
    if stage.batch_size % dp:
      raise ValueError(f"stage {stage.name!r} batch_size={stage.batch_size} is not divisible "
                       f"by the data-parallel size {dp} of mesh {dict(mesh.shape)}; set "
                       f"config.curriculum.stages.{stage.name}.batch_size to a multiple of {dp}")

  needed = model_class(config.model.name).word_groups_needed(config.model)
  model = build_model(**config.model, **run_codebook.for_run(config.codebook, needed, workdir))
  tx, schedule = optim.make(config.optim, stages)
  loss_weights = curriculum.gated_loss_weights(
      stages, perceptual_warmup_steps=config.perceptual.warmup_steps,
      gan_start_step=config.gan.start_step)
  if frozen_networks:
    nets = frozen_lib.load(
        config, mesh, modality=model.modality,
        perceptual=curriculum.uses_term(stages, "perceptual"),
        alignment_width=(config.model.get("align_width", 0)
                         if curriculum.uses_term(stages, "alignment") else None),
        materialize=not abstract_frozen)
  else:
    nets = frozen_lib.FrozenNets(perceptual=None, lpips=None, i3d=None, inception=None,
                                 teacher=None, params={})
  discriminator = (discriminator_lib.from_config(config.gan, model.modality)
                   if curriculum.uses_term(stages, "adversarial") else None)
  disc_tx = (optim.make_discriminator(config.gan, config.optim.eps, loss_weights["adversarial"])
             if discriminator else None)
  input_shape = (config.data.image_size, config.data.image_size, 3)
  if model.modality == "video":
    input_shape = (config.model.num_frames,) + input_shape

  with parallel.run_context(mesh, rules):
    init_fn = make_init_fn(model, tx, input_shape, ema=config.ema.decay > 0,
                           discriminator=discriminator, disc_tx=disc_tx)
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(init_fn, rng)
    state_sharding = parallel.logical_to_sharding(abstract, mesh, rules)
  batch_sharding = parallel.batch_sharding(mesh, rules)
  if discriminator is not None and config.gan.adaptive_weight:
    check_adaptive_layer(abstract.params, config.gan.adaptive_layer)
  frozen_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), nets.params)
  gan = GanOptions(
      lecam_weight=config.gan.lecam_weight, lecam_decay=config.gan.lecam_decay,
      disc_loss_weight=config.gan.disc_loss_weight, adaptive_weight=config.gan.adaptive_weight,
      adaptive_max=config.gan.adaptive_max, adaptive_layer=config.gan.adaptive_layer)
  groups = tuple(tuple(g) for g in config.optim.param_groups)

  def jitted_step(variant: tuple[bool, bool, bool, bool]) -> BoundStep:
    quantizer_train, with_perceptual, with_gan, with_alignment = variant
    step = jax.jit(
        make_train_step(model, tx, learning_rate=schedule, loss_weights=loss_weights,
                        quantizer_mix=curriculum.linear_ramp(config.quantizer_warmup_steps),
                        quantizer_train=quantizer_train,
                        perceptual=nets.perceptual if with_perceptual else None,
                        discriminator=discriminator if with_gan else None, disc_tx=disc_tx,
                        gan=gan, ema_decay=config.ema.decay, param_groups=groups,
                        inject_nan_at_step=config.inject_nan_at_step,
                        teacher=nets.teacher if with_alignment else None,
                        low_pass_block=config.model.patch_size),
        in_shardings=(state_sharding, batch_sharding, frozen_sharding),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=(0,))
    return BoundStep(step, nets.params, mesh, rules)

  # One jitted function per variant (quantizer mode; perceptual, GAN and alignment terms
  # on or off): a stage switch compiles at most once (for the new batch shape or variant);
  # stages alike share the compiled step.
  def variant(stage: curriculum.Stage) -> tuple[bool, bool, bool, bool]:
    return (stage.trains_quantizer, nets.perceptual is not None and stage.uses("perceptual"),
            discriminator is not None and stage.uses("adversarial"),
            nets.teacher is not None and stage.uses("alignment"))

  steps_by_variant = {v: jitted_step(v) for v in {variant(s) for s in stages}}
  stage_steps = {s.name: steps_by_variant[variant(s)] for s in stages}

  def jitted_eval_step(real_features: bool = True) -> BoundStep:
    step = make_eval_step(model, nets.lpips, nets.i3d, nets.inception, real_features)
    return BoundStep(jax.jit(step, in_shardings=(state_sharding.params, batch_sharding,
                                                 frozen_sharding)), nets.params, mesh, rules)

  return Experiment(config=config, mesh=mesh, rules=rules, model=model, tx=tx,
                    init_fn=init_fn, abstract_state=abstract, state_sharding=state_sharding,
                    batch_sharding=batch_sharding, stages=stages, stage_steps=stage_steps,
                    eval_step=jitted_eval_step(), rng=rng, nets=nets,
                    make_eval_step=jitted_eval_step)


def generator_fields(config: ml_collections.ConfigDict, layout: TokenLayout | None
                     ) -> dict[str, Any]:
  """The generator's module fields: config.model, its vocabulary and length from the
  token dataset's layout (a config that sets them must agree)."""
  fields = {k: v for k, v in config.model.items() if k != "name"}
  if layout is not None:
    for name, value in (("vocab_size", layout.vocab_size), ("seq_len", layout.seq_len)):
      if fields.get(name) not in (None, value):
        raise ValueError(f"config.model.{name}={fields[name]} but the token dataset "
                         f"{config.tokens.dir} has {value}: leave it unset (None)")
      fields[name] = value
  if config.model.name == "maskgit":
    fields["codebook_size"] = fields.pop("vocab_size")
  return fields


def build_generator(config: ml_collections.ConfigDict,
                    devices: Sequence[jax.Device] | None = None) -> Experiment:
  """A generator on tokens (config.model.name "ar" or "maskgit") as an `Experiment`: the
  same mesh, rules, optax chain, state and jitted-step contract as a tokenizer's; the
  stage's data is the token dataset; the eval step samples."""
  mesh, rules, _ = _mesh_and_rules(config, devices)
  meta = token_data.read_metadata(config.tokens.dir) if config.tokens.dir else None
  layout = TokenLayout.from_metadata(meta["layout"]) if meta is not None else None
  fields = generator_fields(config, layout)
  model = GENERATORS[config.model.name](**fields)
  stages = [dataclasses.replace(s, data="tokens") for s in curriculum.stages_from_config(config)]
  tx, schedule = optim.make(config.optim, stages)
  with parallel.run_context(mesh, rules):
    init_fn = make_generator_init_fn(model, tx, fields["seq_len"], ema=config.ema.decay > 0)
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(init_fn, rng)
    state_sharding = parallel.logical_to_sharding(abstract, mesh, rules)
  batch_sharding = parallel.batch_sharding(mesh, rules)
  replicated = parallel.replicated(mesh)
  step = jax.jit(
      make_generator_train_step(
          model, tx, kind=config.model.name, learning_rate=schedule,
          label_smoothing=config.label_smoothing, ema_decay=config.ema.decay,
          param_groups=tuple(tuple(g) for g in config.optim.param_groups),
          inject_nan_at_step=config.inject_nan_at_step),
      in_shardings=(state_sharding, batch_sharding, {}),
      out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  train_step = BoundStep(step, {}, mesh, rules)

  if config.model.name == "ar":
    ranges = layout.allowed_ranges() if layout is not None else None
    sampler = functools.partial(ar_sampling.sample, model, allowed_ranges=ranges,
                                **config.sampling)
  else:
    sampler = functools.partial(
        lambda params, labels, rng, **kw: maskgit_sampling.sample(
            model, {"params": params}, labels, rng, **kw), **config.sampling)

  def sample_step(params, labels, rng, frozen):
    del frozen
    return sampler(params, labels, rng)

  eval_step = BoundStep(
      jax.jit(sample_step,
              in_shardings=(state_sharding.params, batch_sharding, replicated, {})),
      {}, mesh, rules)
  nets = frozen_lib.FrozenNets(perceptual=None, lpips=None, i3d=None, inception=None,
                               teacher=None, params={})
  return Experiment(config=config, mesh=mesh, rules=rules, model=model, tx=tx,
                    init_fn=init_fn, abstract_state=abstract, state_sharding=state_sharding,
                    batch_sharding=batch_sharding, stages=stages,
                    stage_steps={s.name: train_step for s in stages}, eval_step=eval_step,
                    rng=rng, nets=nets, make_eval_step=lambda real_features=True: eval_step,
                    token_metadata=meta, layout=layout)
