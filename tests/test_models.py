"""The image CQAE: shapes, the tokenizer method surface, logical axis names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from sweet_jax.models import build_model
from sweet_jax.nn.layers import (GaussianAttentionPrior, PositionConv, grid_points, grid_shape,
                                     patchify, unpatchify)

SMALL = dict(image_size=32, patch_size=8, width=32, num_heads=2, encoder_depth=2,
             decoder_depth=2, num_queries=8, codebook_size=64, code_dim=8)


@pytest.fixture(scope="module")
def model_and_params():
  model = build_model("cqae_image", **SMALL)
  images = jax.random.uniform(jax.random.key(1), (3, 32, 32, 3), minval=-1, maxval=1)
  variables = model.init(jax.random.key(0), images)
  return model, variables, images


def test_method_surface_shapes(model_and_params):
  model, variables, images = model_and_params
  params = nn.unbox(variables)
  latents = model.apply(params, images, method=model.encode)
  assert latents.shape == (3, 8, 8)
  codes, aux = model.apply(params, latents, method=model.quantize)
  assert codes.shape == (3, 8, 8) and aux["indices"].shape == (3, 8)
  assert aux["commitment_loss"].shape == () and aux["codebook_loss"].shape == ()
  recon = model.apply(params, codes, method=model.decode)
  assert recon.shape == images.shape
  full, _ = model.apply(params, images)
  np.testing.assert_allclose(full, recon, atol=1e-6)


def test_index_round_trip(model_and_params):
  model, variables, images = model_and_params
  params = nn.unbox(variables)
  indices = model.apply(params, images, method=model.encode_to_indices)
  assert indices.dtype == jnp.int32 and indices.shape == (3, 8)
  assert int(indices.min()) >= 0 and int(indices.max()) < 64
  from_indices = model.apply(params, indices, method=model.decode_from_indices)
  direct, _ = model.apply(params, images)
  np.testing.assert_allclose(from_indices, direct, atol=1e-5)


@pytest.mark.parametrize("codebook", ["language", "learned"])
def test_mlc_model_index_round_trip_is_exact(codebook):
  """decode_from_indices(encode_to_indices(x)) == decode(quantize(encode(x))), bit for bit."""
  from conftest import ring_word_group  # pylint: disable=g-import-not-at-top
  model = build_model("cqae_image", **SMALL, quantizer_type="mlc", word_group=ring_word_group(),
                      mlc_codebook=codebook, gcn_hidden=16)
  images = jax.random.uniform(jax.random.key(1), (3, 32, 32, 3), minval=-1, maxval=1)
  params = nn.unbox(model.init(jax.random.key(0), images))
  indices = jax.jit(lambda p, x: model.apply(p, x, method=model.encode_to_indices))(params, images)
  assert indices.shape == (3, 8, 3) and indices.dtype == jnp.int32

  def direct(p, x):
    codes, _ = model.apply(p, model.apply(p, x, method=model.encode), method=model.quantize)
    return model.apply(p, codes, method=model.decode)

  from_indices = jax.jit(lambda p, i: model.apply(p, i, method=model.decode_from_indices))
  np.testing.assert_array_equal(from_indices(params, indices), jax.jit(direct)(params, images))
  assert model.index_groups() == {"adj": ((0, 1), 12), "noun": ((2,), 18)}
  assert model.bits_per_image == pytest.approx(8 * (np.log2(12 * 11 / 2) + np.log2(18)))


def test_straight_through_gradient_reaches_encoder(model_and_params):
  model, variables, images = model_and_params
  params = nn.unbox(variables)

  def loss(p):
    recon, aux = model.apply(p, images)
    return jnp.mean((recon - images) ** 2) + aux["commitment_loss"] + aux["codebook_loss"]

  grads = jax.grad(loss)(params)["params"]
  for group in ("encoder", "queries", "quantizer", "decoder"):
    norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads[group]))))
    assert norm > 0, f"no gradient reaches {group}"


def test_parameter_groups_and_logical_names(model_and_params):
  _, variables, _ = model_and_params
  assert set(variables["params"]) == {"encoder", "queries", "quantizer", "decoder"}
  specs = nn.get_partition_spec(variables)["params"]
  attn = specs["encoder"]["block_0"]["self_attn"]
  assert tuple(attn["query_kernel"]) == ("embed", "heads", "kv")
  assert tuple(attn["out_kernel"]) == ("heads", "kv", "embed")
  assert tuple(specs["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["queries"]["tokens"]) == ("query", "embed")
  assert tuple(specs["quantizer"]["codebook"]) == ("codebook", "code")
  # Every parameter carries logical names (none left unannotated).
  boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) for x in boxed)


def test_patch_size_must_divide_image_size():
  model = build_model("cqae_image", **{**SMALL, "patch_size": 5})
  with pytest.raises(ValueError, match="patch_size 5 does not divide image_size 32"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_wrong_image_shape_is_named():
  model = build_model("cqae_image", **SMALL)
  with pytest.raises(ValueError, match=r"expected images \[B, 32, 32, 3\], got \(1, 16, 16, 3\)"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_unknown_model_name():
  with pytest.raises(ValueError, match="unknown model 'nope'"):
    build_model("nope")


def test_patchify_round_trip():
  x = jnp.arange(2 * 16 * 24 * 3, dtype=jnp.float32).reshape(2, 16, 24, 3)
  patches = patchify(x, 8)
  assert patches.shape == (2, 6, 192)
  np.testing.assert_array_equal(patches[0, 1], x[0, :8, 8:16].reshape(-1))
  np.testing.assert_array_equal(unpatchify(patches, 8, 16, 24), x)


def test_bits_per_image():
  assert build_model("cqae_image", **SMALL).bits_per_image == 8 * 6  # 8 tokens, 64 codes


def test_grid_shape_and_points():
  assert grid_shape(32) == (4, 8) and grid_shape(64) == (8, 8) and grid_shape(7) == (1, 7)
  points = np.asarray(grid_points(2, 4, 8))  # 2 x 4 cells of a 8 x 8 patch grid
  assert points.shape == (8, 2)
  np.testing.assert_allclose(points[0], [1.5, 0.5])  # centre of rows 0-3, cols 0-1
  np.testing.assert_allclose(points[-1], [5.5, 6.5])


def test_gaussian_prior_is_local_and_widens_per_head():
  prior = GaussianAttentionPrior(num_heads=2, spacing=2.0)
  queries = jnp.array([[0.0, 0.0]])
  keys = jnp.array([[0.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
  bias, _ = prior.init_with_output(jax.random.key(0), queries, keys)
  # Head 0 has sigma = spacing = 2, head 1 sigma = 4: -d^2 / (2 sigma^2).
  np.testing.assert_allclose(bias[:, 0], [[0.0, -0.5, -2.0], [0.0, -0.125, -0.5]], atol=1e-6)


def test_attention_prior_starts_queries_on_their_own_region(model_and_params):
  """Query i's cross-attention at initialisation is centred on its own cell of the grid."""
  model, variables, images = model_and_params
  points = np.asarray(nn.unbox(variables)["params"]["queries"]["query_points"])
  assert points.shape == (8, 2)  # 8 queries on a 2 x 4 tiling of the 4 x 4 patch grid
  np.testing.assert_allclose(points[:4, 0], 0.5)
  np.testing.assert_allclose(points[4:, 0], 2.5)
  np.testing.assert_allclose(points[:4, 1], [0.0, 1.0, 2.0, 3.0])  # one patch per column
  without = build_model("cqae_image", **{**SMALL, "attention_prior": False})
  params = without.init(jax.random.key(0), images)["params"]
  assert "query_points" not in params["queries"] and "query_points" not in params["decoder"]


