"""A run's data streams from its config sections: the training iterator of each
curriculum stage, and held-out batches of images or clips for evaluation.

Every stream comes from `pipeline` (TFDS sources through grain, per host); this module
only reads config.data / config.video_data, so callers never unpack them by hand.
"""

from typing import Any

import ml_collections

from sweet_jax.curriculum import Stage
from sweet_jax.data import pipeline, tokens

Hosts = dict[str, int]  # process_index, process_count


def train_iterator(config: ml_collections.ConfigDict, stage: Stage, index: int, hosts: Hosts):
  """A fresh train iterator for stage `index` of the curriculum: images or clips at the
  stage's batch size, seeded by (config.seed, stage index), so a resumed run rebuilds the
  same stream."""
  seed = config.seed + index
  if stage.data == "tokens":
    data = config.tokens
    return tokens.make_token_train_iterator(
        data.dir, data.train_split, global_batch_size=stage.batch_size, seed=seed,
        flip=data.flip, num_threads=data.num_threads,
        prefetch_buffer_size=data.prefetch_buffer_size, **hosts)
  if stage.data == "image":
    data = config.data
    source = pipeline.get_data_source(data.name, data.train_split, data.data_dir)
    return pipeline.make_train_iterator(
        source, global_batch_size=stage.batch_size, image_size=data.image_size, seed=seed,
        crop_scale=(data.crop_min_scale, data.crop_max_scale), flip=data.flip,
        num_threads=data.num_threads, prefetch_buffer_size=data.prefetch_buffer_size,
        color_jitter=data.color_jitter, max_bad_fraction=data.max_bad_fraction, **hosts)
  data = config.video_data
  source = pipeline.get_data_source(data.name, data.train_split, data.data_dir)
  return pipeline.make_clip_train_iterator(
      source, global_batch_size=stage.batch_size, num_frames=data.num_frames,
      image_size=data.image_size, seed=seed, crop_scale=(data.crop_min_scale, data.crop_max_scale),
      num_threads=data.num_threads, prefetch_buffer_size=data.prefetch_buffer_size,
      max_bad_fraction=data.max_bad_fraction, **hosts)


def batch_shape(config: ml_collections.ConfigDict, stage: Stage) -> tuple[str, tuple[int, ...]]:
  """The key and global uint8 shape of a stage's training batches (what its iterator
  yields, assembled over the hosts): for the planner and the benchmark."""
  if stage.data == "image":
    size = config.data.image_size
    return "image", (stage.batch_size, size, size, 3)
  data = config.video_data
  return "video", (stage.batch_size, data.num_frames, data.image_size, data.image_size, 3)


def eval_data(config: ml_collections.ConfigDict, modality: str,
              dataset: str | None = None) -> ml_collections.ConfigDict:
  """The data section a model of `modality` is evaluated on (config.video_data for clips,
  config.data for images), with its dataset renamed to `dataset` when given."""
  if modality == "video":
    if "video_data" not in config:
      raise ValueError("a clip model needs config.video_data to evaluate")
    data = config.video_data
  else:
    data = config.data
  if dataset not in (None, data.name):
    data = ml_collections.ConfigDict(data.to_dict())
    data.name = dataset
  return data


def eval_batches(data: ml_collections.ConfigDict, modality: str, split: str,
                 batch_size: int, hosts: Hosts) -> Any:
  """Equal-step held-out batches of `split` (padding examples carry mask=False): clips
  for a video model, images otherwise."""
  source = pipeline.get_data_source(data.name, split, data.data_dir)
  if modality == "video":
    return pipeline.make_clip_eval_batches(
        source, global_batch_size=batch_size, num_frames=data.num_frames,
        image_size=data.image_size, max_bad_fraction=data.max_bad_fraction, **hosts)
  return pipeline.make_eval_batches(
      source, global_batch_size=batch_size, image_size=data.image_size,
      preprocess=data.eval_preprocess, max_bad_fraction=data.max_bad_fraction, **hosts)
