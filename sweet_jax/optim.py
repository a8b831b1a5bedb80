"""The optimizer: one optax chain with per-parameter-group transforms.

  count_steps            the global step, kept in the optimizer state
  zero_inactive_groups   gradients of groups outside their curriculum stages -> 0
                         (so they do not count in the clipping norm)
  clip_by_global_norm    gradient clipping
  multi_transform        per group (encoder, queries, quantizer, decoder, ...):
                         inject_hyperparams(AdamW gated by `active`) (learning rate
                         schedule times the group's lr multiplier, weight decay on
                         kernels only; while `active` is 0 the update is 0 and the
                         moments and Adam's count stay as they were), or set_to_zero
                         (lr_mult 0: frozen for the whole run)

Groups are assigned by regular expressions over '/'-joined parameter paths;
every parameter must fall into exactly one group.
"""

import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn

from sweet_jax import curriculum

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


def freeze_unless(inner: optax.GradientTransformation,
                  active: jax.Array | float) -> optax.GradientTransformation:
  """`inner` while `active` > 0; otherwise a zero update and an unchanged state (a group
  outside its curriculum stages keeps its moments for when it trains again)."""

  def update_fn(updates, state, params=None):
    new_updates, new_state = inner.update(updates, state, params)
    on = jnp.asarray(active) > 0
    new_updates = jax.tree.map(lambda u: jnp.where(on, u, jnp.zeros_like(u)), new_updates)
    new_state = jax.tree.map(lambda n, o: jnp.where(on, n, o), new_state, state)
    return new_updates, new_state

  return optax.GradientTransformation(inner.init, update_fn)


def zero_inactive_groups(labels: Callable[[Any], Any],
                         active: Mapping[str, Schedule]) -> optax.GradientTransformation:
  """Zeroes the gradients of groups whose `active[group](step)` is 0."""

  def init_fn(params):
    del params
    return StepCountState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    flags = {group: fn(state.step) > 0 for group, fn in active.items()}
    updates = jax.tree.map(
        lambda g, label: jnp.where(flags[label], g, jnp.zeros_like(g)) if label in flags else g,
        updates, labels(updates))
    return updates, StepCountState(optax.safe_increment(state.step))

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(*, schedule: Schedule, groups: Sequence[tuple[str, str]],
                   lr_mult: dict[str, float], b1: float, b2: float, eps: float,
                   weight_decay: float, clip_norm: float,
                   active: Mapping[str, Schedule] | None = None) -> optax.GradientTransformation:
  """The chain above; `active` (group -> step -> 0/1, from the curriculum) gates groups
  in time, missing groups are always active."""
  names = [name for name, _ in groups]
  unknown = set(lr_mult) - set(names)
  if unknown:
    raise ValueError(f"config.optim.lr_mult names unknown groups {sorted(unknown)}; "
                     f"groups are {names}")
  active = dict(active or {})

  def gated_adamw(learning_rate, active, b1, b2, eps, weight_decay):
    return freeze_unless(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                                     weight_decay=weight_decay, mask=decay_mask), active)

  def group_transform(name: str, mult: float) -> optax.GradientTransformation:
    if mult == 0.0:
      return optax.set_to_zero()
    return optax.inject_hyperparams(gated_adamw)(
        learning_rate=lambda count: schedule(count) * mult,
        active=active.get(name, lambda count: 1.0),
        b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)

  transforms = {name: group_transform(name, float(lr_mult.get(name, 1.0))) for name in names}
  labels = lambda p: param_group_labels(p, groups)
  return optax.chain(
      count_steps(),
      zero_inactive_groups(labels, active),
      optax.clip_by_global_norm(clip_norm),
      optax.multi_transform(transforms, labels),
  )


def group_hyperparams(opt_state) -> Mapping[str, jax.Array]:
  """Current learning rate and active flag per group, read from the optimizer's
  `inject_hyperparams` states (what the step logs)."""
  out = {}
  inner = getattr(opt_state[-1], "inner_states", {})
  for group, state in inner.items():
    state = getattr(state, "inner_state", state)
    hyper = getattr(state, "hyperparams", None)
    if hyper:
      out[f"lr_{group}"] = hyper["learning_rate"]
      out[f"active_{group}"] = hyper["active"]
  return out


def make(optim: ml_collections.ConfigDict, stages: Sequence[curriculum.Stage]
         ) -> tuple[optax.GradientTransformation, Schedule]:
  """The tokenizer's chain from config.optim and the curriculum, and its learning-rate
  schedule (for logging)."""
  groups = [tuple(g) for g in optim.param_groups]
  schedule = curriculum.learning_rate_schedule(stages, optim.warmup_steps, optim.end_lr_fraction)
  tx = make_optimizer(
      schedule=schedule, groups=groups, lr_mult=dict(optim.lr_mult), b1=optim.b1, b2=optim.b2,
      eps=optim.eps, weight_decay=optim.weight_decay, clip_norm=optim.clip_norm,
      active=(curriculum.active_schedules(stages, [name for name, _ in groups])
              if len(stages) > 1 else None))
  return tx, schedule


def make_discriminator(gan: ml_collections.ConfigDict, eps: float,
                       adversarial_weight: Schedule) -> optax.GradientTransformation:
  """The same gated chain as the tokenizer's, over one group: the discriminator learns
  while `adversarial_weight` is > 0; its learning rate (config.gan) warms up from the GAN
  start. Its step count advances every step (a zero update outside GAN stages), so it is
  the global step."""
  warmup = curriculum.linear_ramp(gan.warmup_steps)
  schedule = lambda step: gan.lr * warmup(jnp.maximum(step - gan.start_step, 0))
  return make_optimizer(
      schedule=schedule, groups=(("discriminator", ".*"),), lr_mult={}, b1=gan.b1, b2=gan.b2,
      eps=eps, weight_decay=gan.weight_decay, clip_norm=gan.clip_norm,
      active={"discriminator": lambda step: (adversarial_weight(step) > 0).astype(jnp.float32)})
