"""Training curricula as configuration: an ordered list of stages.

A stage has a name, a length in steps, its data ("image" or "video"), its batch size,
the parameter groups it trains and its loss weights. Everything time-dependent that
follows from the stages (which groups are active, loss weights, the learning rate) is
a pure function of the global step, evaluated inside the jitted step; the Python loop
only needs the stages to pick the data iterator and the compiled step.

    config.curriculum.order = ("spatial", "temporal", "decoder")
    config.curriculum.stages.spatial = dict(steps=..., data="image", batch_size=...,
                                            train=("encoder", ...), loss=dict(recon=1.0, ...))

A config without `curriculum` is one stage, "train", of `config.total_steps` steps
that trains every group on images with `config.loss`.
"""

import dataclasses
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

Schedule = Callable[[jax.Array], jax.Array]
DATA_KINDS = ("image", "video")


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  start: int  # global step at which the stage begins
  steps: int
  data: Literal["image", "video", "tokens"]  # "tokens": a generator's token dataset
  batch_size: int
  train: tuple[str, ...]  # parameter groups that learn in this stage
  loss: tuple[tuple[str, float], ...]  # loss term -> weight
  lr: float

  @property
  def end(self) -> int:
    return self.start + self.steps

  def uses(self, term: str) -> bool:
    """Whether the stage weights loss `term` above 0."""
    return dict(self.loss).get(term, 0.0) > 0

  @property
  def trains_quantizer(self) -> bool:
    """Whether the stage trains a quantizer/codebook group; if not, the quantizer runs as
    in evaluation (no GCN dropout) since its codes are what the decoder must learn from."""
    return any("quantizer" in g or "codebook" in g for g in self.train)


def stages_from_config(config: ml_collections.ConfigDict) -> list[Stage]:
  """The config's stages with their global start steps (validated)."""
  groups = tuple(name for name, _ in config.optim.param_groups)
  if "curriculum" not in config:
    stages = [Stage("train", 0, int(config.total_steps), "image", int(config.batch_size), groups,
                    tuple((k, float(v)) for k, v in config.loss.items()), float(config.optim.lr))]
  else:
    order = tuple(config.curriculum.order)
    if not order:
      raise ValueError("config.curriculum.order is empty")
    stages, start = [], 0
    for name in order:
      if name not in config.curriculum.stages:
        raise ValueError(f"config.curriculum.order names stage {name!r}, which is not in "
                         f"config.curriculum.stages ({sorted(config.curriculum.stages)})")
      s = config.curriculum.stages[name]
      loss = dict(config.loss)
      unknown = set(s.get("loss", {})) - set(loss)
      if unknown:
        raise ValueError(f"stage {name!r} weights unknown loss terms {sorted(unknown)}; "
                         f"terms are {sorted(loss)}")
      loss.update(s.get("loss", {}))
      stage = Stage(name, start, int(s.steps), s.data, int(s.get("batch_size", config.batch_size)),
                    tuple(s.train), tuple((k, float(v)) for k, v in loss.items()),
                    float(s.get("lr", config.optim.lr)))
      stages.append(stage)
      start = stage.end
  validate(stages, groups)
  return stages


def validate(stages: Sequence[Stage], groups: Sequence[str]) -> None:
  """Names the problem with a curriculum before anything is built."""
  for stage in stages:
    if stage.steps <= 0:
      raise ValueError(f"stage {stage.name!r} has {stage.steps} steps; it needs at least one")
    if stage.data not in DATA_KINDS:
      raise ValueError(f"stage {stage.name!r} has data {stage.data!r}; use one of {DATA_KINDS}")
    unknown = set(stage.train) - set(groups)
    if unknown:
      raise ValueError(f"stage {stage.name!r} trains unknown parameter groups {sorted(unknown)}; "
                       f"the groups (config.optim.param_groups) are {list(groups)}")
    if not stage.train:
      raise ValueError(f"stage {stage.name!r} trains no parameter group")
  names = [stage.name for stage in stages]
  if len(set(names)) != len(names):
    raise ValueError(f"stage names repeat in the curriculum {names}")
  untrained = [g for g in groups if not any(g in stage.train for stage in stages)]
  if untrained:
    raise ValueError(f"parameter groups {untrained} are trained in no stage of the curriculum "
                     f"{names}; add them to a stage's `train` (or drop them from "
                     "config.optim.param_groups if the model has no such parameters)")


def total_steps(stages: Sequence[Stage]) -> int:
  return stages[-1].end


def stage_index(stages: Sequence[Stage], step: int) -> int:
  """The stage that the update taking `step` -> `step + 1` belongs to (the last one at
  or after the end)."""
  for i, stage in enumerate(stages):
    if step < stage.end:
      return i
  return len(stages) - 1


def linear_ramp(steps: int) -> Schedule:
  """0 -> 1 linearly over `steps` (1 from the start when steps == 0)."""
  if steps <= 0:
    return optax.constant_schedule(1.0)
  return optax.linear_schedule(0.0, 1.0, steps)


def piecewise(stages: Sequence[Stage], values: Sequence[float]) -> Schedule:
  """step -> values[stage of step], traceable."""
  starts = jnp.asarray([s.start for s in stages[1:]], jnp.int32)
  table = jnp.asarray(values, jnp.float32)
  return lambda step: table[jnp.sum(jnp.asarray(step, jnp.int32) >= starts)]


def active_schedules(stages: Sequence[Stage], groups: Sequence[str]) -> dict[str, Schedule]:
  """Group -> step -> 1.0 in the group's stages, 0.0 elsewhere."""
  return {g: piecewise(stages, [float(g in s.train) for s in stages]) for g in groups}


def loss_weight_schedules(stages: Sequence[Stage]) -> dict[str, Schedule]:
  names = [name for name, _ in stages[0].loss]
  return {name: piecewise(stages, [dict(s.loss)[name] for s in stages]) for name in names}


def learning_rate_schedule(stages: Sequence[Stage], warmup_steps: int,
                           end_lr_fraction: float) -> Schedule:
  """Warm-up + cosine decay restarted in every stage (each stage is its own phase of
  training, as the official recipe's separate stage runs are)."""
  schedules = [optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=s.lr, warmup_steps=min(warmup_steps, s.steps - 1),
      decay_steps=max(s.steps, 1), end_value=s.lr * end_lr_fraction) for s in stages]
  if len(schedules) == 1:
    return schedules[0]
  return optax.join_schedules(schedules, [s.start for s in stages[1:]])


def summary(stages: Sequence[Stage]) -> str:
  return ", ".join(f"{s.name} [{s.start}, {s.end}) {s.data} x{s.batch_size} trains "
                   f"{'+'.join(s.train)}" for s in stages)


def uses_term(stages: Sequence[Stage], term: str) -> bool:
  """Whether any stage weights loss `term` above 0."""
  return any(stage.uses(term) for stage in stages)


def gated_loss_weights(stages: Sequence[Stage], *, perceptual_warmup_steps: int,
                       gan_start_step: int) -> dict[str, Schedule]:
  """The stages' loss weights, with the perceptual weight ramped in over
  `perceptual_warmup_steps` and the adversarial weight 0 before `gan_start_step`."""
  weights = loss_weight_schedules(stages)
  ramp = linear_ramp(perceptual_warmup_steps)
  base_perceptual, base_adversarial = weights["perceptual"], weights["adversarial"]
  weights["perceptual"] = lambda step: base_perceptual(step) * ramp(step)
  weights["adversarial"] = lambda step: jnp.where(step >= gan_start_step,
                                                  base_adversarial(step), 0.0)
  return weights
