"""Image ops shared by the embedded photos and ImageNet: pure numpy + PIL.

The resizing ops take a uint8 image `(h, w)`, `(h, w, 1)`, `(h, w, 3)` or
`(h, w, 4)` and return uint8 `(size, size, 3)`. Crop and resize happen in one
PIL `resize(..., box=...)` call: PIL widens its filter by the scale factor, so
downscaling is antialiased and sub-pixel crop boxes need no extra pass.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# (left, top, right, bottom) in pixels, PIL's convention.
Box = tuple[float, float, float, float]


def to_rgb(image: np.ndarray) -> np.ndarray:
  """Returns `image` with 3 channels: gray is replicated, alpha is dropped."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise ValueError(f"Expected an image of rank 2 (h, w) or 3 (h, w, c), got shape {image.shape}.")
  channels = image.shape[-1]
  if channels == 1:
    return np.repeat(image, 3, axis=-1)
  if channels == 3:
    return image
  if channels == 4:
    return image[..., :3]
  raise ValueError(f"Expected 1, 3 or 4 channels, got shape {image.shape}.")


def random_resized_crop(
    image: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    flip: bool,
) -> np.ndarray:
  """Random square crop, resized to `size`², optionally mirrored.

  The crop side is drawn uniformly in `scale` (fractions of the shorter side)
  and its position uniformly inside the image; with `flip` the result is
  mirrored left-right with probability 1/2. All randomness comes from `rng`, so
  the output is a pure function of the image and the rng state.
  """
  lo, hi = scale
  if not 0.0 < lo <= hi <= 1.0:
    raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}.")
  image = rgb_uint8(image)
  height, width = image.shape[:2]
  side = rng.uniform(lo, hi) * min(height, width)
  left = rng.uniform(0.0, width - side)
  top = rng.uniform(0.0, height - side)
  mirror = flip and rng.random() < 0.5
  out = _crop_resize(image, (left, top, left + side, top + side), size)
  return np.ascontiguousarray(out[:, ::-1]) if mirror else out


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
  """Random channel permutation and per-channel gains in [1 - strength, 1 + strength].

  The embedded training set is small (16 photos, half of them grayscale, and frames of
  3 videos): without this, a tokenizer learns few colours and fails on held-out colour
  photos.
  """
  if not 0.0 <= strength < 1.0:
    raise ValueError(f"color jitter strength must be in [0, 1), got {strength}.")
  image = rgb_uint8(image)
  gains = rng.uniform(1.0 - strength, 1.0 + strength, size=3).astype(np.float32)
  jittered = image[..., rng.permutation(3)].astype(np.float32) * gains
  return np.clip(np.rint(jittered), 0, 255).astype(np.uint8)


def resize_shorter_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Standard eval view: shorter side resized to `size`, centre crop.

  Computed as one resize of the central square, which is the same region.
  """
  image = rgb_uint8(image)
  height, width = image.shape[:2]
  side = min(height, width)
  left, top = (width - side) / 2, (height - side) / 2
  return _crop_resize(image, (left, top, left + side, top + side), size)


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes the whole image to `size`² (the aspect ratio is not kept)."""
  image = rgb_uint8(image)
  height, width = image.shape[:2]
  return _crop_resize(image, (0, 0, width, height), size)


def rgb_uint8(image: np.ndarray) -> np.ndarray:
  """Validates dtype and shape; returns a non-empty uint8 (h, w, 3) array (gray replicated,
  alpha dropped). Raises ValueError for anything else."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"Expected a uint8 image, got dtype {image.dtype}.")
  image = to_rgb(image)
  if image.shape[0] == 0 or image.shape[1] == 0:
    raise ValueError(f"Expected a non-empty image, got shape {image.shape}.")
  return image


def _crop_resize(image: np.ndarray, box: Box, size: int) -> np.ndarray:
  """Crops `box` out of an RGB uint8 image and resizes it to `size`², antialiased."""
  if size <= 0:
    raise ValueError(f"size must be positive, got {size}.")
  out = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC, box=box)
  return np.asarray(out)
