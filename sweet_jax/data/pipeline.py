"""The one input path: a TFDS random-access source read through grain.

Training and evaluation, on the embedded photos and on ImageNet alike, go
through these functions, so that what is tested on the small dataset is what
runs at scale. Training reads one global stream whose randomness is a pure function
of (seed, element index); each host takes its rows of every global batch, so the
batches do not depend on the number of hosts, and the iterator resumes from a small
JSON state. Evaluation reads each host's `process_index::process_count` slice.

A video that cannot be read or cut into a clip (a corrupt encoded frame, a video
shorter than the clip) is skipped with a warning and counted in
`skipped_clip_count()`, not fatal: one bad file in UCF-101 should not end a run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from sweet_jax.data import preprocess, video
# Importing a builder registers it with TFDS.
from sweet_jax.data.builders import embedded_clips, embedded_photos

EMBEDDED_PHOTOS = embedded_photos.EmbeddedPhotos.name
EMBEDDED_CLIPS = embedded_clips.EmbeddedClips.name
# Built into data_dir on first use, from data that ships with our dependencies.
_EMBEDDED = (EMBEDDED_PHOTOS, EMBEDDED_CLIPS)
DATA_DIR_ENV = "SWEET_JAX_DATA_DIR"
EvalPreprocess = Literal["resize", "resize_shorter_center_crop"]
_EVAL_PREPROCESS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "resize": preprocess.resize,
    "resize_shorter_center_crop": preprocess.resize_shorter_center_crop,
}


def default_data_dir() -> str:
  """`$SWEET_JAX_DATA_DIR`, else `~/tensorflow_datasets`."""
  return os.environ.get(DATA_DIR_ENV) or os.path.expanduser("~/tensorflow_datasets")


def get_data_source(name: str, split: str, data_dir: str | None = None) -> Any:
  """Random-access source of one TFDS split (decoded numpy examples).

  `sweet_embedded_photos` and `sweet_embedded_clips` are built into `data_dir`
  on first use (a few seconds each, offline) and reused afterwards; any other
  dataset must already be prepared there as ArrayRecord (e.g. `tfds build
  imagenet2012 --file_format=array_record`), or be mocked with `tfds.testing.mock_data`.
  """
  data_dir = data_dir or default_data_dir()
  try:
    return tfds.data_source(
        name,
        split=split,
        data_dir=data_dir,
        download=name in _EMBEDDED,
        # Needed: with an explicit data_dir tfds would otherwise build TFRecord.
        builder_kwargs={"file_format": "array_record"},
    )
  except (KeyError, ValueError, FileNotFoundError) as e:
    reason = str(e.args[0] if e.args else e).splitlines()[0]
    if isinstance(e, KeyError):  # How tfds reports an unprepared dataset (no splits).
      reason += (
          f" Prepare it there as ArrayRecord first, e.g. `tfds build {name} "
          f"--data_dir={data_dir} --file_format=array_record`."
      )
    raise ValueError(
        f"Cannot read TFDS dataset {name!r}, split {split!r}, from data_dir {data_dir!r}: {reason}"
    ) from e


@dataclasses.dataclass(frozen=True)
class _RandomCrop(grain.transforms.RandomMap):
  """Random resized crop of `image`; picklable, so it also runs in grain workers."""

  size: int
  scale: tuple[float, float]
  flip: bool
  color_jitter: float = 0.0

  def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = preprocess.random_resized_crop(element["image"], self.size, rng, self.scale, self.flip)
    if self.color_jitter:
      image = preprocess.color_jitter(image, rng, self.color_jitter)
    return {**element, "image": image}


def _image_only(element: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {"image": element["image"]}


def make_train_iterator(
    source: Any,
    *,
    global_batch_size: int,
    image_size: int,
    seed: int,
    crop_scale: tuple[float, float],
    flip: bool,
    process_index: int,
    process_count: int,
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
    color_jitter: float = 0.0,
) -> grain.DatasetIterator:
  """Endless iterator of `{"image": uint8 [global_batch_size // process_count, S, S, 3]}`.

  One global stream of `source` (reshuffled every epoch, a fresh random crop of every
  element) is split over the hosts by rows of each global batch, so any number of hosts
  trains on the same global batches (see `_endless_batches`). `get_state()` /
  `set_state()` (or orbax with `grain.checkpoint.CheckpointSave` / `CheckpointRestore`)
  resume on exactly the next batch. `prefetch_buffer_size` counts batches.
  """
  return _endless_batches(
      source, _RandomCrop(image_size, tuple(crop_scale), flip, color_jitter), then=_image_only,
      global_batch_size=global_batch_size, seed=seed, process_index=process_index,
      process_count=process_count, num_threads=num_threads,
      prefetch_buffer_size=prefetch_buffer_size)


def _endless_batches(source: Any, random_view: grain.transforms.RandomMap, *,
                     global_batch_size: int, seed: int, process_index: int, process_count: int,
                     num_threads: int, prefetch_buffer_size: int,
                     then: Callable[[Any], Any] | None = None,
                     sparse: bool = False) -> grain.DatasetIterator:
  """This host's part of one global stream (reshuffled every epoch, `random_view` of
  every element, then `then`), batched; resumable state.

  The stream is the same on every host: the shuffle and the views are seeded by
  `seed` and each element's global position. Host p takes rows [p*b, (p+1)*b) of every
  global batch of B = P*b rows, so the global batch, row order included, does not
  depend on the number of hosts: a 2-host run sees exactly a 1-host run's batches.

  `sparse`: `random_view` returns None for an element to drop; host p then takes the
  elements p, p+P, ... of the stream and batches what survives, so batches stay full
  (their composition then depends on the number of hosts).
  """
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  _check_host(process_index, process_count)
  if len(source) == 0:
    raise ValueError("the training split has no examples.")
  # ([seed, 0]: the seeds a single host drew when each host had its own stream.)
  shuffle_seed, view_seed = np.random.SeedSequence([seed, 0]).generate_state(2)
  ds = grain.MapDataset.source(source).shuffle(seed=int(shuffle_seed)).repeat()
  ds = ds.random_map(random_view, seed=int(view_seed))
  if then is not None:
    ds = ds.map(then)
  if not sparse:
    # Batches of b rows are lazy, so a host only reads and augments its own rows.
    ds = ds.batch(local_batch_size, drop_remainder=True)[process_index::process_count]
    return iter(ds.to_iter_dataset(_read_options(num_threads, prefetch_buffer_size)))
  read_options = _read_options(num_threads, prefetch_buffer_size * local_batch_size)
  ds = ds[process_index::process_count].to_iter_dataset(read_options)
  # Fail loudly, not loop forever, when most elements cannot be read (a broken dataset).
  options = grain.experimental.DatasetOptions(filter_raise_threshold_ratio=_MAX_SKIPPED_RATIO)
  ds = grain.experimental.WithOptionsIterDataset(ds, options)
  return iter(ds.batch(local_batch_size, drop_remainder=True))


@dataclasses.dataclass(frozen=True)
class _EvalView(grain.transforms.Map):
  """Deterministic eval view of a real example, marked valid."""

  size: int
  preprocess: EvalPreprocess

  def map(self, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
    image = _EVAL_PREPROCESS[self.preprocess](element["image"], self.size)
    return {"image": image, "mask": np.True_}


@dataclasses.dataclass(frozen=True)
class _Padding(grain.transforms.Map):
  """A black, masked-out example that evens out the hosts' batch counts."""

  size: int

  def map(self, element: int) -> dict[str, np.ndarray]:
    del element
    return {"image": np.zeros((self.size, self.size, 3), np.uint8), "mask": np.False_}


