"""The evaluator: a run's latest (EMA) checkpoint on any configured split.

  python -m sweet_jax.evaluate --config=configs/sweet_image.py:B --workdir=RUN \
      [--dataset=imagenet2012 --split=validation] [--step=N]
  python -m sweet_jax.evaluate --config=configs/sweet_video.py:ucf101 --workdir=RUN \
      --split=test

Every host runs the same number of batches (padding examples carry mask=False and are
dropped before any metric), so multi-host evaluation never waits in a collective. The
originals' feature statistics (VGG16 for FD-VGG, I3D for rFVD, InceptionV3 for rFID) are
cached per dataset / split / resolution / preprocessing / network as `.npz`; with a cache
hit the eval step skips the originals' features. Results: `eval_<step>.json` in the
workdir and TensorBoard scalars under `eval_<dataset>_<split>/`. The trainer calls
`evaluate_params` every `config.eval.every_steps` when that is set.
"""

import json
import os
import re
from typing import Any

import jax
import ml_collections
from absl import logging

from sweet_jax import parallel
from sweet_jax.data import pipeline
from sweet_jax.evaluate import frechet
from sweet_jax.evaluate.reconstruction import evaluate_reconstruction
from sweet_jax.evaluate.video import evaluate_clip_reconstruction

# Feature name -> the network (and its version) whose statistics are cached.
_FEATURE_NETWORKS = {"vgg_real": "lpips_vgg16_relu5_3", "i3d_real": "i3d_kinetics400_logits",
                     "inception_real": "fid_inception_v3_pool3"}


def default_cache_dir(config: ml_collections.ConfigDict) -> str:
  if config.eval.get("reference_cache"):
    return config.eval.reference_cache
  root = os.environ.get("SWEET_JAX_CACHE", os.path.expanduser("~/.cache/sweet_jax"))
  return os.path.join(root, "reference_stats")


def _split_data(config: ml_collections.ConfigDict, takes_clips: bool, dataset: str | None,
                split: str | None) -> tuple[str, ml_collections.ConfigDict, str]:
  """("image" or "video", the data config, the split) for a dataset/split request."""
  video = config.get("video_data")
  data = config.data
  if takes_clips:  # a clip model evaluates on clips: `dataset` names a video dataset
    if video is None:
      raise ValueError("a clip model needs config.video_data to evaluate")
    data = video
  if dataset not in (None, data.name):
    data = ml_collections.ConfigDict(data.to_dict())
    data.name = dataset
  return "video" if takes_clips else "image", data, split or data.eval_split


def _cache_path(cache_dir: str, kind: str, data: ml_collections.ConfigDict, split: str,
                feature: str) -> str:
  frames = f"x{data.num_frames}" if kind == "video" else ""
  preprocess = data.get("eval_preprocess", "center_clip")
  key = f"{data.name}_{split}_{data.image_size}{frames}_{preprocess}_{_FEATURE_NETWORKS[feature]}"
  return os.path.join(cache_dir, re.sub(r"[^A-Za-z0-9_.-]+", "-", key) + ".npz")


