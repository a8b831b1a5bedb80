"""The InceptionV3 of FID (pytorch-fid's `FIDInceptionV3`), its weights, and a converter.

Provenance: FID (Heusel et al. 2017) embeds images with the pool3 layer of TensorFlow's 2015
Inception graph (`inception-2015-12-05.tgz`). pytorch-fid ported that graph to torchvision's
`Inception3` layout and published the weights as `pt_inception-2015-12-05-6726825d.pth`; its
`fid_inception_v3()` patches four block types where the TF graph differs from torchvision:
the 3x3 average pools of the A, C and E blocks exclude padding from the mean (TF's 'SAME'
pooling), and the last E block (Mixed_7c) pools its fourth branch with a max pool. This module
is our own Flax port of that network, written against pytorch-fid's `inception.py` and
torchvision's `inception.py`, with the same module names, so the state dict maps 1:1:
`<module>.conv.weight` (OIHW) -> params/<module>/conv/kernel (HWIO), `<module>.bn.weight` /
`.bn.bias` -> params/<module>/bn/scale, bias and `.bn.running_mean` / `.running_var` ->
batch_stats/<module>/bn/mean, var. The 1008-way `fc` classifier is not part of the features.

As in pytorch-fid's `InceptionV3` (resize_input, normalize_input), images in [0, 1] are
resized to 299x299 bilinearly with align_corners=False and no antialiasing, then scaled to
[-1, 1]; the features are the 2048 channels of Mixed_7c averaged over space. Inference only:
BatchNorm uses the stored running statistics.

The weights cannot be downloaded here, so FID takes a user-supplied file: the `.pth`,
converted without torch (and without executing its pickle) by
  python -m sweet_jax.nets.inception convert --pth=FILE.pth --out=FILE.npz
"""

import argparse
import functools
import hashlib
import os
import sys
from typing import Callable, Sequence

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from sweet_jax import torch_weights, weights

FID_RESOLUTION = 299
FEATURE_DIM = 2048
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_FILE)
# torch.hub's naming convention: the file name carries the start of the file's SHA-256.
_FID_WEIGHTS_SHA256_PREFIX = "6726825d"

WEIGHTS_HELP = (
    f"FID needs pytorch-fid's InceptionV3 weights, {FID_WEIGHTS_FILE}, which are not "
    f"downloaded automatically. On a machine with internet, download {FID_WEIGHTS_URL}; convert it "
    f"(no torch needed) with `python -m sweet_jax.nets.inception convert "
    f"--pth={FID_WEIGHTS_FILE} --out=pt_inception-2015-12-05.npz`, or supply any .npz of that "
    "state dict (keys such as 'Conv2d_1a_3x3.conv.weight'); and pass the .npz with "
    "--config.eval.inception_weights=pt_inception-2015-12-05.npz (the config field "
    "eval.inception_weights).")

# Float32 convolutions (no TF32/bf16 passes on GPUs), so features match the reference.
_PRECISION = jax.lax.Precision.HIGHEST

# State-dict key suffix -> (Flax collection, Flax leaf) for the parameters of a BasicConv2d.
_STATE_DICT_TO_FLAX = {
    ("conv", "weight"): ("params", "kernel"),
    ("bn", "weight"): ("params", "scale"),
    ("bn", "bias"): ("params", "bias"),
    ("bn", "running_mean"): ("batch_stats", "mean"),
    ("bn", "running_var"): ("batch_stats", "var"),
}
# State-dict entries that are not part of the pool3 features (the classifier) or not weights.
_IGNORED_PREFIX, _IGNORED_SUFFIX = "fc.", ".num_batches_tracked"