def make_eval_batches(
    source: Any,
    *,
    global_batch_size: int,
    image_size: int,
    process_index: int,
    process_count: int,
    preprocess: EvalPreprocess = "resize",
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
) -> grain.IterDataset:
  """One pass over `source` as `{"image": uint8 [b, S, S, 3], "mask": bool [b]}` batches.

  `b = global_batch_size // process_count`. Over all hosts every example
  appears exactly once with `mask=True`, in a fixed order; the rest is padding
  with `mask=False`, so that every host yields the same number of batches
  (equal-step evaluation, as in big_vision) and no host waits in a collective.
  The returned dataset can be iterated again and gives the same batches.
  """
  if preprocess not in _EVAL_PREPROCESS:
    raise ValueError(f"preprocess must be one of {sorted(_EVAL_PREPROCESS)}, got {preprocess!r}.")
  return _padded_batches(
      source, _EvalView(image_size, preprocess), _Padding(image_size),
      global_batch_size=global_batch_size, process_index=process_index,
      process_count=process_count, num_threads=num_threads,
      prefetch_buffer_size=prefetch_buffer_size)


def _padded_batches(source: Any, view: grain.transforms.Map, padding: grain.transforms.Map, *,
                    global_batch_size: int, process_index: int, process_count: int,
                    num_threads: int, prefetch_buffer_size: int) -> grain.IterDataset:
  """This host's slice as `view`s, then `padding` examples up to the batch count of the
  host with the most examples (ceil(len / process_count)): equal steps on every host."""
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  ds = _host_slice(source, process_index, process_count).map(view)
  num_batches = math.ceil(math.ceil(len(source) / process_count) / local_batch_size)
  num_padding = num_batches * local_batch_size - len(ds)
  if num_padding:
    ds = grain.MapDataset.concatenate([ds, grain.MapDataset.range(num_padding).map(padding)])
  read_options = _read_options(num_threads, prefetch_buffer_size)
  return ds.batch(local_batch_size).to_iter_dataset(read_options)


