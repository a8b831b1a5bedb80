"""TiTok, "An Image is Worth 32 Tokens" (arXiv:2406.07550), as a sweet_jax tokenizer.

Data flow (N = (S/p)^2 patches, K latent tokens, W_e / W_d encoder / decoder width):

  encoder   patches -> Dense(p*p*3 -> W_e) (the official Conv2d k=s=p, same parameters)
            -> [cls, N patches] + pos-embed, then K learned latent tokens + their own
            pos-embed appended -> ln_pre -> pre-LN transformer -> the K latent outputs
            -> ln_post -> Dense(W_e -> code_dim)
  quantizer L2-normalised VQ (K_c x code_dim codebook, U(-1/K_c, 1/K_c) init),
            straight-through; the official weights are commitment 0.25, codebook 1.0
            (set in the config: sweet_jax quantizers return their losses unweighted)
  decoder   Dense(code_dim -> W_d) + latent pos-embed; [cls, N copies of one mask
            token] + pos-embed; [cls, N masks, K latents] -> ln_pre -> transformer
            -> the N mask outputs -> ln_post -> Dense(W_d -> p*p*3) -> unpatchify
            -> 3x3 conv (RGB -> RGB)

Following the official code (bytedance/1d-tokenizer `modeling/modules/blocks.py`), with
these choices:
- Layout: the non-legacy one. The released S/B/L checkpoints use `is_legacy=True`,
  which `reshape`s (not permutes) the [B, K, W] latents before the output projection,
  scrambling tokens and channels; that only matters for loading those weights. We train
  from scratch, so each latent token is projected on its own.
- Pixel head: the non-legacy head (1x1 conv to p*p*3 pixels per patch, unpatchify, then
  a 3x3 conv), so the model trains on pixel losses in one stage. The legacy head
  predicts logits over the 1024 MaskGIT-VQGAN proxy codes and needs MaskGIT-VQGAN
  weights (its targets, and its pixel decoder in stage 2), which we do not have.
- Blocks: `layers.Block`, whose parameter count equals the official
  `ResidualAttentionBlock` (packed q/k/v in-projection with bias, 4x GELU MLP); the
  official LayerNorm eps is 1e-5 (ours 1e-6), its GELU exact (ours tanh-approximate),
  and its attention in-projection xavier- / other linears N(0, 0.02)-initialised (ours
  xavier throughout the blocks).
- Outside the blocks the init is the official one: N(0, 0.02) weights and zero biases
  (torch's `trunc_normal_(std=0.02)` truncates at +-2 absolute, i.e. nowhere), and
  W^-0.5 * N(0, 1) for cls, position, latent and mask tokens.

Presets (TITOK_SIZES, `titok_preset`): S / B / L widths and depths, and the published
TiTok-S-128, B-64, L-32 at 256x256; "BL-64" means a B encoder and an L decoder.
"""


import jax
import jax.numpy as jnp
from flax import linen as nn

from sweet_jax.nn.layers import (ComputeOptions, LayerNorm, block, check_images,
                                     learned_embedding, param_init, patchify, unpatchify)
from sweet_jax.models.tokenizer import ImageTokenizer
from sweet_jax.quantizers import VectorQuantizer

# name -> (width, depth, heads), the official "small", "base", "large".
TITOK_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (512, 8, 8),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
}


def titok_preset(name: str) -> dict[str, int]:
  """TiTok fields for a name "<enc size>[<dec size>]-<latent tokens>", e.g. "S-128",
  "B-64", "L-32" (the published models) or "BL-64"."""
  sizes, _, tokens = name.partition("-")
  if not tokens.isdigit() or len(sizes) not in (1, 2) or any(s not in TITOK_SIZES for s in sizes):
    raise ValueError(f"TiTok preset {name!r}: use <size>[<size>]-<tokens> with sizes from "
                     f"{sorted(TITOK_SIZES)}, e.g. 'S-128' or 'BL-64'")
  fields = {"num_latent_tokens": int(tokens)}
  for part, size in (("encoder", sizes[0]), ("decoder", sizes[-1])):
    width, depth, heads = TITOK_SIZES[size]
    fields.update({f"{part}_width": width, f"{part}_depth": depth, f"{part}_heads": heads})
  return fields


def _dense(features: int, names: tuple[str | None, str | None], name: str) -> nn.Dense:
  """Official init of TiTok's linear layers: N(0, 0.02) weights, zero bias."""
  return nn.Dense(features,
                  kernel_init=param_init(nn.initializers.normal(0.02), names),
                  bias_init=param_init(nn.initializers.zeros, (names[1],)),
                  name=name)


def _tokens(module: nn.Module, name: str, length: int, width: int,
            names: tuple[str | None, str]) -> jax.Array:
  """A learned [length, width] table initialised W^-0.5 * N(0, 1), as the official code."""
  return learned_embedding(module, name, (length, width), names, stddev=width**-0.5)