def test_position_conv_is_a_depthwise_3x3_convolution():
  """PEG as shifted adds equals XLA's grouped convolution with zero padding."""
  x = jax.random.normal(jax.random.key(0), (2, 16, 6))  # a 4 x 4 grid, width 6
  peg = PositionConv()
  params = peg.init(jax.random.key(1), x)
  kernel = nn.unbox(params)["params"]["kernel"]
  reference = jax.lax.conv_general_dilated(
      x.reshape(2, 4, 4, 6), kernel[:, :, None, :], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6)
  np.testing.assert_allclose(peg.apply(params, x), reference.reshape(2, 16, 6), atol=1e-5)
  with pytest.raises(ValueError, match="square grid of tokens, got 15"):
    peg.init(jax.random.key(1), x[:, :15])


# Compute options: bfloat16 matmuls and rematerialisation (config.model.compute_dtype /
# remat), the switches a production run flips.


def _loss_and_grads(model, params, images):
  def loss(p):
    recon, aux = model.apply(p, images)
    return jnp.mean((recon - images) ** 2) + aux["commitment_loss"]
  return jax.jit(jax.value_and_grad(loss))(params)


def test_bfloat16_compute_keeps_float32_parameters_and_stays_close(model_and_params):
  model, variables, images = model_and_params
  params = nn.unbox(variables)
  bf16 = build_model("cqae_image", **SMALL, compute_dtype="bfloat16")
  bf16_params = nn.unbox(bf16.init(jax.random.key(0), images))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16_params))
  assert jax.tree.structure(bf16_params) == jax.tree.structure(params)
  hlo = jax.jit(bf16.apply).lower(params, images).as_text()
  assert "bf16" in hlo and "bf16" not in jax.jit(model.apply).lower(params, images).as_text()
  (recon, _), (recon32, _) = bf16.apply(params, images), model.apply(params, images)
  assert recon.dtype == jnp.float32
  np.testing.assert_allclose(recon, recon32, atol=0.05)  # bfloat16: ~3 significant digits
  assert not np.array_equal(recon, recon32)


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_remat_recomputes_the_same_gradients(model_and_params, remat):
  model, variables, images = model_and_params
  params = nn.unbox(variables)
  rematerialised = build_model("cqae_image", **SMALL, remat=remat)
  loss, grads = _loss_and_grads(model, params, images)
  remat_loss, remat_grads = _loss_and_grads(rematerialised, params, images)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: rematerialised.apply(p, images)[0].sum()))(params))
  assert "remat" in jaxpr or "checkpoint" in jaxpr


