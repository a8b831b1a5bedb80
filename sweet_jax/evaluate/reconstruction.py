"""Held-out reconstruction evaluation: the tokenizer against a bit-matched thumbnail.

A tokenizer that spends `tokens x log2(codebook size)` bits per image should at
least beat the cheapest codec with the same budget: a bicubic thumbnail whose
side is the smallest with side^2 x 3 x 8 >= those bits. Both are scored with
the same PSNR/SSIM on the same held-out images.
"""

import dataclasses
from typing import Any, Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

from sweet_jax.evaluate.baselines import bicubic_thumbnail, thumbnail_side
from sweet_jax.evaluate.images import make_grid, to_uint8
from sweet_jax.evaluate.metrics import codebook_stats_by_group, psnr, ssim


def gather(tree: Any) -> Any:
  """Global arrays -> numpy on every host (works unchanged on one host)."""
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


@dataclasses.dataclass
class ReconstructionResult:
  metrics: dict[str, float]
  grid: np.ndarray  # originals above reconstructions above thumbnails, uint8 HWC
  grid_indices: np.ndarray  # the token indices of the images in the grid


def collect_held_out(eval_step: Callable[[Any, dict], dict], params: Any,
                     batches: Iterable[dict], to_global: Callable[[dict], dict],
                     input_key: str) -> dict[str, Any]:
  """Runs `eval_step` over every batch and keeps the real (unmasked) examples:
  originals (uint8), reconstructions (uint8), psnr, ssim and indices (an array or a dict
  of arrays), each concatenated over batches, on every host."""
  parts = {"originals": [], "recons": [], "psnr": [], "ssim": [], "indices": []}
  for local_batch in batches:
    out = gather(eval_step(params, to_global(local_batch)))
    gathered = gather(to_global(local_batch))
    mask = gathered["mask"].astype(bool)
    parts["originals"].append(gathered[input_key][mask])
    parts["recons"].append(to_uint8(out["recon"][mask]))
    parts["psnr"].append(out["psnr"][mask])
    parts["ssim"].append(out["ssim"][mask])
    parts["indices"].append(jax.tree.map(lambda x: x[mask], out["indices"]))
  if not sum(len(o) for o in parts["originals"]):
    raise ValueError(f"the evaluation split yielded no valid examples ({input_key}: all "
                     "padding or skipped)")
  return {k: jax.tree.map(lambda *xs: np.concatenate(xs), *v) for k, v in parts.items()}


def evaluate_reconstruction(
    eval_step: Callable[[Any, dict], dict], params: Any, batches: Iterable[dict],
    to_global: Callable[[dict], dict], *, bits_per_image: float,
    index_groups: dict[str, tuple[tuple[int, ...] | None, int]],
    num_grid_images: int) -> ReconstructionResult:
  """Scores every held-out image; codebook usage and perplexity per `index_groups`
  (the model's codebooks, e.g. one per part of speech for the language codebook)."""
  held_out = collect_held_out(eval_step, params, batches, to_global, "image")
  originals, recons, all_indices = (held_out[k] for k in ("originals", "recons", "indices"))

  side = thumbnail_side(bits_per_image)
  thumbs = bicubic_thumbnail(originals, side)
  unit = lambda x: np.asarray(x, np.float32) / 255.0
  usage = codebook_stats_by_group(all_indices, index_groups)
  metrics = {
      "num_images": int(len(originals)),
      "psnr": float(np.mean(held_out["psnr"])),
      "ssim": float(np.mean(held_out["ssim"])),
      **{name: float(value) for name, value in usage.items()},
      "bits_per_image": float(bits_per_image),
      "thumbnail_side": int(side),
      "thumbnail_bits": int(side * side * 3 * 8),
      "thumbnail_psnr": float(np.mean(psnr(unit(thumbs), unit(originals)))),
      "thumbnail_ssim": float(np.mean(ssim(unit(thumbs), unit(originals)))),
  }
  n = min(num_grid_images, len(originals))
  grid = make_grid([originals[:n], recons[:n], thumbs[:n]])
  return ReconstructionResult(metrics=metrics, grid=grid, grid_indices=all_indices[:n])
