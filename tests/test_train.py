"""End to end: train -> checkpoint -> resume, the main job's outputs, the words readout."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from skimage import data as skimage_data

from configs import sweet_image
from sweet_jax import nonfinite, parallel
from sweet_jax.codebook import artifact
from sweet_jax import experiment
from sweet_jax.train import train_and_evaluate
from test_reliability import checkpoint_steps, signal_on_line


def runlocal(data_dir):
  config = sweet_image.get_config("runlocal")
  with config.unlocked():
    config.data.data_dir = data_dir
  return config


def _saved_state(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)


def _saved_data_state(workdir, step):
  folder = os.path.join(workdir, "checkpoints", str(step), "data")
  return {name: open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))
          if name.endswith(".json")}


@pytest.mark.expensive
def test_train_sigkill_resume_matches_uninterrupted_run(tmp_path, embedded_data_dir,
                                                        monkeypatch, codebook_cache, start_main):
  """The main job end to end, killed (SIGKILL) mid-run while writing a checkpoint and
  restarted: bitwise the uninterrupted run (issue #7). Also the job's outputs."""
  # 6 steps, checkpoint every 2, with every piece of state a checkpoint must carry: EMA,
  # discriminator (starting mid-run), LeCam; and LPIPS-VGG16 / FD-VGG in every evaluation
  # (off in runlocal), the periodic evaluator every 3 steps. LPIPS-VGG16 takes 4 s per 16
  # images here and the three runs evaluate 7 times: on the first 8 held-out images (one
  # batch), not 64, and without the in-loop summary evaluation at step 3 (the periodic
  # evaluator's). Overrides as flags, for the killed `python -m sweet_jax.main` too.
  overrides = {"data.eval_split": "eval[:8]", "eval_batch_size": 8, "summary_every_steps": 6,
               "ema.decay": 0.9, "eval.lpips": True, "loss.perceptual": 0.5,
               "perceptual.network": "alexnet",  # (VGG16's gradient at 32x32 is slow)
               "loss.adversarial": 0.1, "gan.start_step": 3, "gan.width": 8, "gan.depth": 2,
               "gan.lecam_weight": 0.01, "eval.every_steps": 3,
               "eval.reference_cache": str(tmp_path / "reference")}
  config = runlocal(embedded_data_dir)
  with config.unlocked():
    for field, value in overrides.items():
      *groups, name = field.split(".")
      (config[groups[0]] if groups else config)[name] = value
  full_dir, resumed_dir = str(tmp_path / "full"), str(tmp_path / "resumed")

  monkeypatch.chdir(tmp_path)
  full = train_and_evaluate(config, "full")  # a relative workdir, as launch/local.sh passes
  assert full["step"] == 6

  # SIGKILLed half a second into writing its step-4 checkpoint: only 2 is complete.
  proc = start_main("--config=configs/sweet_image.py:runlocal", f"--workdir={resumed_dir}",
                    f"--config.data.data_dir={embedded_data_dir}",
                    *(f"--config.{k}={v}" for k, v in overrides.items()))
  log, _ = signal_on_line(proc, "Writing the checkpoint of step 4", signal.SIGKILL, delay=0.5)
  assert proc.returncode == -signal.SIGKILL, log[-3000:]
  assert checkpoint_steps(resumed_dir) == [2], log[-3000:]

  # The run keeps its own copy of the language codebook: resuming needs no build cache.
  run_codebook = artifact.load(os.path.join(resumed_dir, "codebook"))
  shutil.rmtree(codebook_cache)
  os.makedirs(codebook_cache)

  # The restarted run resumes from step 2 (state and data position) and ends where the
  # uninterrupted one did.
  resumed = train_and_evaluate(config, resumed_dir)
  assert resumed["step"] == 6
  assert _saved_data_state(resumed_dir, 2) != _saved_data_state(resumed_dir, 6)
  assert _saved_data_state(resumed_dir, 6) == _saved_data_state(full_dir, 6)
  full_state, resumed_state = _saved_state(full_dir, 6), _saved_state(resumed_dir, 6)
  assert {"params", "opt_state", "ema_params", "disc"} <= set(full_state)
  assert jax.tree.structure(full_state) == jax.tree.structure(resumed_state)
  for a, b in zip(jax.tree.leaves(full_state), jax.tree.leaves(resumed_state)):
    np.testing.assert_array_equal(a, b)
  assert resumed["psnr"] == full["psnr"]
  assert not os.listdir(codebook_cache)
  assert artifact.load(os.path.join(full_dir, "codebook")).manifest["hash"] == \
      run_codebook.manifest["hash"]

  # The job's outputs.
  with open(os.path.join(full_dir, "metrics.json")) as f:
    metrics = json.load(f)
  for key in ("psnr", "ssim", "lpips", "fd_vgg", "thumbnail_psnr", "thumbnail_ssim", "codebook_adj_usage",
              "codebook_adj_perplexity", "codebook_noun_usage", "codebook_noun_perplexity",
              "bits_per_image", "thumbnail_bits", "step"):
    assert key in metrics
  assert metrics["thumbnail_bits"] >= metrics["bits_per_image"]
  with open(os.path.join(full_dir, "eval_6.json")) as f:  # the periodic evaluator, at 3 and 6
    periodic = json.load(f)
  assert periodic["step"] == 6 and periodic["reference_statistics"] == "cached"
  np.testing.assert_allclose(periodic["metrics"]["fd_vgg"], metrics["fd_vgg"], rtol=1e-6)
  assert os.path.exists(os.path.join(full_dir, "eval_3.json"))
  assert os.path.getsize(os.path.join(full_dir, "recon_grid.png")) > 0
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(full_dir))
  words = set(run_codebook.spatial.words)
  with open(os.path.join(full_dir, "words.md")) as f:
    summary = f.read()
  assert summary.count("held-out image") == config.num_summary_images
  assert _table_words(summary) <= words

  # The words readout on a held-out photo (a file, as a user would pass it).
  photo = os.path.join(os.path.dirname(skimage_data.__file__), "coffee.png")
  out = subprocess.run([sys.executable, "-m", "sweet_jax.words", f"--workdir={full_dir}",
                        f"--image={photo}"], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
  assert "coffee.png" in out.stdout and "checkpoint step 6" in out.stdout
  readout = _table_words(out.stdout)
  assert len(readout) >= 3 and readout <= words  # real words from the codebook
  assert all(w.isalpha() and w.islower() for w in readout)


def _table_words(markdown: str) -> set[str]:
  """Words in the '| token | adj+adj noun |' rows of a words table."""
  rows = [line.split("|")[2].strip() for line in markdown.splitlines()
          if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
  return {w for row in rows for w in row.replace("+", " ").split()}


def test_mesh_must_match_device_count(embedded_data_dir, tmp_path):
  config = runlocal(embedded_data_dir)
  with config.unlocked():
    config.mesh = (("data", 3), ("fsdp", 1), ("model", 1))
  with pytest.raises(ValueError, match="has 3 devices but 8 are available"):
    train_and_evaluate(config, str(tmp_path))


def test_patch_size_must_divide_image_size(embedded_data_dir, tmp_path):
  config = runlocal(embedded_data_dir)
  with config.unlocked():
    config.model.patch_size = 5
  with pytest.raises(ValueError, match="patch_size=5 does not divide config.model.image_size=32"):
    train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_frozen_codebook_projection_stays_put():
  """lr_mult.codebook_projection=0 freezes the GCN (no update, no weight decay) in the
  run's optimizer, which the train step applies (the step itself: the other tests)."""
  config = sweet_image.get_config("runlocal")
  with config.unlocked():
    config.optim.lr_mult.codebook_projection = 0.0
  c = experiment.build(config)
  rng = np.random.default_rng(0)
  random_like = lambda x: np.asarray(rng.normal(size=x.shape), x.dtype)
  before = jax.tree.map(random_like, parallel.strip_boxes(c.abstract_state.params))

  @jax.jit
  def two_steps(params):  # random gradients; the learning rate warms up from 0
    opt_state = c.tx.init(params)
    for _ in range(2):
      updates, opt_state = c.tx.update(jax.tree.map(random_like, params), opt_state, params)
      params = optax.apply_updates(params, updates)
    return params

  after = two_steps(before)
  for a, b in zip(jax.tree.leaves(before["quantizer"]["projection"]),
                  jax.tree.leaves(after["quantizer"]["projection"])):
    np.testing.assert_array_equal(a, b)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["decoder"]),
                                                   jax.tree.leaves(after["decoder"]))]
  assert all(moved)


