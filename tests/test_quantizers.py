"""Quantizers: the L2-normalised VQ (nearest code, straight-through gradient, warm-up mix,
entropy) and the MLC language-codebook quantizer (GCN, top-2/top-1, exact index round trip)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from sweet_jax.nn.layers import l2_normalize
from sweet_jax.curriculum import linear_ramp
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


def test_codebook_init_options():
  latents = jnp.zeros((1, 2, 4))
  normal = nn.unbox(VectorQuantizer(256, 4).init(jax.random.key(0), latents))["params"]["codebook"]
  uniform = nn.unbox(VectorQuantizer(256, 4, codebook_init="uniform").init(
      jax.random.key(0), latents))["params"]["codebook"]
  assert float(jnp.abs(normal).max()) > 1.0  # the default stays N(0, 1)
  assert float(jnp.abs(uniform).max()) <= 1 / 256 and float(jnp.std(uniform)) > 1 / 512  # TiTok
  with pytest.raises(ValueError, match="codebook_init 'zeros'"):
    VectorQuantizer(256, 4, codebook_init="zeros").init(jax.random.key(0), latents)


def test_linear_ramp():
  ramp = linear_ramp(10)
  assert float(ramp(0)) == 0.0 and float(ramp(5)) == 0.5 and float(ramp(20)) == 1.0
  assert float(linear_ramp(0)(0)) == 1.0


# --- The MLC (language codebook) quantizer -------------------------------------------

from conftest import ring_word_group  # noqa: E402
from sweet_jax.quantizers.mlc import GraphConv, LanguageQuantizer, propagated_vectors  # noqa: E402


def _mlc(**kwargs):
  group = ring_word_group()
  mlc = LanguageQuantizer(group, code_dim=8, hidden=16, **kwargs)
  latents = jax.random.normal(jax.random.key(0), (2, 5, 8))
  params = nn.unbox(mlc.init(jax.random.key(1), latents))
  return mlc, params, latents, group


def test_graph_conv_equals_dense_normalised_adjacency():
  group = ring_word_group()
  conv = GraphConv(7)
  args = (group.senders, group.receivers, group.edge_weights)
  params = nn.unbox(conv.init(jax.random.key(0), group.vectors, *args))
  dense = np.zeros((group.size, group.size), np.float32)
  np.add.at(dense, (group.receivers, group.senders), group.edge_weights)
  kernel = params["params"]["Dense_0"]["kernel"]
  bias = jax.random.normal(jax.random.key(1), (7,))
  params["params"]["bias"] = bias
  expected = dense @ (group.vectors @ np.asarray(kernel)) + np.asarray(bias)
  np.testing.assert_allclose(conv.apply(params, group.vectors, *args), expected, atol=1e-5)
  # The precomputed first-layer path: (Â X) W + b equals Â (X W) + b.
  propagated = propagated_vectors(group)
  np.testing.assert_allclose(propagated, dense @ group.vectors, atol=1e-5)
  np.testing.assert_allclose(conv.apply(params, propagated, method=conv.transform), expected,
                             atol=1e-5)


def test_top2_mean_and_nearest_by_squared_distance():
  mlc, params, latents, group = _mlc()
  codes, aux = mlc.apply(params, latents)
  first, second = mlc.apply(params, method=mlc.codebooks)
  z = np.asarray(l2_normalize(latents))
  d_first = ((z[..., None, :4] - np.asarray(first)) ** 2).sum(-1)
  d_second = ((z[..., None, 4:] - np.asarray(second)) ** 2).sum(-1)
  top2 = np.argsort(d_first, axis=-1)[..., :2]
  nearest = np.argmin(d_second, axis=-1)
  np.testing.assert_array_equal(aux["indices"], np.concatenate([top2, nearest[..., None]], -1))
  expected = np.concatenate([np.asarray(first)[top2].mean(-2), np.asarray(second)[nearest]], -1)
  np.testing.assert_allclose(codes, expected, atol=1e-6)
  assert aux["indices"].shape == (2, 5, 3)
  assert (aux["indices"][..., :2] < group.num_first).all()
  assert (aux["indices"][..., 2] < group.num_second).all()


def test_mlc_lookup_inverts_the_index_layout_exactly():
  mlc, params, latents, _ = _mlc()
  codes, aux = mlc.apply(params, latents)
  np.testing.assert_array_equal(mlc.apply(params, aux["indices"], method=mlc.lookup), codes)
  # The official decoder reads the token-major adjective pairs k-major: wrong pairs.
  flat = aux["indices"][..., :2].reshape(2, 10)
  misread = jnp.stack([flat[:, :5], flat[:, 5:], aux["indices"][..., 2]], axis=-1)
  assert not np.allclose(mlc.apply(params, misread, method=mlc.lookup), codes)


def test_mlc_straight_through_gradient_and_codebook_learning():
  mlc, params, latents, _ = _mlc()
  weights = jax.random.normal(jax.random.key(2), (2, 5, 8))
  grad = jax.grad(lambda x: jnp.sum(mlc.apply(params, x)[0] * weights))(latents)
  grad_z = jax.grad(lambda x: jnp.sum(l2_normalize(x) * weights))(latents)
  np.testing.assert_allclose(grad, grad_z, atol=1e-6)
  # The GCN learns only through the codebook loss (no gradient through the codes).
  through_codes = jax.grad(lambda p: jnp.sum(mlc.apply(p, latents)[0] * weights))(params)
  through_loss = jax.grad(lambda p: mlc.apply(p, latents)[1]["codebook_loss"])(params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(through_codes))
  assert float(optax_norm(through_loss)) > 0.0


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_mlc_dropout_only_in_training():
  mlc, params, latents, _ = _mlc()
  eval_a = mlc.apply(params, method=mlc.codebooks)
  eval_b = mlc.apply(params, method=mlc.codebooks)
  train = mlc.apply(params, True, method=mlc.codebooks, rngs={"dropout": jax.random.key(5)})
  np.testing.assert_array_equal(eval_a[0], eval_b[0])
  assert not np.allclose(train[0], eval_a[0])


def test_learned_codebook_has_the_same_shape_and_no_gcn():
  mlc, params, latents, group = _mlc(codebook="learned")
  assert set(params["params"]) == {"codebook"}
  assert params["params"]["codebook"].shape == (group.size, 4)
  codes, aux = mlc.apply(params, latents)
  assert codes.shape == latents.shape and aux["indices"].shape == (2, 5, 3)


def test_mlc_bits_and_errors():
  group = ring_word_group()
  mlc = LanguageQuantizer(group, code_dim=8)
  n1, n2 = group.num_first, group.num_second
  assert mlc.bits_per_token() == pytest.approx(np.log2(n1 * (n1 - 1) / 2) + np.log2(n2))
  with pytest.raises(ValueError, match="code_dim 7 is odd"):
    LanguageQuantizer(group, code_dim=7).init(jax.random.key(0), jnp.zeros((1, 7)))


def test_mlc_sharded_equals_single_device():
  mlc, params, latents, _ = _mlc()
  latents = jax.random.normal(jax.random.key(3), (8, 5, 8))
  single = jax.jit(lambda p, x: mlc.apply(p, x))(params, latents)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded_latents = jax.device_put(latents, NamedSharding(mesh, P("data")))
  sharded = jax.jit(lambda p, x: mlc.apply(p, x))(params, sharded_latents)
  assert sharded[0].sharding.spec == P("data")
  np.testing.assert_allclose(sharded[0], single[0], atol=1e-6)
  np.testing.assert_array_equal(sharded[1]["indices"], single[1]["indices"])
  for name in ("commitment_loss", "codebook_loss", "entropy_loss"):
    np.testing.assert_allclose(sharded[1][name], single[1][name], rtol=1e-5)
