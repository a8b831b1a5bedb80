"""DINOv2-style ViT pieces: LayerScale in `Block`, exact GELU, the ViT's layout and size."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from sweet_jax.nn.layers import Block, Mlp
from sweet_jax.nn.vit import VIT_SIZES, ViT, vit

X = jax.random.normal(jax.random.key(1), (2, 5, 16))


def test_block_without_layer_scale_is_unchanged():
  params = nn.unbox(Block(num_heads=2).init(jax.random.key(0), X))["params"]
  assert set(params) == {"ln_self", "self_attn", "ln_mlp", "mlp"}


def test_layer_scale_gammas_scale_both_branches():
  block = Block(num_heads=2, layer_scale_init=1e-5)
  variables = block.init(jax.random.key(0), X)
  specs = nn.get_partition_spec(variables)["params"]
  params = nn.unbox(variables)["params"]
  for name in ("ls1", "ls2"):
    np.testing.assert_array_equal(params[name], np.full(16, 1e-5, np.float32))
    assert tuple(specs[name]) == ("embed",)
  # Gammas of zero switch both branches off: the block is the identity.
  zero = {**params, "ls1": jnp.zeros(16), "ls2": jnp.zeros(16)}
  np.testing.assert_array_equal(block.apply({"params": zero}, X), X)
  # The same weights without LayerScale equal gammas of one.
  ones = {**params, "ls1": jnp.ones(16), "ls2": jnp.ones(16)}
  plain = {k: v for k, v in params.items() if not k.startswith("ls")}
  np.testing.assert_allclose(block.apply({"params": ones}, X),
                             Block(num_heads=2).apply({"params": plain}, X), atol=1e-6)


def test_exact_gelu_is_the_erf_form():
  mlp = Mlp(32, approximate_gelu=False)
  params = nn.unbox(mlp.init(jax.random.key(0), X))["params"]
  h = X @ params["fc1"]["kernel"] + params["fc1"]["bias"]
  erf = np.vectorize(math.erf)(np.asarray(h) / math.sqrt(2.0))
  expected = (0.5 * np.asarray(h) * (1 + erf)) @ params["fc2"]["kernel"] + params["fc2"]["bias"]
  np.testing.assert_allclose(mlp.apply({"params": params}, X), expected, atol=1e-5)
  approx = Mlp(32).apply({"params": params}, 3 * X)
  assert float(jnp.max(jnp.abs(approx - mlp.apply({"params": params}, 3 * X)))) > 1e-5


# sum(p.numel()) of timm 1.0.12 vit_{small,base,large}_patch14_dinov2 (pretrained=False)
# at its default 518 px / patch 14 and with img_size=256, patch_size=16.
TIMM_COUNTS = {
    ("S", 518, 14): 22_056_192, ("S", 256, 16): 21_697_920,
    ("B", 518, 14): 86_579_712, ("B", 256, 16): 85_863_168,
    ("L", 518, 14): 304_367_616, ("L", 256, 16): 303_412_224,
}


@pytest.mark.parametrize("size,image_size,patch_size", sorted(TIMM_COUNTS))
def test_parameter_count_equals_timm(size, image_size, patch_size):
  model = vit(size, image_size, patch_size)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  count = sum(math.prod(s.shape) for s in jax.tree.leaves(nn.unbox(shapes)))
  assert count == TIMM_COUNTS[(size, image_size, patch_size)]


def test_layout_logical_names_and_extra_tokens():
  model = ViT(image_size=32, patch_size=8, width=16, depth=2, num_heads=2)
  images = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3), minval=-1, maxval=1)
  extra = jax.random.normal(jax.random.key(3), (2, 3, 16))
  variables = model.init(jax.random.key(0), images, extra)
  params = nn.unbox(variables)["params"]
  assert set(params) == {"patch_embed", "cls_token", "pos_embed", "block_0", "block_1", "norm"}
  assert params["pos_embed"].shape == (17, 16) and params["cls_token"].shape == (1, 16)
  assert params["patch_embed"]["proj"]["kernel"].shape == (8 * 8 * 3, 16)
  assert "ls1" in params["block_0"]
  boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) for x in boxed)
  out = model.apply({"params": params}, images, extra)
  assert out.shape == (2, 1 + 16 + 3, 16)
  # Tokens attend to each other: the extra tokens change the patch outputs.
  without = model.apply({"params": params}, images)
  assert without.shape == (2, 17, 16)
  assert float(jnp.max(jnp.abs(without - out[:, :17]))) > 1e-4


def test_token_input_mode_has_no_patch_embedding():
  model = ViT(image_size=32, patch_size=8, width=16, depth=1, num_heads=2, patch_embed=False)
  tokens = jnp.ones((2, 16, 16))
  params = nn.unbox(model.init(jax.random.key(0), tokens))["params"]
  assert "patch_embed" not in params
  with pytest.raises(ValueError, match=r"expected tokens \[B, 16, 16\], got \(2, 15, 16\)"):
    model.apply({"params": params}, tokens[:, :15])


def test_sizes_are_timms_dinov2():
  assert {k: (v.width, v.depth, v.num_heads) for k, v in VIT_SIZES.items()} == {
      "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16)}
  with pytest.raises(ValueError, match="unknown ViT size 'H'"):
    vit("H", 224, 14)