def test_unknown_parameter_group_multiplier():
  config = sweet_image.get_config("runlocal")
  with config.unlocked():
    config.optim.lr_mult.decodr = 0.0
  with pytest.raises(ValueError, match="unknown groups \\['decodr'\\]"):
    experiment.build(config)


def test_nonfinite_step_is_discarded_and_named(embedded_data_dir):
  """A NaN batch (inject_nan_at_step) changes nothing but the step counters; its metrics
  name the non-finite terms and gradient groups."""
  config = runlocal(embedded_data_dir)
  with config.unlocked():
    config.inject_nan_at_step = 3  # (test_reliability's: the same compiled step)
  c = experiment.build(config)
  state = c.init_state()
  batch = jax.device_put(
      {"image": np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)},
      c.batch_sharding)
  for _ in range(3):
    state, clean = c.train_step(state, batch)
    assert float(clean["nonfinite"]) == 0.0
  before = jax.device_get(state)
  state, poisoned = c.train_step(state, batch)
  after = jax.device_get(state)
  assert int(after.step) == 4 and float(poisoned["nonfinite"]) == 1.0
  # Parameters, Adam moments and counts unchanged; the global step moved on.
  for path, a in jax.tree_util.tree_leaves_with_path(before.params):
    np.testing.assert_array_equal(a, _at(after.params, path), err_msg=str(path))
  moments = lambda s: [x for p, x in jax.tree_util.tree_leaves_with_path(s.opt_state)
                       if "mu" in jax.tree_util.keystr(p) or "nu" in jax.tree_util.keystr(p)]
  assert moments(before) and all(np.array_equal(a, b) for a, b in
                                 zip(moments(before), moments(after)))
  terms, groups = nonfinite.nonfinite_parts(jax.device_get(poisoned))
  assert "recon" in terms
  assert {"encoder", "decoder"} <= set(groups), groups
  state, next_step = c.train_step(state, batch)  # the next batch trains again
  assert float(next_step["nonfinite"]) == 0.0
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.params["decoder"]),
                                                   jax.tree.leaves(jax.device_get(state.params["decoder"])))]
  assert any(moved)


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree
