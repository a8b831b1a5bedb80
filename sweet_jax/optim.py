"""The optimizer: one optax chain with per-parameter-group transforms.

  count_steps            the global step, kept in the optimizer state
  clip_by_global_norm    gradient clipping
  multi_transform        per group (encoder, queries, quantizer, decoder):
                         AdamW (warm-up + cosine, times the group's lr multiplier,
                         weight decay on kernels only) or set_to_zero (frozen)

Groups are assigned by regular expressions over '/'-joined parameter paths;
every parameter must fall into exactly one group.
"""

import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

Schedule = Callable[[jax.Array], jax.Array]


class StepCountState(NamedTuple):
  step: jax.Array


def count_steps() -> optax.GradientTransformation:
  """Counts updates; the train step reads the step from here (and nowhere else)."""

  def init_fn(params):
    del params
    return StepCountState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    return updates, StepCountState(optax.safe_increment(state.step))

  return optax.GradientTransformation(init_fn, update_fn)


def get_step(opt_state: Any) -> jax.Array:
  """The number of updates applied so far (the chain's first state)."""
  return opt_state[0].step


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def map_with_path(fn: Callable[[str, Any], Any], params: Any) -> Any:
  """tree_map over parameters with '/'-joined paths; Linen boxes count as leaves."""
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(_path_str(p), x), params, is_leaf=_is_box)


def param_group_labels(params: Any, groups: Sequence[tuple[str, str]]) -> Any:
  """Labels each parameter with the first group whose regex matches its path."""
  compiled = [(name, re.compile(pattern)) for name, pattern in groups]

  def label(path: str, _) -> str:
    for name, pattern in compiled:
      if pattern.search(path):
        return name
    raise ValueError(f"parameter {path!r} matches no group in config.optim.param_groups "
                     f"({[g for g, _ in groups]})")

  return map_with_path(label, params)


def decay_mask(params: Any) -> Any:
  """Weight decay on kernels only (not biases, norms, embeddings, codebooks)."""
  return map_with_path(lambda path, _: path.endswith("kernel"), params)


def warmup_cosine(base_lr: float, warmup_steps: int, total_steps: int,
                  end_lr_fraction: float) -> Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=base_lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=base_lr * end_lr_fraction)


def linear_ramp(steps: int) -> Schedule:
  """0 -> 1 linearly over `steps` (1 from the start when steps == 0)."""
  if steps <= 0:
    return optax.constant_schedule(1.0)
  return optax.linear_schedule(0.0, 1.0, steps)


def make_optimizer(*, schedule: Schedule, groups: Sequence[tuple[str, str]],
                   lr_mult: dict[str, float], b1: float, b2: float, eps: float,
                   weight_decay: float, clip_norm: float) -> optax.GradientTransformation:
  names = [name for name, _ in groups]
  unknown = set(lr_mult) - set(names)
  if unknown:
    raise ValueError(f"config.optim.lr_mult names unknown groups {sorted(unknown)}; "
                     f"groups are {names}")

  def group_transform(mult: float) -> optax.GradientTransformation:
    if mult == 0.0:
      return optax.set_to_zero()
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=lambda count: schedule(count) * mult,
        b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)

  transforms = {name: group_transform(float(lr_mult.get(name, 1.0))) for name in names}
  return optax.chain(
      count_steps(),
      optax.clip_by_global_norm(clip_norm),
      optax.multi_transform(transforms, lambda p: param_group_labels(p, groups)),
  )
