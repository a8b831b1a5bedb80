"""SoftVQ-VAE and TiTok on the shared trainer: configs, training, evaluation and the
alignment term with a (randomly initialised) DINOv2 teacher file."""

import json
import os

import jax
import numpy as np
import pytest

from configs import softvq, titok
from sweet_jax.models import build_model
from sweet_jax.train import build_components, train_and_evaluate, validate_config
from test_teacher import timm_state

CONFIGS = {"softvq": softvq, "titok": titok}


@pytest.mark.parametrize("name,variant", [(n, v) for n, m in CONFIGS.items() for v in m.VARIANTS])
def test_every_variant_builds_its_model(name, variant):
  config = CONFIGS[name].get_config(variant)
  validate_config(config, 8 if variant in ("cpu", "runlocal") else 256)
  model = build_model(**config.model)
  assert model.image_size == config.data.image_size


def test_unknown_variants_are_named():
  with pytest.raises(ValueError, match="unknown variant 'XL' of softvq"):
    softvq.get_config("XL")
  with pytest.raises(ValueError, match="unknown variant 'B-128' of titok"):
    titok.get_config("B-128")


def _runlocal(module, data_dir):
  config = module.get_config("runlocal")
  with config.unlocked():
    config.data.data_dir = data_dir
  return config


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_trains_and_evaluates_through_the_shared_trainer(name, embedded_data_dir, tmp_path):
  metrics = train_and_evaluate(_runlocal(CONFIGS[name], embedded_data_dir), str(tmp_path))
  assert metrics["step"] == 6 and np.isfinite(metrics["psnr"]) and np.isfinite(metrics["ssim"])
  usage = [k for k in metrics if k.startswith("codebook_") and k.endswith("_usage")]
  # SoftVQ's runlocal model has 2 codebooks (one per half of the tokens), TiTok one.
  assert len(usage) == (2 if name == "softvq" else 1), usage
  assert all(0 < metrics[k] <= 1 for k in usage)
  with open(os.path.join(tmp_path, "metrics.json")) as f:
    assert json.load(f)["step"] == 6
  assert os.path.getsize(os.path.join(tmp_path, "recon_grid.png")) > 0


def _with_teacher(config, path, weight=0.1):
  with config.unlocked():
    config.loss.alignment = weight
    config.alignment.teacher_path = str(path)
    config.model.align_width = 32  # the test teacher's width
  return config


def test_alignment_term_trains_the_projector_against_the_teacher(embedded_data_dir, tmp_path):
  path = tmp_path / "dinov2.npz"
  np.savez(path, **timm_state(width=32, depth=1, hidden=64, patch=14, grid=3))
  config = _with_teacher(_runlocal(softvq, embedded_data_dir), path)
  with config.unlocked():
    config.alignment.teacher_heads = 2
  c = build_components(config)
  assert c.frozen["teacher"]["params"]["patch_embed"]["proj"]["kernel"].shape == (8 * 8 * 3, 32)  # 14 -> 8
  with jax.set_mesh(c.mesh):
    state = c.init_state()
  batch = jax.device_put(
      {"image": np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)},
      c.batch_sharding)
  state, _ = c.train_step(state, batch)  # (the learning rate warms up from 0 at step 0)
  before = jax.device_get(state.params["projector"])
  state, metrics = c.train_step(state, batch)
  metrics = jax.device_get(metrics)
  # Negative cosine: in [-1, 1], and a gradient that reaches (and moves) the projector.
  assert -1.0 <= float(metrics["loss_alignment"]) <= 1.0
  assert float(metrics["grad_norm_projector"]) > 0
  after = jax.device_get(state.params["projector"])
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                      jax.tree.leaves(after)))


def test_alignment_without_a_teacher_file_or_projector_is_a_clear_error(embedded_data_dir,
                                                                         tmp_path):
  config = _with_teacher(_runlocal(softvq, embedded_data_dir), tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="missing.npz.*config.alignment.teacher_path"):
    build_components(config)
  config = _runlocal(titok, embedded_data_dir)
  with config.unlocked():
    config.loss.alignment = 0.1
  with pytest.raises(ValueError, match="config.loss.alignment=0.1 needs a model with an "
                                       "alignment projector"):
    validate_config(config, 8)
