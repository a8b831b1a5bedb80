"""A DINOv2-style ViT, laid out as timm builds `vit_{small,base,large}_patch14_dinov2`.

  patch embed   non-overlapping p x p patches -> Dense (timm's stride-p conv; the same
                parameter count: p*p*3*width + width)
  tokens        [cls] + patches, plus a learned absolute position embedding that covers
                the cls entry too (timm `no_embed_class=False`); optional extra tokens
                are appended *after* the position embedding (SoftVQ's latent tokens)
  blocks        pre-LN blocks: qkv with bias, LayerScale (init 1e-5) on both branches,
                exact-erf GELU MLP 4x; LayerNorm eps 1e-6 throughout
  final norm    LayerNorm (eps 1e-6) over every token

DINOv2 has no `norm_pre` (timm's is the identity), so there is none here. The same
module serves as the frozen alignment teacher (teacher.py loads real DINOv2 weights
into it) and as the SoftVQ encoder/decoder backbone (softvq.py); the decoder passes
tokens instead of images (`patch_embed=False`) because the official decoder never
uses its patch embedding.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from sweet_jax.nn.layers import ComputeOptions, LayerNorm, block, param_init, patchify


@dataclasses.dataclass(frozen=True)
class ViTSize:
  width: int
  depth: int
  num_heads: int


# timm's DINOv2 definitions (vit_*_patch14_dinov2, SoftVQ-VAE's backbones, arXiv:2412.10958);
# all MLPs are 4x wide.
VIT_SIZES: dict[str, ViTSize] = {
    "S": ViTSize(384, 12, 6),
    "B": ViTSize(768, 12, 12),
    "L": ViTSize(1024, 24, 16),
}

DINOV2_LAYER_SCALE = 1e-5


class PatchEmbed(nn.Module):
  """Patches [B, H, W, 3] -> tokens [B, (H/p)*(W/p), width].

  The kernel rows are in `patchify` order (row, column, channel within the patch), so
  a torch conv weight [width, 3, p, p] maps to it as `w.transpose(2, 3, 1, 0)`.
  """

  patch_size: int
  width: int

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    return nn.Dense(
        self.width,
        kernel_init=param_init(nn.initializers.lecun_normal(), ("patch", "embed")),
        bias_init=param_init(nn.initializers.zeros, ("embed",)),
        name="proj",
    )(patchify(images, self.patch_size))


class ViT(nn.Module):
  """`__call__(x, extra=None)` -> all tokens after the final norm, [B, 1 + N + L, width].

  x      images [B, S, S, 3] when `patch_embed` is set, else tokens [B, N, width]
         (N = (image_size / patch_size)^2 either way: the position table's size)
  extra  optional tokens [B, L, width] appended after the position embedding (they
         bring their own position embedding, as SoftVQ's latent tokens do)
  """

  image_size: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  layer_scale_init: float | None = DINOV2_LAYER_SCALE
  patch_embed: bool = True
  compute: ComputeOptions = ComputeOptions()

  @property
  def num_patches(self) -> int:
    if self.image_size % self.patch_size:
      raise ValueError(f"patch_size {self.patch_size} does not divide image_size {self.image_size}")
    return (self.image_size // self.patch_size) ** 2

  @nn.compact
  def __call__(self, x: jax.Array, extra: jax.Array | None = None) -> jax.Array:
    num_patches = self.num_patches
    if self.patch_embed:
      expected = (self.image_size, self.image_size, 3)
      if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"expected images [B, {self.image_size}, {self.image_size}, 3], "
                         f"got {tuple(x.shape)}")
      x = PatchEmbed(self.patch_size, self.width, name="patch_embed")(x)
    elif x.ndim != 3 or tuple(x.shape[1:]) != (num_patches, self.width):
      raise ValueError(f"expected tokens [B, {num_patches}, {self.width}], got {tuple(x.shape)}")
    batch = x.shape[0]
    # timm: cls ~ N(0, 1e-6), pos_embed ~ N(0, 0.02) (trunc-normal here, as its init).
    cls = self.param("cls_token", param_init(nn.initializers.normal(1e-6), (None, "embed")),
                     (1, self.width))
    pos = self.param("pos_embed", param_init(nn.initializers.truncated_normal(0.02),
                                             ("length", "embed")), (1 + num_patches, self.width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.width)), x], axis=1) + pos
    if extra is not None:
      x = jnp.concatenate([x, extra.astype(x.dtype)], axis=1)
    for i in range(self.depth):
      x = block(self.compute, self.num_heads, self.mlp_ratio,
                layer_scale_init=self.layer_scale_init, approximate_gelu=False,
                name=f"block_{i}")(x)
    return LayerNorm(name="norm")(x)


def vit(size: str, image_size: int, patch_size: int, **kwargs) -> ViT:
  """A ViT of a named size ("S", "B", "L")."""
  if size not in VIT_SIZES:
    raise ValueError(f"unknown ViT size {size!r}; known: {sorted(VIT_SIZES)}")
  s = VIT_SIZES[size]
  return ViT(image_size, patch_size, s.width, s.depth, s.num_heads, **kwargs)
