"""The video CQAE of SweetTokenizer: decoupled spatial and temporal query tokens.

Data flow for a clip [B, T, S, S, 3] with T = 1 + k*t (t = temporal_patch_size),
patch p, N = (S/p)^2 patches per latent frame and T' = 1 + k latent frames:

  patchify        causal: the first frame by p x p patches (`patch_embed`, as an
                  image), every later group of t frames by t x p x p tubes
                  (`tube_embed`) -> tokens [B, T', N, D]
  spatial branch  `encoder`: the image encoder's blocks run on every latent frame
                  separately; each layer's output is averaged over the T' frames and
                  the Qs spatial queries (`queries`) read layer i's average in their
                  layer i -> [B, Qs, d]
  temporal branch differences of consecutive latent frames [B, T'-1, N, D] go through
                  a causal transformer per position (`temporal_encoder`); one
                  temporal query per position (`temporal_queries`) reads the T'-1
                  difference tokens of its position layer by layer -> [B, N, d_t]
  quantizers      spatial tokens -> `quantizer` (nouns/adjectives or a VQ), temporal
                  tokens -> `temporal_quantizer` (verbs/adverbs or a VQ)
  decoder         the image decoder's mask tokens, repeated over the T' latent frames
                  (frames after the first get a learned frame embedding), read the
                  decoded spatial latents layer by layer; after every
                  (depth / temporal_decoder_depth)-th layer a temporal block runs over
                  time at each position (causal self-attention + cross-attention to
                  the decoded temporal latent of that position); pixel heads give the
                  first frame (`to_pixels`) and the tubes (`to_tube_pixels`).

An image is a clip of one frame: then there are no temporal tokens, the temporal
modules are skipped, and the computation is exactly the image CQAE's, parameter
for parameter (`params_from_image_model` loads image-trained weights).

Deviations from the official code (SweetTok, arXiv:2412.10443; modeling/sweettok.py),
each for a reason stated here:
- the PEG is the image model's per-frame 2-D convolution, not a causal 3-D one,
  so that image weights load unchanged; the decoder's mask tokens therefore get a
  learned per-frame embedding (in the official decoder frames 2..4 see identical
  inputs until the temporal cross-attention, since the causal PEG saturates);
- the interleaved temporal decoder blocks also self-attend causally over time;
- pixels are regressed directly (no OmniTokenizer proxy codes, see cqae.py).
"""

from typing import Any, ClassVar, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from sweet_jax.codebook.artifact import WordGroup
from sweet_jax.models.cqae import (PixelSmoothing, QueryEncoder, _dense, locality_priors,
                                   make_quantizer)
from sweet_jax.models.tokenizer import Tokenizer
from sweet_jax.nn.layers import (AttentionOptions, ComputeOptions, LayerNorm, block,
                                     learned_embedding,
                                     patch_position_embedding, patchify, unpatchify)

Tree = dict[str, Any]


def check_num_frames(num_frames: int, temporal_patch_size: int) -> int:
  """Latent frames of a clip: 1 + (T - 1) / t; raises unless T = 1 + k*t."""
  if num_frames < 1 or (num_frames - 1) % temporal_patch_size:
    raise ValueError(f"a clip must have 1 + k*{temporal_patch_size} frames (the first frame, "
                     f"then tubes of temporal_patch_size={temporal_patch_size}); got "
                     f"{num_frames}")
  return 1 + (num_frames - 1) // temporal_patch_size