# A train iterator raises once this fraction of a window of 1000 elements was skipped.
_MAX_SKIPPED_RATIO = 0.5
_skipped_lock = threading.Lock()
_skipped_clips = 0


def skipped_clip_count() -> int:
  """Clips skipped so far in this process (train and eval), because their video could not
  be read or was too short for a clip; each skip is also logged as a warning.

  Counted per process: grain's reader threads share it; worker processes would not.
  """
  with _skipped_lock:
    return _skipped_clips


def _skip_clip(index: int | None, error: str) -> None:
  global _skipped_clips
  with _skipped_lock:
    _skipped_clips += 1
  where = "an element" if index is None else f"element {index}"
  logging.warning("Skipping %s of the video source: %s", where, error)


_INDEX_KEY = "_source_index"  # Added to every element read, for the skip warning.


@dataclasses.dataclass(frozen=True)
class _ReadFailure:
  """Stands in for an element whose read raised, until a clip view skips it."""

  index: int
  error: str


@dataclasses.dataclass(frozen=True)
class _TolerantSource:
  """`source` whose failing reads become `_ReadFailure`s and whose elements carry
  their index, so that clip views can skip them by name."""

  source: Any

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Any:
    try:
      element = self.source[index]
    except Exception as e:  # pylint: disable=broad-except; any read error is per element.
      return _ReadFailure(int(index), f"{type(e).__name__}: {e}")
    return {**element, _INDEX_KEY: int(index)}


def _try_clip(element: Any, make_clip: Callable[[Mapping[str, Any]], dict]) -> dict | None:
  """`make_clip(element)`, or None (counted, logged) when the read failed or the video
  cannot give a clip (`ValueError`: too short, not uint8 [T, H, W, 3])."""
  if isinstance(element, _ReadFailure):
    _skip_clip(element.index, element.error)
    return None
  try:
    return make_clip(element)
  except ValueError as e:
    _skip_clip(element.get(_INDEX_KEY), f"{type(e).__name__}: {e}")
    return None


@dataclasses.dataclass(frozen=True)
class _RandomClip(grain.transforms.RandomMap):
  """Random clip of `video` (one crop box for all frames); picklable for grain workers."""

  num_frames: int
  size: int
  scale: tuple[float, float]

  def random_map(self, element: Any, rng: np.random.Generator) -> dict[str, Any] | None:
    """The clip, or None (dropped by grain) when `element` gives none."""
    return _try_clip(element, lambda e: {
        "video": video.random_clip(e["video"], rng, self.num_frames, self.size, self.scale)})


