"""The perceptual term: LPIPS between reconstructions and originals (on one random frame
per clip for video, as the official SweetTokenizer scores it)."""

from typing import Any

import jax
import jax.numpy as jnp

from sweet_jax.nets.lpips import LPIPS


def one_frame_per_clip(rng: jax.Array, *clips: jax.Array) -> list[jax.Array]:
  """The same random frame of each clip in every argument ([B, T, ...] -> [B, ...]);
  images pass through. The official SweetTokenizer scores its perceptual loss on one
  random frame per clip."""
  if clips[0].ndim == 4:
    return list(clips)
  b, t = clips[0].shape[:2]
  picks = jax.random.randint(rng, (b,), 0, t)
  return [x[jnp.arange(b), picks] for x in clips]


def perceptual_loss(perceptual: LPIPS, params: Any, rng: jax.Array, recon: jax.Array,
                    images: jax.Array) -> jax.Array:
  """Mean LPIPS of `recon` against `images` (in [-1, 1]); clips score one random frame."""
  fake, real = one_frame_per_clip(rng, recon, images)
  return jnp.mean(perceptual.apply({"params": params}, fake, real))