class BasicConv2d(nn.Module):
  """torchvision's BasicConv2d: bias-free conv, BatchNorm (eps 1e-3), ReLU.

  Submodules are named `conv` and `bn` as in torch. `padding` is torch's symmetric zero
  padding (rows, columns).
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=tuple((p, p) for p in self.padding), use_bias=False,
                precision=_PRECISION, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_excluding_padding(x: jax.Array) -> jax.Array:
  """F.avg_pool2d(kernel 3, stride 1, padding 1, count_include_pad=False): pytorch-fid's patch."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
  """nn.MaxPool2d(kernel_size=3, stride=2): no padding, so a partial last window is dropped."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
  """Mixed_5b/5c/5d: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
    branch5x5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
    branch5x5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
    branch3x3dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)
    branch_pool = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(
        _avg_pool_3x3_excluding_padding(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (35 -> 17): 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | max pool stride 2."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = BasicConv2d(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    branch3x3dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride_2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b-6e: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg pool -> 1x1."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    branch1x1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
    branch7x7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
    branch7x7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
    branch7x7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
    branch7x7dbl = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
    branch7x7dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(branch7x7dbl)
    branch_pool = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_3x3_excluding_padding(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (17 -> 8): 1x1 -> 3x3 stride 2 | 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2 | max pool."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
    branch3x3 = BasicConv2d(320, (3, 3), strides=(2, 2), name="branch3x3_2")(branch3x3)
    branch7x7x3 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
    branch7x7x3 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride_2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b/7c: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool -> 1x1.

  pytorch-fid's FIDInceptionE_1 (Mixed_7b) average-pools excluding padding; its
  FIDInceptionE_2 (Mixed_7c) max-pools (3x3, stride 1, padding 1), as the TF graph does.
  """
  max_pool_branch: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
    branch3x3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
    branch3x3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3),
    ], axis=-1)
    branch3x3dbl = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(branch3x3dbl),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(branch3x3dbl),
    ], axis=-1)
    if self.max_pool_branch:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3_excluding_padding(x)
    branch_pool = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


def resize_and_normalize(images: jax.Array) -> jax.Array:
  """[B, H, W, 3] in [0, 1] -> [B, 299, 299, 3] in [-1, 1], as pytorch-fid's InceptionV3.

  F.interpolate(bilinear, align_corners=False) samples source position
  (i + 0.5) * in / out - 0.5, clamped to the image; jax's bilinear resize without
  antialiasing samples the same positions and renormalises its triangle weights at the
  borders, which gives the same clamped values.
  """
  batch = images.shape[0]
  images = jax.image.resize(images, (batch, FID_RESOLUTION, FID_RESOLUTION, 3),
                            method="bilinear", antialias=False)
  return 2.0 * images - 1.0


class FIDInceptionV3(nn.Module):
  """pytorch-fid's FID InceptionV3 to pool3: [B, H, W, 3] images in [0, 1] -> [B, 2048]."""

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"FIDInceptionV3 expects [B, H, W, 3] images, got shape {images.shape}.")
    x = resize_and_normalize(images)
    x = BasicConv2d(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)  # 149x149
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)  # 147x147
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_stride_2(x)  # 73x73
    x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)  # 71x71
    x = _max_pool_3x3_stride_2(x)  # 35x35
    x = FIDInceptionA(32, name="Mixed_5b")(x)  # 256 channels
    x = FIDInceptionA(64, name="Mixed_5c")(x)  # 288
    x = FIDInceptionA(64, name="Mixed_5d")(x)  # 288
    x = InceptionB(name="Mixed_6a")(x)  # 17x17x768
    x = FIDInceptionC(128, name="Mixed_6b")(x)
    x = FIDInceptionC(160, name="Mixed_6c")(x)
    x = FIDInceptionC(160, name="Mixed_6d")(x)
    x = FIDInceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)  # 8x8x1280
    x = FIDInceptionE(max_pool_branch=False, name="Mixed_7b")(x)  # 2048
    x = FIDInceptionE(max_pool_branch=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1): pool3.


@functools.cache
def _variable_shapes() -> dict[str, tuple[int, ...]]:
  """'params/Mixed_5b/branch1x1/conv/kernel' -> shape, for every variable of the network."""
  shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                          jnp.zeros((1, FID_RESOLUTION, FID_RESOLUTION, 3)))
  return {name: leaf.shape for name, leaf in traverse_util.flatten_dict(shapes, sep="/").items()}


