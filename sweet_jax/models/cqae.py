"""The image Cross-attention Query AutoEncoder (CQAE) of SweetTokenizer.

Data flow (shapes for a batch of B images of side S, patch p, N = (S/p)^2):

  encoder   patches [B,N,p*p*3] -> Dense -> +pos -> L transformer blocks (each
            starting with a PEG depthwise 3x3 conv over the patch grid, as the
            official code), keeping every block's output: feats[0..L-1]  [B,N,D]
  queries   Q learnable query tokens (+ their own position embeddings); in
            layer i they self-attend and cross-attend to feats[i] (the official
            layer-i-to-layer-i scheme, arXiv:2412.10443), with a learned Gaussian
            locality prior on that cross-attention (ours, see layers.py)
            -> LN -> Dense -> [B,Q,d]
  quantizer `quantizer_type="vq"`: L2-normalised VQ over a K x d codebook;
            `"mlc"`: the language codebook (quantizers/mlc.py: each token becomes
            2 adjectives + 1 noun of a word group); straight-through either way
  decoder   Dense(d->D) + pos -> L latent blocks (self-attention), keeping every
            block's output; N mask tokens (one learned token + a position
            embedding per patch) self-attend (PEG first) and, in layer i,
            cross-attend to the i-th latent output (the transposed locality
            prior); LN -> Dense(p*p*3) -> unpatchify -> 3x3 conv.

Images are float in [-1, 1]. The official code feeds [-0.5, 0.5] and, in its
first stage, predicts proxy codes of a frozen OmniTokenizer; we regress pixels
directly (the pixel stage of the official recipe) because no proxy tokenizer
weights exist offline.

Top-level submodules are the parameter groups used by the optimizer:
`encoder`, `queries`, `quantizer`, `decoder`.
"""

import math
from typing import ClassVar, Literal, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from sweet_jax.codebook.artifact import WordGroup
from sweet_jax.nn.layers import (AttentionOptions, ComputeOptions, GaussianAttentionPrior,
                                     LayerNorm, block, check_images, grid_points, grid_shape,
                                     learned_embedding, param_init, patch_position_embedding,
                                     patchify, unpatchify)
from sweet_jax.models.tokenizer import ImageTokenizer
from sweet_jax.quantizers import LanguageQuantizer, VectorQuantizer


def _dense(features: int, names: tuple[str, str], name: str) -> nn.Dense:
  return nn.Dense(
      features,
      kernel_init=param_init(nn.initializers.xavier_uniform(), names),
      bias_init=param_init(nn.initializers.zeros, (names[1],)),
      name=name,
  )


class PatchEncoder(nn.Module):
  """ViT over patches; returns the output of every block."""

  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  position_conv: bool
  compute: ComputeOptions = ComputeOptions()

  @nn.compact
  def __call__(self, images: jax.Array) -> list[jax.Array]:
    patches = patchify(images, self.patch_size)
    x = _dense(self.width, ("patch", "embed"), "patch_embed")(patches)
    grid = images.shape[1] // self.patch_size
    x = x + patch_position_embedding(self, "pos_embed", grid, self.width)
    features = []
    for i in range(self.depth):
      x = block(self.compute, self.num_heads, self.mlp_ratio,
                position_conv=self.position_conv, name=f"block_{i}")(x)
      features.append(x)
    return features


def locality_priors(module: nn.Module, enabled: bool, num_queries: int, grid: int,
                    num_heads: int, depth: int, patches_attend: bool) -> list[jax.Array | None]:
  """One cross-attention logit bias per layer ([heads, N, S] each, or None when disabled).

  The query tokens sit at learned points (patch units) initialised on a grid; each
  layer's `GaussianAttentionPrior` starts as wide as the area one query covers. With
  `patches_attend` the patches are the attending side (the decoder's transpose).
  """
  if not enabled:
    return [None] * depth
  rows, cols = grid_shape(num_queries)
  init = lambda key, shape, dtype=jnp.float32: grid_points(rows, cols, grid).astype(dtype)
  points = module.param("query_points", param_init(init, ("query", None)), (num_queries, 2))
  patches = grid_points(grid, grid, grid)
  attending, attended = (patches, points) if patches_attend else (points, patches)
  spacing = grid / math.sqrt(num_queries)
  return [GaussianAttentionPrior(num_heads, spacing, name=f"prior_{i}")(attending, attended)
          for i in range(depth)]