class TiTokEncoder(nn.Module):
  patch_size: int
  width: int
  depth: int
  num_heads: int
  num_latent_tokens: int
  code_dim: int
  compute: ComputeOptions = ComputeOptions()

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = _dense(self.width, ("patch", "embed"), "patch_embed")(patchify(images, self.patch_size))
    batch, num_patches, _ = x.shape
    cls = _tokens(self, "cls_token", 1, self.width, (None, "embed"))
    x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.width)), x], axis=1)
    x = x + _tokens(self, "pos_embed", num_patches + 1, self.width, ("length", "embed"))
    latents = (_tokens(self, "latent_tokens", self.num_latent_tokens, self.width, ("query", "embed"))
               + _tokens(self, "latent_pos_embed", self.num_latent_tokens, self.width,
                         ("query", "embed")))
    x = jnp.concatenate(
        [x, jnp.broadcast_to(latents, (batch, self.num_latent_tokens, self.width))], axis=1)
    x = LayerNorm(name="ln_pre")(x)
    for i in range(self.depth):
      x = block(self.compute, self.num_heads, 4.0, name=f"block_{i}")(x)
    x = LayerNorm(name="ln_post")(x[:, num_patches + 1:])
    return _dense(self.code_dim, ("embed", "code"), "to_code")(x)


class TiTokDecoder(nn.Module):
  image_size: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  num_latent_tokens: int
  compute: ComputeOptions = ComputeOptions()

  @nn.compact
  def __call__(self, codes: jax.Array) -> jax.Array:
    batch = codes.shape[0]
    latents = _dense(self.width, ("code", "embed"), "from_code")(codes)
    latents = latents + _tokens(self, "latent_pos_embed", self.num_latent_tokens, self.width,
                                ("query", "embed"))
    num_patches = (self.image_size // self.patch_size) ** 2
    cls = _tokens(self, "cls_token", 1, self.width, (None, "embed"))
    mask = _tokens(self, "mask_token", 1, self.width, (None, "embed"))
    x = jnp.concatenate([cls, jnp.broadcast_to(mask, (num_patches, self.width))], axis=0)
    x = x + _tokens(self, "pos_embed", num_patches + 1, self.width, ("length", "embed"))
    x = jnp.concatenate([jnp.broadcast_to(x, (batch,) + x.shape), latents], axis=1)
    x = LayerNorm(name="ln_pre")(x)
    for i in range(self.depth):
      x = block(self.compute, self.num_heads, 4.0, name=f"block_{i}")(x)
    x = LayerNorm(name="ln_post")(x[:, 1:num_patches + 1])
    pixels = _dense(self.patch_size**2 * 3, ("embed", "patch"), "to_pixels")(x)
    images = unpatchify(pixels, self.patch_size, self.image_size, self.image_size)
    return nn.Conv(3, (3, 3), padding="SAME",
                   kernel_init=param_init(nn.initializers.normal(0.02), (None, None, None, None)),
                   bias_init=param_init(nn.initializers.zeros, (None,)),
                   name="conv_out")(images)


class TiTok(ImageTokenizer):
  """TiTok with the shared tokenizer method surface (tokenizer.ImageTokenizer).

  Defaults are TiTok-S-128 at 256x256; `titok_preset("B-64")` etc. give the others.
  Top-level submodules (the optimizer's parameter groups): `encoder` (including the
  latent tokens), `quantizer`, `decoder`.
  """

  image_size: int = 256
  patch_size: int = 16
  encoder_width: int = 512
  encoder_depth: int = 8
  encoder_heads: int = 8
  decoder_width: int = 512
  decoder_depth: int = 8
  decoder_heads: int = 8
  num_latent_tokens: int = 128
  codebook_size: int = 4096
  code_dim: int = 12
  # How the transformer blocks compute (layers.ComputeOptions).
  compute_dtype: str = "float32"
  remat: str = "none"

  def make_quantizer(self, **module_kwargs) -> VectorQuantizer:
    return VectorQuantizer(self.codebook_size, self.code_dim, codebook_init="uniform",
                           **module_kwargs)

  def setup(self):
    self.check_patch_grid()
    compute = ComputeOptions(self.compute_dtype, self.remat)
    self.encoder = TiTokEncoder(self.patch_size, self.encoder_width, self.encoder_depth,
                                self.encoder_heads, self.num_latent_tokens, self.code_dim,
                                compute)
    self.quantizer = self.make_quantizer()
    self.decoder = TiTokDecoder(self.image_size, self.patch_size, self.decoder_width,
                                self.decoder_depth, self.decoder_heads, self.num_latent_tokens,
                                compute)

  def encode(self, images: jax.Array) -> jax.Array:
    """Images [B,S,S,3] in [-1,1] -> continuous latents [B,K,code_dim]."""
    check_images(images, self.image_size)
    return self.encoder(images)

  @property
  def num_tokens(self) -> int:
    return self.num_latent_tokens
