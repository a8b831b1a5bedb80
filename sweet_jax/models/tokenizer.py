"""The method surface shared by the image tokenizers (ImageCQAE, SoftVQVAE, TiTok).

The trainer, the evaluator and the words readout call only these methods, so every image
tokenizer is trained and scored alike. A subclass sets up `self.quantizer` and
`self.decoder` in `setup` and defines `encode`, `make_quantizer` and `bits_per_image`.
"""

from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp


class ImageTokenizer(nn.Module):
  """Images [B,S,S,3] in [-1,1] -> latents -> (codes, aux) -> images.

  No fields here: a subclass declares `image_size` and `patch_size` with its own defaults.
  """

  def check_patch_grid(self) -> None:
    """Patches must tile the image (call from `setup`)."""
    if self.image_size % self.patch_size:
      raise ValueError(
          f"patch_size {self.patch_size} does not divide image_size {self.image_size}")

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

  def index_groups(self) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """Codebook name -> (index columns or None for [B,T] indices, size): usage statistics."""
    return self.make_quantizer(parent=None).index_groups()
