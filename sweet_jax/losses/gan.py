"""Adversarial losses and the regularisers that keep a small-data GAN in check.

Conventions (taming-transformers / MaskGIT / MAGVIT):
  discriminator  hinge: 0.5 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])
  generator      -E[D(x_hat)]
  LeCam (Tseng et al. 2021): E[relu(D(x) - ema_fake)^2] + E[relu(ema_real - D(x_hat))^2],
                 with exponential moving averages of the mean logits (kept in the state)
  adaptive weight (taming): |grad_last L_nll| / (|grad_last L_gan| + 1e-4), clipped to
                 [0, max] and not differentiated, so the adversarial gradient at the
                 decoder's last layer is as large as the reconstruction gradient there.

`DiscriminatorState` (part of the train state) and `discriminator_update` (run inside the
tokenizer's step, on its reconstructions) are here too: the game lives in one place.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from sweet_jax.optim import group_hyperparams


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


@flax.struct.dataclass
class DiscriminatorState:
  params: Any
  opt_state: Any
  logit_ema: jax.Array  # [2]: moving averages of the mean real and fake logits (LeCam)


@dataclasses.dataclass(frozen=True)
class GanOptions:
  """How the adversarial game is played (the networks and optimizer come separately)."""

  lecam_weight: float = 0.0
  lecam_decay: float = 0.999
  disc_loss_weight: float = 1.0
  adaptive_weight: bool = False
  adaptive_max: float = 1e4
  adaptive_layer: str = r"^decoder/smooth_pixels/"  # regex over parameter paths


def discriminator_update(discriminator: nn.Module | None,
                          disc_tx: optax.GradientTransformation, gan: GanOptions,
                          disc: DiscriminatorState, real: jax.Array, fake: jax.Array,
                          playing: jax.Array) -> tuple[DiscriminatorState, dict]:
  """One discriminator update on this step's reals and (detached) reconstructions, or,
  in a step without a discriminator, a zero update that only advances its step count."""
  if discriminator is None:
    zeros = jax.tree.map(jnp.zeros_like, disc.params)
    _, opt_state = disc_tx.update(zeros, disc.opt_state, disc.params)
    return disc.replace(opt_state=opt_state), {}

  def disc_loss(params):
    real_logits = discriminator.apply({"params": params}, real)
    fake_logits = discriminator.apply({"params": params}, fake)
    hinge = hinge_discriminator_loss(real_logits, fake_logits)
    lecam = lecam_regularization(real_logits, fake_logits, disc.logit_ema[0],
                                        disc.logit_ema[1])
    total = gan.disc_loss_weight * hinge + gan.lecam_weight * lecam
    means = jnp.stack([jnp.mean(real_logits), jnp.mean(fake_logits)])
    return total, (hinge, lecam, means)

  (total, (hinge, lecam, means)), grads = jax.value_and_grad(disc_loss, has_aux=True)(disc.params)
  updates, opt_state = disc_tx.update(grads, disc.opt_state, disc.params)
  logit_ema = jnp.where(playing, gan.lecam_decay * disc.logit_ema
                        + (1.0 - gan.lecam_decay) * jax.lax.stop_gradient(means), disc.logit_ema)
  new = DiscriminatorState(params=optax.apply_updates(disc.params, updates),
                           opt_state=opt_state, logit_ema=logit_ema)
  metrics = {"disc_loss": total, "disc_hinge": hinge, "disc_lecam": lecam,
             "disc_real_logit": means[0], "disc_fake_logit": means[1],
             "disc_grad_norm": optax.tree.norm(grads), **group_hyperparams(opt_state)}
  return new, metrics
