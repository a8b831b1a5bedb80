"""The L2-normalised VQ: nearest code, straight-through gradient, warm-up mix, entropy."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from sweet_jax.models.layers import l2_normalize
from sweet_jax.optim import linear_ramp
from sweet_jax.quantizers.vq import VectorQuantizer, entropy_penalty


def _quantizer_and_params():
  vq = VectorQuantizer(codebook_size=16, code_dim=4)
  latents = jax.random.normal(jax.random.key(0), (2, 5, 4))
  params = nn.unbox(vq.init(jax.random.key(1), latents))
  return vq, params, latents


def test_nearest_code_by_cosine_and_lookup():
  vq, params, latents = _quantizer_and_params()
  codes, aux = vq.apply(params, latents)
  codebook = l2_normalize(params["params"]["codebook"])
  expected = jnp.argmax(l2_normalize(latents) @ codebook.T, axis=-1)
  np.testing.assert_array_equal(aux["indices"], expected)
  np.testing.assert_allclose(codes, codebook[expected], atol=1e-6)
  np.testing.assert_allclose(vq.apply(params, aux["indices"], method=vq.lookup), codes, atol=1e-6)


def test_straight_through_gradient_is_identity_on_the_normalised_latent():
  vq, params, latents = _quantizer_and_params()
  z = l2_normalize(latents)
  weights = jax.random.normal(jax.random.key(2), z.shape)
  grad = jax.grad(lambda x: jnp.sum(vq.apply(params, x)[0] * weights))(latents)
  grad_z = jax.grad(lambda x: jnp.sum(l2_normalize(x) * weights))(latents)
  np.testing.assert_allclose(grad, grad_z, atol=1e-6)


def test_warmup_mix_interpolates_between_latent_and_code():
  vq, params, latents = _quantizer_and_params()
  z = l2_normalize(latents)
  codes, aux = vq.apply(params, latents)
  continuous, aux0 = vq.apply(params, latents, 0.0)
  half, _ = vq.apply(params, latents, 0.5)
  np.testing.assert_allclose(continuous, z, atol=1e-6)
  np.testing.assert_allclose(half, 0.5 * (z + codes), atol=1e-6)
  np.testing.assert_array_equal(aux0["indices"], aux["indices"])
  np.testing.assert_allclose(aux0["commitment_loss"], aux["commitment_loss"])


def test_entropy_penalty_prefers_confident_and_diverse_assignments():
  eye = jnp.eye(8)
  diverse = entropy_penalty(eye, temperature=0.01)  # each token sure, all codes used
  collapsed = entropy_penalty(jnp.tile(eye[:1], (8, 1)), temperature=0.01)  # one code
  unsure = entropy_penalty(jnp.zeros((8, 8)), temperature=0.01)  # uniform per token
  np.testing.assert_allclose(diverse, -np.log(8), atol=1e-4)
  np.testing.assert_allclose(collapsed, 0.0, atol=1e-4)
  np.testing.assert_allclose(unsure, 0.0, atol=1e-4)


def test_linear_ramp():
  ramp = linear_ramp(10)
  assert float(ramp(0)) == 0.0 and float(ramp(5)) == 0.5 and float(ramp(20)) == 1.0
  assert float(linear_ramp(0)(0)) == 1.0
