"""SoftVQ-VAE's soft quantizer (convex combination, detached codebook in the logits, entropy
term over all groups, sequence-grouped codebooks) and the representation-alignment loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from sweet_jax.losses.alignment import adaptive_avg_pool_matrix, alignment_loss
from sweet_jax.models.projector import AlignmentProjector, projector_input
from sweet_jax.metrics import codebook_stats_by_group
from sweet_jax.quantizers import SoftVectorQuantizer


def _unit(x, axis=-1):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=axis, keepdims=True)


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _setup(groups=2, size=16, dim=8, tokens=6, batch=3, **kwargs):
  sq = SoftVectorQuantizer(codebook_size=size, code_dim=dim, num_codebooks=groups, **kwargs)
  latents = jax.random.normal(jax.random.key(0), (batch, tokens, dim))
  params = nn.unbox(sq.init(jax.random.key(1), latents))
  return sq, params, latents


def _reference_probs(params, latents, groups, temperature):
  """float64 p [B, G, S, K] and the normalised codebook [G, K, D]."""
  codebook = _unit(params["params"]["codebook"])
  b, length, d = latents.shape
  z = _unit(latents).reshape(b, groups, length // groups, d)
  logits = np.einsum("bgsd,gkd->bgsk", z, codebook)
  return _softmax(logits / temperature), logits, codebook


def test_codebook_init_shape_names_and_unit_rows():
  sq, params, latents = _setup()
  variables = sq.init(jax.random.key(1), latents)
  assert tuple(nn.get_partition_spec(variables)["params"]["codebook"]) == (None, "codebook", "code")
  codebook = np.asarray(params["params"]["codebook"])
  assert codebook.shape == (2, 16, 8)
  # Official init with l2_norm=True: uniform(-1/K, 1/K) rows, then normalised.
  np.testing.assert_allclose(np.linalg.norm(codebook, axis=-1), 1.0, rtol=1e-5)
  assert not np.allclose(codebook[0], codebook[1])  # one independent codebook per group


def test_output_is_a_convex_combination_of_the_normalised_codewords():
  # K = 4 <= D = 8 codewords are linearly independent, so p is recoverable from z_q.
  sq, params, latents = _setup(size=4, dim=8)
  codes, _ = sq.apply(params, latents)
  codebook = _unit(params["params"]["codebook"])
  z_q = np.asarray(codes, np.float64).reshape(3, 2, 3, 8)
  recovered = np.stack(
      [np.linalg.lstsq(codebook[g].T, z_q[:, g].reshape(-1, 8).T, rcond=None)[0].T.reshape(3, 3, 4)
       for g in range(2)], axis=1)
  assert recovered.min() >= -1e-5
  np.testing.assert_allclose(recovered.sum(-1), 1.0, atol=1e-5)
  expected, _, _ = _reference_probs(params, latents, 2, 0.07)
  np.testing.assert_allclose(recovered, expected, atol=1e-5)
  assert np.all(np.linalg.norm(z_q, axis=-1) <= 1.0 + 1e-6)  # never renormalised


def test_temperature_limits_are_nearest_code_and_codebook_mean():
  sq, params, latents = _setup(temperature=1e-4)
  hard, aux = sq.apply(params, latents)
  codebook = _unit(params["params"]["codebook"])
  groups = np.arange(6) // 3
  np.testing.assert_allclose(hard, codebook[groups[None, :], np.asarray(aux["indices"])], atol=1e-5)
  flat, _ = SoftVectorQuantizer(16, 8, num_codebooks=2, temperature=1e4).apply(params, latents)
  np.testing.assert_allclose(flat, np.broadcast_to(codebook.mean(1)[groups], flat.shape), atol=1e-4)


def test_codebook_learns_through_z_q_only():
  sq, params, latents = _setup()
  weights = jax.random.normal(jax.random.key(2), latents.shape)
  p_const, _, _ = _reference_probs(params, latents, 2, 0.07)
  p_const = jnp.asarray(p_const, jnp.float32)

  def module_loss(codebook):
    codes, _ = sq.apply({"params": {"codebook": codebook}}, latents)
    return jnp.sum(codes * weights)

  def loss_with_p(codebook, p):
    z_q = jnp.einsum("bgsk,gkd->bgsd", p, codebook / jnp.linalg.norm(codebook, axis=-1, keepdims=True))
    return jnp.sum(z_q.reshape(latents.shape) * weights)

  def loss_with_live_p(codebook):  # what no stop_gradient in the logits would give
    unit = codebook / jnp.linalg.norm(codebook, axis=-1, keepdims=True)
    z = latents / jnp.linalg.norm(latents, axis=-1, keepdims=True)
    logits = jnp.einsum("bgsd,gkd->bgsk", z.reshape(3, 2, 3, 8), unit)
    return loss_with_p(codebook, jax.nn.softmax(logits / 0.07))

  codebook = params["params"]["codebook"]
  grad = jax.grad(module_loss)(codebook)
  np.testing.assert_allclose(grad, jax.grad(loss_with_p)(codebook, p_const), atol=1e-4)
  assert not np.allclose(grad, jax.grad(loss_with_live_p)(codebook), atol=1e-3)


def test_entropy_term_gives_the_codebook_no_gradient_and_the_encoder_one():
  sq, params, latents = _setup()
  entropy = lambda p, x: sq.apply(p, x)[1]["entropy_loss"]
  codebook_grad = jax.grad(entropy)(params, latents)["params"]["codebook"]
  assert np.all(np.asarray(codebook_grad) == 0.0)
  assert float(jnp.abs(jax.grad(entropy, argnums=1)(params, latents)).max()) > 0


def test_entropy_term_matches_float64_reference_over_all_groups():
  sq, params, latents = _setup(groups=2, size=4, dim=3, tokens=8, batch=4)
  _, logits, _ = _reference_probs(params, latents, 2, 0.07)

  def reference(logits_2d):
    probs = _softmax(logits_2d / 0.01)
    log_probs = np.log(probs)
    mean = probs.mean(0)
    return -np.mean(np.sum(probs * log_probs, -1)) + np.sum(mean * np.log(mean + 1e-6))

  _, aux = sq.apply(params, latents)
  flat = reference(logits.reshape(-1, 4))  # all tokens of all groups in one batch mean
  np.testing.assert_allclose(float(aux["entropy_loss"]), flat, rtol=1e-4, atol=1e-5)
  per_group = np.mean([reference(logits[:, g].reshape(-1, 4)) for g in range(2)])
  assert abs(flat - per_group) > 1e-2  # the test tells the two conventions apart


def test_grouped_codebooks_index_their_own_tokens():
  sq, params, latents = _setup(groups=2, size=3, dim=8, tokens=6, batch=1)
  z = _unit(latents[0])
  own = {"params": {"codebook": jnp.asarray(z.reshape(2, 3, 8), jnp.float32)}}
  codes, aux = sq.apply(own, latents)
  np.testing.assert_array_equal(aux["indices"], [[0, 1, 2, 0, 1, 2]])
  assert aux["indices"].dtype == jnp.int32
  np.testing.assert_allclose(sq.apply(own, aux["indices"], method=sq.lookup)[0], z, atol=1e-6)
  swapped = {"params": {"codebook": own["params"]["codebook"][::-1]}}
  _, aux_swapped = sq.apply(swapped, latents)
  looked_up = sq.apply(swapped, aux_swapped["indices"], method=sq.lookup)[0]
  assert np.abs(np.asarray(looked_up) - z).max() > 0.1
  # lookup takes each token's codeword from its own group's codebook.
  zeros = sq.apply(own, jnp.zeros((1, 6), jnp.int32), method=sq.lookup)[0]
  np.testing.assert_allclose(zeros, z[[0, 0, 0, 3, 3, 3]], atol=1e-6)


def test_aux_losses_logging_and_mix():
  sq, params, latents = _setup()
  codes, aux = sq.apply(params, latents)
  assert float(aux["commitment_loss"]) == 0.0 and float(aux["codebook_loss"]) == 0.0
  p, _, codebook = _reference_probs(params, latents, 2, 0.07)
  np.testing.assert_allclose(aux["max_probability"], p.max(-1).mean(), rtol=1e-4)
  z_q = np.einsum("bgsk,gkd->bgsd", p, codebook).reshape(latents.shape)
  np.testing.assert_allclose(aux["code_cosine"], np.mean(np.sum(_unit(latents) * _unit(z_q), -1)),
                             rtol=1e-4)
  continuous, _ = sq.apply(params, latents, 0.0)
  half, _ = sq.apply(params, latents, 0.5)
  np.testing.assert_allclose(continuous, _unit(latents), atol=1e-6)
  np.testing.assert_allclose(half, 0.5 * (_unit(latents) + np.asarray(codes)), atol=1e-6)


def test_index_groups_feed_usage_per_codebook():
  sq, _, _ = _setup(groups=2, size=16)
  groups = sq.index_groups(num_tokens=6)
  assert groups == {"group0": ((0, 1, 2), 16), "group1": ((3, 4, 5), 16)}
  stats = codebook_stats_by_group(jnp.asarray([[0, 0, 0, 1, 2, 3]]), groups)
  assert float(stats["codebook_group0_usage"]) == 1 / 16
  assert float(stats["codebook_group1_usage"]) == 3 / 16
  assert SoftVectorQuantizer(16, 8).index_groups() == {"code": (None, 16)}
  assert sq.bits_per_token() == 4.0
  with pytest.raises(ValueError, match="needs num_tokens"):
    sq.index_groups()


def test_bad_shapes_raise_clear_errors():
  with pytest.raises(ValueError, match="6 tokens cannot be split into 4"):
    _setup(groups=4)
  sq, params, _ = _setup(groups=2)
  with pytest.raises(ValueError, match=r"expected latents \[B, L, 8\], got \(3, 6, 5\)"):
    sq.apply(params, jnp.zeros((3, 6, 5)))
  with pytest.raises(ValueError, match="5 tokens cannot be split into 2"):
    sq.apply(params, jnp.zeros((1, 5), jnp.int32), method=sq.lookup)


# --- Representation alignment --------------------------------------------------------


def _neg_cos(a, b):
  return -np.mean(np.sum(_unit(a) * _unit(b), -1))


def test_repeat_alignment_pairs_latent_i_with_consecutive_patches():
  projected = np.random.default_rng(0).normal(size=(2, 4, 5))
  teacher = np.random.default_rng(1).normal(size=(2, 16, 5))
  expected = _neg_cos(np.repeat(projected, 4, axis=1), teacher)
  np.testing.assert_allclose(alignment_loss(projected, teacher, "repeat"), expected, rtol=1e-5)
  # Latent i is aligned with raster patches 4i .. 4i+3 exactly.
  matched = np.repeat(projected, 4, axis=1) * np.random.default_rng(2).uniform(1, 2, (2, 16, 1))
  np.testing.assert_allclose(alignment_loss(projected, matched, "repeat"), -1.0, rtol=1e-6)
  tiled = np.tile(projected, (1, 4, 1))  # latent i against patches i, i+4, ...: not the pairing
  assert float(alignment_loss(projected, tiled, "repeat")) > -0.9


def test_global_and_avg_1d_alignment_match_numpy():
  rng = np.random.default_rng(0)
  projected, teacher = rng.normal(size=(2, 4, 5)), rng.normal(size=(2, 16, 5))
  np.testing.assert_allclose(alignment_loss(projected, teacher, "global"),
                             _neg_cos(projected.mean(1), teacher.mean(1)), rtol=1e-5)
  pooled = teacher.reshape(2, 4, 4, 5).mean(2)  # bin i = patches 4i .. 4i+3
  np.testing.assert_allclose(alignment_loss(projected, teacher, "avg_1d"),
                             _neg_cos(projected, pooled), rtol=1e-5)
  # torch's adaptive_avg_pool1d bins overlap when L does not divide N: 5 -> 2 is [0:3], [2:5].
  np.testing.assert_allclose(adaptive_avg_pool_matrix(5, 2),
                             [[1 / 3, 1 / 3, 1 / 3, 0, 0], [0, 0, 1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
  uneven = rng.normal(size=(2, 5, 5))
  np.testing.assert_allclose(
      alignment_loss(projected[:, :2], uneven, "avg_1d"),
      _neg_cos(projected[:, :2], np.stack([uneven[:, 0:3].mean(1), uneven[:, 2:5].mean(1)], 1)),
      rtol=1e-5)


def test_projector_shapes_names_and_forward():
  projector = AlignmentProjector(hidden_dim=16, out_dim=10)
  latents = jax.random.normal(jax.random.key(0), (2, 4, 8))
  variables = projector.init(jax.random.key(1), latents)
  specs = nn.get_partition_spec(variables)["params"]
  assert [tuple(specs[f"fc{i}"]["kernel"]) for i in (1, 2, 3)] == [
      ("code", "mlp"), ("mlp", None), (None, "embed")]
  params = nn.unbox(variables)["params"]
  assert [params[f"fc{i}"]["kernel"].shape for i in (1, 2, 3)] == [(8, 16), (16, 16), (16, 10)]
  silu = lambda x: x / (1 + np.exp(-x))
  x = np.asarray(latents, np.float64)
  for i in (1, 2, 3):
    x = (silu(x) if i > 1 else x) @ params[f"fc{i}"]["kernel"] + params[f"fc{i}"]["bias"]
  np.testing.assert_allclose(projector.apply(variables, latents), x, rtol=1e-4, atol=1e-5)
  # "global" projects the mean latent (not the mean of projections), as the official code.
  pooled = projector_input(latents, "global")
  assert pooled.shape == (2, 1, 8)
  np.testing.assert_allclose(pooled[:, 0], latents.mean(1), atol=1e-6)
  assert projector_input(latents, "repeat") is latents


def test_alignment_bad_inputs_raise_clear_errors():
  projected, teacher = jnp.zeros((2, 3, 5)), jnp.ones((2, 16, 5))
  with pytest.raises(ValueError, match=r"latent count \(3\) to divide the teacher's patch count \(16\)"):
    alignment_loss(projected, teacher, "repeat")
  with pytest.raises(ValueError, match="unknown alignment mode 'avg'"):
    alignment_loss(projected, teacher, "avg")
  with pytest.raises(ValueError, match="differ in batch or width"):
    alignment_loss(jnp.zeros((2, 4, 6)), teacher, "repeat")
  with pytest.raises(ValueError, match=r"expected projected \[B, L, C\]"):
    alignment_loss(jnp.zeros((2, 4)), teacher, "global")