def make_clip_train_iterator(
    source: Any,
    *,
    global_batch_size: int,
    num_frames: int,
    image_size: int,
    seed: int,
    crop_scale: tuple[float, float],
    process_index: int,
    process_count: int,
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
) -> grain.DatasetIterator:
  """Endless iterator of `{"video": uint8 [global_batch_size // process_count, T, S, S, 3]}`.

  The video counterpart of `make_train_iterator`: the same per-host slicing,
  per-epoch shuffle, seeding and resumable state, with a random clip (random
  start, one random square box) of every element instead of a random crop.
  Elements that fail to read or are too short are skipped (see
  `skipped_clip_count`) and batches filled from the next ones; if over half of
  a window of 1000 elements is skipped the iterator raises instead.
  """
  return _endless_batches(
      _TolerantSource(source), _RandomClip(num_frames, image_size, tuple(crop_scale)),
      global_batch_size=global_batch_size, seed=seed, process_index=process_index,
      process_count=process_count, num_threads=num_threads,
      prefetch_buffer_size=prefetch_buffer_size, sparse=True)


@dataclasses.dataclass(frozen=True)
class _ClipEvalView(grain.transforms.Map):
  """Deterministic eval clip of a real example, marked valid (stored clips pass unchanged);
  a masked-out padding clip in place of an element that gives none."""

  num_frames: int
  size: int

  def map(self, element: Any) -> dict[str, np.ndarray]:
    clip = _try_clip(element, self._clip)
    return _ClipPadding(self.num_frames, self.size).map(0) if clip is None else clip

  def _clip(self, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
    frames = np.asarray(element["video"])
    if frames.shape[:3] != (self.num_frames, self.size, self.size):
      frames = video.center_clip(frames, self.num_frames, self.size)
    return {"video": frames, "mask": np.True_}


@dataclasses.dataclass(frozen=True)
class _ClipPadding(grain.transforms.Map):
  """A black, masked-out clip that evens out the hosts' batch counts."""

  num_frames: int
  size: int

  def map(self, element: int) -> dict[str, np.ndarray]:
    del element
    shape = (self.num_frames, self.size, self.size, 3)
    return {"video": np.zeros(shape, np.uint8), "mask": np.False_}


def make_clip_eval_batches(
    source: Any,
    *,
    global_batch_size: int,
    num_frames: int,
    image_size: int,
    process_index: int,
    process_count: int,
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
) -> grain.IterDataset:
  """One pass over `source` as `{"video": uint8 [b, T, S, S, 3], "mask": bool [b]}` batches.

  The video counterpart of `make_eval_batches` (same equal-step padding and
  order); each example becomes its centre clip unless it is already `T x S x S`.
  An example that fails to read or is too short becomes a padding clip
  (`mask=False`, counted in `skipped_clip_count`): it is left out of the
  metrics, and every host still yields the same number of batches.
  """
  return _padded_batches(
      _TolerantSource(source), _ClipEvalView(num_frames, image_size),
      _ClipPadding(num_frames, image_size),
      global_batch_size=global_batch_size, process_index=process_index,
      process_count=process_count, num_threads=num_threads,
      prefetch_buffer_size=prefetch_buffer_size)


def _read_options(num_threads: int, prefetch_buffer_size: int) -> grain.ReadOptions:
  """Bounded read-ahead; the defaults (16 threads, 500 batches) would hold gigabytes."""
  return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size ({global_batch_size}) must be a positive multiple of "
        f"the number of processes ({process_count})."
    )
  return global_batch_size // process_count


def _check_host(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")


def _host_slice(source: Any, process_index: int, process_count: int) -> grain.MapDataset:
  """This host's examples: `process_index`, `process_index + process_count`, ..."""
  _check_host(process_index, process_count)
  return grain.MapDataset.source(source)[process_index::process_count]