def evaluate_params(config: ml_collections.ConfigDict, components: Any, params: Any, step: int,
                    *, dataset: str | None = None, split: str | None = None,
                    workdir: str | None = None, writer: Any = None,
                    eval_steps: dict | None = None) -> dict[str, Any]:
  """Scores `params` on a split; writes `eval_<step>.json` to `workdir` and scalars to
  `writer` when given. `eval_steps` (real_features -> step) keeps compiled steps across
  calls (the trainer's periodic evaluation)."""
  c = components
  takes_clips = getattr(c.model, "takes_clips", False)
  kind, data, split = _split_data(config, takes_clips, dataset, split)
  hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
  source = pipeline.get_data_source(data.name, split, data.data_dir)
  if kind == "video":
    batches = pipeline.make_clip_eval_batches(
        source, global_batch_size=config.eval_batch_size, num_frames=data.num_frames,
        image_size=data.image_size, max_bad_fraction=data.max_bad_fraction, **hosts)
  else:
    batches = pipeline.make_eval_batches(
        source, global_batch_size=config.eval_batch_size, image_size=data.image_size,
        preprocess=data.eval_preprocess, max_bad_fraction=data.max_bad_fraction, **hosts)

  # Reference statistics of the originals: cached, or computed in this pass and cached.
  cache_dir = default_cache_dir(config)
  expected = [name for name in _FEATURE_NETWORKS if name in _real_features_of(c, kind)]
  paths = {name: _cache_path(cache_dir, kind, data, split, name) for name in expected}
  cached = {name: frechet.load_stats(path) for name, path in paths.items()
            if os.path.exists(path)}
  real_features = len(cached) < len(expected)
  eval_steps = {} if eval_steps is None else eval_steps
  if real_features not in eval_steps:
    eval_steps[real_features] = c.make_eval_step(real_features)
  eval_step = eval_steps[real_features]
  reference = None if real_features else {k: v[:2] for k, v in cached.items()}
  to_global = lambda b: parallel.to_global(b, c.batch_sharding)

  with parallel.run_context(c.mesh, c.rules):
    if kind == "video":
      result = evaluate_clip_reconstruction(
          eval_step, params, batches, to_global, index_groups=c.model.index_groups(),
          num_grid_clips=config.num_summary_images, bits_per_clip=c.model.bits_per_clip,
          reference=reference)
      count = result.metrics["num_clips"]
    else:
      result = evaluate_reconstruction(
          eval_step, params, batches, to_global, bits_per_image=c.model.bits_per_image,
          index_groups=c.model.index_groups(), num_grid_images=config.num_summary_images,
          reference=reference)
      count = result.metrics["num_images"]
  if reference is not None:
    stale = [name for name, (_, _, n) in cached.items() if n != count]
    if stale:
      raise ValueError(
          f"cached reference statistics {[paths[n] for n in stale]} were computed on a "
          f"different number of examples than {data.name}:{split} has now ({count}); delete "
          "them to recompute")
  elif jax.process_index() == 0:
    for name, path in paths.items():
      mean, cov = result.features[name].mean_and_covariance()
      frechet.save_stats(path, mean, cov, result.features[name].count)
      logging.info("Cached reference statistics %s", path)

  metrics = dict(result.metrics)
  record = {"step": int(step), "dataset": data.name, "split": split,
            "reference_statistics": "cached" if reference is not None else "computed",
            "metrics": metrics}
  prefix = f"eval_{data.name}_{split}".replace("/", "_")
  if writer is not None:
    writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in metrics.items()
                                if isinstance(v, (int, float))})
  if workdir is not None and jax.process_index() == 0:
    path = os.path.join(workdir, f"eval_{step}.json")
    with open(path + ".tmp", "w") as f:
      json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)
  logging.info("Evaluation of step %d on %s:%s: %s", step, data.name, split,
               {k: v for k, v in metrics.items() if isinstance(v, float)})
  return record


def _real_features_of(components: Any, kind: str) -> set[str]:
  """Which originals' features the run's eval step computes (by its frozen networks)."""
  frozen = components.frozen
  names = set()
  if "lpips" in frozen:
    names.add("vgg_real")
  if "i3d" in frozen and kind == "video":
    names.add("i3d_real")
  if "inception" in frozen and kind == "image":
    names.add("inception_real")
  return names


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                        dataset: str | None = None, split: str | None = None,
                        step: int | None = None) -> dict[str, Any]:
  """Restores `workdir`'s checkpoint (latest, or `step`) and evaluates its EMA weights
  (or its weights when the run keeps no EMA)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from sweet_jax.checkpoint import restore_run_state  # pylint: disable=g-import-not-at-top
  from sweet_jax.train import build_components, validate_config  # pylint: disable=g-import-not-at-top
  validate_config(config, jax.device_count())
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  c = build_components(config, workdir=workdir)
  state, step = restore_run_state(workdir, c, step, purpose=" to evaluate")
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  record = evaluate_params(config, c, state.eval_params, step, dataset=dataset, split=split,
                           workdir=workdir, writer=writer)
  record["weights"] = "ema" if state.ema_params is not None else "raw"
  writer.flush()
  return record

