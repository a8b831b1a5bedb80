"""Tests for sweet_jax.evaluate: metrics against references, thumbnail baseline, grids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.metrics
from PIL import Image

from sweet_jax import metrics
from sweet_jax.evaluate import baselines, images, reconstruction


def _photo_pairs(height: int = 96, width: int = 80) -> tuple[np.ndarray, np.ndarray]:
  """Real-photo crops in [0, 1] and noisy / shifted versions of them, [4, H, W, 3]."""
  astro = skimage.data.astronaut()
  cat = skimage.data.chelsea()
  clean = np.stack([
      astro[30:30 + height, 180:180 + width],
      astro[300:300 + height, 100:100 + width],
      cat[50:50 + height, 150:150 + width],
      cat[150:150 + height, 300:300 + width],
  ]).astype(np.float32) / 255.0
  rng = np.random.default_rng(0)
  sigmas = np.array([0.02, 0.1, 0.05, 0.2], np.float32)[:, None, None, None]
  noisy = np.clip(clean + sigmas * rng.standard_normal(clean.shape, np.float32), 0.0, 1.0)
  noisy[1] = np.roll(clean[1], 2, axis=1)  # A structural change, not only noise.
  return clean, noisy


def test_psnr_matches_hand_computation():
  x = np.zeros((2, 4, 4, 3), np.float32)
  y = x.copy()
  y[0] += 0.1  # MSE 0.01 -> 20 dB.
  y[1, 0, 0, 0] = 1.0  # MSE 1/48.
  np.testing.assert_allclose(
      metrics.psnr(x, y), [20.0, 10 * np.log10(48.0)], rtol=1e-5)
  np.testing.assert_allclose(metrics.psnr(x * 255, y * 255, max_val=255.0)[0], 20.0, rtol=1e-5)


def test_psnr_identical_images_is_inf():
  clean, _ = _photo_pairs()
  assert np.all(np.isposinf(metrics.psnr(clean, clean)))


def test_ssim_matches_skimage_and_tf():
  clean, noisy = _photo_pairs()
  ours = np.asarray(jax.jit(metrics.ssim)(clean, noisy))
  sk = [skimage.metrics.structural_similarity(
      a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
      data_range=1.0, channel_axis=-1) for a, b in zip(clean, noisy)]
  np.testing.assert_allclose(ours, sk, atol=1e-4)
  tf = pytest.importorskip('tensorflow')
  np.testing.assert_allclose(ours, tf.image.ssim(clean, noisy, max_val=1.0).numpy(), atol=1e-4)
  assert len(set(np.round(ours, 3))) == len(ours)  # The cases are not degenerate.


def test_psnr_and_ssim_match_skimage_on_random_images():
  rng = np.random.default_rng(3)
  x = rng.uniform(size=(3, 24, 20, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
  sk_psnr = [skimage.metrics.peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(x, y)]
  np.testing.assert_allclose(metrics.psnr(x, y), sk_psnr, rtol=1e-5)
  sk_ssim = [skimage.metrics.structural_similarity(
      a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
      channel_axis=-1) for a, b in zip(x, y)]
  np.testing.assert_allclose(metrics.ssim(x, y), sk_ssim, atol=1e-4)


def test_ssim_identical_is_one_and_small_images_raise():
  clean, _ = _photo_pairs()
  np.testing.assert_allclose(metrics.ssim(clean, clean), 1.0, atol=1e-5)
  with pytest.raises(ValueError, match='at least 11x11'):
    metrics.ssim(clean[:, :10], clean[:, :10])


def test_codebook_stats_hand_example():
  # Codes 0, 0, 1, 2 out of 8: usage 3/8, entropy -(.5 ln .5 + 2 * .25 ln .25) = 1.5 ln 2.
  stats = jax.jit(metrics.codebook_stats, static_argnums=1)(jnp.array([[0, 0], [1, 2]]), 8)
  np.testing.assert_allclose(stats['usage'], 3 / 8)
  np.testing.assert_allclose(stats['perplexity'], 2 ** 1.5, rtol=1e-5)
  uniform = metrics.codebook_stats(jnp.arange(16) % 4, 4)
  np.testing.assert_allclose([uniform['usage'], uniform['perplexity']], [1.0, 4.0], rtol=1e-5)


@pytest.mark.parametrize('bits,side', [(384, 4), (385, 5), (24, 1), (1, 1), (256 * 10, 11),
                                       (1024 * 8, 19)])
def test_thumbnail_side(bits, side):
  assert baselines.thumbnail_side(bits) == side


def test_thumbnail_side_channels_and_bits_per_value():
  assert baselines.thumbnail_side(64, channels=1, bits_per_value=4) == 4
  with pytest.raises(ValueError):
    baselines.thumbnail_side(0)


def test_bicubic_thumbnail_shapes_and_quality_grows_with_side():
  photo = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((64, 64)))
  batch = np.stack([photo, photo[::-1]])
  small, large = (baselines.bicubic_thumbnail(batch, side) for side in (8, 32))
  assert small.shape == large.shape == batch.shape
  assert small.dtype == large.dtype == np.uint8
  as_float = lambda a: a.astype(np.float32) / 255.0
  psnr_small = metrics.psnr(as_float(batch), as_float(small))
  psnr_large = metrics.psnr(as_float(batch), as_float(large))
  assert np.all(psnr_large > psnr_small + 3.0)


def test_make_grid_layout():
  top = np.full((3, 4, 5, 3), 10, np.uint8)
  bottom = np.full((3, 4, 5, 3), 20, np.uint8)
  bottom[1] = 30
  grid = images.make_grid([top, bottom], pad=2, pad_value=255)
  assert grid.shape == (2 * 4 + 3 * 2, 3 * 5 + 4 * 2, 3) and grid.dtype == np.uint8
  assert np.all(grid[:2] == 255) and np.all(grid[:, :2] == 255)
  assert np.all(grid[2:6, 2:7] == 10)
  assert np.all(grid[8:12, 9:14] == 30)  # Row 1, column 1.
  assert np.all(grid[6:8] == 255)  # Padding between rows.


def test_to_uint8_and_save_png(tmp_path):
  floats = np.array([[-0.5, 0.0, 0.5, 1.0, 2.0]], np.float32)
  np.testing.assert_array_equal(images.to_uint8(floats), [[0, 0, 128, 255, 255]])
  image = images.to_uint8(np.random.default_rng(0).random((6, 7, 3)))
  path = tmp_path / 'a' / 'b' / 'grid.png'
  images.save_png(str(path), image)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), image)


# Fréchet distance (FID / FVD / FD-VGG statistic) -------------------------------------------


def _reference_frechet(mu1, sigma1, mu2, sigma2):
  """pytorch-fid's formula: scipy's sqrtm of the product, real part of its trace."""
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def test_frechet_distance_matches_the_float64_reference_formula():
  from sweet_jax.evaluate import frechet  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for dim, n in ((8, 100), (64, 500)):
    a = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim))
    b = rng.normal(0.3, 1.2, size=(n, dim)) @ rng.normal(size=(dim, dim))
    mu_a, cov_a = a.mean(0), np.cov(a, rowvar=False)
    mu_b, cov_b = b.mean(0), np.cov(b, rowvar=False)
    expected = _reference_frechet(mu_a, cov_a, mu_b, cov_b)
    got = frechet.frechet_distance(mu_a, cov_a, mu_b, cov_b)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    # Streaming statistics (batch by batch) equal numpy's mean and unbiased covariance.
    stats = frechet.FeatureStats()
    for chunk in np.array_split(a, 7):
      stats.add(chunk)
    mean, cov = stats.mean_and_covariance()
    np.testing.assert_allclose(mean, mu_a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, cov_a, rtol=1e-9, atol=1e-10)


def test_frechet_distance_is_zero_for_identical_statistics_and_known_for_shifts():
  from sweet_jax.evaluate import frechet  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 16))  # fewer samples than... close to singular is fine
  mu, cov = x.mean(0), np.cov(x, rowvar=False)
  assert abs(frechet.frechet_distance(mu, cov, mu, cov)) < 1e-9
  # A pure mean shift by v: the distance is |v|^2 exactly.
  v = rng.normal(size=16)
  np.testing.assert_allclose(frechet.frechet_distance(mu, cov, mu + v, cov), v @ v, rtol=1e-8)
  # Rank-deficient covariances (fewer samples than dimensions) stay finite and >= 0.
  few = rng.normal(size=(5, 32))
  d = frechet.frechet_distance_of_features(few, few + 0.1)
  assert np.isfinite(d) and d >= -1e-9


def test_reference_stats_round_trip(tmp_path):
  from sweet_jax.evaluate import frechet  # pylint: disable=g-import-not-at-top
  mean, cov = np.arange(3.0), np.eye(3)
  path = str(tmp_path / "stats" / "ref.npz")
  frechet.save_stats(path, mean, cov, 10)
  got_mean, got_cov, count = frechet.load_stats(path)
  np.testing.assert_array_equal(got_mean, mean)
  np.testing.assert_array_equal(got_cov, cov)
  assert count == 10


def test_row_labels_sit_left_of_their_rows():
  grid = images.make_grid([np.zeros((3, 32, 32, 3), np.uint8)] * 3)
  labelled = images.with_row_labels(grid, ["original", "tokenizer\n928 bits", "thumbnail"])
  width = labelled.shape[1] - grid.shape[1]
  assert labelled.shape[0] == grid.shape[0] and width > 20
  np.testing.assert_array_equal(labelled[:, width:], grid)
  ink = (labelled[:, :width] < 128).any(axis=(1, 2))  # dark text in the label column
  row = (grid.shape[0] - 2) // 3
  assert all(ink[2 + r * row:(r + 1) * row].any() for r in range(3))


def test_color_metrics_measure_the_shift_of_the_mean_colour():
  originals = np.full((2, 4, 4, 3), 100, np.uint8)
  recons = originals.copy()
  recons[..., 0] += 6  # every reconstruction redder
  recons[1, ..., 2] -= 4  # one less blue
  thumbs = originals.copy()
  thumbs[0, :2, :, 1] += 2  # half of one thumbnail greener
  held_out = {"color_original": reconstruction.channel_means(originals),
              "color_recon": reconstruction.channel_means(recons),
              "color_thumbnail": reconstruction.channel_means(thumbs)}
  metrics = reconstruction.color_metrics(held_out)
  assert metrics["mean_color_error_rgb"] == [6.0, 0.0, 2.0]
  assert metrics["mean_color_bias_rgb"] == [6.0, 0.0, -2.0]
  assert metrics["mean_color_error"] == 8 / 3
  assert metrics["thumbnail_mean_color_error_rgb"] == [0.0, 0.5, 0.0]
