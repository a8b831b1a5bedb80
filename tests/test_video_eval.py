"""Tests of held-out clip evaluation: per-frame metrics, MP4 output, clip grids, codebook
stats per token branch, TensorBoard summaries and the end-to-end clip evaluation."""

import glob

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from clu import metric_writers
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sweet_jax.data import pipeline, video
from sweet_jax import metrics
from sweet_jax.evaluate import images
from sweet_jax.evaluate import video as video_eval


def _smooth_clip(num_frames: int, height: int, width: int) -> np.ndarray:
  """A moving colour gradient: what a lossy codec keeps well."""
  t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width),
                        indexing="ij")
  channels = [(x * 4 + t * 6) % 256, (y * 4 + t * 3) % 256, 128 + 0 * x]
  return np.stack(channels, axis=-1).astype(np.uint8)


def test_per_frame_metrics_match_per_image_metrics():
  rng = np.random.default_rng(0)
  target = rng.uniform(size=(2, 3, 16, 16, 3)).astype(np.float32)
  recon = np.clip(target + 0.05 * rng.standard_normal(target.shape), 0, 1).astype(np.float32)
  psnr, ssim = jax.jit(metrics.per_frame_metrics)(recon, target)
  assert psnr.shape == ssim.shape == (2, 3)
  np.testing.assert_allclose(psnr[1, 2], metrics.psnr(recon[1], target[1])[2], rtol=1e-5)
  np.testing.assert_allclose(ssim[0, 1], metrics.ssim(recon[0], target[0])[1], rtol=1e-5)
  with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
    metrics.per_frame_metrics(recon[0], target[0])


@pytest.mark.parametrize("height,width", [(32, 48), (33, 47)])
def test_write_mp4_round_trip(tmp_path, height, width):
  clip = _smooth_clip(9, height, width)
  path = tmp_path / "clip.mp4"
  video_eval.write_mp4(path, clip)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # No temporary left.
  decoded = video.decode_video(str(path))
  # Odd sides are padded by one pixel for yuv420p.
  assert decoded.shape == (9, height + height % 2, width + width % 2, 3)
  error = np.abs(decoded[:, :height, :width].astype(np.float32) - clip)
  assert error.mean() < 10, error.mean()


def test_write_mp4_rejects_bad_frames(tmp_path):
  with pytest.raises(ValueError, match="uint8 frames"):
    video_eval.write_mp4(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))
  assert not list(tmp_path.iterdir())


def test_clip_grid_lays_out_every_frame():
  originals = np.full((2, 4, 8, 6, 3), 10, np.uint8)
  recons = np.full((2, 4, 8, 6, 3), 200, np.uint8)
  grid = video_eval.clip_grid([originals, recons])
  assert grid.shape == (4, 2 * 8 + 3 * 2, 2 * 6 + 3 * 2, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[3], images.make_grid([originals[:, 3], recons[:, 3]]))
  with pytest.raises(ValueError, match="clip_grid"):
    video_eval.clip_grid([originals[0]])


def test_codebook_stats_by_branch():
  spatial = np.array([[[0, 1, 5], [0, 1, 5]]])  # adj columns 0-1 (size 4), noun column 2.
  temporal = np.array([[[0, 2, 3]]])
  groups = {"spatial": {"adj": ((0, 1), 4), "noun": ((2,), 8)},
            "temporal": {"verb": (None, 4)}}
  stats = metrics.codebook_stats_by_group({"spatial": spatial, "temporal": temporal}, groups)
  assert sorted(stats) == sorted(
      f"codebook_{g}_{s}" for g in ("spatial_adj", "spatial_noun", "temporal")
      for s in ("usage", "perplexity"))
  np.testing.assert_allclose(stats["codebook_spatial_adj_usage"], 2 / 4)
  np.testing.assert_allclose(stats["codebook_spatial_noun_usage"], 1 / 8)
  np.testing.assert_allclose(stats["codebook_temporal_usage"], 3 / 4)
  np.testing.assert_allclose(stats["codebook_temporal_perplexity"], 3.0, rtol=1e-5)
  # Arrays keep their names; a branch without groups is an error naming it.
  assert sorted(metrics.codebook_stats_by_group(temporal, {"verb": (None, 4)})) == [
      "codebook_perplexity", "codebook_usage"]
  with pytest.raises(ValueError, match="'temporal'"):
    metrics.codebook_stats_by_group({"temporal": temporal}, {"spatial": groups["spatial"]})


