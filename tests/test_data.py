"""Tests of the data path: embedded TFDS builder, grain pipeline, preprocess ops.

`embedded_data_dir` (conftest.py) builds the embedded dataset once per session.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sweet_jax.data import pipeline, preprocess
from sweet_jax.data.builders import embedded_photos

EMBEDDED = "sweet_embedded_photos"
TRAIN_KW = dict(image_size=32, seed=0, crop_scale=(0.35, 1.0), flip=True)


def _coded_source(n: int) -> list[dict]:
  """A source whose example i is a constant image of value i + 1 (survives crops and resizes)."""
  return [{"image": np.full((20 + i, 30, 3), i + 1, np.uint8), "label": i} for i in range(n)]


def _codes(images: np.ndarray) -> list[int]:
  return [int(image[0, 0, 0]) - 1 for image in images]


# (a) The embedded dataset.


def test_embedded_splits(embedded_data_dir):
  train = pipeline.get_data_source(EMBEDDED, "train", embedded_data_dir)
  evals = pipeline.get_data_source(EMBEDDED, "eval", embedded_data_dir)
  assert len(train) == len(embedded_photos.TRAIN_PHOTOS) + 33 == 49  # + the clips' frames
  assert len(evals) == len(embedded_photos.EVAL_PHOTOS) * 32 == 256
  train_names = {train[i]["name"].decode() for i in range(len(train))}
  eval_names = [evals[i]["name"].decode() for i in range(len(evals))]
  assert len(set(eval_names)) == 8 and not train_names & set(eval_names)
  assert len(set(eval_names[:8])) == 8  # interleaved: the first 8 crops, 8 photos
  assert {"stereo_motorcycle_left", "stereo_motorcycle_right", "bikes_frame132"} <= train_names
  # No training frame from the clips' held-out shots (bikes from frame 137 on).
  assert max(int(n.split("frame")[1]) for n in train_names if n.startswith("bikes")) < 137
  gray = [i for i in range(len(evals))
          if (evals[i]["image"] == evals[i]["image"][..., :1]).all()]
  assert len(gray) * 8 <= len(evals)  # mostly colour: at most one crop in eight gray
  for i in range(len(train)):
    image = train[i]["image"]
    assert image.dtype == np.uint8 and image.shape[2] == 3 and max(image.shape[:2]) <= 512
    assert train[i]["id"] == i
  assert evals[5]["image"].shape == (128, 128, 3) and evals[5]["id"] == 5


def test_embedded_build_is_deterministic(embedded_data_dir, tmp_path, caplog, capsys):
  # Decoded examples, not files: tf.Example serialization orders the feature
  # map differently in each process, so record bytes differ across builds.
  caplog.set_level("INFO")
  for split in ("train", "eval"):
    first = pipeline.get_data_source(EMBEDDED, split, embedded_data_dir)
    second = pipeline.get_data_source(EMBEDDED, split, str(tmp_path))
    if split == "train":  # the build: one line of ours, none of TFDS's banners
      assert f"Built the embedded dataset {EMBEDDED} in {tmp_path}" in caplog.text
      assert "Downloading and preparing" not in capsys.readouterr().out
    assert len(first) == len(second)
    for i in range(len(first)):
      a, b = first[i], second[i]
      assert (a["name"], a["id"]) == (b["name"], b["id"])
      np.testing.assert_array_equal(a["image"], b["image"])


def test_missing_dataset_names_dataset_split_and_dir(tmp_path):
  with pytest.raises(ValueError, match=rf"'imagenet2012'.*'validation'.*{tmp_path}"):
    pipeline.get_data_source("imagenet2012", "validation", str(tmp_path))


def test_unknown_split_is_an_error(embedded_data_dir):
  with pytest.raises(ValueError, match=r"'bogus'"):
    pipeline.get_data_source(EMBEDDED, "bogus", embedded_data_dir)


def test_default_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("SWEET_JAX_DATA_DIR", str(tmp_path))
  assert pipeline.default_data_dir() == str(tmp_path)
  monkeypatch.delenv("SWEET_JAX_DATA_DIR")
  assert pipeline.default_data_dir().endswith("tensorflow_datasets")


# (b) The train iterator.


def _train_iterator(source, **kw):
  kw = {**TRAIN_KW, "global_batch_size": 8, "process_index": 0, "process_count": 1, **kw}
  return pipeline.make_train_iterator(source, **kw)


def test_train_iterator_shapes_and_determinism(embedded_data_dir):
  source = pipeline.get_data_source(EMBEDDED, "train", embedded_data_dir)
  first, second = _train_iterator(source), _train_iterator(source)
  for _ in range(3):  # 24 crops: crosses the 13-photo epoch boundary.
    a, b = next(first), next(second)
    assert set(a) == {"image"}
    assert a["image"].shape == (8, 32, 32, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["image"], b["image"])
  other_seed = next(_train_iterator(source, seed=1))
  assert not np.array_equal(next(_train_iterator(source))["image"], other_seed["image"])


def test_train_iterator_resumes_on_next_batch(embedded_data_dir):
  source = pipeline.get_data_source(EMBEDDED, "train", embedded_data_dir)
  it = _train_iterator(source, global_batch_size=4)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["image"] for _ in range(2)]
  resumed = _train_iterator(source, global_batch_size=4)
  resumed.set_state(state)
  for batch in expected:
    np.testing.assert_array_equal(next(resumed)["image"], batch)


def test_train_iterator_checkpoints_with_orbax(embedded_data_dir, tmp_path):
  import grain
  import orbax.checkpoint as ocp

  source = pipeline.get_data_source(EMBEDDED, "train", embedded_data_dir)
  it = _train_iterator(source, global_batch_size=4)
  next(it)
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    expected = next(it)["image"]
    resumed = _train_iterator(source, global_batch_size=4)
    manager.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  np.testing.assert_array_equal(next(resumed)["image"], expected)


def test_train_batch_must_split_over_processes():
  with pytest.raises(ValueError, match="multiple"):
    _train_iterator(_coded_source(4), global_batch_size=5, process_count=2)


# (c) Per-host split.


def test_hosts_split_the_single_host_global_batches(embedded_data_dir):
  """Host p's batch is rows [p*b, (p+1)*b) of the 1-host global batch, crops included,
  so a multi-host run trains on exactly the batches of a single-host run."""
  source = pipeline.get_data_source(EMBEDDED, "train", embedded_data_dir)
  single = _train_iterator(source, global_batch_size=12)
  hosts = [_train_iterator(source, global_batch_size=12, process_index=p, process_count=3)
           for p in range(3)]
  for _ in range(3):  # the 12-photo split: across an epoch boundary too
    np.testing.assert_array_equal(np.concatenate([next(h)["image"] for h in hosts]),
                                  next(single)["image"])


def test_hosts_see_disjoint_examples():
  source = _coded_source(20)
  # Global batch 20 = one whole epoch, split into each host's 10 rows.
  iterators = [
      _train_iterator(source, global_batch_size=20, process_index=p, process_count=2)
      for p in range(2)
  ]
  seen = [_codes(next(it)["image"]) for it in iterators]
  assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(20))


# (d) Eval batches.


@pytest.mark.parametrize("num_examples", [1, 21, 64])
def test_eval_batches_cover_every_example_once(num_examples):
  source = _coded_source(num_examples)
  hosts = [
      list(pipeline.make_eval_batches(
          source, global_batch_size=12, image_size=16, process_index=p, process_count=3
      ))
      for p in range(3)
  ]
  assert len({len(batches) for batches in hosts}) == 1
  seen = []
  for batches in hosts:
    for batch in batches:
      assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
      assert batch["mask"].shape == (4,) and batch["mask"].dtype == bool
      seen += _codes(batch["image"][batch["mask"]])
      assert not batch["image"][~batch["mask"]].any()
  assert sorted(seen) == list(range(num_examples))
  for batches in hosts:  # Real examples first, padding only at the end.
    mask = np.concatenate([b["mask"] for b in batches])
    assert (np.sort(mask)[::-1] == mask).all()


def test_eval_batches_of_embedded_photos(embedded_data_dir):
  source = pipeline.get_data_source(EMBEDDED, "eval", embedded_data_dir)
  batches = pipeline.make_eval_batches(
      source, global_batch_size=24, image_size=128, process_index=0, process_count=1
  )
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(images, np.stack([source[i]["image"] for i in range(len(source))]))
  again = np.concatenate([b["image"][b["mask"]] for b in batches])  # Re-iterable, same order.
  np.testing.assert_array_equal(again, images)


# (e) The same pipeline on (mocked) ImageNet.


def test_imagenet_mock(tmp_path):
  with tfds.testing.mock_data(num_examples=24):
    train = pipeline.get_data_source("imagenet2012", "train", str(tmp_path))
    validation = pipeline.get_data_source("imagenet2012", "validation", str(tmp_path))
  batch = next(_train_iterator(train, global_batch_size=8, process_index=1, process_count=2))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
  batches = list(pipeline.make_eval_batches(
      validation, global_batch_size=10, image_size=32, process_index=0, process_count=2,
      preprocess="resize_shorter_center_crop",
  ))
  assert [int(b["mask"].sum()) for b in batches] == [5, 5, 2]
  assert batches[0]["image"].shape == (5, 32, 32, 3)


# (f) Preprocess ops.


def test_to_rgb():
  gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
  for image in (gray, gray[..., None]):
    rgb = preprocess.to_rgb(image)
    assert rgb.shape == (3, 4, 3) and (rgb == gray[..., None]).all()
  rgba = np.zeros((3, 4, 4), np.uint8)
  assert preprocess.to_rgb(rgba).shape == (3, 4, 3)
  with pytest.raises(ValueError, match="channels"):
    preprocess.to_rgb(np.zeros((3, 4, 2), np.uint8))
  with pytest.raises(ValueError, match="rank"):
    preprocess.to_rgb(np.zeros((2, 3, 4, 3), np.uint8))


def test_resize_ops():
  image = np.zeros((40, 80, 3), np.uint8)
  # Outside the central square, and farther from it than the bicubic support
  # (PIL's filter reads a few pixels beyond the crop box).
  image[:, :10] = 255
  center = preprocess.resize_shorter_center_crop(image, 20)
  assert center.shape == (20, 20, 3) and center.dtype == np.uint8 and not center.any()
  assert preprocess.resize(image, 16)[:, :1].min() == 255  # The whole image is kept.
  assert preprocess.resize(image[..., 0], 16).shape == (16, 16, 3)


def test_random_resized_crop():
  image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
  crops = [
      preprocess.random_resized_crop(image, 24, np.random.default_rng(7), (0.3, 0.9), True)
      for _ in range(2)
  ]
  assert crops[0].shape == (24, 24, 3) and crops[0].dtype == np.uint8
  np.testing.assert_array_equal(*crops)
  square = image[:, :50]  # At scale 1 the crop is the whole square image, maybe mirrored.
  whole = preprocess.resize(square, 24)
  crops = {
      preprocess.random_resized_crop(square, 24, np.random.default_rng(s), (1, 1), True).tobytes()
      for s in range(8)
  }
  assert crops == {whole.tobytes(), whole[:, ::-1].tobytes()}
  gray = preprocess.random_resized_crop(image[..., 0], 8, np.random.default_rng(0), (0.5, 1), False)
  assert gray.shape == (8, 8, 3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: preprocess.resize(np.zeros((8, 8, 3), np.float32), 4), "uint8"),
        (lambda: preprocess.resize(np.zeros((8, 8, 5), np.uint8), 4), "channels"),
        (lambda: preprocess.resize(np.zeros((8,), np.uint8), 4), "rank"),
        (lambda: preprocess.resize(np.zeros((0, 8, 3), np.uint8), 4), "non-empty"),
        (lambda: preprocess.resize(np.zeros((8, 8, 3), np.uint8), 0), "size"),
        (
            lambda: preprocess.random_resized_crop(
                np.zeros((8, 8, 3), np.uint8), 4, np.random.default_rng(0), (0.5, 1.5), True
            ),
            "scale",
        ),
    ],
)
def test_preprocess_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_color_jitter():
  gray = np.full((8, 8, 3), 100, np.uint8)
  tinted = preprocess.color_jitter(gray, np.random.default_rng(0), 0.3)
  assert tinted.dtype == np.uint8 and tinted.shape == gray.shape
  assert len(set(tinted[0, 0].tolist())) == 3  # a gray photo gets a colour cast
  assert np.all(np.abs(tinted.astype(int) - 100) <= 30)
  rgb = np.stack([np.full((4, 4), v, np.uint8) for v in (10, 20, 30)], axis=-1)
  permuted = preprocess.color_jitter(rgb, np.random.default_rng(3), 0.0)  # strength 0: permutation only
  assert sorted(permuted[0, 0].tolist()) == [10, 20, 30]
  with pytest.raises(ValueError, match="strength"):
    preprocess.color_jitter(gray, np.random.default_rng(0), 1.5)


# (c) Unusable examples: skipped, counted, named; fatal past max_bad_fraction.


class _BadImageSource:
  """`_coded_source(n)` in which reading element `raises` raises, element `floats` is a
  float32 array and element `gray` is grayscale (usable: replicated to RGB)."""

  def __init__(self, n: int, raises: int, floats: int, gray: int | None = None):
    self._examples = _coded_source(n)
    self._examples[floats] = {"image": self._examples[floats]["image"].astype(np.float32)}
    if gray is not None:
      self._examples[gray] = {"image": self._examples[gray]["image"][..., 0]}
    self._raises = raises

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index: int) -> dict:
    if index == self._raises:
      raise ValueError(f"corrupt PNG in element {index}")
    return self._examples[index]


def test_train_iterator_skips_unusable_images(caplog):
  before = pipeline.skipped_example_count()
  it = _train_iterator(_BadImageSource(8, raises=2, floats=5, gray=6), global_batch_size=8)
  seen = set()
  for _ in range(4):  # 4 epochs
    batch = next(it)["image"]
    assert batch.shape == (8, 32, 32, 3) and batch.dtype == np.uint8
    seen.update(_codes(batch))
  assert seen == {0, 1, 3, 4, 6, 7}  # the next good element stood in for 2 and 5; 6 is gray
  assert pipeline.skipped_example_count() - before >= 2
  assert "element 2 of the image source: ValueError: corrupt PNG" in caplog.text
  assert "element 5 of the image source: ValueError: Expected a uint8 image, got dtype float32" \
      in caplog.text


def test_hosts_agree_on_the_batches_with_unusable_images():
  source = _BadImageSource(8, raises=2, floats=5)
  single = next(_train_iterator(source, global_batch_size=8))["image"]
  hosts = [next(_train_iterator(source, global_batch_size=8, process_index=p, process_count=2))
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in hosts]), single)


def test_too_many_unusable_images_stop_with_their_ids():
  it = _train_iterator(_BadImageSource(8, raises=2, floats=5), global_batch_size=8,
                       max_bad_fraction=0.2)  # 1 of 8 allowed
  with pytest.raises(pipeline.BadDataError,
                     match=r"2 of the 8 examples of the image source cannot be used, more than "
                           r"max_bad_fraction=0.2 .*ids \[2, 5\]"):
    for _ in range(4):
      next(it)


def test_eval_batches_mask_out_unusable_images():
  batches = list(pipeline.make_eval_batches(
      _BadImageSource(6, raises=2, floats=5), global_batch_size=4, image_size=8,
      process_index=0, process_count=1))
  masks = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(masks, [1, 1, 0, 1, 1, 0, 0, 0])
  images = np.concatenate([b["image"] for b in batches])
  assert _codes(images[masks]) == [0, 1, 3, 4] and not images[~masks].any()
