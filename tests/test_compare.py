"""sweet_jax.compare: finished runs side by side (table, JSON, stacked grids)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sweet_jax import compare
from sweet_jax.evaluate.images import save_png


def _fake_run(path, name, psnr, grid_width, usage):
  os.makedirs(path)
  metrics = {"step": 100, "psnr": psnr, "ssim": 0.5, "lpips": 0.25, "fd_vgg": 12.0,
             "parameters": 515000, "bits_per_image": 320.0, "train_seconds": 90.0,
             **{f"codebook_{k}_usage" if k else "codebook_usage": v for k, v in usage.items()}}
  config = {"model": {"name": name, "num_latent_tokens": 32}, "variant": "cpu"}
  for file, value in (("metrics.json", metrics), ("config.json", config)):
    with open(os.path.join(path, file), "w") as f:
      json.dump(value, f)
  save_png(os.path.join(path, "recon_grid.png"), np.zeros((10, grid_width, 3), np.uint8))


def test_table_json_and_stacked_grids(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  _fake_run(a, "softvq", 21.5, 20, {"": 0.5})  # (one codebook: "codebook_usage")
  _fake_run(b, "cqae_image", 22.25, 30, {"adj": 0.25, "noun": 0.75})
  out = str(tmp_path / "out")
  result = subprocess.run([sys.executable, "-m", "sweet_jax.compare", f"--workdirs={a},{b}",
                           f"--out={out}"], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
  lines = result.stdout.strip().splitlines()
  assert lines[2].startswith("| softvq (cpu) | 515k | 32 | 320 | 100 | 1.5 | 21.50 | 0.500 |")
  assert lines[2].endswith("| code 0.50 |") and lines[3].endswith("| adj 0.25, noun 0.75 |")
  with open(os.path.join(out, "compare.json")) as f:
    rows = json.load(f)
  assert [r["psnr"] for r in rows] == [21.5, 22.25]
  grid = compare.stacked_grids([a, b], pad=6)
  assert grid.shape == (2 * (10 + 6), 30, 3)
  assert os.path.getsize(os.path.join(out, "compare.png")) > 0


def test_an_unfinished_run_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.json does not exist: is the run finished"):
    compare.row(str(tmp_path))