class QueryEncoder(nn.Module):
  """Learnable spatial queries that read the patch features layer by layer."""

  num_queries: int
  width: int
  num_heads: int
  mlp_ratio: float
  code_dim: int
  attention_prior: bool
  attention: AttentionOptions = AttentionOptions()
  compute: ComputeOptions = ComputeOptions()

  @nn.compact
  def __call__(self, features: list[jax.Array]) -> jax.Array:
    batch, num_patches = features[0].shape[:2]
    shape = (self.num_queries, self.width)
    tokens = learned_embedding(self, "tokens", shape, ("query", "embed"), self.width**-0.5)
    pos = learned_embedding(self, "pos_embed", shape, ("query", "embed"), self.width**-0.5)
    x = jnp.broadcast_to(tokens + pos, (batch,) + shape)
    biases = locality_priors(self, self.attention_prior, self.num_queries,
                             math.isqrt(num_patches), self.num_heads, len(features),
                             patches_attend=False)
    for i, (feature, bias) in enumerate(zip(features, biases)):
      x = block(self.compute, self.num_heads, self.mlp_ratio, cross_attention=True,
                attention=self.attention, name=f"block_{i}")(x, feature, bias)
    x = LayerNorm(name="ln_post")(x)
    return _dense(self.code_dim, ("embed", "code"), "to_latent")(x)


class QueryDecoder(nn.Module):
  """Mask tokens at every patch position read the decoded latent tokens."""

  image_size: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  num_queries: int
  attention_prior: bool
  position_conv: bool
  global_color: bool = False
  smoothing_padding: Literal["zeros", "edge"] = "zeros"
  compute: ComputeOptions = ComputeOptions()

  @nn.compact
  def __call__(self, codes: jax.Array) -> jax.Array:
    batch = codes.shape[0]
    z = _dense(self.width, ("code", "embed"), "from_latent")(codes)
    z = z + learned_embedding(self, "latent_pos_embed", (self.num_queries, self.width), ("query", "embed"))
    latents = []
    for i in range(self.depth):
      z = block(self.compute, self.num_heads, self.mlp_ratio, name=f"latent_block_{i}")(z)
      latents.append(z)

    grid = self.image_size // self.patch_size
    num_patches = grid * grid
    mask = learned_embedding(self, "mask_token", (1, self.width), (None, "embed"))
    pos = patch_position_embedding(self, "pos_embed", grid, self.width)
    x = jnp.broadcast_to(mask + pos, (batch, num_patches, self.width))
    # The transpose of the encoder's prior: patches read nearby latents.
    biases = locality_priors(self, self.attention_prior, self.num_queries, grid,
                             self.num_heads, len(latents), patches_attend=True)
    for i, (latent, bias) in enumerate(zip(latents, biases)):
      x = block(self.compute, self.num_heads, self.mlp_ratio, cross_attention=True,
                position_conv=self.position_conv, name=f"block_{i}")(x, latent, bias)
    x = LayerNorm(name="ln_post")(x)
    pixels = _dense(self.patch_size**2 * 3, ("embed", "patch"), "to_pixels")(x)
    images = unpatchify(pixels, self.patch_size, self.image_size, self.image_size)
    if self.global_color:
      # One colour offset per image from the pooled latents: the per-patch head must
      # otherwise agree on a shared colour patch by patch.
      pooled = LayerNorm(name="color_norm")(jnp.mean(latents[-1], axis=1))
      offset = nn.Dense(3, kernel_init=param_init(nn.initializers.zeros, ("embed", None)),
                        bias_init=param_init(nn.initializers.zeros, (None,)),
                        name="to_color")(pooled)
      images = images + offset[:, None, None, :]
    return PixelSmoothing(padding=self.smoothing_padding, name="smooth_pixels")(images)


