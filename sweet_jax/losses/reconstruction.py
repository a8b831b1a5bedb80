"""The reconstruction term: mean squared error in the model's [-1, 1] pixel space."""

import jax
import jax.numpy as jnp


def reconstruction_loss(recon: jax.Array, images: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(recon - images))
