"""SoftVQ-VAE (arXiv 2412.10958), following the official code (modelling/tokenizer.py).

Data flow (B images of side S, patch p, N = (S/p)^2 patches, L latent tokens):

  encoder    DINOv2-style ViT (vit.py): [cls] + N patch tokens + abs pos-embed, then
             APPEND L learned latent tokens (N(0, 0.02)) + a 1-D latent pos-embed
             (trunc-normal 0.02); blocks -> final norm -> the last L tokens ->
             `quant_conv` Dense(width -> code_dim)                        [B,L,d]
  quantizer  SoftVectorQuantizer: softmax(cos / 0.07) over K codes per token, z_q the
             convex combination; the L tokens are split into `num_codebooks`
             contiguous groups with a codebook each; no straight-through
  decoder    `post_quant_conv` Dense(code_dim -> width) + latent pos-embed; [cls] + N
             copies of one learned mask token + abs pos-embed, then APPEND the L
             latents; blocks -> final norm -> positions 1..N -> `to_pixel`
             Dense(width -> p*p*3) -> unpatchify                          [B,S,S,3]
  projector  optional (`align_width` > 0): the alignment MLP code_dim -> 1024 -> 1024
             -> teacher width (SiLU) on z_q, returned as aux["aligned"] for the loss
             against the frozen DINOv2 teacher's patch features (teacher.py). The
             official code keeps it inside the tokenizer (`VQModel.projection`).

Differences from the official code, all parameter-free or counted below:
- The official decoder is a full timm ViT and so owns a `patch_embed` conv that it never
  calls (p*p*3*width + width parameters, 295,296 for ViT-S/16; no gradient reaches it).
  We do not create it, so our counts are that much lower than `sum(p.numel())` of the
  official model.
- The paper describes L2-distance logits; the code (and we) use cosine similarity.
- `decode_from_indices` decodes the *hard* argmax codes (the official
  `decode_code`), which is lossy for a soft quantizer: use `decode(quantize(...))`
  for reconstructions.

Top-level submodules are the parameter groups: `encoder` (its `vit` subtree has
exactly the teacher's layout, so converted DINOv2 weights from
`teacher.convert_state_dict` can initialise it, as the official encoder is), `quantizer`,
`decoder`, and `projector` when alignment is on.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from sweet_jax.models.projector import AlignmentProjector, projector_input
from sweet_jax.nn.layers import ComputeOptions, check_images, param_init, unpatchify
from sweet_jax.models.tokenizer import ImageTokenizer
from sweet_jax.nn.vit import VIT_SIZES, ViT
from sweet_jax.quantizers.softvq import SoftVectorQuantizer


def _dense(features: int, names: tuple[str, str], name: str) -> nn.Dense:
  return nn.Dense(features,
                  kernel_init=param_init(nn.initializers.xavier_uniform(), names),
                  bias_init=param_init(nn.initializers.zeros, (names[1],)), name=name)


def _latent_pos_embed(module: nn.Module, length: int, width: int) -> jax.Array:
  init = param_init(nn.initializers.truncated_normal(0.02), ("query", "embed"))
  return module.param("latent_pos_embed", init, (length, width))


class SoftVQEncoder(nn.Module):
  """Images [B,S,S,3] -> latents [B,L,code_dim] (before the quantizer)."""

  image_size: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  num_latent_tokens: int
  code_dim: int
  compute: ComputeOptions = ComputeOptions()

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    shape = (self.num_latent_tokens, self.width)
    tokens = self.param("latent_tokens",
                        param_init(nn.initializers.normal(0.02), ("query", "embed")), shape)
    latents = tokens + _latent_pos_embed(self, *shape)
    latents = jnp.broadcast_to(latents, (images.shape[0],) + shape)
    x = ViT(self.image_size, self.patch_size, self.width, self.depth, self.num_heads,
            compute=self.compute, name="vit")(images, extra=latents)
    return _dense(self.code_dim, ("embed", "code"), "quant_conv")(x[:, -self.num_latent_tokens:])


class SoftVQDecoder(nn.Module):
  """Codes [B,L,code_dim] -> images [B,S,S,3] (unclipped)."""

  image_size: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  num_latent_tokens: int
  compute: ComputeOptions = ComputeOptions()

  @nn.compact
  def __call__(self, codes: jax.Array) -> jax.Array:
    if codes.shape[1] != self.num_latent_tokens:
      raise ValueError(f"expected {self.num_latent_tokens} latent tokens, got {codes.shape[1]}")
    z = _dense(self.width, ("code", "embed"), "post_quant_conv")(codes)
    z = z + _latent_pos_embed(self, self.num_latent_tokens, self.width)
    grid = self.image_size // self.patch_size
    mask = self.param("mask_token", param_init(nn.initializers.normal(0.02), (None, "embed")),
                      (1, self.width))
    x = jnp.broadcast_to(mask, (codes.shape[0], grid * grid, self.width))
    x = ViT(self.image_size, self.patch_size, self.width, self.depth, self.num_heads,
            patch_embed=False, compute=self.compute, name="vit")(x, extra=z)
    pixels = _dense(self.patch_size**2 * 3, ("embed", "patch"), "to_pixel")(x[:, 1:1 + grid * grid])
    return unpatchify(pixels, self.patch_size, self.image_size, self.image_size)


def softvq_preset(name: str, num_latent_tokens: int = 64, **overrides) -> dict[str, Any]:
  """SoftVQVAE fields of a published size: "S", "B", "BL" or "L" (encoder/decoder ViT
  sizes S+S, B+B, B+L, L+L) with 4 codebooks x 8192 x 32, e.g.
  `SoftVQVAE(**softvq_preset("BL", 64))`; `overrides` replace any field."""
  if name not in SOFTVQ_SIZES:
    raise ValueError(f"unknown SoftVQ size {name!r}; known: {sorted(SOFTVQ_SIZES)}")
  enc, dec = (VIT_SIZES[s] for s in SOFTVQ_SIZES[name])
  fields = dict(encoder_width=enc.width, encoder_depth=enc.depth, encoder_heads=enc.num_heads,
                decoder_width=dec.width, decoder_depth=dec.depth, decoder_heads=dec.num_heads,
                num_latent_tokens=num_latent_tokens, codebook_size=8192, code_dim=32,
                num_codebooks=4)
  return {**fields, **overrides}


# Published sizes (arXiv:2412.10958): (encoder ViT, decoder ViT), the pairing inferred from the
# paper's parameter counts.
SOFTVQ_SIZES: dict[str, tuple[str, str]] = {
    "S": ("S", "S"), "B": ("B", "B"), "BL": ("B", "L"), "L": ("L", "L")}


class SoftVQVAE(ImageTokenizer):
  """SoftVQ-VAE with the shared tokenizer method surface (tokenizer.ImageTokenizer).

  Defaults are SoftVQ-S-32 at 256 px; `softvq_preset` gives the published sizes.
  """

  image_size: int = 256
  patch_size: int = 16
  encoder_width: int = 384
  encoder_depth: int = 12
  encoder_heads: int = 6
  decoder_width: int = 384
  decoder_depth: int = 12
  decoder_heads: int = 6
  num_latent_tokens: int = 32
  codebook_size: int = 8192
  code_dim: int = 32
  num_codebooks: int = 4
  temperature: float = 0.07
  entropy_temperature: float = 0.01
  # Representation alignment: the teacher's width (1024 for DINOv2-L), 0 for none;
  # the projector's hidden width (official `repa_proj_dim`).
  align_width: int = 0
  align_hidden: int = 1024
  # How latents meet teacher patches (alignment.py): "global" projects the mean latent.
  align_mode: str = "repeat"
  compute_dtype: str = "float32"
  remat: str = "none"

  def make_quantizer(self, **module_kwargs) -> SoftVectorQuantizer:
    """The quantizer (`parent=None` gives a detached one for its metadata)."""
    return SoftVectorQuantizer(self.codebook_size, self.code_dim, self.num_codebooks,
                               temperature=self.temperature,
                               entropy_temperature=self.entropy_temperature, **module_kwargs)

  def setup(self):
    self.check_patch_grid()
    if self.num_latent_tokens % self.num_codebooks:
      raise ValueError(f"num_latent_tokens {self.num_latent_tokens} is not divisible by "
                       f"num_codebooks {self.num_codebooks} (codebooks split the sequence)")
    compute = ComputeOptions(self.compute_dtype, self.remat)
    self.encoder = SoftVQEncoder(self.image_size, self.patch_size, self.encoder_width,
                                 self.encoder_depth, self.encoder_heads, self.num_latent_tokens,
                                 self.code_dim, compute)
    self.quantizer = self.make_quantizer()
    self.decoder = SoftVQDecoder(self.image_size, self.patch_size, self.decoder_width,
                                 self.decoder_depth, self.decoder_heads, self.num_latent_tokens,
                                 compute)
    self.projector = (AlignmentProjector(self.align_hidden, self.align_width)
                      if self.align_width else None)

  def encode(self, images: jax.Array) -> jax.Array:
    """Images [B,S,S,3] in [-1,1] -> continuous latents [B,L,d]."""
    check_images(images, self.image_size)
    return self.encoder(images)

  def code_outputs(self, codes: jax.Array) -> dict[str, jax.Array]:
    """aux["aligned"]: the codes projected to the teacher's width, [B,L,align_width]
    (one row per latent; one row for "global"), when alignment is on."""
    if self.projector is None:
      return {}
    return {"aligned": self.projector(projector_input(codes, self.align_mode))}

  @property
  def num_tokens(self) -> int:
    """(Bits are counted on the argmax indices; a soft code carries more.)"""
    return self.num_latent_tokens

  def index_groups(self) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """One entry per group codebook (usage is counted per codebook)."""
    return self.make_quantizer(parent=None).index_groups(self.num_latent_tokens)


def count_parameters(model: nn.Module, batch: int = 1) -> dict[str, int]:
  """Parameters per top-level group, counted with `jax.eval_shape` (nothing allocated)."""
  images = jax.ShapeDtypeStruct((batch, model.image_size, model.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  params = nn.unbox(shapes)["params"]
  return {name: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(group))
          for name, group in params.items()}
