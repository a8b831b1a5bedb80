"""The representation-alignment projector of SoftVQ-VAE: the model part of the alignment
term (the loss is `sweet_jax.losses.alignment`).

The official code projects the *quantized* latent z_q (before `post_quant_conv`) with a
3-layer SiLU MLP to the teacher's width. `mode` says how latent tokens meet teacher
patches (see `sweet_jax.losses.alignment`); for "global" the official code pools z_q
*before* the projector, so feed the projector `projector_input(z_q, "global")`.
"""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from sweet_jax.nn.layers import param_init

ALIGNMENT_MODES = ("repeat", "global", "avg_1d")


def check_alignment_mode(mode: str) -> None:
  if mode not in ALIGNMENT_MODES:
    raise ValueError(f"unknown alignment mode {mode!r}; use one of {ALIGNMENT_MODES}")


def _torch_linear(features: int, fan_in: int, names: tuple[str | None, str | None],
                  name: str) -> nn.Dense:
  """A Dense initialised as torch's nn.Linear default (weight and bias
  U(-1/sqrt(fan_in), 1/sqrt(fan_in))): the official projector keeps that init."""
  bound = 1.0 / math.sqrt(fan_in)

  def uniform(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.Dense(features, kernel_init=param_init(uniform, names),
                  bias_init=param_init(uniform, (names[1],)), name=name)


class AlignmentProjector(nn.Module):
  """The official `build_mlp`: Linear(D -> hidden), SiLU, Linear(hidden -> hidden), SiLU,
  Linear(hidden -> out_dim), with out_dim the teacher's width."""

  hidden_dim: int
  out_dim: int

  @nn.compact
  def __call__(self, latents: jax.Array) -> jax.Array:
    x = _torch_linear(self.hidden_dim, latents.shape[-1], ("code", "mlp"), "fc1")(latents)
    x = _torch_linear(self.hidden_dim, self.hidden_dim, ("mlp", None), "fc2")(nn.silu(x))
    return _torch_linear(self.out_dim, self.hidden_dim, (None, "embed"), "fc3")(nn.silu(x))


def projector_input(latents: jax.Array, mode: str) -> jax.Array:
  """What the projector sees: latents [B, L, D], mean-pooled to [B, 1, D] for "global"
  (the official code projects the pooled latent, not the pooled projections)."""
  check_alignment_mode(mode)
  return jnp.mean(latents, axis=1, keepdims=True) if mode == "global" else latents