def tubify(frames: jax.Array, t: int, p: int) -> jax.Array:
  """[B, k*t, H, W, C] -> [B, k, (H/p)*(W/p), t*p*p*C] (row-major patches per tube)."""
  b, n, h, w, c = frames.shape
  x = frames.reshape(b, n // t, t, h // p, p, w // p, p, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, n // t, (h // p) * (w // p), t * p * p * c)


def untubify(tubes: jax.Array, t: int, p: int, height: int, width: int,
             channels: int = 3) -> jax.Array:
  """Inverse of `tubify`."""
  b, k = tubes.shape[:2]
  x = tubes.reshape(b, k, height // p, width // p, t, p, p, channels)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, k * t, height, width, channels)


class ClipEncoder(nn.Module):
  """Causal patchify + the spatial transformer per latent frame (the spatial branch).

  Returns every layer's output averaged over time (what the spatial queries read)
  and the patch tokens before the transformer (what the temporal branch differences).
  Parameter names match `cqae.PatchEncoder`, plus `tube_embed`.
  """

  patch_size: int
  temporal_patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  position_conv: bool
  attention: AttentionOptions = AttentionOptions()
  compute: ComputeOptions = ComputeOptions()

  @nn.compact
  def __call__(self, clips: jax.Array) -> tuple[list[jax.Array], jax.Array]:
    b, t, h, _, _ = clips.shape
    p = self.patch_size
    grid = h // p
    tokens = _dense(self.width, ("patch", "embed"), "patch_embed")(patchify(clips[:, 0], p))[:, None]
    if t > 1:
      tubes = tubify(clips[:, 1:], self.temporal_patch_size, p)
      tube_tokens = _dense(self.width, ("patch", "embed"), "tube_embed")(tubes)
      tokens = jnp.concatenate([tokens, tube_tokens], axis=1)  # [B, T', N, D]
    latent_frames, n = tokens.shape[1], tokens.shape[2]
    x = tokens + patch_position_embedding(self, "pos_embed", grid, self.width)
    x = x.reshape(b * latent_frames, n, self.width)
    features = []
    for i in range(self.depth):
      x = block(self.compute, self.num_heads, self.mlp_ratio, position_conv=self.position_conv,
                attention=self.attention, name=f"block_{i}")(x)
      features.append(jnp.mean(x.reshape(b, latent_frames, n, self.width), axis=1))
    return features, tokens


class TemporalEncoder(nn.Module):
  """A causal transformer over the differences of consecutive latent frames, run at
  every patch position separately: [B, T', N, D] -> per layer [B*N, T'-1, D]."""

  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  max_steps: int  # latent frames - 1 of the longest clip
  attention: AttentionOptions = AttentionOptions()
  compute: ComputeOptions = ComputeOptions()

  @nn.compact
  def __call__(self, tokens: jax.Array) -> list[jax.Array]:
    diffs = tokens[:, 1:] - tokens[:, :-1]
    b, steps, n, d = diffs.shape
    x = diffs.transpose(0, 2, 1, 3).reshape(b * n, steps, d)
    x = x + learned_embedding(self, "time_embed", (self.max_steps, d), ("length", "embed"))[:steps]
    features = []
    for i in range(self.depth):
      x = block(self.compute, self.num_heads, self.mlp_ratio, causal=True, attention=self.attention,
                name=f"block_{i}")(x)
      features.append(x)
    return features


class TemporalQueryEncoder(nn.Module):
  """One query per patch position; in layer i it reads layer i's difference tokens of
  its own position (a length-1 sequence cross-attending to T'-1 tokens)."""

  num_positions: int
  width: int
  num_heads: int
  mlp_ratio: float
  code_dim: int
  attention: AttentionOptions = AttentionOptions()
  compute: ComputeOptions = ComputeOptions()

  @nn.compact
  def __call__(self, features: list[jax.Array]) -> jax.Array:
    batch = features[0].shape[0] // self.num_positions
    shape = (self.num_positions, self.width)
    tokens = learned_embedding(self, "tokens", shape, ("query", "embed"), self.width**-0.5)
    pos = learned_embedding(self, "pos_embed", shape, ("query", "embed"), self.width**-0.5)
    x = jnp.broadcast_to(tokens + pos, (batch,) + shape).reshape(batch * self.num_positions, 1,
                                                                 self.width)
    for i, feature in enumerate(features):
      x = block(self.compute, self.num_heads, self.mlp_ratio, cross_attention=True,
                attention=self.attention, name=f"block_{i}")(x, feature)
    x = LayerNorm(name="ln_post")(x.reshape(batch, self.num_positions, self.width))
    return _dense(self.code_dim, ("embed", "code"), "to_latent")(x)


def temporal_slots(depth: int, temporal_depth: int) -> list[int]:
  """Decoder layers after which the temporal blocks run (official: 1, 3, 5, 7 of 8)."""
  if temporal_depth < 1 or depth % temporal_depth:
    raise ValueError(f"temporal_decoder_depth={temporal_depth} must divide "
                     f"decoder_depth={depth}")
  every = depth // temporal_depth
  return [(k + 1) * every - 1 for k in range(temporal_depth)]


class ClipDecoder(nn.Module):
  """The image decoder over T' latent frames, with interleaved temporal blocks.

  Parameter names match `cqae.QueryDecoder` plus `frame_embed`, `temporal_*` and
  `to_tube_pixels`.
  """

  image_size: int
  patch_size: int
  temporal_patch_size: int
  width: int
  depth: int
  temporal_depth: int
  num_heads: int
  mlp_ratio: float
  num_queries: int
  max_latent_frames: int
  attention_prior: bool
  position_conv: bool
  attention: AttentionOptions = AttentionOptions()
  compute: ComputeOptions = ComputeOptions()

  @nn.compact
  def __call__(self, spatial: jax.Array, temporal: jax.Array | None,
               latent_frames: int) -> jax.Array:
    batch = spatial.shape[0]
    width = self.width
    z = _dense(width, ("code", "embed"), "from_latent")(spatial)
    z = z + learned_embedding(self, "latent_pos_embed", (self.num_queries, width), ("query", "embed"))
    latents = []
    for i in range(self.depth):
      z = block(self.compute, self.num_heads, self.mlp_ratio, attention=self.attention,
                name=f"latent_block_{i}")(z)
      latents.append(z)

    grid = self.image_size // self.patch_size
    n = grid * grid
    temporal_latents = []
    if latent_frames > 1:
      if temporal is None:
        raise ValueError(f"decoding {latent_frames} latent frames needs temporal codes")
      y = _dense(width, ("code", "embed"), "temporal_from_latent")(temporal)
      y = y + learned_embedding(self, "temporal_latent_pos_embed", (n, width), ("length", "embed"))
      y = y.reshape(batch * n, 1, width)
      for k in range(self.temporal_depth):
        y = block(self.compute, self.num_heads, self.mlp_ratio, attention=self.attention,
                  name=f"temporal_latent_block_{k}")(y)
        temporal_latents.append(y)

    mask = learned_embedding(self, "mask_token", (1, width), (None, "embed"))
    pos = patch_position_embedding(self, "pos_embed", grid, width)
    x = jnp.broadcast_to(mask + pos, (batch, latent_frames, n, width))
    if latent_frames > 1:  # the first frame stays exactly the image decoder's input
      frame_embed = learned_embedding(self, "frame_embed", (self.max_latent_frames - 1, width),
                                      (None, "embed"))
      x = x.at[:, 1:].add(frame_embed[:latent_frames - 1, None])
    biases = locality_priors(self, self.attention_prior, self.num_queries, grid,
                             self.num_heads, len(latents), patches_attend=True)
    slots = temporal_slots(self.depth, self.temporal_depth)
    for i, (latent, bias) in enumerate(zip(latents, biases)):
      x = block(self.compute, self.num_heads, self.mlp_ratio, cross_attention=True,
                position_conv=self.position_conv, attention=self.attention, name=f"block_{i}")(
                    x.reshape(batch * latent_frames, n, width),
                    jnp.repeat(latent, latent_frames, axis=0), bias)
      x = x.reshape(batch, latent_frames, n, width)
      if temporal_latents and i in slots:
        k = slots.index(i)
        xt = x.transpose(0, 2, 1, 3).reshape(batch * n, latent_frames, width)
        xt = block(self.compute, self.num_heads, self.mlp_ratio, cross_attention=True, causal=True,
                   attention=self.attention, name=f"temporal_block_{k}")(xt, temporal_latents[k])
        x = xt.reshape(batch, n, latent_frames, width).transpose(0, 2, 1, 3)
    x = LayerNorm(name="ln_post")(x)
    p, s = self.patch_size, self.image_size
    first = _dense(p * p * 3, ("embed", "patch"), "to_pixels")(x[:, 0])
    frames = unpatchify(first, p, s, s)[:, None]
    if latent_frames > 1:
      t = self.temporal_patch_size
      tubes = _dense(t * p * p * 3, ("embed", "patch"), "to_tube_pixels")(x[:, 1:])
      frames = jnp.concatenate([frames, untubify(tubes, t, p, s, s)], axis=1)
    num_frames = frames.shape[1]
    smoothed = PixelSmoothing(name="smooth_pixels")(frames.reshape((batch * num_frames,) +
                                                                   frames.shape[2:]))
    return smoothed.reshape(frames.shape)


class VideoCQAE(Tokenizer):
  """SweetTokenizer's video CQAE: spatial tokens (nouns/adjectives) + one temporal token
  per patch position (verbs/adverbs), or plain VQ codebooks for either.

  Same method surface as the image CQAE, on clips [B, T, S, S, 3] in [-1, 1] with
  T = 1 + k*t, k <= (num_frames - 1) / t. Latents, codes and indices are dicts with
  "spatial" and (for T > 1) "temporal" entries.
  """

  image_size: int = 64
  patch_size: int = 8
  temporal_patch_size: int = 4
  num_frames: int = 17  # the longest clip; sizes the time embeddings
  width: int = 256
  num_heads: int = 4
  mlp_ratio: float = 4.0
  encoder_depth: int = 4
  decoder_depth: int = 4
  temporal_encoder_depth: int = 2
  temporal_decoder_depth: int = 2
  num_queries: int = 32
  codebook_size: int = 1024
  code_dim: int = 16
  temporal_codebook_size: int = 1024
  temporal_code_dim: int = 16
  attention_prior: bool = True
  position_conv: bool = True
  cosine_attention: bool = False
  rope: bool = False
  cross_null_kv: int = 0
  quantizer_type: Literal["vq", "mlc"] = "vq"
  word_group: WordGroup | None = None  # spatial: adjectives + nouns
  temporal_word_group: WordGroup | None = None  # temporal: adverbs + verbs
  mlc_codebook: Literal["language", "learned"] = "language"
  gcn_hidden: int = 256
  gcn_dropout: float = 0.5
  normalize_word_codes: bool = False
  compute_dtype: str = "float32"  # layers.ComputeOptions, as in the image CQAE
  remat: str = "none"

  modality: ClassVar[str] = "video"  # images come in as one-frame clips
  word_group_fields: ClassVar[Mapping[str, str]] = {"word_group": "spatial",
                                                    "temporal_word_group": "temporal"}

  def _quantizer(self, temporal: bool, **module_kwargs) -> nn.Module:
    return make_quantizer(
        self.quantizer_type,
        codebook_size=self.temporal_codebook_size if temporal else self.codebook_size,
        code_dim=self.temporal_code_dim if temporal else self.code_dim,
        word_group=self.temporal_word_group if temporal else self.word_group,
        mlc_codebook=self.mlc_codebook, gcn_hidden=self.gcn_hidden, gcn_dropout=self.gcn_dropout,
        normalize_word_codes=self.normalize_word_codes, **module_kwargs)

  def make_quantizer(self, **module_kwargs) -> nn.Module:
    """The spatial quantizer (`parent=None`: a detached one, for its metadata)."""
    return self._quantizer(False, **module_kwargs)

  def make_temporal_quantizer(self, **module_kwargs) -> nn.Module:
    return self._quantizer(True, **module_kwargs)

  @property
  def max_latent_frames(self) -> int:
    return check_num_frames(self.num_frames, self.temporal_patch_size)

  def setup(self):
    if self.image_size % self.patch_size:
      raise ValueError(
          f"patch_size {self.patch_size} does not divide image_size {self.image_size}")
    attention = AttentionOptions(self.cosine_attention, self.rope, self.cross_null_kv)
    compute = ComputeOptions(self.compute_dtype, self.remat)
    num_positions = (self.image_size // self.patch_size) ** 2
    self.encoder = ClipEncoder(self.patch_size, self.temporal_patch_size, self.width,
                               self.encoder_depth, self.num_heads, self.mlp_ratio,
                               self.position_conv, attention, compute)
    self.queries = QueryEncoder(self.num_queries, self.width, self.num_heads, self.mlp_ratio,
                                self.code_dim, self.attention_prior, attention, compute)
    self.temporal_encoder = TemporalEncoder(self.width, self.temporal_encoder_depth,
                                            self.num_heads, self.mlp_ratio,
                                            max(self.max_latent_frames - 1, 1), attention,
                                            compute)
    self.temporal_queries = TemporalQueryEncoder(num_positions, self.width, self.num_heads,
                                                 self.mlp_ratio, self.temporal_code_dim,
                                                 attention, compute)
    self.quantizer = self.make_quantizer()
    self.temporal_quantizer = self.make_temporal_quantizer()
    self.decoder = ClipDecoder(self.image_size, self.patch_size, self.temporal_patch_size,
                               self.width, self.decoder_depth, self.temporal_decoder_depth,
                               self.num_heads, self.mlp_ratio, self.num_queries,
                               self.max_latent_frames, self.attention_prior,
                               self.position_conv, attention, compute)

  def _check_clips(self, clips: jax.Array) -> int:
    """Validates [B, T, S, S, 3]; returns the number of latent frames."""
    if clips.ndim != 5 or tuple(clips.shape[2:]) != (self.image_size, self.image_size, 3):
      raise ValueError(f"expected clips [B, T, {self.image_size}, {self.image_size}, 3], "
                       f"got {tuple(clips.shape)}")
    latent_frames = check_num_frames(clips.shape[1], self.temporal_patch_size)
    if latent_frames > self.max_latent_frames:
      raise ValueError(f"clip of {clips.shape[1]} frames is longer than the model's "
                       f"num_frames={self.num_frames}")
    return latent_frames

  def encode(self, clips: jax.Array) -> Tree:
    """Clips -> {"spatial": [B, Qs, d], "temporal": [B, N, d_t] (T > 1 only)}."""
    latent_frames = self._check_clips(clips)
    features, tokens = self.encoder(clips)
    latents = {"spatial": self.queries(features)}
    if latent_frames > 1:
      latents["temporal"] = self.temporal_queries(self.temporal_encoder(tokens))
    return latents

  def quantize(self, latents: Tree, mix: float | jax.Array = 1.0, train: bool = False
               ) -> tuple[Tree, dict[str, Any]]:
    """Each branch through its quantizer; losses summed, indices kept per branch."""
    codes, indices, losses = {}, {}, {}
    for branch, quantizer in (("spatial", self.quantizer), ("temporal", self.temporal_quantizer)):
      if branch not in latents:
        continue
      codes[branch], aux = quantizer(latents[branch], mix, train)
      indices[branch] = aux.pop("indices")
      for name, value in aux.items():
        losses[name] = losses.get(name, 0.0) + value
    return codes, {"indices": indices, **losses}

  def decode(self, codes: Tree, num_frames: int | None = None) -> jax.Array:
    """Codes -> clips [B, T, S, S, 3]; T defaults to 1 without temporal codes, else
    to the model's num_frames."""
    if num_frames is None:
      num_frames = self.num_frames if "temporal" in codes else 1
    latent_frames = check_num_frames(num_frames, self.temporal_patch_size)
    return self.decoder(codes["spatial"], codes.get("temporal"), latent_frames)

  def encode_to_indices(self, clips: jax.Array) -> Tree:
    _, aux = self.quantize(self.encode(clips))
    return {k: v.astype(jnp.int32) for k, v in aux["indices"].items()}

  def decode_from_indices(self, indices: Tree, num_frames: int | None = None) -> jax.Array:
    codes = {"spatial": self.quantizer.lookup(indices["spatial"])}
    if "temporal" in indices:
      codes["temporal"] = self.temporal_quantizer.lookup(indices["temporal"])
    return self.decode(codes, num_frames)

  def __call__(self, clips: jax.Array, quantizer_mix: float | jax.Array = 1.0,
               train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    codes, aux = self.quantize(self.encode(clips), quantizer_mix, train)
    return self.decode(codes, clips.shape[1]), aux

  @property
  def num_temporal_tokens(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  def quantizers(self) -> dict[str, nn.Module]:
    return {"spatial": self.make_quantizer(parent=None),
            "temporal": self.make_temporal_quantizer(parent=None)}

  def token_counts(self, num_frames: int | None = None) -> dict[str, int]:
    """Spatial tokens, and one temporal token per patch position for clips of more than
    one frame."""
    num_frames = self.num_frames if num_frames is None else num_frames
    counts = {"spatial": self.num_queries}
    if num_frames > 1:
      counts["temporal"] = self.num_temporal_tokens
    return counts

  def index_groups(self) -> dict[str, dict[str, tuple[tuple[int, ...] | None, int]]]:
    """Branch -> codebook name -> (index columns, size): usage statistics."""
    return {branch: q.index_groups() for branch, q in self.quantizers().items()}


def params_from_image_model(video_params: Tree, image_params: Tree) -> Tree:
  """`video_params` with every parameter of an image CQAE replaced by the image one.

  An image is a one-frame clip, so the image model's tree is a sub-tree of the video
  model's with the same shapes; anything else is an error naming the path.
  """
  flat_video = traverse_util.flatten_dict(nn.unbox(video_params), sep="/")
  flat_image = traverse_util.flatten_dict(nn.unbox(image_params), sep="/")
  for path, value in flat_image.items():
    if path not in flat_video:
      raise ValueError(f"image parameter {path!r} has no counterpart in the video model "
                       "(do the two configs agree on width, depths, queries, codebook?)")
    if np.shape(value) != np.shape(flat_video[path]):
      raise ValueError(f"image parameter {path!r} has shape {np.shape(value)}, the video "
                       f"model's {np.shape(flat_video[path])}")
    flat_video[path] = value
  return traverse_util.unflatten_dict(flat_video, sep="/")
