"""The video CQAE: shapes for 1 and 1 + k*t frames, image weights, attention switches."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import ring_word_group
from sweet_jax.models import build_model
from sweet_jax.nn.layers import apply_rope, rope_2d_angles
from sweet_jax.models.video_cqae import (check_num_frames, params_from_image_model,
                                         temporal_slots, tubify, untubify)

IMAGE = dict(image_size=32, patch_size=8, width=32, num_heads=2, encoder_depth=2,
             decoder_depth=2, num_queries=8, codebook_size=64, code_dim=8)
VIDEO = dict(IMAGE, temporal_patch_size=4, num_frames=9, temporal_encoder_depth=2,
             temporal_decoder_depth=1, temporal_codebook_size=32, temporal_code_dim=8)


def _clips(frames, batch=2, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, frames, 32, 32, 3), minval=-1, maxval=1)


@pytest.fixture(scope="module")
def video_model():
  model = build_model("cqae_video", **VIDEO)
  # (jitted: op-by-op, the init took twice as long)
  return model, nn.unbox(jax.jit(model.init)(jax.random.key(0), _clips(9))["params"])


@pytest.mark.parametrize("frames,latent_frames", [(1, 1), (5, 2), (9, 3)])
def test_shapes_for_one_and_one_plus_k_t_frames(video_model, frames, latent_frames):
  model, params = video_model
  clips = _clips(frames)
  assert check_num_frames(frames, 4) == latent_frames
  latents = model.apply({"params": params}, clips, method=model.encode)
  assert latents["spatial"].shape == (2, 8, 8)
  if frames == 1:
    assert "temporal" not in latents  # an image has no motion to tokenize
  else:
    assert latents["temporal"].shape == (2, 16, 8)  # one temporal token per 4x4 position
  recon, aux = model.apply({"params": params}, clips)
  assert recon.shape == clips.shape
  assert aux["indices"]["spatial"].shape == (2, 8)
  assert set(aux["indices"]) == set(latents)


def test_bad_frame_counts_are_named(video_model):
  model, params = video_model
  for frames in (4, 8):
    with pytest.raises(ValueError, match=r"1 \+ k\*4 frames.*got " + str(frames)):
      model.apply({"params": params}, _clips(frames))
  with pytest.raises(ValueError, match="longer than the model's num_frames=9"):
    model.apply({"params": params}, _clips(13))
  with pytest.raises(ValueError, match="expected clips"):
    model.apply({"params": params}, _clips(9)[:, :, :16])


def test_image_weights_load_and_reproduce_the_image_model(video_model):
  model, video_params = video_model
  image_model = build_model("cqae_image", **IMAGE)
  images = _clips(1, seed=3)[:, 0]
  image_params = nn.unbox(image_model.init(jax.random.key(7), images)["params"])
  params = params_from_image_model(video_params, image_params)
  # Every image parameter was taken over; the temporal ones were kept.
  flat = jax.tree_util.tree_leaves_with_path(image_params)
  assert len(flat) < len(jax.tree.leaves(params))
  np.testing.assert_array_equal(params["temporal_encoder"]["time_embed"],
                                video_params["temporal_encoder"]["time_embed"])
  expected, _ = image_model.apply({"params": image_params}, images)
  got, _ = model.apply({"params": params}, images[:, None])
  np.testing.assert_array_equal(got[:, 0], expected)
  # And a full clip runs on the loaded weights.
  assert model.apply({"params": params}, _clips(9))[0].shape == (2, 9, 32, 32, 3)


def test_image_weights_of_another_shape_are_refused(video_model):
  _, video_params = video_model
  wide = build_model("cqae_image", **dict(IMAGE, width=64))
  wide_params = nn.unbox(wide.init(jax.random.key(0), _clips(1)[:, 0])["params"])
  with pytest.raises(ValueError, match="has shape"):
    params_from_image_model(video_params, wide_params)


def test_index_round_trip_decodes_what_the_model_decodes(video_model):
  model, params = video_model
  clips = _clips(9)
  indices = model.apply({"params": params}, clips, method=model.encode_to_indices)
  assert indices["spatial"].dtype == jnp.int32 and indices["temporal"].shape == (2, 16)
  recon, _ = model.apply({"params": params}, clips)
  decoded = model.apply({"params": params}, indices, 9, method=model.decode_from_indices)
  np.testing.assert_allclose(decoded, recon, atol=1e-5)


def test_language_codebooks_spatial_nouns_temporal_verbs():
  spatial = ring_word_group(num_words=30, num_first=12)
  temporal = dataclasses.replace(ring_word_group(num_words=24, num_first=10, seed=1),
                                 name="temporal")
  model = build_model("cqae_video", **VIDEO, quantizer_type="mlc", word_group=spatial,
                      temporal_word_group=temporal, gcn_hidden=16)
  clips = _clips(5)
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, clips)
  params = nn.unbox(variables["params"])
  assert "projection" in params["quantizer"] and "projection" in params["temporal_quantizer"]
  indices = model.apply({"params": params}, clips, method=model.encode_to_indices)
  assert indices["spatial"].shape == (2, 8, 3) and indices["temporal"].shape == (2, 16, 3)
  assert int(indices["temporal"][..., :2].max()) < 10  # adverbs come first in the group
  assert int(indices["temporal"][..., 2].max()) < 14  # then the verbs
  groups = model.index_groups()
  assert set(groups) == {"spatial", "temporal"}
  assert set(groups["temporal"]) == set(temporal.pos_names)
  assert model.bits_per_sample() > model.bits_per_image > 0


def test_attention_switches_run_and_change_the_parameters():
  model = build_model("cqae_video", **VIDEO, cosine_attention=True, rope=True, cross_null_kv=2)
  clips = _clips(9)
  params = nn.unbox(model.init(jax.random.key(0), clips)["params"])
  attn = params["decoder"]["block_0"]["cross_attn"]
  assert attn["null_kv"].shape == (2, 2, 2, 16) and attn["query_scale"].shape == (16,)
  recon, _ = model.apply({"params": params}, clips)
  assert recon.shape == clips.shape and bool(jnp.all(jnp.isfinite(recon)))


def test_rope_scores_depend_only_on_the_offset():
  angles = rope_2d_angles(4, 8)
  q = jnp.ones((1, 16, 1, 8))
  rotated = apply_rope(q, angles)[0, :, 0]
  scores = rotated @ rotated.T  # same vector at every position: score = f(offset)
  grid = np.arange(16).reshape(4, 4)
  # (0,0)->(1,2) and (2,1)->(3,3) share the offset (1, 2).
  np.testing.assert_allclose(scores[grid[0, 0], grid[1, 2]], scores[grid[2, 1], grid[3, 3]],
                             rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(rotated, axis=-1), jnp.sqrt(8.0), rtol=1e-6)


def test_tubes_and_slots():
  frames = jax.random.normal(jax.random.key(0), (2, 8, 16, 16, 3))
  np.testing.assert_array_equal(untubify(tubify(frames, 4, 8), 4, 8, 16, 16), frames)
  assert temporal_slots(8, 4) == [1, 3, 5, 7]
  assert temporal_slots(2, 2) == [0, 1]
  with pytest.raises(ValueError, match="must divide"):
    temporal_slots(4, 3)
