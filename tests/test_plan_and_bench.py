"""The memory planner and the benchmark on the tiny configs: they compile the real train
steps, account per-device memory from the shardings, and print / write their tables."""

import json
import os
import subprocess
import sys

import jax
import pytest

from configs import sweet_image, sweet_video
from sweet_jax import bench, plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plan_accounts_sharded_state_per_device():
  config = sweet_image.get_config("runlocal")
  replicated = plan.plan(config)  # default mesh: 8-way data parallel
  with config.unlocked():
    config.mesh = (("data", 1), ("fsdp", 8), ("model", 1))
  fsdp = plan.plan(config)
  params = replicated["state_per_device"]["params"]
  assert params >= 4 * replicated["parameters"]  # float32, whole on every device
  # FSDP shards every parameter with an `embed` axis 8 ways: most of the bytes.
  assert fsdp["state_per_device"]["params"] < params / 2
  assert fsdp["state_per_device"]["optimizer"] < replicated["state_per_device"]["optimizer"] / 2
  (stage,) = replicated["stages"]
  assert stage["activations_temp"] > 0 and stage["total"] >= stage["arguments"]
  assert replicated["fits"] == {"TPU v5p": True, "TPU v5e": True, "H100": True}
  assert "peak" in plan.format_plan(replicated)


@pytest.mark.slow  # 90 s: three train steps compiled, one with LPIPS and the 3-D GAN
def test_plan_covers_every_curriculum_step():
  config = sweet_video.get_config("runlocal")
  result = plan.plan(config)
  assert [s["name"] for s in result["stages"]] == ["spatial", "temporal", "decoder"]
  assert result["stages"][0]["data"] == "image" and result["stages"][2]["data"] == "video"


@pytest.mark.slow  # 65 s: a second process on 16 virtual devices (plan itself: the test above)
def test_plan_command_restarts_with_the_target_mesh(tmp_path):
  out = tmp_path / "plan.json"
  result = subprocess.run(
      [sys.executable, "-m", "sweet_jax.plan", "--config=configs/sweet_image.py:runlocal",
       "--mesh=(('data', 1), ('fsdp', 8), ('model', 2))", "--stages=train", f"--json={out}"],
      cwd=REPO, capture_output=True, text=True, check=False,
      env=dict(os.environ, XLA_FLAGS=""))
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads(out.read_text())
  assert written["devices"] == 16 and written["mesh"] == {"data": 1, "fsdp": 8, "model": 2}
  assert "16 devices" in result.stdout and "fits" in result.stdout


def test_plan_names_a_bad_mesh():
  with pytest.raises(ValueError, match="is not a tuple of"):
    plan.parse_mesh("data=8")
  with pytest.raises(ValueError, match="no -1"):
    plan.parse_mesh("(('data', -1),)")
  config = sweet_image.get_config("runlocal")  # 2 attention heads
  with config.unlocked():
    config.mesh = (("data", 2), ("fsdp", 1), ("model", 4))
  with pytest.raises(ValueError, match=r"cannot be laid out as .*'model'.* must divide"):
    plan.plan(config)


def test_plan_names_an_unknown_stage():
  with pytest.raises(ValueError, match=r"no stage \['decoder'\].*\['train'\]"):
    plan.plan(sweet_image.get_config("runlocal"), ["decoder"])


@pytest.mark.slow  # 50 s; the default suite times one-device benches (test_generator.py)
def test_bench_sweeps_devices():
  config = sweet_image.get_config("runlocal")
  rows = []
  for count in (1, 8):  # (8: the trainer's runlocal step, often compiled already)
    run = config.copy_and_resolve_references()
    with run.unlocked():
      run.mesh = (("data", count), ("fsdp", 1), ("model", 1))
    rows += bench.benchmark(run, steps=1, devices=jax.devices()[:count], ceiling=100.0)
  assert [(r["stage"], r["devices"], r["batch_size"]) for r in rows] == [
      ("train", 1, 8), ("train", 8, 8)]
  assert all(r["step_median_s"] > 0 and r["gflop_per_step"] > 0 for r in rows)
  table = bench.format_table(rows)
  assert table.splitlines()[0].split()[:3] == ["config", "stage", "devices"]
  assert len(table.splitlines()) == 2 + len(rows)


@pytest.mark.slow  # 3.5 minutes: three stage steps, twice
def test_bench_times_each_curriculum_step():
  config = sweet_video.get_config("runlocal")
  rows = bench.benchmark(config, steps=1, devices=jax.devices()[:1], ceiling=100.0)
  assert [(r["stage"], r["data"]) for r in rows] == [
      ("spatial", "image"), ("temporal", "video"), ("decoder", "video")]
