"""SoftVQ-VAE and TiTok on the shared trainer: configs, training, evaluation and the
alignment term with a (randomly initialised) DINOv2 teacher file."""

import json
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import softvq, titok
from sweet_jax.models import build_model
from sweet_jax import experiment
from sweet_jax.train import train_and_evaluate
from test_teacher import timm_state

CONFIGS = {"softvq": softvq, "titok": titok}


@pytest.mark.parametrize("name,variant", [(n, v) for n, m in CONFIGS.items() for v in m.VARIANTS])
def test_every_variant_builds_its_model(name, variant):
  config = CONFIGS[name].get_config(variant)
  experiment.validate(config, 8 if variant in ("cpu", "runlocal") else 256)
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


def _with_teacher(config, path, weight=0.1):
  with config.unlocked():
    config.loss.alignment = weight
    config.alignment.teacher_path = str(path)
    config.alignment.teacher_heads = 2
    config.model.align_width = 32  # the test teacher's width
  return config


def _projector(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]["projector"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_trains_and_evaluates_through_the_shared_trainer(name, embedded_data_dir, tmp_path,
                                                         caplog):
  """Both train and evaluate on the embedded photos; SoftVQ with its alignment term
  against a (random) DINOv2 teacher file, resampled from patch 14 to the model's 8."""
  config = _runlocal(CONFIGS[name], embedded_data_dir)
  if name == "softvq":
    teacher = tmp_path / "dinov2.npz"
    np.savez(teacher, **timm_state(width=32, depth=1, hidden=64, patch=14, grid=3))
    config = _with_teacher(config, teacher)
  caplog.set_level("INFO")
  workdir = str(tmp_path / "run")
  metrics = train_and_evaluate(config, workdir, log_all_metrics=True)
  assert metrics["step"] == 6 and np.isfinite(metrics["psnr"]) and np.isfinite(metrics["ssim"])
  usage = [k for k in metrics if k.startswith("codebook_") and k.endswith("_usage")]
  # SoftVQ's runlocal model has 2 codebooks (one per half of the tokens), TiTok one.
  assert len(usage) == (2 if name == "softvq" else 1), usage
  assert all(0 < metrics[k] <= 1 for k in usage)
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f)["parameters"] == metrics["parameters"] > 0
  assert os.path.getsize(os.path.join(workdir, "recon_grid.png")) > 0
  if name == "softvq":
    # The alignment term is logged (a negative cosine) and moves the projector, which
    # nothing else trains.
    values = [float(v) for v in re.findall(r"train/loss_alignment=([-0-9.e]+)", caplog.text)]
    assert values and all(-1.0 <= v <= 1.0 for v in values)
    before, after = _projector(workdir, 2), _projector(workdir, 6)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                        jax.tree.leaves(after)))


def test_alignment_without_a_teacher_file_or_projector_is_a_clear_error(embedded_data_dir,
                                                                         tmp_path):
  config = _with_teacher(_runlocal(softvq, embedded_data_dir), tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="missing.npz.*config.alignment.teacher_path"):
    experiment.build(config)
  config = _runlocal(titok, embedded_data_dir)
  with config.unlocked():
    config.loss.alignment = 0.1
  with pytest.raises(ValueError, match="config.loss.alignment=0.1 needs a model with an "
                                       "alignment projector"):
    experiment.validate(config, 8)
