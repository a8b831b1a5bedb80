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
from sweet_jax.evaluate.images import make_grid, to_uint8, with_row_labels
from sweet_jax.evaluate.frechet import FeatureStats, frechet_distance
from sweet_jax.metrics import codebook_stats_by_group, psnr, ssim


def gather(tree: Any) -> Any:
  """Global arrays -> numpy on every host (works unchanged on one host)."""
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


@dataclasses.dataclass
class ReconstructionResult:
  metrics: dict[str, float]
  grid: np.ndarray  # originals above reconstructions above thumbnails, uint8 HWC
  grid_indices: np.ndarray  # the token indices of the images in the grid
  features: dict[str, FeatureStats]  # feature moments by name (e.g. "vgg_real")


# Per-example feature outputs of the eval step, paired into Fréchet distances.
FEATURE_PAIRS = {"fd_vgg": ("vgg_real", "vgg_fake"), "rfvd": ("i3d_real", "i3d_fake"),
                 "rfid": ("inception_real", "inception_fake")}
_PER_EXAMPLE = ("psnr", "ssim", "lpips")


def channel_means(images: np.ndarray) -> np.ndarray:
  """uint8 images or clips [N, ..., C] -> their mean colour [N, C] (8-bit levels)."""
  return images.reshape(len(images), -1, images.shape[-1]).mean(axis=1, dtype=np.float64)


def color_metrics(held_out: dict[str, Any]) -> dict[str, Any]:
  """How far the mean colour of each reconstruction (and thumbnail) is from its
  original's, in 8-bit levels: per channel, the mean over examples of the absolute
  difference (`mean_color_error_rgb`; `mean_color_error` averages the channels) and of
  the signed one (`mean_color_bias_rgb`: a tint shows up here)."""
  metrics = {}
  for prefix, key in (("", "color_recon"), ("thumbnail_", "color_thumbnail")):
    if key in held_out:
      difference = held_out[key] - held_out["color_original"]
      per_channel = np.abs(difference).mean(axis=0)
      metrics[f"{prefix}mean_color_error"] = float(per_channel.mean())
      metrics[f"{prefix}mean_color_error_rgb"] = [round(float(v), 3) for v in per_channel]
      metrics[f"{prefix}mean_color_bias_rgb"] = [round(float(v), 3)
                                                 for v in difference.mean(axis=0)]
  return metrics


def collect_held_out(eval_step: Callable[[Any, dict], dict], params: Any,
                     batches: Iterable[dict], to_global: Callable[[dict], dict],
                     input_key: str, *, keep: int | None = None,
                     per_batch: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None
                     ) -> dict[str, Any]:
  """Runs `eval_step` over every batch and keeps the real (unmasked) examples, streaming:
  per-example psnr, ssim, lpips (when computed), mean colours (`color_original`,
  `color_recon`: `channel_means`), indices and `per_batch(originals)`
  outputs are concatenated over batches; feature pairs (VGG, I3D) are accumulated as
  float64 moments (`FeatureStats` under "features"); originals and reconstructions
  (uint8) are kept for the first `keep` examples only (None: all), so a 50k-image split
  does not sit in host memory. The same on every host."""
  parts: dict[str, list] = {k: [] for k in ("originals", "recons", "indices", "color_original",
                                            "color_recon", *_PER_EXAMPLE)}
  extra: dict[str, list] = {}
  features: dict[str, FeatureStats] = {}
  num_kept = count = 0
  for local_batch in batches:
    out = gather(eval_step(params, to_global(local_batch)))
    gathered = gather(to_global(local_batch))
    mask = gathered["mask"].astype(bool)
    originals = gathered[input_key][mask]
    count += len(originals)
    room = len(originals) if keep is None else max(0, min(len(originals), keep - num_kept))
    num_kept += room
    parts["originals"].append(originals[:room])
    recons = to_uint8(out["recon"][mask])
    parts["recons"].append(recons[:room])
    parts["color_original"].append(channel_means(originals))
    parts["color_recon"].append(channel_means(recons))
    parts["indices"].append(jax.tree.map(lambda x: x[mask], out["indices"]))
    for name in _PER_EXAMPLE:
      if name in out:
        parts[name].append(out[name][mask])
    for name in (n for pair in FEATURE_PAIRS.values() for n in pair if n in out):
      values = out[name][mask]
      features.setdefault(name, FeatureStats()).add(values.reshape(-1, values.shape[-1]))
    for name, values in (per_batch(originals) if per_batch and len(originals) else {}).items():
      extra.setdefault(name, []).append(values)
  if not count:
    raise ValueError(f"the evaluation split yielded no valid examples ({input_key}: all "
                     "padding or skipped)")
  held_out = {k: jax.tree.map(lambda *xs: np.concatenate(xs), *v) for k, v in parts.items() if v}
  held_out.update({k: np.concatenate(v) for k, v in extra.items()})
  held_out["features"] = features
  held_out["count"] = count
  return held_out