def _dirac_init(key, shape, dtype=jnp.float32):
  """A 3x3 convolution kernel that starts as the identity."""
  del key
  kernel = jnp.zeros(shape, dtype)
  return kernel.at[shape[0] // 2, shape[1] // 2].set(jnp.eye(shape[2], shape[3], dtype=dtype))


class PixelSmoothing(nn.Module):
  """A 3x3 RGB->RGB convolution after unpatchify (TiTok's non-legacy pixel head ends
  the same way): lets the decoder blend across patch borders, which a per-patch linear
  head cannot. Initialised as the identity, so it starts as a no-op. `padding="zeros"` is
  TiTok's; `"edge"` repeats the border pixels, so the border is not pulled towards zero
  (mid-gray)."""

  padding: Literal["zeros", "edge"] = "zeros"

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    channels = images.shape[-1]
    if self.padding == "edge":
      images = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return nn.Conv(channels, (3, 3), padding="SAME" if self.padding == "zeros" else "VALID",
                   kernel_init=param_init(_dirac_init, (None, None, None, None)),
                   bias_init=param_init(nn.initializers.zeros, (None,)))(images)


def make_quantizer(quantizer_type: str, *, codebook_size: int, code_dim: int,
                   word_group: WordGroup | None, mlc_codebook: str, gcn_hidden: int,
                   gcn_dropout: float, normalize_word_codes: bool, **module_kwargs) -> nn.Module:
  """A VQ over `codebook_size` codes or an MLC quantizer over one word group."""
  if quantizer_type == "vq":
    return VectorQuantizer(codebook_size, code_dim, **module_kwargs)
  if quantizer_type == "mlc":
    if word_group is None:
      raise ValueError("quantizer_type='mlc' needs a word group from the language codebook "
                       "(config.codebook; the trainer builds or loads it)")
    return LanguageQuantizer(word_group, code_dim, hidden=gcn_hidden, dropout=gcn_dropout,
                             codebook=mlc_codebook, normalize_codes=normalize_word_codes,
                             **module_kwargs)
  raise ValueError(f"unknown quantizer_type {quantizer_type!r}; use 'vq' or 'mlc'")


class ImageCQAE(ImageTokenizer):
  """SweetTokenizer's image CQAE with a VQ or a language-codebook (MLC) bottleneck.

  The method surface (`quantize`, `decode`, `encode_to_indices`, `decode_from_indices`,
  `__call__(images) -> (reconstruction, aux)`) is tokenizer.ImageTokenizer's.
  """

  word_group_fields: ClassVar[Mapping[str, str]] = {"word_group": "spatial"}

  image_size: int = 64
  patch_size: int = 8
  width: int = 256
  num_heads: int = 4
  mlp_ratio: float = 4.0
  encoder_depth: int = 4
  decoder_depth: int = 4
  num_queries: int = 32
  codebook_size: int = 1024
  code_dim: int = 16
  attention_prior: bool = True
  position_conv: bool = True
  # Decoder options beyond the official design (ours, off by default): a per-image colour
  # offset from the pooled latents, and edge padding for the final 3x3 convolution.
  global_color: bool = False
  smoothing_padding: Literal["zeros", "edge"] = "zeros"
  quantizer_type: Literal["vq", "mlc"] = "vq"
  # MLC only: the spatial word group (adjectives, nouns), the codebook's origin
  # ("language": GCN over word vectors; "learned": a free table of the same shape),
  # the GCN's hidden width and dropout, and whether code rows are L2-normalised.
  word_group: WordGroup | None = None
  mlc_codebook: Literal["language", "learned"] = "language"
  gcn_hidden: int = 256
  gcn_dropout: float = 0.5
  normalize_word_codes: bool = False
  # How the transformer blocks compute (layers.ComputeOptions): float32 | bfloat16
  # matmuls, and none | full | dots | dots_no_batch rematerialisation.
  compute_dtype: str = "float32"
  remat: str = "none"

  def make_quantizer(self, **module_kwargs) -> nn.Module:
    """The configured quantizer (`parent=None` gives a detached one for its metadata)."""
    return make_quantizer(self.quantizer_type, codebook_size=self.codebook_size,
                          code_dim=self.code_dim, word_group=self.word_group,
                          mlc_codebook=self.mlc_codebook, gcn_hidden=self.gcn_hidden,
                          gcn_dropout=self.gcn_dropout,
                          normalize_word_codes=self.normalize_word_codes, **module_kwargs)

  def setup(self):
    self.check_patch_grid()
    compute = ComputeOptions(self.compute_dtype, self.remat)
    self.encoder = PatchEncoder(self.patch_size, self.width, self.encoder_depth,
                                self.num_heads, self.mlp_ratio, self.position_conv, compute)
    self.queries = QueryEncoder(self.num_queries, self.width, self.num_heads,
                                self.mlp_ratio, self.code_dim, self.attention_prior,
                                compute=compute)
    self.quantizer = self.make_quantizer()
    self.decoder = QueryDecoder(self.image_size, self.patch_size, self.width, self.decoder_depth,
                                self.num_heads, self.mlp_ratio, self.num_queries,
                                self.attention_prior, self.position_conv, self.global_color,
                                self.smoothing_padding, compute)

  def encode(self, images: jax.Array) -> jax.Array:
    """Images [B,S,S,3] in [-1,1] -> continuous latents [B,Q,d]."""
    check_images(images, self.image_size)
    return self.queries(self.encoder(images))

  @property
  def num_tokens(self) -> int:
    return self.num_queries