@pytest.mark.parametrize("field,value,message", [
    ("compute_dtype", "float16", "compute dtype 'float16'"),
    ("remat", "everything", "remat 'everything'"),
])
def test_bad_compute_options_are_named(field, value, message):
  model = build_model("cqae_image", **SMALL, **{field: value})
  with pytest.raises(ValueError, match=message):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_edge_padded_smoothing_keeps_a_flat_image_flat():
  """A blurring kernel on a flat image: zero padding pulls the border towards 0 (mid-gray
  in [-1, 1]); edge padding keeps it."""
  from sweet_jax.models.cqae import PixelSmoothing
  image = jnp.full((1, 6, 6, 3), 0.8)
  for padding, border_kept in (("zeros", False), ("edge", True)):
    module = PixelSmoothing(padding=padding)
    params = module.init(jax.random.key(0), image)["params"]
    params = nn.unbox(params)
    params["Conv_0"]["kernel"] = jnp.full((3, 3, 3, 3), 1 / 27)  # mean over 3x3x3
    out = module.apply({"params": params}, image)
    np.testing.assert_allclose(out[0, 2:4, 2:4], 0.8, atol=1e-6)  # inside: always flat
    assert np.allclose(out[0, 0, 0], 0.8, atol=1e-6) == border_kept


def test_global_color_starts_as_a_no_op_and_shifts_every_pixel():
  fields = dict(image_size=16, patch_size=8, width=16, num_heads=2, encoder_depth=1,
                decoder_depth=1, num_queries=4, codebook_size=8, code_dim=4)
  plain = build_model("cqae_image", **fields)
  colour = build_model("cqae_image", **fields, global_color=True)
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
  params = nn.unbox(colour.init(jax.random.key(0), x)["params"])
  without = {k: v for k, v in params.items()}
  without["decoder"] = {k: v for k, v in params["decoder"].items()
                        if k not in ("to_color", "color_norm")}
  np.testing.assert_allclose(colour.apply({"params": params}, x)[0],
                             plain.apply({"params": without}, x)[0], atol=1e-6)
  params["decoder"]["to_color"]["bias"] = jnp.array([0.1, -0.2, 0.3])
  shifted = colour.apply({"params": params}, x)[0] - plain.apply({"params": without}, x)[0]
  np.testing.assert_allclose(shifted, jnp.broadcast_to(jnp.array([0.1, -0.2, 0.3]),
                                                       shifted.shape), atol=1e-5)
