"""Adversarial losses and the regularisers that keep a small-data GAN in check.

Conventions (taming-transformers / MaskGIT / MAGVIT):
  discriminator  hinge: 0.5 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])
  generator      -E[D(x_hat)]
  LeCam (Tseng et al. 2021): E[relu(D(x) - ema_fake)^2] + E[relu(ema_real - D(x_hat))^2],
                 with exponential moving averages of the mean logits (kept in the state)
  adaptive weight (taming): |grad_last L_nll| / (|grad_last L_gan| + 1e-4), clipped to
                 [0, max] and not differentiated, so the adversarial gradient at the
                 decoder's last layer is as large as the reconstruction gradient there.
"""

import jax
import jax.numpy as jnp


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits)))


def generator_adversarial_loss(fake_logits: jax.Array) -> jax.Array:
  return -jnp.mean(fake_logits)


def lecam_regularization(real_logits: jax.Array, fake_logits: jax.Array,
                         ema_real: jax.Array, ema_fake: jax.Array) -> jax.Array:
  return (jnp.mean(jnp.square(jax.nn.relu(real_logits - ema_fake)))
          + jnp.mean(jnp.square(jax.nn.relu(ema_real - fake_logits))))


def adaptive_generator_weight(nll_grad: jax.Array, adversarial_grad: jax.Array,
                              max_weight: float = 1e4) -> jax.Array:
  weight = jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(adversarial_grad) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))
