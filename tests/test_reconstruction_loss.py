"""The reconstruction terms (losses/reconstruction.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from sweet_jax.losses.reconstruction import low_pass_loss, mean_color_loss, reconstruction_loss


def test_low_pass_loss_is_the_error_of_block_means():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 16, 24, 3)).astype(np.float32)
  recon = rng.uniform(-1, 1, (2, 16, 24, 3)).astype(np.float32)
  means = lambda x: x.reshape(2, 2, 8, 3, 8, 3).mean(axis=(2, 4))
  expected = np.mean(np.square(means(recon) - means(images)))
  np.testing.assert_allclose(low_pass_loss(jnp.asarray(recon), jnp.asarray(images), 8),
                             expected, rtol=1e-5)
  # Detail that keeps every block's mean costs nothing at low pass, all at full resolution.
  checker = np.indices((16, 24)).sum(0) % 2 * 2 - 1  # +-1, zero mean in each 8x8 block
  detailed = images + 0.1 * checker[None, :, :, None].astype(np.float32)
  assert float(low_pass_loss(jnp.asarray(detailed), jnp.asarray(images), 8)) < 1e-12
  assert float(reconstruction_loss(jnp.asarray(detailed), jnp.asarray(images))) > 1e-3
  # A colour cast is all low pass: the same error in both terms.
  tinted = images + np.array([0.05, 0.0, -0.05], np.float32)
  np.testing.assert_allclose(low_pass_loss(jnp.asarray(tinted), jnp.asarray(images), 8),
                             reconstruction_loss(jnp.asarray(tinted), jnp.asarray(images)),
                             rtol=1e-4)


def test_low_pass_loss_takes_clips_and_names_a_bad_block():
  clips = jnp.zeros((2, 5, 16, 16, 3))
  assert float(low_pass_loss(clips + 0.5, clips, 8)) == pytest.approx(0.25)
  with pytest.raises(ValueError, match="block 6 must divide the frame size 16x16"):
    low_pass_loss(clips, clips, 6)


def test_mean_color_loss_is_the_error_of_each_frames_mean_colour():
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, (2, 3, 8, 8, 3)).astype(np.float32)  # clips: per frame
  recon = rng.uniform(-1, 1, (2, 3, 8, 8, 3)).astype(np.float32)
  expected = np.mean(np.square(recon.mean(axis=(2, 3)) - images.mean(axis=(2, 3))))
  np.testing.assert_allclose(mean_color_loss(jnp.asarray(recon), jnp.asarray(images)),
                             expected, rtol=1e-5)
  # Moving colour around inside a frame costs nothing; a cast costs its square.
  swapped = images[:, :, ::-1]
  assert float(mean_color_loss(jnp.asarray(swapped), jnp.asarray(images))) < 1e-12
  tinted = images + np.array([0.1, 0.0, -0.1], np.float32)
  assert float(mean_color_loss(jnp.asarray(tinted), jnp.asarray(images))) == pytest.approx(
      0.02 / 3, rel=1e-4)
