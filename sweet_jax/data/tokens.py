"""Token datasets: a tokenizer's indices of a dataset, stored as a TFDS ArrayRecord dataset.

Written by `python -m sweet_jax.tokenize` and read back through the same TFDS data
source and grain path as pixels (`token_source`, `make_token_train_iterator`). One
directory holds one tokenizer's tokens, any number of splits:

  dataset_info.json, features.json     TFDS metadata (written once every shard is done)
  metadata.json                        the tokenizer (run, step, parameter hash, config),
                                       the index shapes and groups, the flat layout
  sweet_tokens-<split>.array_record-NNNNN-of-MMMMM     the shards
  _shards/<split>-NNNNN.json           a finished shard's example count and bytes

Each example: the indices of every branch (`spatial`, `temporal`: [Q] or [Q, 3] int32),
`label` (int64, -1 without labels), `id` (the source example and crop), and, with flip
augmentation, the indices of the mirrored input (`flip_spatial`, ...), as LlamaGen's
code extraction keeps them (arXiv:2406.06525).
"""

import dataclasses
import hashlib
from typing import Any, Mapping

import grain
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from flax import traverse_util

from sweet_jax import io
from sweet_jax.data import media, preprocess
from sweet_jax.data.pipeline import endless_batches, padded_batches
from sweet_jax.models.token_layout import TokenLayout

DATASET_NAME = "sweet_tokens"
METADATA = "metadata.json"
SHARDS = "_shards"


class TokenDatasetError(ValueError):
  """A token dataset that is missing, unfinished or of another tokenizer."""


