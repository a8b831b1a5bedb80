"""SoftVQ-VAE: published parameter counts, the tokenizer method surface, the layout the
DINOv2 encoder initialisation and the alignment loss rely on."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from sweet_jax.models import build_model
from sweet_jax.models.softvq import SOFTVQ_SIZES, SoftVQVAE, count_parameters, softvq_preset

# Paper (arXiv:2412.10958): SoftVQ-S/B/BL/L, at 256 px, patch 16.
PAPER = {"S": 45e6, "B": 173e6, "BL": 391e6, "L": 608e6}


@pytest.mark.parametrize("size", sorted(PAPER))
def test_parameter_counts_match_the_paper(size):
  """What is counted: the tokenizer only, 64 latent tokens, 256 px, patch 16 --
  the encoder (DINOv2-style ViT incl. its patch embedding, cls, position table and
  final norm; latent tokens and their position embedding; quant_conv), the quantizer's
  4 x 8192 x 32 codebooks, and the decoder (post_quant_conv, latent position
  embedding, mask token, ViT with cls and position table, to_pixel). NOT counted: the
  alignment projector (align_width=0; with it, +2,132,992 for a DINOv2-L teacher, which
  would put SoftVQ-S at +3.7%: the paper's 45M cannot include it), the frozen DINOv2
  teacher, the discriminator, and the official decoder's unused `patch_embed` (we do not
  create it; 295,296 / 590,592 / 787,456 parameters for a ViT-S/B/L decoder).
  Ours: S 44,543,904 (-1.0%), B 172,973,088 (-0.02%), BL 390,546,976 (-0.1%),
  L 608,136,992 (+0.02%)."""
  counts = count_parameters(SoftVQVAE(**softvq_preset(size, 64)))
  assert set(counts) == {"encoder", "quantizer", "decoder"}
  total = sum(counts.values())
  assert abs(total / PAPER[size] - 1) < 0.02, f"SoftVQ-{size}-64: {total:,} vs {PAPER[size]:,.0f}"
  assert counts["quantizer"] == 4 * 8192 * 32


def test_count_breakdown_is_timms_vit_plus_the_tokenizer_parts():
  """SoftVQ-S-64 part by part: the encoder is timm's vit_small_patch14_dinov2 at 256/16
  (21,697,920) plus latent tokens and their position embedding (2 x 64 x 384) and
  quant_conv (384 x 32 + 32); the decoder is the same ViT without its patch embedding
  (3*16*16*384 + 384) plus post_quant_conv, latent position embedding, mask token and
  to_pixel (384 x 768 + 768)."""
  vit_s = 21_697_920
  counts = count_parameters(SoftVQVAE(**softvq_preset("S", 64)))
  assert counts["encoder"] == vit_s + 2 * 64 * 384 + (384 * 32 + 32)
  assert counts["decoder"] == (vit_s - (16 * 16 * 3 * 384 + 384) + (32 * 384 + 384) + 64 * 384
                               + 384 + (384 * 768 + 768))


def test_presets():
  assert SOFTVQ_SIZES == {"S": ("S", "S"), "B": ("B", "B"), "BL": ("B", "L"), "L": ("L", "L")}
  bl = softvq_preset("BL", 32)
  assert (bl["encoder_width"], bl["encoder_depth"], bl["decoder_width"], bl["decoder_depth"]) == (
      768, 12, 1024, 24)
  assert (bl["num_latent_tokens"], bl["num_codebooks"], bl["codebook_size"], bl["code_dim"]) == (
      32, 4, 8192, 32)
  assert softvq_preset("S", 64, align_width=1024)["align_width"] == 1024
  with pytest.raises(ValueError, match="unknown SoftVQ size 'XL'"):
    softvq_preset("XL")


TINY = dict(image_size=32, patch_size=8, encoder_width=32, encoder_depth=2, encoder_heads=2,
            decoder_width=48, decoder_depth=2, decoder_heads=2, num_latent_tokens=8,
            codebook_size=16, code_dim=8, num_codebooks=2, align_width=24, align_hidden=40)


@pytest.fixture(scope="module")
def tiny():
  model = build_model("softvq", **TINY)
  images = jax.random.uniform(jax.random.key(1), (3, 32, 32, 3), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(0), images)
  return model, variables, images


def test_method_surface(tiny):
  model, variables, images = tiny
  params = nn.unbox(variables)
  apply = jax.jit(model.apply, static_argnames="method")
  latents = apply(params, images, method=model.encode)
  assert latents.shape == (3, 8, 8)
  codes, aux = apply(params, latents, method=model.quantize)
  assert codes.shape == (3, 8, 8) and aux["indices"].shape == (3, 8)
  for key in ("commitment_loss", "codebook_loss", "entropy_loss"):
    assert aux[key].shape == ()
  recon = apply(params, codes, method=model.decode)
  assert recon.shape == images.shape
  full, full_aux = apply(params, images)
  np.testing.assert_allclose(full, recon, atol=1e-5)
  assert full_aux["aligned"].shape == (3, 8, 24)
  indices = apply(params, images, method=model.encode_to_indices)
  assert indices.dtype == jnp.int32 and indices.shape == (3, 8)
  assert 0 <= int(indices.min()) and int(indices.max()) < 16
  assert apply(params, indices, method=model.decode_from_indices).shape == images.shape
  assert model.bits_per_image == pytest.approx(8 * math.log2(16))
  assert isinstance(model.index_groups(), dict)


def test_gradients_reach_every_group(tiny):
  """The soft quantizer is differentiable and the projector hangs off z_q, so a
  reconstruction + alignment loss trains all four groups."""
  model, variables, images = tiny
  params = nn.unbox(variables)
  target = jax.random.normal(jax.random.key(2), (3, 8, 24))

  def loss(p):
    recon, aux = model.apply(p, images)
    return jnp.mean((recon - images) ** 2) - jnp.mean(aux["aligned"] * target)

  grads = jax.jit(jax.grad(loss))(params)["params"]
  assert set(grads) == {"encoder", "quantizer", "decoder", "projector"}
  for group, g in grads.items():
    norm = float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g))))
    assert norm > 0, f"no gradient reaches {group}"


def test_layout_and_logical_names(tiny):
  _, variables, _ = tiny
  params = nn.unbox(variables)["params"]
  enc, dec = params["encoder"], params["decoder"]
  assert set(enc) == {"latent_tokens", "latent_pos_embed", "vit", "quant_conv"}
  assert set(dec) == {"post_quant_conv", "latent_pos_embed", "mask_token", "vit", "to_pixel"}
  assert "patch_embed" in enc["vit"] and "patch_embed" not in dec["vit"]
  assert enc["vit"]["pos_embed"].shape == (1 + 16, 32) and dec["vit"]["pos_embed"].shape == (17, 48)
  assert "ls1" in enc["vit"]["block_0"] and "ls2" in dec["vit"]["block_1"]
  assert dec["to_pixel"]["kernel"].shape == (48, 8 * 8 * 3)
  boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) for x in boxed)


def test_encoder_vit_has_the_teacher_layout(tmp_path):
  """DINOv2 weights converted by the teacher loader drop straight into the encoder
  (the official encoder starts from DINOv2 with the patch embedding resampled to 16)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from sweet_jax.nets.dinov2 import load_teacher  # pylint: disable=g-import-not-at-top
  from test_teacher import timm_state  # pylint: disable=g-import-not-at-top
  save_file(timm_state(width=32, depth=2, hidden=128, grid=3), str(tmp_path / "d.safetensors"))
  _, teacher = load_teacher(tmp_path / "d.safetensors", image_size=32, patch_size=8, num_heads=2)
  model = SoftVQVAE(**TINY)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  encoder_vit = nn.unbox(shapes)["params"]["encoder"]["vit"]
  assert (jax.tree.map(lambda s: tuple(s.shape), encoder_vit)
          == jax.tree.map(lambda a: tuple(a.shape), teacher["params"]))


def test_latent_tokens_must_split_evenly_into_codebooks():
  model = SoftVQVAE(**{**TINY, "num_latent_tokens": 7})
  with pytest.raises(ValueError, match="num_latent_tokens 7 is not divisible by num_codebooks 2"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_wrong_image_shape_is_named(tiny):
  model, variables, _ = tiny
  with pytest.raises(ValueError, match=r"expected images \[B, 32, 32, 3\], got \(1, 16, 16, 3\)"):
    model.apply(nn.unbox(variables), jnp.zeros((1, 16, 16, 3)))
