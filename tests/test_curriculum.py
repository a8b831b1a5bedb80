"""The curriculum: stages from the config, clear errors, gated groups, exact resumption."""

import json
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import sweet_video
from sweet_jax import curriculum
from sweet_jax import experiment
from sweet_jax.train import train_and_evaluate
from test_reliability import checkpoint_steps, signal_on_line


def video_runlocal(photos_dir=None, clips_dir=None):
  config = sweet_video.get_config("runlocal")
  with config.unlocked():
    config.data.data_dir = photos_dir
    config.video_data.data_dir = clips_dir
  return config


def test_stages_from_the_video_config():
  config = sweet_video.get_config("cpu")
  stages = curriculum.stages_from_config(config)
  assert [s.name for s in stages] == ["spatial", "temporal", "decoder"]
  assert [s.data for s in stages] == ["image", "video", "video"]
  assert stages[1].start == stages[0].end and stages[2].start == stages[1].end
  assert stages[2].train == ("decoder",)
  assert dict(stages[2].loss)["commitment"] == 0.0 and dict(stages[0].loss)["recon"] == 1.0
  assert curriculum.stage_index(stages, stages[1].start - 1) == 0
  assert curriculum.stage_index(stages, stages[1].start) == 1
  # The joint ablation: as many steps as the whole curriculum.
  with config.unlocked():
    config.curriculum.order = ("joint",)
  (joint,) = curriculum.stages_from_config(config)
  assert joint.steps == curriculum.total_steps(stages) and joint.data == "video"


def test_schedules_follow_the_stages():
  stages = curriculum.stages_from_config(video_runlocal())  # 2 + 2 + 2 steps
  active = curriculum.active_schedules(stages, ["temporal_encoder", "decoder"])
  assert [float(active["temporal_encoder"](s)) for s in range(6)] == [0, 0, 1, 1, 0, 0]
  assert [float(active["decoder"](s)) for s in range(6)] == [1] * 6
  weights = curriculum.loss_weight_schedules(stages)
  np.testing.assert_allclose([weights["entropy"](s) for s in range(6)], [0.01] * 4 + [0.0] * 2)
  lr = curriculum.learning_rate_schedule(stages, warmup_steps=1, end_lr_fraction=0.1)
  assert float(lr(0)) == 0.0 and float(lr(2)) == 0.0 and float(lr(1)) > 0  # warm-up per stage


@pytest.mark.parametrize("override,message", [
    (dict(train=("decoder", "teeth")), r"trains unknown parameter groups \['teeth'\]"),
    (dict(data="audio"), "has data 'audio'"),
    (dict(steps=0), "needs at least one"),
])
def test_bad_stages_are_named(override, message):
  config = video_runlocal()
  with config.unlocked():
    config.curriculum.stages.temporal.update(override)
  with pytest.raises(ValueError, match=message):
    curriculum.stages_from_config(config)


def test_a_group_trained_in_no_stage_is_an_error():
  config = video_runlocal()
  with config.unlocked():
    config.curriculum.order = ("spatial", "decoder")
  with pytest.raises(ValueError, match=r"\['temporal_encoder', 'temporal_queries'.*trained in "
                     "no stage"):
    curriculum.stages_from_config(config)
  with config.unlocked():
    config.curriculum.order = ("spatial", "motion")
  with pytest.raises(ValueError, match="names stage 'motion'"):
    curriculum.stages_from_config(config)


def _adam_state(opt_state, group):
  """The group's AdamW state inside inject_hyperparams (moments and Adam's count)."""
  return opt_state[-1].inner_states[group].inner_state.inner_state


def _saved_params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