def params_fingerprint(params: Any) -> str:
  """sha256 of a parameter tree (paths, dtypes, shapes and bytes, in path order): which
  weights produced a token dataset, so its tokens are never decoded by other ones."""
  digest = hashlib.sha256()
  flat = traverse_util.flatten_dict(params, sep="/")
  for path in sorted(flat):
    value = np.asarray(flat[path])
    digest.update(f"{path}|{value.dtype}|{value.shape}|".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()


def features(shapes: Mapping[str, tuple[int, ...]], flip: bool) -> tfds.features.FeaturesDict:
  """The TFDS features of one example (see the module docstring)."""
  spec: dict[str, Any] = {"label": np.int64, "id": np.int64}
  for branch, shape in shapes.items():
    spec[branch] = tfds.features.Tensor(shape=tuple(shape), dtype=np.int32)
    if flip:
      spec[f"flip_{branch}"] = tfds.features.Tensor(shape=tuple(shape), dtype=np.int32)
  return tfds.features.FeaturesDict(spec)


def shard_name(split: str, index: int, count: int) -> str:
  return f"{DATASET_NAME}-{split}.array_record-{index:05d}-of-{count:05d}"


def read_metadata(directory: str) -> dict[str, Any]:
  """The tokenizer and layout record of a token dataset (written before any shard)."""
  meta = io.read_json(epath.Path(directory) / METADATA)
  if meta is None:
    raise TokenDatasetError(f"{directory} is not a token dataset (no {METADATA}): write one "
                            "with python -m sweet_jax.tokenize --workdir=RUN --out=DIR")
  return meta


def layout(directory: str) -> TokenLayout:
  """The flat sequence layout of a token dataset's indices."""
  return TokenLayout.from_metadata(read_metadata(directory)["layout"])


def token_source(directory: str, split: str) -> Any:
  """Random-access source of one split (decoded numpy examples)."""
  path = epath.Path(directory)
  if not (path / "dataset_info.json").exists():
    raise TokenDatasetError(f"{directory} has no finished token dataset (no "
                            "dataset_info.json): run or resume python -m sweet_jax.tokenize "
                            "with the same --out")
  builder = tfds.builder_from_directory(str(path))
  if split not in builder.info.splits:
    raise TokenDatasetError(f"{directory} has no split {split!r} (it has "
                            f"{sorted(builder.info.splits)}): tokenize it with --split={split}")
  return builder.as_data_source(split=split)


@dataclasses.dataclass(frozen=True)
class _TokenView(grain.transforms.RandomMap):
  """An example -> {"tokens": [seq_len] int32 in the flat layout, "label"}; with flip
  augmentation, the mirrored input's tokens half of the time."""

  layout: TokenLayout
  flip: bool

  def random_map(self, element: Mapping[str, Any], rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    prefix = "flip_" if self.flip and rng.random() < 0.5 else ""
    indices = {b: np.asarray(element[prefix + b])[None] for b in self.layout.shapes}
    return {"tokens": self.layout.flatten(indices)[0],
            "label": np.int32(max(int(element["label"]), 0))}


def source_view(pixels: np.ndarray, example_id: int, settings: Mapping[str, Any],
                image_size: int, clip_frames: tuple[int, int] | None = None) -> np.ndarray:
  """The model's view of token example `example_id` of a split tokenized with `settings`
  (metadata.json "splits"), from its source image or clip `pixels` (source example
  example_id // crops_per_image): the central view (a clip's usable frames, given
  `clip_frames` = (temporal patch size, most frames)) or that crop's seeded random resized
  crop. What the tokenizer coded; the generators' reference pixels."""
  crops = settings["crops_per_image"]
  index, crop = divmod(example_id, crops)
  if crops > 1:
    rng = np.random.default_rng([settings["seed"], index, crop])
    return preprocess.random_resized_crop(pixels, image_size, rng,
                                          tuple(settings["crop_scale"]), False)
  if pixels.ndim == 3:
    return media.fit_image(pixels, image_size)
  if clip_frames is None:
    raise ValueError("a clip's view needs clip_frames (temporal patch size, most frames)")
  frames = media.usable_frames(len(pixels), *clip_frames)
  return media.fit_clip(pixels, frames, image_size)


def make_token_train_iterator(directory: str, split: str, *, global_batch_size: int,
                              seed: int, process_index: int, process_count: int,
                              flip: bool = True, num_threads: int = 2,
                              prefetch_buffer_size: int = 4) -> grain.DatasetIterator:
  """Endless, resumable `{"tokens": int32 [b, seq_len], "label": int32 [b]}` batches of
  this host's rows of one global stream (the same contract as the pixel iterators)."""
  source = token_source(directory, split)
  has_flip = any(k.startswith("flip_") for k in source[0])
  return endless_batches(source, _TokenView(layout(directory), flip and has_flip),
                          global_batch_size=global_batch_size, seed=seed,
                          process_index=process_index, process_count=process_count,
                          num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)


@dataclasses.dataclass(frozen=True)
class _EvalTokenView(grain.transforms.Map):
  """An example -> {"tokens", "label", "mask": True} (its own view, never the mirror)."""

  layout: TokenLayout

  def map(self, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
    indices = {b: np.asarray(element[b])[None] for b in self.layout.shapes}
    return {"tokens": self.layout.flatten(indices)[0],
            "label": np.int32(max(int(element["label"]), 0)), "mask": np.bool_(True)}


@dataclasses.dataclass(frozen=True)
class _TokenPadding(grain.transforms.Map):
  """Padding: the first id of each position's range, masked out."""

  first_ids: np.ndarray

  def map(self, element: Any) -> dict[str, np.ndarray]:
    del element
    return {"tokens": self.first_ids, "label": np.int32(0), "mask": np.bool_(False)}


def make_token_eval_batches(directory: str, split: str, *, global_batch_size: int,
                            process_index: int, process_count: int) -> grain.IterDataset:
  """One pass over a token split as `{"tokens", "label", "mask"}` batches, every host the
  same number of them (padding has mask=False), as the pixel evaluations read theirs."""
  token_layout = layout(directory)
  first_ids = token_layout.allowed_ranges()[:, 0].astype(np.int32)
  return padded_batches(token_source(directory, split), _EvalTokenView(token_layout),
                        _TokenPadding(first_ids), global_batch_size=global_batch_size,
                        process_index=process_index, process_count=process_count,
                        num_threads=2, prefetch_buffer_size=4)
