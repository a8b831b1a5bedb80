"""Held-out clip evaluation: per-frame PSNR/SSIM, codebook usage, videos to look at.

Clips are [B, T, H, W, 3]; reconstructions are scored frame by frame, so a curve of
quality over time (the first frame is coded like an image, later frames through the
temporal tokens) comes out alongside the means.
"""

import dataclasses
import os
import tempfile
from typing import Any, Callable, Iterable, Sequence

import imageio_ffmpeg
import jax
import numpy as np

from sweet_jax import io as sweet_io
from sweet_jax.evaluate.baselines import bicubic_thumbnail, thumbnail_side
from sweet_jax.evaluate.images import make_grid
from sweet_jax.metrics import codebook_stats_by_group, psnr, ssim
from sweet_jax.evaluate.reconstruction import (channel_means, collect_held_out, color_metrics,
                                               perceptual_metrics)


def clip_grid(rows: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
  """Rows of N clips [N, T, H, W, 3] -> one video [T, H', W', 3]: frame t shows frame t
  of every clip, one row per input (e.g. originals above reconstructions)."""
  if not rows or any(np.ndim(row) != 5 for row in rows):
    raise ValueError(
        f"clip_grid needs uint8 [N, T, H, W, C] rows, got {[np.shape(r) for r in rows]}.")
  num_frames = rows[0].shape[1]
  return np.stack([make_grid([row[:, t] for row in rows], pad=pad) for t in range(num_frames)])


def filmstrip(video: np.ndarray, max_frames: int = 9) -> np.ndarray:
  """[T, H, W, 3] -> one image: up to `max_frames` evenly spaced frames (always the first
  and the last) side by side, framed as `make_grid` frames its tiles."""
  picks = np.unique(np.linspace(0, len(video) - 1, min(max_frames, len(video))).round().astype(int))
  return make_grid([np.asarray(video)[picks]])


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 8) -> None:
  """uint8 [T, H, W, 3] -> an H.264 MP4 (imageio-ffmpeg's bundled ffmpeg) at `path` on any
  filesystem. ffmpeg writes a local temporary file, which is then copied into place
  atomically, so a crash never leaves a broken file under `path`.

  Odd heights/widths are padded by one edge pixel (yuv420p needs even sides), so that
  ffmpeg never rescales the frames.
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
    raise ValueError(f"expected uint8 frames [T>0, H, W, 3], got {frames.dtype} {frames.shape}")
  h, w = frames.shape[1:3]
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  with tempfile.TemporaryDirectory(prefix="sweet_jax_mp4_") as tmp_dir:
    tmp = os.path.join(tmp_dir, "video.mp4")
    writer = imageio_ffmpeg.write_frames(
        tmp, (frames.shape[2], frames.shape[1]), fps=fps, codec="libx264",
        pix_fmt_out="yuv420p", quality=9, macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)  # Start the encoder.
    for frame in frames:
      writer.send(np.ascontiguousarray(frame))
    writer.close()
    with open(tmp, "rb") as f:  # a local temporary file of our own
      data = f.read()
  sweet_io.write_bytes(path, data)


def write_video_summary(writer: Any, step: int, name: str, video: np.ndarray) -> None:
  """A video [T, H, W, 3] to TensorBoard as an image strip (first, middle and last frame
  side by side): clu 0.0.12's TensorBoard `SummaryWriter.write_videos` only logs "does
  not support writing videos", so `write_videos` would drop it. The MP4 files
  (`write_mp4`) are the playable form."""
  writer.write_images(step, {name: filmstrip(video, max_frames=3)[None]})


@dataclasses.dataclass
class ClipReconstructionResult:
  metrics: dict[str, Any]
  video: np.ndarray  # [T, H', W', 3] uint8: originals above reconstructions
  grid_indices: Any  # the token indices of the clips in the video (per branch)
  features: dict[str, Any]  # FeatureStats by name (e.g. "i3d_real")


def evaluate_clip_reconstruction(
    eval_step: Callable[[Any, dict], dict], params: Any, batches: Iterable[dict],
    to_global: Callable[[dict], dict], *, index_groups: dict,
    num_grid_clips: int, bits_per_clip: float | None = None,
    reference: dict | None = None) -> ClipReconstructionResult:
  """Scores every held-out clip (padding clips, and clips the pipeline skipped, are masked
  out): mean and per-frame PSNR/SSIM, codebook usage and perplexity per branch and part
  of speech.

  `eval_step(params, batch)` returns `recon` [b, T, S, S, 3] in [0, 1], `psnr` and
  `ssim` [b, T], and `indices` (an array, or a dict of arrays per token branch, as
  `index_groups`). With `bits_per_clip`, the clips are also scored against the
  bit-matched codec of the image evaluation: a bicubic thumbnail of every frame, the
  smallest whose bits over all frames are at least the tokens' bits. `reference` as
  `perceptual_metrics`.
  """
  side = None
  unit = lambda x: np.asarray(x, np.float32) / 255.0

  def thumbnail_scores(originals: np.ndarray) -> dict[str, np.ndarray]:
    nonlocal side
    num_frames = originals.shape[1]
    side = thumbnail_side(bits_per_clip / num_frames)
    frames = originals.reshape((-1,) + originals.shape[2:])
    thumbs = bicubic_thumbnail(frames, side)
    return {"thumbnail_psnr": np.asarray(psnr(unit(thumbs), unit(frames))),
            "thumbnail_ssim": np.asarray(ssim(unit(thumbs), unit(frames))),
            "color_thumbnail": channel_means(thumbs.reshape(originals.shape))}

  held_out = collect_held_out(eval_step, params, batches, to_global, "video",
                              keep=num_grid_clips,
                              per_batch=thumbnail_scores if bits_per_clip is not None else None)
  originals, recons, all_indices = (held_out[k] for k in ("originals", "recons", "indices"))
  frame_psnr, frame_ssim = held_out["psnr"], held_out["ssim"]  # [N, T]
  usage = codebook_stats_by_group(all_indices, index_groups)
  metrics = {
      "num_clips": held_out["count"],
      "psnr": float(np.mean(frame_psnr)),
      "ssim": float(np.mean(frame_ssim)),
      **perceptual_metrics(held_out, reference),
      "first_frame_psnr": float(np.mean(frame_psnr[:, 0])),
      "psnr_per_frame": [round(float(v), 3) for v in np.mean(frame_psnr, axis=0)],
      "ssim_per_frame": [round(float(v), 4) for v in np.mean(frame_ssim, axis=0)],
      **{name: float(value) for name, value in usage.items()},
      **color_metrics(held_out),
  }
  if frame_psnr.shape[1] > 1:  # Frames coded through the temporal tokens.
    metrics["later_frames_psnr"] = float(np.mean(frame_psnr[:, 1:]))
  if bits_per_clip is not None:
    metrics.update(bits_per_clip=float(bits_per_clip), thumbnail_side=int(side),
                   thumbnail_bits=int(side * side * 3 * 8 * originals.shape[1]),
                   thumbnail_psnr=float(np.mean(held_out["thumbnail_psnr"])),
                   thumbnail_ssim=float(np.mean(held_out["thumbnail_ssim"])))
  n = len(originals)
  return ClipReconstructionResult(metrics=metrics, video=clip_grid([originals, recons]),
                                  grid_indices=jax.tree.map(lambda x: x[:n], all_indices),
                                  features=held_out["features"])
