"""The one input path: a TFDS random-access source read through grain.

Training and evaluation, on the embedded photos and on ImageNet alike, go
through these functions, so that what is tested on the small dataset is what
runs at scale. Training reads one global stream whose randomness is a pure function
of (seed, element index); each host takes its rows of every global batch, so the
batches do not depend on the number of hosts, and the iterator resumes from a small
JSON state. Evaluation reads each host's `process_index::process_count` slice.

An example that cannot be used (an image or video that fails to decode, an image that
is not uint8 [H, W] or [H, W, 1|3|4] (gray is replicated, alpha dropped), a video not
uint8 [T, H, W, 3] or shorter than the clip) is skipped with a warning naming it and
counted in `skipped_example_count()`, not fatal: one bad file in ImageNet or UCF-101
should not end a run. Once more than
`max_bad_fraction` of a split's examples have been found bad, reading raises
`BadDataError` naming the dataset and the example ids. Training skips a bad image by
taking the next good element of the source in its place (so the batches stay full and
the same for any number of hosts) and a bad clip by dropping it; evaluation masks a bad
example out like padding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
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
# Reading raises once more than this fraction of a split is known to be unusable (the
# trainer passes config.data.max_bad_fraction / config.video_data.max_bad_fraction).
_DEFAULT_MAX_BAD_FRACTION = 0.5
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
    # (tfds prints its "Downloading and preparing" banner, meaningless for embedded data.)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
      source = tfds.data_source(
          name,
          split=split,
          data_dir=data_dir,
          download=name in _EMBEDDED,
          # Needed: with an explicit data_dir tfds would otherwise build TFRecord.
          builder_kwargs={"file_format": "array_record"},
      )
    if "prepared" in printed.getvalue():
      logging.info("Built the embedded dataset %s in %s (once; reused from now on)", name,
                   data_dir)
    return source
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
    max_bad_fraction: float = _DEFAULT_MAX_BAD_FRACTION,
) -> grain.DatasetIterator:
  """Endless iterator of `{"image": uint8 [global_batch_size // process_count, S, S, 3]}`.

  One global stream of `source` (reshuffled every epoch, a fresh random crop of every
  element) is split over the hosts by rows of each global batch, so any number of hosts
  trains on the same global batches (see `endless_batches`). `get_state()` /
  `set_state()` (or orbax with `grain.checkpoint.CheckpointSave` / `CheckpointRestore`)
  resume on exactly the next batch. `prefetch_buffer_size` counts batches. An unusable
  image is skipped: the next usable element of `source` takes its place.
  """
  info = _source_info(source, "image", max_bad_fraction)
  return endless_batches(
      _NextGoodImageSource(_TolerantSource(source, info)),
      _RandomCrop(image_size, tuple(crop_scale), flip, color_jitter), then=_image_only,
      global_batch_size=global_batch_size, seed=seed, process_index=process_index,
      process_count=process_count, num_threads=num_threads,
      prefetch_buffer_size=prefetch_buffer_size)


def endless_batches(source: Any, random_view: grain.transforms.RandomMap, *,
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
  """Deterministic eval view of a real example, marked valid; a masked-out padding
  image in place of an unusable one."""

  size: int
  preprocess: EvalPreprocess

  def map(self, element: Any) -> dict[str, np.ndarray]:
    view = _try_view(element, self._view)
    return _Padding(self.size).map(0) if view is None else view

  def _view(self, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
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
    max_bad_fraction: float = _DEFAULT_MAX_BAD_FRACTION,
) -> grain.IterDataset:
  """One pass over `source` as `{"image": uint8 [b, S, S, 3], "mask": bool [b]}` batches.

  `b = global_batch_size // process_count`. Over all hosts every example
  appears exactly once with `mask=True`, in a fixed order; the rest is padding
  with `mask=False`, so that every host yields the same number of batches
  (equal-step evaluation, as in big_vision) and no host waits in a collective.
  An unusable example is masked out like padding (and counted). The returned dataset
  can be iterated again and gives the same batches.
  """
  if preprocess not in _EVAL_PREPROCESS:
    raise ValueError(f"preprocess must be one of {sorted(_EVAL_PREPROCESS)}, got {preprocess!r}.")
  info = _source_info(source, "image", max_bad_fraction)
  return padded_batches(
      _TolerantSource(source, info), _EvalView(image_size, preprocess), _Padding(image_size),
      global_batch_size=global_batch_size, process_index=process_index,
      process_count=process_count, num_threads=num_threads,
      prefetch_buffer_size=prefetch_buffer_size)


def padded_batches(source: Any, view: grain.transforms.Map, padding: grain.transforms.Map, *,
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


# A clip train iterator also raises once this fraction of a window of 1000 elements was
# skipped (grain's filter check), whatever max_bad_fraction says.
_MAX_SKIPPED_RATIO = 0.5
_skipped_lock = threading.Lock()
_skipped_examples = 0
_bad_ids: dict[str, set[int]] = {}


class BadDataError(ValueError):
  """Too many examples of a dataset cannot be used (the message names them)."""


@dataclasses.dataclass(frozen=True)
class _SourceInfo:
  """What a skip warning and the bad-fraction check need to know about a source."""

  name: str
  size: int
  max_bad_fraction: float
  key: str  # bad ids are collected per key: a TFDS split, or one source object


def _source_info(source: Any, kind: str, max_bad_fraction: float) -> _SourceInfo:
  info = getattr(source, "dataset_info", None)
  if info is not None:
    name = f"{info.full_name} split {getattr(source, 'split', None)!r}"
    return _SourceInfo(name, len(source), max_bad_fraction, key=name)
  return _SourceInfo(f"the {kind} source", len(source), max_bad_fraction,
                     key=f"{kind} source {id(source)}")


def skipped_example_count() -> int:
  """Examples skipped so far in this process (train and eval, images and clips; a bad
  image met again in a later epoch counts again); each skip is also logged.

  Counted per process: grain's reader threads share it; worker processes would not.
  """
  with _skipped_lock:
    return _skipped_examples


def _skip(info: _SourceInfo, index: int | None, error: str) -> None:
  """Counts and logs one skipped example; raises BadDataError past the bad fraction."""
  global _skipped_examples
  with _skipped_lock:
    _skipped_examples += 1
    bad = _bad_ids.setdefault(info.key, set())
    if index is not None:
      bad.add(index)
    too_many = len(bad) > info.max_bad_fraction * info.size
    ids = sorted(bad)
  where = "an element" if index is None else f"element {index}"
  logging.warning("Skipping %s of %s: %s", where, info.name, error)
  if too_many:
    raise BadDataError(
        f"{len(ids)} of the {info.size} examples of {info.name} cannot be used, more than "
        f"max_bad_fraction={info.max_bad_fraction} (config.data / config.video_data); ids "
        f"{ids[:50]}{' ...' if len(ids) > 50 else ''}; the last: {error}")


_INDEX_KEY = "_source_index"  # Added to every element read, for the skip warning.


_INFO_KEY = "_source_info"  # ... and the source's _SourceInfo.


@dataclasses.dataclass(frozen=True)
class _ReadFailure:
  """Stands in for an element whose read raised, until a view skips it."""

  index: int
  error: str
  info: _SourceInfo


@dataclasses.dataclass(frozen=True)
class _TolerantSource:
  """`source` whose failing reads become `_ReadFailure`s and whose elements carry
  their index and source, so that views can skip them by name."""

  source: Any
  info: _SourceInfo

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Any:
    try:
      element = self.source[index]
    except Exception as e:  # pylint: disable=broad-except; any read error is per element.
      return _ReadFailure(int(index), f"{type(e).__name__}: {e}", self.info)
    return {**element, _INDEX_KEY: int(index), _INFO_KEY: self.info}


@dataclasses.dataclass(frozen=True)
class _NextGoodImageSource:
  """`source` in which an unusable image (a failed read, not uint8 [H, W, 1|3|4]) is skipped
  and the next usable element (cyclically) stands in its place: training batches stay
  full and depend only on the global position, not on the number of hosts."""

  source: _TolerantSource

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Any:
    size = len(self.source)
    for offset in range(size):
      image = _try_view(self.source[(int(index) + offset) % size], _rgb_image)
      if image is not None:
        return image
    raise BadDataError(f"no example of {self.source.info.name} can be used")


def _rgb_image(element: Mapping[str, Any]) -> dict[str, Any]:
  """The element with its image as uint8 [H, W, 3] (ValueError when it cannot be)."""
  return {**element, "image": preprocess.rgb_uint8(element["image"])}


def _try_view(element: Any, make_view: Callable[[Mapping[str, Any]], dict]) -> dict | None:
  """`make_view(element)`, or None (counted, logged) when the read failed or the example
  cannot give a view (`ValueError`: not a uint8 image, a video too short or not uint8
  [T, H, W, 3])."""
  if isinstance(element, _ReadFailure):
    _skip(element.info, element.index, element.error)
    return None
  try:
    return make_view(element)
  except BadDataError:
    raise
  except ValueError as e:
    _skip(element[_INFO_KEY], element.get(_INDEX_KEY), f"{type(e).__name__}: {e}")
    return None


@dataclasses.dataclass(frozen=True)
class _RandomClip(grain.transforms.RandomMap):
  """Random clip of `video` (one crop box for all frames); picklable for grain workers."""

  num_frames: int
  size: int
  scale: tuple[float, float]

  def random_map(self, element: Any, rng: np.random.Generator) -> dict[str, Any] | None:
    """The clip, or None (dropped by grain) when `element` gives none."""
    return _try_view(element, lambda e: {
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
    max_bad_fraction: float = _DEFAULT_MAX_BAD_FRACTION,
) -> grain.DatasetIterator:
  """Endless iterator of `{"video": uint8 [global_batch_size // process_count, T, S, S, 3]}`.

  The video counterpart of `make_train_iterator`: the same per-host slicing,
  per-epoch shuffle, seeding and resumable state, with a random clip (random
  start, one random square box) of every element instead of a random crop.
  Elements that fail to read or are too short are skipped (see
  `skipped_example_count`) and batches filled from the next ones; past
  `max_bad_fraction` of the split, or over half of a window of 1000 elements, the
  iterator raises instead.
  """
  info = _source_info(source, "video", max_bad_fraction)
  return endless_batches(
      _TolerantSource(source, info), _RandomClip(num_frames, image_size, tuple(crop_scale)),
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
    clip = _try_view(element, self._clip)
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
    max_bad_fraction: float = _DEFAULT_MAX_BAD_FRACTION,
) -> grain.IterDataset:
  """One pass over `source` as `{"video": uint8 [b, T, S, S, 3], "mask": bool [b]}` batches.

  The video counterpart of `make_eval_batches` (same equal-step padding and
  order); each example becomes its centre clip unless it is already `T x S x S`.
  An example that fails to read or is too short becomes a padding clip
  (`mask=False`, counted in `skipped_example_count`): it is left out of the
  metrics, and every host still yields the same number of batches.
  """
  info = _source_info(source, "video", max_bad_fraction)
  return padded_batches(
      _TolerantSource(source, info), _ClipEvalView(num_frames, image_size),
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
