"""TiTok: parameter counts equal to the official models, the tokenizer method surface at a
tiny size, presets and shape errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from sweet_jax.models import build_model
from sweet_jax.models.titok import TITOK_SIZES, titok_preset

# Official parameter counts at 256x256, patch 16, codebook 4096 x 12, per part:
# (encoder incl. the latent tokens, quantizer codebook, decoder). Obtained by building the
# official modules from bytedance/1d-tokenizer (modeling/modules/blocks.py TiTokEncoder and
# TiTokDecoder with is_legacy=False, i.e. the direct-pixel head of single-stage training;
# TiTok.latent_tokens and quantizer.py's VectorQuantizer embedding) in a scratch torch 2.13
# venv and summing `p.numel()` over `parameters()`. Tokenizer only: no discriminator, no
# perceptual network, no MaskGIT-VQGAN pixel decoder/quantizer (stage 2 of the legacy recipe).
# Cross-check of that scratch copy: at 64x64, patch 8, 32 tokens, "small" it gives 50,818,848,
# the count measured independently in research/peer_baselines.md §2.
OFFICIAL_PARAMS = {
    "S-128": (25_818_636 + 65_536, 49_152, 25_819_988),  # total 51,753,312
    "B-64": (85_904_652 + 49_152, 49_152, 85_906_260),  # total 171,909,216
    "L-32": (303_410_188 + 32_768, 49_152, 303_412_052),  # total 606,904,160
}

TINY = dict(image_size=32, patch_size=8, encoder_width=32, encoder_depth=2, encoder_heads=2,
            decoder_width=48, decoder_depth=1, decoder_heads=3, num_latent_tokens=4,
            codebook_size=16, code_dim=4)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("preset", sorted(OFFICIAL_PARAMS))
def test_parameter_counts_equal_the_official_models(preset):
  model = build_model("titok", image_size=256, **titok_preset(preset))
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32))["params"]
  ours = tuple(_count(shapes[part]) for part in ("encoder", "quantizer", "decoder"))
  assert ours == OFFICIAL_PARAMS[preset]


def test_presets():
  assert titok_preset("S-128") == dict(
      num_latent_tokens=128, encoder_width=512, encoder_depth=8, encoder_heads=8,
      decoder_width=512, decoder_depth=8, decoder_heads=8)
  bl = titok_preset("BL-64")
  assert (bl["encoder_width"], bl["decoder_width"], bl["decoder_depth"]) == (768, 1024, 24)
  assert TITOK_SIZES["L"] == (1024, 24, 16) and titok_preset("L-32")["num_latent_tokens"] == 32
  for bad in ("X-32", "S", "SBL-32", "B-x"):
    with pytest.raises(ValueError, match="TiTok preset"):
      titok_preset(bad)


@pytest.fixture(scope="module")
def tiny():
  model = build_model("titok", **TINY)
  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(0), images)
  return model, variables, images


def test_method_surface(tiny):
  model, variables, images = tiny
  params = nn.unbox(variables)
  latents = model.apply(params, images, method=model.encode)
  assert latents.shape == (2, 4, 4)
  codes, aux = model.apply(params, latents, method=model.quantize)
  assert codes.shape == (2, 4, 4) and aux["indices"].shape == (2, 4)
  for key in ("commitment_loss", "codebook_loss", "entropy_loss"):
    assert aux[key].shape == () and np.isfinite(float(aux[key]))
  recon = model.apply(params, codes, method=model.decode)
  assert recon.shape == images.shape and bool(jnp.all(jnp.isfinite(recon)))
  full, _ = model.apply(params, images)
  np.testing.assert_allclose(full, recon, atol=1e-6)
  assert model.bits_per_image == 4 * 4 and model.index_groups() == {"code": (None, 16)}


def test_index_round_trip(tiny):
  model, variables, images = tiny
  params = nn.unbox(variables)
  indices = model.apply(params, images, method=model.encode_to_indices)
  assert indices.dtype == jnp.int32 and indices.shape == (2, 4)
  from_indices = model.apply(params, indices, method=model.decode_from_indices)
  direct, _ = model.apply(params, images)
  np.testing.assert_allclose(from_indices, direct, atol=1e-5)


def test_parameters_groups_names_and_official_init(tiny):
  model, variables, images = tiny
  assert set(variables["params"]) == {"encoder", "quantizer", "decoder"}
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["encoder"]["latent_tokens"]) == ("query", "embed")
  assert tuple(specs["decoder"]["pos_embed"]) == ("length", "embed")
  boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) for x in boxed)
  params = nn.unbox(variables)["params"]
  assert float(jnp.abs(params["quantizer"]["codebook"]).max()) <= 1 / 16  # U(-1/K, 1/K)
  assert params["encoder"]["pos_embed"].shape == (17, 32)  # [cls] + 16 patches
  assert params["decoder"]["to_pixels"]["kernel"].shape == (48, 8 * 8 * 3)
  assert params["decoder"]["conv_out"]["kernel"].shape == (3, 3, 3, 3)


def test_gradient_reaches_every_group(tiny):
  model, variables, images = tiny
  params = nn.unbox(variables)

  def loss(p):
    recon, aux = model.apply(p, images)
    return jnp.mean((recon - images) ** 2) + aux["commitment_loss"] + aux["codebook_loss"]

  grads = jax.jit(jax.grad(loss))(params)["params"]
  for group in ("encoder", "quantizer", "decoder"):
    norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads[group])))
    assert float(norm) > 0, f"no gradient reaches {group}"
  assert float(jnp.abs(grads["encoder"]["latent_tokens"]).max()) > 0


def test_shape_errors():
  with pytest.raises(ValueError, match="patch_size 5 does not divide image_size 32"):
    build_model("titok", **{**TINY, "patch_size": 5}).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"expected images \[B, 32, 32, 3\], got \(1, 16, 16, 3\)"):
    build_model("titok", **TINY).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