@pytest.mark.expensive
def test_curriculum_gates_groups_and_a_killed_run_resumes_at_the_boundary_exactly(
    tmp_path, embedded_data_dir, clips_data_dir, start_main):
  # Stages of 2 + 2 + 2 steps. The decoder stage without its perceptual and 3-D GAN terms:
  # they triple its compile time here, and their state's exact resumption is the image
  # end-to-end test's (test_train.py); the 3-D GAN step is test_gan.py's.
  no_decoder_gan = {"perceptual": 0.0, "adversarial": 0.0}
  config = video_runlocal(embedded_data_dir, clips_data_dir)
  with config.unlocked():
    config.curriculum.stages.decoder.loss.update(no_decoder_gan)
  full_dir, resumed_dir = str(tmp_path / "full"), str(tmp_path / "resumed")
  full = train_and_evaluate(config, full_dir)
  assert full["step"] == 6

  # SIGKILLed while writing the step-4 checkpoint (the end of the temporal stage): the
  # restart resumes from step 2, exactly at the spatial/temporal boundary, starts the
  # temporal stage's data stream and continues the same curriculum. (A restart inside a
  # stage: test_reliability.py and test_train.py, the same code path.)
  proc = start_main("--config=configs/sweet_video.py:runlocal", f"--workdir={resumed_dir}",
                    f"--config.data.data_dir={embedded_data_dir}",
                    f"--config.video_data.data_dir={clips_data_dir}",
                    *(f"--config.curriculum.stages.decoder.loss.{k}={v}"
                      for k, v in no_decoder_gan.items()))
  log, _ = signal_on_line(proc, "Writing the checkpoint of step 4", signal.SIGKILL, delay=0.5)
  assert proc.returncode == -signal.SIGKILL, log[-3000:]
  assert checkpoint_steps(resumed_dir) == [2], log[-3000:]
  resumed = train_and_evaluate(config, resumed_dir)
  assert resumed["step"] == 6
  for a, b in zip(jax.tree.leaves(_saved_params(full_dir, 6)),
                  jax.tree.leaves(_saved_params(resumed_dir, 6))):
    np.testing.assert_array_equal(a, b)
  assert resumed["psnr"] == full["psnr"]

  # Each stage moved exactly its groups: the parameters and the AdamW moments of the
  # others stayed as they were, from the initial state to step 2 (spatial), then 2 -> 4
  # (temporal: every group), 4 -> 6 (decoder). (The discriminator's gates: test_gan.py.)
  c = experiment.build(config, workdir=full_dir)
  with jax.set_mesh(c.mesh):
    states = [jax.device_get(c.init_state())]
  states += [jax.device_get(c.restore(full_dir, step)[0]) for step in (2, 4, 6)]
  groups = {
      "temporal_encoder": lambda p: p["temporal_encoder"],
      "encoder": lambda p: p["encoder"],
      "codebook_projection": lambda p: p["quantizer"]["projection"],
      "decoder": lambda p: p["decoder"],
  }
  trains = [{"encoder", "codebook_projection", "decoder"}, set(groups), {"decoder"}]
  changed = lambda before, after: any(not np.array_equal(x, y) for x, y in
                                      zip(jax.tree.leaves(before), jax.tree.leaves(after)))
  for (before, after), trained in zip(zip(states, states[1:]), trains):
    for g, get in groups.items():
      assert changed(get(before.params), get(after.params)) == (g in trained), g
      assert changed(_adam_state(before.opt_state, g), _adam_state(after.opt_state, g)) == (
          g in trained), g

  # The job's outputs: per-stage held-out metrics keyed by stage name, and videos.
  with open(os.path.join(full_dir, "metrics.json")) as f:
    metrics = json.load(f)
  assert list(metrics["stages"]) == ["spatial", "temporal", "decoder"]
  for stage in metrics["stages"].values():
    assert len(stage["psnr_per_frame"]) == 9 and len(stage["ssim_per_frame"]) == 9
    assert stage["thumbnail_bits"] >= stage["bits_per_clip"] > 0
  assert metrics["stages"] == resumed["stages"]
  for name in ("recon.mp4", "recon_spatial.mp4", "recon_decoder.mp4"):
    assert os.path.getsize(os.path.join(full_dir, name)) > 0


def test_weight_decay_reaches_kernels_only_and_stops_with_the_group():
  """inject_hyperparams once evaluated the decay mask as a schedule (no decay at all)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sweet_jax import optim  # pylint: disable=g-import-not-at-top
  params = {"a": {"kernel": jnp.ones(3), "bias": jnp.ones(3)}, "b": {"kernel": jnp.ones(3)}}
  tx = optim.make_optimizer(
      schedule=lambda step: 0.1, groups=[("a", "^a/"), ("b", "^b/")], lr_mult={}, b1=0.9,
      b2=0.99, eps=1e-8, weight_decay=0.5, clip_norm=1.0,
      active={"b": lambda step: jnp.asarray(0.0)})
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["a"]["kernel"], -0.05)  # -lr * wd * param
  np.testing.assert_array_equal(updates["a"]["bias"], 0.0)
  np.testing.assert_array_equal(updates["b"]["kernel"], 0.0)  # inactive: no decay either
