"""The evaluator on mocked ImageNet and UCF-101: end to end, cached reference statistics,
and padded last batches that change nothing."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import sweet_image, sweet_video
from sweet_jax.checkpoint import Checkpointer
from sweet_jax.data import pipeline
from sweet_jax.data.preprocess import resize_shorter_center_crop
from sweet_jax.evaluate import frechet
from sweet_jax.evaluate.saved_run import evaluate_checkpoint
from sweet_jax.nets.lpips import LPIPS, pooled_vgg_features
from sweet_jax.metrics import psnr, ssim
from sweet_jax.step import images_to_model, model_to_unit
from sweet_jax import experiment


def _imagenet_config(data_dir, cache_dir):
  config = sweet_image.get_config("runlocal,vq")
  with config.unlocked():
    config.total_steps = 2
    config.ema.decay = 0.5
    config.data.data_dir = data_dir
    config.data.eval_preprocess = "resize_shorter_center_crop"  # ImageNet's
    config.eval.reference_cache = cache_dir
    config.eval.lpips = True  # off in runlocal
    config.eval_batch_size = 8  # (LPIPS-VGG16: 4 s per 16 images here)
  return config


def _save_initial_state(config, workdir, step):
  """A freshly initialised train state saved as the checkpoint of `step`."""
  c = experiment.build(config, workdir=workdir)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1,
                              save_interval_steps=1)
  with jax.set_mesh(c.mesh):
    state = c.init_state()
    if state.ema_params is not None:  # EMA weights unlike the raw ones: which one is scored shows
      state = state.replace(ema_params=jax.tree.map(lambda x: 0.9 * x, state.ema_params))
    checkpointer.save_state(step, state)
  checkpointer.close()


def test_imagenet_evaluation_matches_an_unpadded_computation(tmp_path, embedded_data_dir):
  cache = str(tmp_path / "reference")
  config = _imagenet_config(embedded_data_dir, cache)
  workdir = str(tmp_path / "run")
  _save_initial_state(config, workdir, step=2)  # a checkpoint (with EMA) to evaluate

  with tfds.testing.mock_data(num_examples=12):
    # 12 validation images in global batches of 8: the second batch is 4 images + padding.
    record = evaluate_checkpoint(config, workdir, dataset="imagenet2012",
                                           split="validation")
    again = evaluate_checkpoint(config, workdir, dataset="imagenet2012",
                                          split="validation")
    source = pipeline.get_data_source("imagenet2012", "validation", str(tmp_path))
    images = np.stack([resize_shorter_center_crop(source[i]["image"], 32)
                       for i in range(len(source))])

  assert record["weights"] == "ema" and record["step"] == 2
  assert record["reference_statistics"] == "computed"
  assert again["reference_statistics"] == "cached"
  assert len(os.listdir(cache)) == 1  # LPIPS-VGG16 statistics of imagenet2012:validation
  with open(os.path.join(workdir, "eval_2.json")) as f:
    assert json.load(f)["metrics"] == again["metrics"]
  metrics = record["metrics"]
  assert metrics["num_images"] == 12
  for key in ("psnr", "ssim", "lpips", "fd_vgg"):
    np.testing.assert_allclose(again["metrics"][key], metrics[key], rtol=1e-6)

  # The same numbers from all 12 images in one unpadded, unsharded batch.
  c = experiment.build(config, devices=jax.devices()[:1], workdir=workdir)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1,
                              save_interval_steps=1)
  with jax.set_mesh(c.mesh):
    state = checkpointer.restore_state(2, c.restore_target())
  checkpointer.close()
  inputs = images_to_model(jnp.asarray(images))
  recon, _ = c.model.apply({"params": state.ema_params}, inputs)
  recon, target = model_to_unit(recon), model_to_unit(inputs)
  # The evaluator scores uint8-rounded reconstructions only for images it shows; metrics
  # use the float reconstructions, as here.
  np.testing.assert_allclose(metrics["psnr"], np.mean(psnr(recon, target)), rtol=1e-5)
  np.testing.assert_allclose(metrics["ssim"], np.mean(ssim(recon, target)), rtol=1e-5)
  # Mean colour, of what a user sees (uint8 reconstructions) against the originals.
  shift = (np.round(np.clip(np.asarray(recon), 0, 1) * 255).mean(axis=(1, 2))
           - images.mean(axis=(1, 2)))
  np.testing.assert_allclose(metrics["mean_color_error_rgb"], np.abs(shift).mean(0), atol=0.02)
  np.testing.assert_allclose(metrics["mean_color_bias_rgb"], shift.mean(0), atol=0.02)
  assert metrics["thumbnail_mean_color_error"] >= 0
  lpips, lpips_params = LPIPS("vgg16"), {"params": c.frozen["lpips"]}
  np.testing.assert_allclose(
      metrics["lpips"], np.mean(lpips.apply(lpips_params, recon * 2 - 1, target * 2 - 1)),
      rtol=1e-4)
  features = [np.asarray(pooled_vgg_features(
      lpips.apply(lpips_params, x * 2 - 1, method=LPIPS.trunk_features))) for x in (target, recon)]
  np.testing.assert_allclose(metrics["fd_vgg"], frechet.frechet_distance_of_features(*features),
                             rtol=1e-3)


@pytest.mark.expensive
def test_ucf101_evaluation_end_to_end_with_rfvd(tmp_path, clips_data_dir):
  config = sweet_video.get_config("runlocal")
  with config.unlocked():
    config.video_data.data_dir = clips_data_dir
    config.data.data_dir = clips_data_dir
    config.eval.reference_cache = str(tmp_path / "reference")
    config.eval.fvd = True  # off in runlocal (LPIPS stays off: the ImageNet test's)
  workdir = str(tmp_path / "run")
  _save_initial_state(config, workdir, step=1)

  with config.unlocked():
    config.eval_batch_size = 8
    config.video_data.max_bad_fraction = 0.5  # the mock videos are of random lengths
  skipped_before = pipeline.skipped_example_count()
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    record = evaluate_checkpoint(config, workdir, dataset="ucf101", split="test")
  metrics = record["metrics"]
  assert record["dataset"] == "ucf101" and record["split"] == "test"
  # Two batches of 8, the second padded; mock videos shorter than 9 frames are skipped.
  skipped = pipeline.skipped_example_count() - skipped_before
  assert metrics["num_clips"] + skipped == 10 and metrics["num_clips"] > 8
  for key in ("psnr", "ssim", "rfvd"):
    assert np.isfinite(metrics[key]), key
  assert len(metrics["psnr_per_frame"]) == config.model.num_frames
  assert os.listdir(tmp_path / "reference") == [
      "ucf101_test_32x9_center_clip_i3d_kinetics400_logits.npz"]


def test_evaluating_a_workdir_without_checkpoints_says_so(tmp_path, embedded_data_dir):
  config = _imagenet_config(embedded_data_dir, str(tmp_path / "reference"))
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*/checkpoints to evaluate"):
    evaluate_checkpoint(config, str(tmp_path / "empty"))
  assert not (tmp_path / "empty").exists()  # a misspelt workdir is reported, not created