def perceptual_metrics(held_out: dict[str, Any],
                       reference: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
                       ) -> dict[str, float]:
  """Mean LPIPS and the Fréchet distances of the feature pairs that were computed; the
  originals' side comes from `reference` (name -> (mean, covariance), cached statistics)
  where given, else from this pass.

  FD-VGG is the Fréchet distance between VGG16 relu5_3 features (LPIPS's trunk, averaged
  over space) of originals and reconstructions: a perceptual statistic that works offline,
  not comparable to FID. rFVD is on I3D logits, rFID on FID-InceptionV3 pool3 features;
  with few examples (rank-deficient covariances) they are pipeline checks."""
  metrics = {}
  if "lpips" in held_out:
    metrics["lpips"] = float(np.mean(held_out["lpips"]))
  stats = held_out["features"]
  reference = reference or {}
  for metric, (real, fake) in FEATURE_PAIRS.items():
    if fake not in stats or stats[fake].count < 2:
      continue
    if real in reference:
      real_moments = reference[real]
    elif real in stats:
      real_moments = stats[real].mean_and_covariance()
    else:
      continue
    metrics[metric] = frechet_distance(*real_moments, *stats[fake].mean_and_covariance())
  return metrics


def evaluate_reconstruction(
    eval_step: Callable[[Any, dict], dict], params: Any, batches: Iterable[dict],
    to_global: Callable[[dict], dict], *, bits_per_image: float,
    index_groups: dict[str, tuple[tuple[int, ...] | None, int]],
    num_grid_images: int, reference: dict | None = None) -> ReconstructionResult:
  """Scores every held-out image; codebook usage and perplexity per `index_groups`
  (the model's codebooks, e.g. one per part of speech for the language codebook);
  `reference` as `perceptual_metrics`."""
  side = thumbnail_side(bits_per_image)
  unit = lambda x: np.asarray(x, np.float32) / 255.0

  def thumbnail_scores(originals: np.ndarray) -> dict[str, np.ndarray]:
    thumbs = bicubic_thumbnail(originals, side)
    return {"thumbnail_psnr": np.asarray(psnr(unit(thumbs), unit(originals))),
            "thumbnail_ssim": np.asarray(ssim(unit(thumbs), unit(originals))),
            "color_thumbnail": channel_means(thumbs)}

  held_out = collect_held_out(eval_step, params, batches, to_global, "image",
                              keep=num_grid_images, per_batch=thumbnail_scores)
  originals, recons, all_indices = (held_out[k] for k in ("originals", "recons", "indices"))
  side = thumbnail_side(bits_per_image)
  usage = codebook_stats_by_group(all_indices, index_groups)
  metrics = {
      "num_images": held_out["count"],
      "psnr": float(np.mean(held_out["psnr"])),
      "ssim": float(np.mean(held_out["ssim"])),
      **perceptual_metrics(held_out, reference),
      **{name: float(value) for name, value in usage.items()},
      "bits_per_image": float(bits_per_image),
      "thumbnail_side": int(side),
      "thumbnail_bits": int(side * side * 3 * 8),
      "thumbnail_psnr": float(np.mean(held_out["thumbnail_psnr"])),
      "thumbnail_ssim": float(np.mean(held_out["thumbnail_ssim"])),
      **color_metrics(held_out),
  }
  n = len(originals)
  grid = with_row_labels(
      make_grid([originals, recons, bicubic_thumbnail(originals, side)]),
      ["original", f"tokenizer\n{bits_per_image:.0f} bits",
       f"thumbnail\n{side}x{side}, {side * side * 24} bits"])
  return ReconstructionResult(metrics=metrics, grid=grid, grid_indices=all_indices[:n],
                              features=held_out["features"])