def variables_from_state_dict(state_dict: dict[str, np.ndarray], source: str) -> dict:
  """{'params', 'batch_stats'} for `FIDInceptionV3().apply` from pytorch-fid's state dict.

  Every network variable must be present with its exact shape; keys other than the
  classifier (`fc.*`) and `num_batches_tracked` counters must all be used.
  """
  flat = {}
  for key, value in state_dict.items():
    if key.startswith(_IGNORED_PREFIX) or key.endswith(_IGNORED_SUFFIX):
      continue
    *module_path, layer, leaf = key.split(".")
    if (layer, leaf) not in _STATE_DICT_TO_FLAX:
      raise ValueError(f"{source}: unexpected state-dict entry {key!r}; is this pytorch-fid's "
                       f"{FID_WEIGHTS_FILE}?")
    collection, flax_leaf = _STATE_DICT_TO_FLAX[(layer, leaf)]
    value = np.asarray(value, np.float32)
    if flax_leaf == "kernel":
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    flat["/".join([collection, *module_path, layer, flax_leaf])] = value
  expected = _variable_shapes()
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  wrong_shape = sorted(f"{k}: {flat[k].shape} != {expected[k]}"
                       for k in set(flat) & set(expected) if flat[k].shape != expected[k])
  if missing or unexpected or wrong_shape:
    raise ValueError(f"{source}: does not match the FID InceptionV3 (missing {missing[:5]}, "
                     f"unexpected {unexpected[:5]}, wrong shapes {wrong_shape[:5]}; "
                     f"{len(missing)}/{len(unexpected)}/{len(wrong_shape)} in all).")
  return weights.unflatten(flat)


def load_inception_variables(path: str | None) -> dict:
  """{'params', 'batch_stats'} from a `.npz` of pytorch-fid's state dict (see WEIGHTS_HELP)."""
  if path is None:
    raise FileNotFoundError(f"No InceptionV3 weights given. {WEIGHTS_HELP}")
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"InceptionV3 weights file not found: {path}. {WEIGHTS_HELP}")
  if not path.endswith(".npz"):
    raise ValueError(f"{path}: expected a .npz of pytorch-fid's state dict. {WEIGHTS_HELP}")
  return variables_from_state_dict(weights.load_npz(path), path)


def to_unit_range(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] or float [0, 1] images (chosen by dtype) -> float32 in [0, 1]."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  if jnp.issubdtype(images.dtype, jnp.floating):
    return images.astype(jnp.float32)
  raise TypeError(f"FID takes uint8 [0, 255] or float [0, 1] images, got {images.dtype}.")


def make_inception_features_fn(variables: dict) -> Callable[[jax.Array], jax.Array]:
  """A jitted NHWC images (uint8, or float in [0, 1]) -> [B, 2048] float32 pool3 features.

  The weights are an argument of the jitted function, not constants baked into it, and are
  put on the device once (uncommitted, so sharded image batches work too).
  """
  model = FIDInceptionV3()
  variables = jax.device_put(variables)

  @jax.jit
  def features(variables: dict, images: jax.Array) -> jax.Array:
    return model.apply(variables, to_unit_range(images))

  return lambda images: features(variables, images)


def convert(pth_path: str, npz_path: str) -> dict[str, np.ndarray]:
  """pytorch-fid's `.pth` -> `.npz` of its state dict (checked against the network first)."""
  state_dict = torch_weights.load_torch_state_dict(pth_path)
  state_dict = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIX)}
  variables_from_state_dict(state_dict, pth_path)
  np.savez(npz_path, **state_dict)
  return state_dict


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m sweet_jax.nets.inception",
                                   description="Tools for the FID InceptionV3 weights.")
  commands = parser.add_subparsers(dest="command", required=True)
  convert_parser = commands.add_parser(
      "convert", help=f"Convert pytorch-fid's {FID_WEIGHTS_FILE} to .npz, without torch.")
  convert_parser.add_argument("--pth", required=True, help="The torch file to read.")
  convert_parser.add_argument("--out", required=True, help="The .npz file to write.")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  out = args.out if args.out.endswith(".npz") else args.out + ".npz"  # As np.savez names it.
  try:
    state_dict = convert(args.pth, out)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  with open(args.pth, "rb") as f:
    sha256 = hashlib.sha256(f.read()).hexdigest()
  agrees = "agrees" if sha256.startswith(_FID_WEIGHTS_SHA256_PREFIX) else "DISAGREES"
  print(f"{args.pth}: sha256 {sha256} ({agrees} with the prefix "
        f"{_FID_WEIGHTS_SHA256_PREFIX} in the name of pytorch-fid's release file)")
  print(f"wrote {len(state_dict)} arrays to {os.path.abspath(out)}; pass it with "
        f"--config.eval.inception_weights={out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
