"""Image helpers for qualitative eval: float -> uint8, reconstruction grids with row
labels, PNG output."""

import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sweet_jax import io as sweet_io


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Float images in [0, 1] (numpy or jax) -> uint8, clipping then rounding."""
  return np.round(np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def make_grid(rows: Sequence[np.ndarray], pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles equal-shape uint8 [N, H, W, C] arrays, one per row (e.g. originals over recons).

  `pad` pixels of `pad_value` separate the tiles and frame the grid, so the result is
  [R * H + (R + 1) * pad, N * W + (N + 1) * pad, C].
  """
  if not rows:
    raise ValueError('make_grid needs at least one row.')
  shape = rows[0].shape
  if any(row.shape != shape for row in rows) or len(shape) != 4:
    raise ValueError(f'rows must share one [N, H, W, C] shape, got {[r.shape for r in rows]}.')
  n, height, width, channels = shape
  grid = np.full(
      (len(rows) * height + (len(rows) + 1) * pad, n * width + (n + 1) * pad, channels),
      pad_value, dtype=np.uint8)
  for r, row in enumerate(rows):
    top = pad + r * (height + pad)
    for c, image in enumerate(row):
      left = pad + c * (width + pad)
      grid[top:top + height, left:left + width] = image
  return grid


def with_row_labels(grid: np.ndarray, labels: Sequence[str], pad: int = 2) -> np.ndarray:
  """`grid` (from `make_grid`, one row per label) with a white column on its left naming
  each row; labels may span lines ("tokenizer\n928 bits")."""
  if grid.ndim != 3 or grid.shape[-1] != 3:
    raise ValueError(f'with_row_labels takes an RGB grid [H, W, 3], got {grid.shape}.')
  font = ImageFont.load_default()
  draw = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  boxes = [draw.multiline_textbbox((0, 0), label, font=font) for label in labels]
  width = max(right for _, _, right, _ in boxes) + 3 * pad
  row_height = (grid.shape[0] - pad) / len(labels)
  height = max(grid.shape[0], round(max(bottom for *_, bottom in boxes) + 2 * pad))
  canvas = Image.new('RGB', (width + grid.shape[1], height), 'white')
  canvas.paste(Image.fromarray(grid), (width, 0))
  draw = ImageDraw.Draw(canvas)
  for r, (label, (_, top, _, bottom)) in enumerate(zip(labels, boxes)):
    y = pad + r * row_height + max(0.0, (row_height - pad - (bottom - top)) / 2) - top
    draw.multiline_text((pad, y), label, fill='black', font=font)
  return np.asarray(canvas)


def png_bytes(image: np.ndarray) -> bytes:
  """A uint8 [H, W, C] (C in {1, 3, 4}) or [H, W] image, PNG-encoded."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def save_png(path: str | sweet_io.PathLike, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, C] (C in {1, 3, 4}) or [H, W] image as PNG, atomically, to any
  filesystem (parent directories are created): a reader never sees a half-written file."""
  if not str(path).lower().endswith('.png'):
    raise ValueError(f'save_png writes PNG; name the file *.png, got {path}.')
  sweet_io.write_bytes(path, png_bytes(image))
