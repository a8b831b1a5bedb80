"""The evaluator: one object that scores a run's parameters on a split of its eval data,
used alike by the training loop (held-out summaries, periodic split evaluation) and by
the evaluation command.

  python -m sweet_jax.evaluate --config=configs/sweet_image.py:B --workdir=RUN \
      [--dataset=imagenet2012 --split=validation] [--step=N]
  python -m sweet_jax.evaluate --config=configs/sweet_video.py:ucf101 --workdir=RUN \
      --split=test

Image or clip scoring is picked once, from the experiment's modality. Every host runs
the same number of batches (padding examples carry mask=False and are dropped before
any metric), so multi-host evaluation never waits in a collective. With a
`reference_cache`, the originals' feature statistics that the eval step declares
(`Experiment.eval_features`: VGG16 for FD-VGG, I3D for rFVD, InceptionV3 for rFID) are
cached per dataset / split / resolution / preprocessing / network as `.npz` on any
filesystem; with a cache hit the eval step skips the originals' features.
"""

import dataclasses
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from sweet_jax import parallel
from sweet_jax.data import streams
from sweet_jax.evaluate import frechet
from sweet_jax.evaluate.reconstruction import evaluate_reconstruction
from sweet_jax.evaluate.video import evaluate_clip_reconstruction
from sweet_jax.experiment import Experiment

# Feature name -> the network (and its version) whose statistics are cached.
FEATURE_NETWORKS = {"vgg_real": "lpips_vgg16_relu5_3", "i3d_real": "i3d_kinetics400_logits",
                    "inception_real": "fid_inception_v3_pool3"}


def default_cache_dir(config: ml_collections.ConfigDict) -> str:
  """config.eval.reference_cache, else `$SWEET_JAX_CACHE/reference_stats`."""
  if config.eval.get("reference_cache"):
    return config.eval.reference_cache
  root = os.environ.get("SWEET_JAX_CACHE", os.path.expanduser("~/.cache/sweet_jax"))
  return os.path.join(root, "reference_stats")


@dataclasses.dataclass
class EvalResult:
  """One evaluation: metrics, what to look at and the tokens of the examples shown."""

  step: int
  dataset: str
  split: str
  metrics: dict[str, Any]
  picture: np.ndarray  # uint8: a grid [H, W, 3] for images, a video [T, H, W, 3] for clips
  shown_indices: Any  # token indices of the examples in the picture (a dict per branch)
  reference_statistics: str  # "computed" in this pass, or "cached"

  def record(self) -> dict[str, Any]:
    """What `eval_<step>.json` holds."""
    return {"step": int(self.step), "dataset": self.dataset, "split": self.split,
            "reference_statistics": self.reference_statistics, "metrics": dict(self.metrics)}


class ReconstructionEvaluator:
  """Scores parameters on one split: PSNR/SSIM (per frame for clips) against a bit-matched
  thumbnail, codebook usage, and LPIPS / FD-VGG / rFVD / rFID where the run has those
  networks; keeps `num_shown` examples to look at."""

  def __init__(self, experiment: Experiment, *, dataset: str | None = None,
               split: str | None = None, num_shown: int | None = None,
               reference_cache: str | None = None):
    config = experiment.config
    self.experiment = experiment
    self.data = streams.eval_data(config, experiment.modality, dataset)
    self.split = split or self.data.eval_split
    self.num_shown = config.num_summary_images if num_shown is None else num_shown
    hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
    self.batches = streams.eval_batches(self.data, experiment.modality, self.split,
                                        config.eval_batch_size, hosts)
    self.cache_paths = {}
    if reference_cache is not None:
      self.cache_paths = {name: reference_cache_path(reference_cache, experiment.modality,
                                                     self.data, self.split, name)
                          for name in experiment.eval_features}
    self._steps: dict[bool, Any] = {True: experiment.eval_step}  # real_features -> step

  def run(self, params: Any, step: int) -> EvalResult:
    e = self.experiment
    cached = {name: frechet.load_stats(path) for name, path in self.cache_paths.items()
              if epath.Path(path).exists()}
    real_features = len(cached) < len(self.cache_paths) or not self.cache_paths
    if real_features not in self._steps:
      self._steps[real_features] = e.make_eval_step(real_features)
    reference = None if real_features else {k: v[:2] for k, v in cached.items()}
    to_global = lambda b: parallel.to_global(b, e.batch_sharding)
    with parallel.run_context(e.mesh, e.rules):
      if e.modality == "video":
        result = evaluate_clip_reconstruction(
            self._steps[real_features], params, self.batches, to_global,
            index_groups=e.model.index_groups(), num_grid_clips=self.num_shown,
            bits_per_clip=e.model.bits_per_sample(), reference=reference)
        count, picture = result.metrics["num_clips"], result.video
      else:
        result = evaluate_reconstruction(
            self._steps[real_features], params, self.batches, to_global,
            bits_per_image=e.model.bits_per_sample(), index_groups=e.model.index_groups(),
            num_grid_images=self.num_shown, reference=reference)
        count, picture = result.metrics["num_images"], result.grid
    if reference is not None:
      stale = [name for name, (_, _, n) in cached.items() if n != count]
      if stale:
        raise ValueError(
            f"cached reference statistics {[self.cache_paths[n] for n in stale]} were "
            f"computed on a different number of examples than {self.data.name}:{self.split} "
            f"has now ({count}); delete them to recompute")
    elif self.cache_paths and jax.process_index() == 0:
      for name, path in self.cache_paths.items():
        mean, cov = result.features[name].mean_and_covariance()
        frechet.save_stats(path, mean, cov, result.features[name].count)
        logging.info("Cached reference statistics %s", path)
    return EvalResult(step=int(step), dataset=self.data.name, split=self.split,
                      metrics=dict(result.metrics), picture=picture,
                      shown_indices=result.grid_indices,
                      reference_statistics="cached" if reference is not None else "computed")


def reference_cache_path(cache_dir: str, modality: str, data: ml_collections.ConfigDict,
                         split: str, feature: str) -> str:
  """Where the statistics of `feature` (a FEATURE_NETWORKS key) of the originals of
  `data`'s `split` are cached."""
  frames = f"x{data.num_frames}" if modality == "video" else ""
  preprocess = data.get("eval_preprocess", "center_clip")
  key = f"{data.name}_{split}_{data.image_size}{frames}_{preprocess}_{FEATURE_NETWORKS[feature]}"
  return str(epath.Path(cache_dir) / (re.sub(r"[^A-Za-z0-9_.-]+", "-", key) + ".npz"))
