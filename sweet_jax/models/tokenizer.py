"""The tokenizer contract: what every tokenizer (ImageCQAE, VideoCQAE, SoftVQVAE, TiTok)
declares and offers, so that the trainer, the evaluator, the words readout and the
public API read it instead of probing models with getattr.

Declared (class attributes):
  modality            "image": inputs [B, S, S, 3]; "video": clips [B, T, S, S, 3]
                      (images are one-frame clips), in [-1, 1]
  word_group_fields   model field -> language-codebook group ("spatial": adjectives and
                      nouns, "temporal": adverbs and verbs) that the MLC quantizer needs
Derived (from the detached quantizers, `quantizers()`):
  has_words, token_counts, bits_per_sample, index_groups
Method surface:
  encode(x) -> latents, quantize(latents) -> (codes, aux), decode(codes) -> x_hat,
  encode_to_indices(x) -> ints, decode_from_indices(ints) -> x_hat,
  __call__(x) -> (x_hat, aux)
`ImageTokenizer` implements the surface for the image models; a subclass sets up
`self.quantizer` and `self.decoder` in `setup` and defines `encode`, `make_quantizer`
and `num_tokens`.
"""

from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from sweet_jax.quantizers import LanguageQuantizer

IndexGroups = dict[str, tuple[tuple[int, ...] | None, int]]


class Tokenizer(nn.Module):
  """The base of every tokenizer: declared modality and word groups, derived sizes."""

  modality: ClassVar[str] = "image"
  word_group_fields: ClassVar[Mapping[str, str]] = {}

  @classmethod
  def word_groups_needed(cls, fields: Mapping[str, Any]) -> dict[str, str]:
    """The word-group fields that a model built from `fields` (config.model) must be
    given: those of `word_group_fields` when it quantizes with the MLC quantizer."""
    return dict(cls.word_group_fields) if fields.get("quantizer_type") == "mlc" else {}

  def quantizers(self) -> dict[str, nn.Module]:
    """Detached quantizers (for their metadata) by token branch."""
    raise NotImplementedError

  def token_counts(self, num_frames: int | None = None) -> dict[str, int]:
    """Tokens per branch of one sample (a clip of `num_frames`, default the longest)."""
    raise NotImplementedError

  @property
  def has_words(self) -> bool:
    """Whether the tokens are words: the MLC quantizer over the language codebook."""
    spatial = self.quantizers()["spatial"]
    return isinstance(spatial, LanguageQuantizer) and spatial.codebook == "language"

  def bits_per_sample(self, num_frames: int | None = None) -> float:
    """Tokens x log2(distinct codes per token), summed over branches: the information
    budget of one image, or of a clip of `num_frames` (default the longest)."""
    quantizers = self.quantizers()
    return sum(count * quantizers[branch].bits_per_token()
               for branch, count in self.token_counts(num_frames).items())

  @property
  def bits_per_image(self) -> float:
    return self.bits_per_sample(1)

  def index_groups(self) -> IndexGroups | dict[str, IndexGroups]:
    """Codebook name -> (index columns or None for [B,T] indices, size): usage
    statistics (per branch for a model with several)."""
    raise NotImplementedError


class ImageTokenizer(Tokenizer):
  """Images [B,S,S,3] in [-1,1] -> latents -> (codes, aux) -> images.

  No fields here: a subclass declares `image_size` and `patch_size` with its own defaults.
  """

  def check_patch_grid(self) -> None:
    """Patches must tile the image (call from `setup`)."""
    if self.image_size % self.patch_size:
      raise ValueError(
          f"patch_size {self.patch_size} does not divide image_size {self.image_size}")

  @property
  def num_tokens(self) -> int:
    raise NotImplementedError

  def quantizers(self) -> dict[str, nn.Module]:
    return {"spatial": self.make_quantizer(parent=None)}

  def token_counts(self, num_frames: int | None = None) -> dict[str, int]:
    del num_frames
    return {"spatial": self.num_tokens}

  def quantize(self, latents: jax.Array, mix: float | jax.Array = 1.0, train: bool = False
               ) -> tuple[jax.Array, dict[str, Any]]:
    """Latents -> (codes, aux with indices and the quantizer's losses); `mix` < 1 only
    during a quantizer warm-up (see vq.py); `train` enables the quantizer's dropout
    where it has one (needs a "dropout" rng)."""
    return self.quantizer(latents, mix, train)

  def decode(self, codes: jax.Array) -> jax.Array:
    """Codes -> images [B,S,S,3] (unclipped)."""
    return self.decoder(codes)

  def encode_to_indices(self, images: jax.Array) -> jax.Array:
    """Images -> token indices, int32: [B,T], or [B,T,3] for the language codebook.
    For a soft quantizer these are the argmax codes (logging and usage)."""
    _, aux = self.quantize(self.encode(images))
    return aux["indices"].astype(jnp.int32)

  def decode_from_indices(self, indices: jax.Array) -> jax.Array:
    """Indices -> images (lossy for a soft quantizer, as SoftVQ's official `decode_code`)."""
    return self.decode(self.quantizer.lookup(indices))

  def code_outputs(self, codes: jax.Array) -> dict[str, jax.Array]:
    """Extra aux entries computed from the codes (SoftVQ's alignment projection)."""
    del codes
    return {}

  def __call__(self, images: jax.Array, quantizer_mix: float | jax.Array = 1.0,
               train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """-> (reconstruction, aux)."""
    codes, aux = self.quantize(self.encode(images), quantizer_mix, train)
    return self.decode(codes), {**aux, **self.code_outputs(codes)}

  def index_groups(self) -> IndexGroups:
    return self.make_quantizer(parent=None).index_groups()
