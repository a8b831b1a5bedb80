"""The frozen DINOv2 teacher of SoftVQ's representation alignment (arXiv:2412.10958).

The official code builds it with `timm.create_model('vit_large_patch14_dinov2.lvd142m',
pretrained=True, img_size=256, patch_size=16)`: timm's `checkpoint_filter_fn` then
resamples the 14x14 patch embedding to 16x16 (`resample_patch_embed`: the
pseudo-inverse of the resize, FlexiViT) and the 37x37 position table to 16x16
(`resample_abs_pos_embed`), both through `F.interpolate(mode='bicubic',
antialias=True)`, the cls entry kept. We do the same in numpy, from a state dict the
user supplies (`.npz` without pickle or `.safetensors`, timm's key names; the original
facebookresearch checkpoints use the same names plus a `mask_token`, which is ignored).
Nothing is downloaded.

Note: FlexiViT (arXiv:2212.08013) speaks of a *bilinear* resize; timm (hence the official
SoftVQ teacher) uses antialiased bicubic for DINOv2, and so do we.

Features (`teacher_features`): images in [-1, 1] -> [0, 1] -> ImageNet mean/std ->
ViT -> final-norm patch tokens without the cls, [B, N, width], under stop_gradient:
the `forward_features(x)[:, num_prefix_tokens:]` of the official code.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import linen as nn

from sweet_jax.nn.vit import DINOV2_LAYER_SCALE, ViT
from sweet_jax.weights import load_flat_weights

CONFIG_FIELD = "config.alignment.teacher_path"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Heads by width for timm's DINOv2 ViTs (S, B, L); other widths need `num_heads`.
DINOV2_HEADS = {384: 6, 768: 12, 1024: 16}

# Entries of a DINOv2 checkpoint that the features do not use.
_IGNORED = ("mask_token",)
_REGISTERS = ("register_tokens", "reg_token")

WEIGHTS_HELP = (
    f"Set {CONFIG_FIELD} to a DINOv2 ViT state dict (.npz or .safetensors, timm's key "
    "names, e.g. vit_large_patch14_dinov2.lvd142m). DINOv2 weights must be supplied by "
    "the user; nothing is downloaded.")


# ---------------------------------------------------------------------------
# Resampling, as timm does it through torch's F.interpolate.


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  """Keys' cubic convolution kernel; torch's antialiased bicubic (as PIL) uses a = -0.5."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of torch's `F.interpolate(mode='bicubic', antialias=True,
  align_corners=False)` along one axis (aten `_compute_weights_aa`): the cubic kernel is
  stretched by the downscale factor (never shrunk when upsampling) and each row's
  weights are renormalised to sum to 1, which is how the borders are handled."""
  scale = in_size / out_size
  support = 2.0 * scale if scale >= 1.0 else 2.0
  invscale = 1.0 / scale if scale >= 1.0 else 1.0
  weights = np.zeros((out_size, in_size))
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    taps = _cubic((np.arange(lo, hi) - center + 0.5) * invscale)
    if taps.sum() != 0.0:
      taps = taps / taps.sum()
    weights[i, lo:hi] = taps
  return weights


def resize_2d(x: np.ndarray, new_size: tuple[int, int]) -> np.ndarray:
  """Resizes the last two axes of x ([..., h, w] -> [..., H, W]) as `resize_matrix`."""
  rows = resize_matrix(x.shape[-2], new_size[0])
  cols = resize_matrix(x.shape[-1], new_size[1])
  return np.einsum("Hh,...hw,Ww->...HW", rows, x, cols)


def resample_patch_embed(kernel: np.ndarray, new_size: tuple[int, int]) -> np.ndarray:
  """timm's `resample_patch_embed` for a torch-layout kernel [C, in, h, w] -> [C, in, H, W].

  With R the resize of an h x w patch to H x W (as a [H*W, h*w] matrix), the new kernel
  is pinv(R^T) k: for every patch x, <new kernel, R x> = <k, x>, so a 16x16 embedding of
  the upsampled image reproduces the 14x14 embedding of the original one (FlexiViT).
  """
  old_size = tuple(kernel.shape[-2:])
  new_size = tuple(new_size)
  if old_size == new_size:
    return kernel
  resize = np.kron(resize_matrix(old_size[0], new_size[0]),
                   resize_matrix(old_size[1], new_size[1]))  # [H*W, h*w]
  pinv = np.linalg.pinv(resize.T)  # [H*W, h*w]
  flat = kernel.reshape(kernel.shape[:-2] + (-1,)).astype(np.float64)
  return (flat @ pinv.T).reshape(kernel.shape[:-2] + new_size).astype(kernel.dtype)


def resample_abs_pos_embed(pos_embed: np.ndarray, new_size: tuple[int, int],
                           num_prefix_tokens: int = 1) -> np.ndarray:
  """timm's `resample_abs_pos_embed` for [1, prefix + h*w, C] (square h = w): the grid
  part is resized (antialiased bicubic), the prefix (cls) entries are kept as they are."""
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  old = int(round(np.sqrt(grid.shape[1])))
  if old * old != grid.shape[1]:
    raise ValueError(f"position table of {grid.shape[1]} patch entries is not a square grid")
  if (old, old) == tuple(new_size):
    return pos_embed
  width = grid.shape[-1]
  image = grid.reshape(old, old, width).transpose(2, 0, 1)  # [C, h, w]
  resized = resize_2d(image.astype(np.float64), new_size).transpose(1, 2, 0)
  resized = resized.reshape(1, -1, width).astype(pos_embed.dtype)
  return np.concatenate([prefix, resized], axis=1)


# ---------------------------------------------------------------------------
# Loading.


def _block_keys(i: int, layer_scale: bool) -> list[str]:
  names = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
           "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
           "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
  if layer_scale:
    names += ["ls1.gamma", "ls2.gamma"]
  return [f"blocks.{i}.{n}" for n in names]


def _expected_shapes(width: int, depth: int, hidden: int, patch: int, positions: int,
                     layer_scale: bool) -> dict[str, tuple[int, ...]]:
  shapes = {"cls_token": (1, 1, width), "pos_embed": (1, positions, width),
            "patch_embed.proj.weight": (width, 3, patch, patch),
            "patch_embed.proj.bias": (width,), "norm.weight": (width,), "norm.bias": (width,)}
  per_block = {"norm1.weight": (width,), "norm1.bias": (width,),
               "attn.qkv.weight": (3 * width, width), "attn.qkv.bias": (3 * width,),
               "attn.proj.weight": (width, width), "attn.proj.bias": (width,),
               "norm2.weight": (width,), "norm2.bias": (width,),
               "mlp.fc1.weight": (hidden, width), "mlp.fc1.bias": (hidden,),
               "mlp.fc2.weight": (width, hidden), "mlp.fc2.bias": (width,),
               "ls1.gamma": (width,), "ls2.gamma": (width,)}
  for i in range(depth):
    for key in _block_keys(i, layer_scale):
      shapes[key] = per_block[key.split(".", 2)[2]]
  return shapes


def _layer_norm(state: dict[str, np.ndarray], prefix: str) -> dict:
  return {"LayerNorm_0": {"scale": state[f"{prefix}.weight"], "bias": state[f"{prefix}.bias"]}}


def _block_params(state: dict[str, np.ndarray], i: int, width: int, heads: int,
                  layer_scale: bool) -> dict:
  """timm block i -> our `Block` parameters (fused qkv split into [embed, heads, kv])."""
  p = f"blocks.{i}."
  head_dim = width // heads
  qkv_w, qkv_b = state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"]
  attn = {}
  for j, name in enumerate(("query", "key", "value")):
    rows = slice(j * width, (j + 1) * width)
    attn[f"{name}_kernel"] = qkv_w[rows].T.reshape(width, heads, head_dim)
    attn[f"{name}_bias"] = qkv_b[rows].reshape(heads, head_dim)
  attn["out_kernel"] = state[p + "attn.proj.weight"].T.reshape(heads, head_dim, width)
  attn["out_bias"] = state[p + "attn.proj.bias"]
  params = {
      "ln_self": _layer_norm(state, p + "norm1"),
      "self_attn": attn,
      "ln_mlp": _layer_norm(state, p + "norm2"),
      "mlp": {"fc1": {"kernel": state[p + "mlp.fc1.weight"].T, "bias": state[p + "mlp.fc1.bias"]},
              "fc2": {"kernel": state[p + "mlp.fc2.weight"].T, "bias": state[p + "mlp.fc2.bias"]}},
  }
  if layer_scale:
    params["ls1"] = state[p + "ls1.gamma"]
    params["ls2"] = state[p + "ls2.gamma"]
  return params


def convert_state_dict(state: dict[str, np.ndarray], image_size: int = 256, patch_size: int = 16,
                       num_heads: int | None = None, source: str = "state dict"
                       ) -> tuple[ViT, dict]:
  """A timm DINOv2 ViT state dict -> (ViT, {"params": ...}) at `image_size`/`patch_size`.

  Width, depth and MLP width come from the shapes; heads from DINOV2_HEADS unless
  `num_heads` is given. The patch embedding and the position table are resampled as
  timm does when it loads DINOv2 at another patch/image size.
  """
  state = {k: np.asarray(v) for k, v in state.items() if k not in _IGNORED}
  registers = [k for k in _REGISTERS if k in state]
  if registers:
    raise ValueError(f"{source}: has register tokens ({registers[0]}): DINOv2-with-registers "
                     "(reg4) checkpoints are not supported; use plain vit_*_patch14_dinov2 weights")
  for key in ("cls_token", "patch_embed.proj.weight", "pos_embed"):
    if key not in state:
      raise ValueError(f"{source}: no {key!r} entry; not a timm/DINOv2 ViT state dict "
                       f"(first keys: {sorted(state)[:8]}). {WEIGHTS_HELP}")
  width = state["cls_token"].shape[-1]
  depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))),
                  default=-1)
  if depth == 0:
    raise ValueError(f"{source}: no 'blocks.{{i}}.*' entries. {WEIGHTS_HELP}")
  if num_heads is None:
    if width not in DINOV2_HEADS:
      raise ValueError(f"{source}: width {width} is not a DINOv2 S/B/L width "
                       f"{sorted(DINOV2_HEADS)}; pass num_heads")
    num_heads = DINOV2_HEADS[width]
  fc1 = state.get("blocks.0.mlp.fc1.weight")
  hidden = fc1.shape[0] if fc1 is not None and fc1.ndim == 2 else 4 * width
  native_patch = state["patch_embed.proj.weight"].shape[-1]
  positions = state["pos_embed"].shape[1] if state["pos_embed"].ndim == 3 else -1
  layer_scale = "blocks.0.ls1.gamma" in state
  expected = _expected_shapes(width, depth, hidden, native_patch, positions, layer_scale)
  missing = sorted(set(expected) - set(state))
  unexpected = sorted(set(state) - set(expected))
  wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
                 for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
  if missing or unexpected or wrong:
    raise ValueError(
        f"{source}: does not match a DINOv2 ViT (width {width}, depth {depth}): "
        f"missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
        f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}, "
        f"wrong shapes {wrong[:6]}{'...' if len(wrong) > 6 else ''}")
  native_grid = int(round(np.sqrt(positions - 1)))
  if native_grid * native_grid != positions - 1:
    raise ValueError(f"{source}: pos_embed has {positions} entries, not 1 (cls) + a square grid")
  if image_size % patch_size:
    raise ValueError(f"patch_size {patch_size} does not divide image_size {image_size}")
  state = {k: v.astype(np.float32) for k, v in state.items()}

  grid = image_size // patch_size
  kernel = resample_patch_embed(state["patch_embed.proj.weight"], (patch_size, patch_size))
  pos = resample_abs_pos_embed(state["pos_embed"], (grid, grid))
  params = {
      "patch_embed": {"proj": {
          "kernel": kernel.transpose(2, 3, 1, 0).reshape(patch_size * patch_size * 3, width),
          "bias": state["patch_embed.proj.bias"]}},
      "cls_token": state["cls_token"].reshape(1, width),
      "pos_embed": pos.reshape(1 + grid * grid, width),
      "norm": _layer_norm(state, "norm"),
  }
  for i in range(depth):
    params[f"block_{i}"] = _block_params(state, i, width, num_heads, layer_scale)
  module = ViT(image_size, patch_size, width, depth, num_heads, mlp_ratio=hidden / width,
               layer_scale_init=DINOV2_LAYER_SCALE if layer_scale else None)
  _check_tree(module, params)
  return module, {"params": jax.tree.map(jnp.asarray, params)}


def _check_tree(module: ViT, params: dict) -> None:
  """The converted tree must be exactly the module's (names and shapes)."""
  images = jax.ShapeDtypeStruct((1, module.image_size, module.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), images)
  want = jax.tree.map(lambda s: tuple(s.shape), nn.unbox(shapes)["params"])
  got = jax.tree.map(lambda a: tuple(a.shape), params)
  if want != got:
    raise AssertionError(f"teacher conversion does not match the ViT: {got} vs {want}")


def load_teacher(path: str | os.PathLike | None, image_size: int = 256, patch_size: int = 16,
                 num_heads: int | None = None) -> tuple[ViT, dict]:
  """(ViT, {"params": ...}) of a user-supplied DINOv2 state dict, resampled to
  `patch_size` and `image_size` (see `convert_state_dict`)."""
  if not path:
    raise FileNotFoundError(f"No DINOv2 teacher weights given. {WEIGHTS_HELP}")
  path = os.fspath(path)
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"DINOv2 teacher weights not found: {path} ({CONFIG_FIELD}). "
                            f"{WEIGHTS_HELP}")
  return convert_state_dict(load_flat_weights(path), image_size, patch_size, num_heads,
                            source=path)


def teacher_features(module: ViT, params: dict, images: jax.Array) -> jax.Array:
  """Images [B, S, S, 3] in [-1, 1] -> patch tokens [B, N, width] (no cls), no gradient."""
  x = (images.astype(jnp.float32) + 1.0) * 0.5
  x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  tokens = module.apply(params, x)
  return jax.lax.stop_gradient(tokens[:, 1:])