def test_write_video_summary_to_tensorboard(tmp_path):
  writer = metric_writers.create_default_writer(str(tmp_path))
  clip = _smooth_clip(5, 16, 12)
  video_eval.write_video_summary(writer, 3, "eval/originals_recons", clip)
  writer.close()  # Raises here if the asynchronous write failed.
  (events,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  tags = [(e.step, v.tag, v.metadata.plugin_data.plugin_name)
          for e in tf.compat.v1.train.summary_iterator(events) for v in e.summary.value]
  assert tags == [(3, "eval/originals_recons", "images")]
  strip = video_eval.filmstrip(clip, max_frames=3)
  np.testing.assert_array_equal(strip, images.make_grid([clip[[0, 2, 4]]]))


def _coded_clips(n: int) -> list[dict]:
  """Clip i is a constant clip of value 40 * (i + 1)."""
  return [{"video": np.full((3, 16, 16, 3), 40 * (i + 1), np.uint8)} for i in range(n)]


def _fake_eval_step(params, batch):
  """Reconstructs with an offset of `params` (in [0, 1] units); token indices per branch
  are the clip's value modulo the codebook sizes."""
  target = batch["video"].astype(jnp.float32) / 255.0
  recon = jnp.clip(target + params, 0.0, 1.0)
  psnr, ssim = metrics.per_frame_metrics(recon, target)
  value = batch["video"][:, 0, 0, 0, 0].astype(jnp.int32)
  indices = {"spatial": jnp.tile(value[:, None, None] % 16, (1, 4, 3)),
             "temporal": jnp.tile(value[:, None, None] % 8, (1, 2, 3))}
  return {"recon": recon, "psnr": psnr, "ssim": ssim, "indices": indices}


def test_evaluate_clip_reconstruction():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  to_global = lambda b: {k: jax.make_array_from_process_local_data(sharding, v)
                         for k, v in b.items()}
  batches = pipeline.make_clip_eval_batches(
      _coded_clips(5), global_batch_size=len(jax.devices()), num_frames=3, image_size=16,
      process_index=0, process_count=1)
  groups = {"spatial": {"words": (None, 16)}, "temporal": {"words": (None, 8)}}
  result = video_eval.evaluate_clip_reconstruction(
      jax.jit(_fake_eval_step), 0.01, batches, to_global, index_groups=groups,
      num_grid_clips=2)
  m = result.metrics
  assert m["num_clips"] == 5  # The padding clips are left out.
  np.testing.assert_allclose(m["psnr"], 40.0, atol=0.1)  # MSE 1e-4.
  np.testing.assert_allclose(m["psnr_per_frame"], [40.0] * 3, atol=0.1)
  assert len(m["ssim_per_frame"]) == 3 and 0.9 < m["ssim"] <= 1.0
  np.testing.assert_allclose(m["first_frame_psnr"], 40.0, atol=0.1)
  # Values 40..200 -> spatial codes 8, 0, 8, 0, 8; temporal codes 0.
  np.testing.assert_allclose(m["codebook_spatial_usage"], 2 / 16)
  np.testing.assert_allclose(m["codebook_temporal_usage"], 1 / 8)
  assert result.video.shape == (3, 2 * 16 + 3 * 2, 2 * 16 + 3 * 2, 3)
  assert result.video.dtype == np.uint8
  assert result.grid_indices["spatial"].shape == (2, 4, 3)
  np.testing.assert_array_equal(result.grid_indices["temporal"][:, 0, 0], [0, 0])
