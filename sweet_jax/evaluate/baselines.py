"""Bit-matched thumbnail baseline: a tokenizer should beat a thumbnail of the same bit budget.

A tokenizer emitting T tokens from a codebook of size K spends T * log2(K) bits per image;
the baseline stores a uint8 RGB thumbnail with at least that many bits and upsamples it back.
"""

import math

import numpy as np
from PIL import Image


def thumbnail_side(bits: float, channels: int = 3, bits_per_value: int = 8) -> int:
  """Smallest side s with s * s * channels * bits_per_value >= bits."""
  if bits <= 0:
    raise ValueError(f'bits must be positive, got {bits}.')
  bits_per_pixel = channels * bits_per_value
  side = max(1, math.ceil(math.sqrt(bits / bits_per_pixel)))
  # Guard against floating-point error in the square root, in both directions.
  while side * side * bits_per_pixel < bits:
    side += 1
  while side > 1 and (side - 1) ** 2 * bits_per_pixel >= bits:
    side -= 1
  return side


def bicubic_thumbnail(images: np.ndarray, side: int) -> np.ndarray:
  """Round-trips uint8 [B, H, W, 3] images through a side x side uint8 bicubic thumbnail.

  PIL's BICUBIC resize antialiases when downsampling; the thumbnail is kept as uint8 because
  that is the bit budget being matched, then upsampled back to H x W with BICUBIC.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f'expected uint8 [B, H, W, C] images, got {images.dtype} {images.shape}.')
  height, width = images.shape[1:3]
  out = np.empty_like(images)
  for i, image in enumerate(images):
    thumb = Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC)
    out[i] = np.asarray(thumb.resize((width, height), Image.Resampling.BICUBIC))
  return out
