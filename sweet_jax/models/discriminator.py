"""PatchGAN discriminators: 2-D for images (taming-transformers' NLayerDiscriminator) and
3-D for clips (OmniTokenizer's NLayerDiscriminator3D, the one SweetTokenizer's decoder
stage trains against; arXiv:2412.10443).

    conv k4 s2 -> LeakyReLU(0.2)
    (depth - 1) x [conv k4 s2 (width x 2^i, at most x8) -> norm -> LeakyReLU]
    conv k4 s1 -> norm -> LeakyReLU -> conv k4 s1 -> 1 logit per patch

Spatial kernels are 4 with padding 1, as the originals. Deviation (3-D): the temporal
kernel is 3 with padding 1 instead of 4, so that a 17-frame clip, or the one-frame clips
of an image stage, keep at least one temporal position after every layer (with 4, 17
frames shrink to zero at depth 3).

`norm="batch"` normalises over the batch and positions with the batch's own statistics
and keeps no running averages: the discriminator only ever runs in training mode (as in
taming and OmniTokenizer), so running statistics would never be read. Under data
parallelism the mean is over the global batch (SyncBatchNorm), because the step is one
jitted function over sharded arrays.
"""

from typing import Literal

import ml_collections

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from sweet_jax.nn.layers import param_init

Norm = Literal["batch", "group", "none"]


class BatchStatNorm(nn.Module):
  """Normalisation with the current batch's statistics (no running averages)."""

  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.var(x, axis=axes)
    scale = self.param("scale", param_init(
        lambda k, s: 1.0 + 0.02 * jax.random.normal(k, s), ("conv_out",)), (x.shape[-1],))
    bias = self.param("bias", param_init(nn.initializers.zeros, ("conv_out",)), (x.shape[-1],))
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class TemporalTapConv(nn.Module):
  """A 3-D convolution (padding 1 in every dimension, one stride for all) computed as
  the sum of 2-D convolutions over its temporal taps.

  The same parameters ("kernel" [kt, kh, kw, in, out], "bias") and result as `nn.Conv`
  with that 3-D kernel, but XLA:CPU differentiates a native 3-D convolution through
  Eigen's volume patches about 50x slower than its 2-D convolutions (4.6 s vs 0.1 s for
  the CPU video config's discriminator gradient); accelerators are fast either way.
  """

  features: int
  kernel_size: tuple[int, int, int]
  stride: int
  use_bias: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kt, kh, kw = self.kernel_size
    names = (None, None, None, "conv_in", "conv_out")
    kernel = self.param("kernel", param_init(nn.initializers.normal(0.02), names),
                        (kt, kh, kw, x.shape[-1], self.features))
    b, t, s = x.shape[0], x.shape[1], self.stride
    padded = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    t_out = (t + 2 - kt) // s + 1
    out = 0.0
    for tap in range(kt):
      frames = padded[:, tap:tap + s * (t_out - 1) + 1:s]  # [B, t_out, H, W, C]
      out = out + lax.conv_general_dilated(
          frames.reshape((b * t_out,) + frames.shape[2:]), kernel[tap], (s, s),
          [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = out.reshape((b, t_out) + out.shape[1:])
    if self.use_bias:
      out = out + self.param("bias", param_init(nn.initializers.zeros, ("conv_out",)),
                             (self.features,))
    return out


class PatchDiscriminator(nn.Module):
  """Per-patch real/fake logits of images [B, H, W, 3] (`spatial_dims=2`) or clips
  [B, T, H, W, 3] (`spatial_dims=3`) in [-1, 1]."""

  width: int = 64
  depth: int = 3
  norm: Norm = "batch"
  spatial_dims: Literal[2, 3] = 2

  def _conv(self, features: int, stride: int, use_bias: bool, name: str) -> nn.Module:
    if self.spatial_dims == 3:
      return TemporalTapConv(features, (3, 4, 4), stride, use_bias, name=name)
    kernel = (4, 4)
    padding = [(1, 1)] * len(kernel)
    names = (None,) * len(kernel) + ("conv_in", "conv_out")
    return nn.Conv(features, kernel, strides=stride, padding=padding, use_bias=use_bias,
                   kernel_init=param_init(nn.initializers.normal(0.02), names),
                   bias_init=param_init(nn.initializers.zeros, ("conv_out",)), name=name)

  def _norm(self, x: jax.Array, name: str) -> jax.Array:
    if self.norm == "batch":
      return BatchStatNorm(name=name)(x)
    if self.norm == "group":
      return nn.GroupNorm(num_groups=min(32, x.shape[-1]), name=name,
                          scale_init=param_init(nn.initializers.ones, ("conv_out",)),
                          bias_init=param_init(nn.initializers.zeros, ("conv_out",)))(x)
    if self.norm == "none":
      return x
    raise ValueError(f"unknown discriminator norm {self.norm!r}; use batch, group or none")

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != self.spatial_dims + 2:
      raise ValueError(f"a {self.spatial_dims}-D discriminator takes "
                       f"{self.spatial_dims + 2}-D inputs, got shape {x.shape}")
    use_bias = self.norm == "none"  # a norm's bias replaces the conv's
    x = nn.leaky_relu(self._conv(self.width, 2, True, "conv0")(x), 0.2)
    for i in range(1, self.depth + 1):
      stride = 2 if i < self.depth else 1
      x = self._conv(self.width * min(2**i, 8), stride, use_bias, f"conv{i}")(x)
      x = nn.leaky_relu(self._norm(x, f"norm{i}"), 0.2)
    return self._conv(1, 1, True, "logits")(x)


def from_config(gan: ml_collections.ConfigDict, modality: str) -> PatchDiscriminator:
  """config.gan's discriminator for a model of `modality` ("auto": 3-D for clips)."""
  kind = gan.discriminator
  if kind == "auto":
    kind = "patchgan3d" if modality == "video" else "patchgan2d"
  if kind not in ("patchgan2d", "patchgan3d"):
    raise ValueError(f"config.gan.discriminator={kind!r}; use auto, patchgan2d or patchgan3d")
  if kind == "patchgan2d" and modality == "video":
    raise ValueError("config.gan.discriminator='patchgan2d' cannot judge the clips of a video "
                     "model; use patchgan3d (or auto)")
  return PatchDiscriminator(width=gan.width, depth=gan.depth, norm=gan.norm,
                            spatial_dims=3 if kind == "patchgan3d" else 2)
