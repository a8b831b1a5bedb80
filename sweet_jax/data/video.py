"""Video ops: decoding with PyAV and clip sampling, pure numpy + PIL.

A video is a uint8 array `[T, H, W, 3]`. Clips are cut out of it in time and
space; the spatial crop box is drawn once per clip and shared by all its frames,
so that motion inside a clip is not distorted by a moving crop.
"""

from __future__ import annotations

import io
import os

import av
import numpy as np
from PIL import Image

VideoInput = str | os.PathLike | bytes


def decode_video(
    video: VideoInput, max_frames: int | None = None, max_side: int | None = None,
    every: int = 1,
) -> np.ndarray:
  """Decodes the frames of `video` (a path or the file's bytes) to uint8 `[T, H, W, 3]`.

  With `max_side`, frames are downscaled (PIL bicubic, antialiased) so that their
  longer side is at most `max_side`. With `every` > 1, only frames 0, every, 2 * every,
  ... are kept (the others are decoded but neither converted nor scaled); `max_frames`
  counts the video's frames either way. Raises `ValueError` naming the file when
  FFmpeg fails or no frame comes out, so a caller can skip a corrupt file.
  """
  name = f"<{len(video)} bytes>" if isinstance(video, bytes) else os.fspath(video)
  try:
    with av.open(io.BytesIO(video) if isinstance(video, bytes) else name) as container:
      if not container.streams.video:
        raise ValueError("no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      frames = []
      for index, frame in enumerate(container.decode(stream)):
        if max_frames is not None and index >= max_frames:
          break
        if index % every == 0:
          frames.append(_downscale(frame.to_ndarray(format="rgb24"), max_side))
  except (av.error.FFmpegError, ValueError, OSError) as e:
    raise ValueError(f"Cannot decode video {name}: {e}") from e
  if not frames:
    raise ValueError(f"Cannot decode video {name}: no frames.")
  return np.stack(frames)


def random_clip(
    video: np.ndarray,
    rng: np.random.Generator,
    num_frames: int,
    size: int,
    scale: tuple[float, float] = (0.35, 1.0),
) -> np.ndarray:
  """Random `[num_frames, size, size, 3]` clip: random start, one random square box.

  The box side is uniform in `scale` (fractions of the shorter side), its position
  uniform inside the frame; all randomness comes from `rng`.
  """
  lo, hi = scale
  if not 0.0 < lo <= hi <= 1.0:
    raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}.")
  video = _check_video(video, num_frames)
  start = int(rng.integers(0, video.shape[0] - num_frames + 1))
  height, width = video.shape[1:3]
  side = rng.uniform(lo, hi) * min(height, width)
  left, top = rng.uniform(0.0, width - side), rng.uniform(0.0, height - side)
  return _crop_resize(video[start:start + num_frames], (left, top, left + side, top + side), size)


def center_clip(video: np.ndarray, num_frames: int, size: int) -> np.ndarray:
  """Deterministic eval clip: the middle `num_frames`, central square resized to `size`²."""
  video = _check_video(video, num_frames)
  start = (video.shape[0] - num_frames) // 2
  height, width = video.shape[1:3]
  side = min(height, width)
  left, top = (width - side) / 2, (height - side) / 2
  return _crop_resize(video[start:start + num_frames], (left, top, left + side, top + side), size)


def _check_video(video: np.ndarray, num_frames: int) -> np.ndarray:
  """Validates dtype, shape and length before any clip is cut."""
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"Expected a uint8 video [T, H, W, 3], got {video.dtype} {video.shape}.")
  if num_frames <= 0:
    raise ValueError(f"num_frames must be positive, got {num_frames}.")
  if video.shape[0] < num_frames:
    raise ValueError(f"Video has {video.shape[0]} frames, fewer than num_frames={num_frames}.")
  return video


def _crop_resize(frames: np.ndarray, box: tuple[float, ...], size: int) -> np.ndarray:
  """One crop box for every frame; PIL widens its filter, so downscaling is antialiased."""
  if size <= 0:
    raise ValueError(f"size must be positive, got {size}.")
  return np.stack([
      np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC, box=box))
      for f in frames
  ])


def _downscale(frame: np.ndarray, max_side: int | None) -> np.ndarray:
  """Shrinks `frame` so its longer side is at most `max_side` (no upscaling)."""
  height, width = frame.shape[:2]
  if max_side is None or max(height, width) <= max_side:
    return frame
  scale = max_side / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))
