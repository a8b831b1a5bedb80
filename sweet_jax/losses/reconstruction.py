"""The reconstruction terms, in the model's [-1, 1] pixel space: the per-pixel mean squared
error, the same error of block means (the coarse colour and brightness), and of each
frame's mean colour."""

import jax
import jax.numpy as jnp


def reconstruction_loss(recon: jax.Array, images: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(recon - images))


def low_pass_loss(recon: jax.Array, images: jax.Array, block: int) -> jax.Array:
  """Mean squared error of the `block` x `block` block means of images or clips' frames.

  The per-pixel error splits into the error of the block means and the rest, and weighs
  the first by its share of the pixels' variance only: a reconstruction of 928 bits drifted
  in mean colour by about 2/255 per channel (the bit-matched thumbnail, a low-pass code,
  by 0.3) and tinted gray photos. Weighting this term (config.loss.low_pass) counts the
  coarse colour again."""
  frames = lambda x: x.reshape((-1,) + x.shape[-3:])
  recon, images = frames(recon), frames(images)
  n, height, width, channels = recon.shape
  if height % block or width % block:
    raise ValueError(f"the low-pass block {block} must divide the frame size {height}x{width}")
  pool = lambda x: x.reshape(n, height // block, block, width // block, block,
                             channels).mean(axis=(2, 4))
  return jnp.mean(jnp.square(pool(recon) - pool(images)))


def mean_color_loss(recon: jax.Array, images: jax.Array) -> jax.Array:
  """Mean squared error of each image's (or clip frame's) mean colour, per channel.

  Of the per-pixel error, a frame's mean colour is a share of well under 1 % (an error of
  2.4/255 per channel against 30/255 per pixel for the 928-bit main job), so a lossy code
  trained on the per-pixel error alone spends almost nothing on it. This term, weighted
  (config.loss.mean_color), asks for it explicitly."""
  frame_means = lambda x: x.reshape((-1,) + x.shape[-3:]).mean(axis=(1, 2))
  return jnp.mean(jnp.square(frame_means(recon) - frame_means(images)))
