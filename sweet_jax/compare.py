r"""Side-by-side results of finished runs: a Markdown table, JSON and one image.

  python -m sweet_jax.compare --workdirs=workdirs/compare/sweet,workdirs/compare/softvq \
    --out=workdirs/compare

Reads each workdir's metrics.json and config.json (written by the trainer) and writes
`<out>/compare.md` (the table, also printed), `<out>/compare.json` (every row) and
`<out>/compare.png` (each run's held-out originals / reconstructions grid, one band per
run, top to bottom in the order given). ./launch/compare.sh trains the README's three
CPU configs and runs this.
"""

import io
import json
from typing import Any, Sequence

import numpy as np
from absl import flags
from etils import epath
from PIL import Image

from sweet_jax import io as sweet_io
from sweet_jax.cli import run_tool
from sweet_jax.evaluate.images import save_png

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Finished run directories.", required=True)
_OUT = flags.DEFINE_string("out", None, "Where compare.md / .json / .png go.", required=True)


def _read(path: str) -> dict[str, Any]:
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"{path} does not exist: is the run finished (the trainer writes "
                            "metrics.json at the end)?")
  return json.loads(epath.Path(path).read_text())


def codebook_usage(metrics: dict[str, Any]) -> dict[str, float]:
  """Codebook name ("code" for a model's only codebook) -> fraction of its codes used on
  the held-out set."""
  return {k[len("codebook_"):-len("_usage")] or "code": v for k, v in sorted(metrics.items())
          if k.startswith("codebook_") and k.endswith("_usage")}


def row(workdir: str) -> dict[str, Any]:
  metrics = _read(epath.Path(workdir) / "metrics.json")
  config = _read(epath.Path(workdir) / "config.json")
  return {
      "workdir": workdir,
      "model": config["model"]["name"],
      "variant": config.get("variant", ""),
      "parameters": metrics.get("parameters"),
      "tokens": config["model"].get("num_latent_tokens", config["model"].get("num_queries")),
      "bits_per_image": metrics.get("bits_per_image"),
      "steps": metrics["step"],
      "train_minutes": round(metrics.get("train_seconds", 0.0) / 60, 1),
      "psnr": metrics["psnr"],
      "ssim": metrics["ssim"],
      "lpips": metrics.get("lpips"),
      "fd_vgg": metrics.get("fd_vgg"),
      "codebook_usage": codebook_usage(metrics),
  }


def _number(value: Any, digits: int) -> str:
  return "–" if value is None else f"{value:.{digits}f}"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
  lines = ["| model | params | tokens | bits/image | steps | train min | PSNR (dB) | SSIM | "
           "LPIPS | FD-VGG | codebook usage |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    usage = ", ".join(f"{k} {v:.2f}" for k, v in r["codebook_usage"].items())
    params = "–" if r["parameters"] is None else f"{r['parameters'] / 1e3:.0f}k"
    lines.append(
        f"| {r['model']} ({r['variant']}) | {params} | {r['tokens']} | "
        f"{_number(r['bits_per_image'], 0)} | {r['steps']} | {r['train_minutes']} | "
        f"{r['psnr']:.2f} | {r['ssim']:.3f} | {_number(r['lpips'], 3)} | "
        f"{_number(r['fd_vgg'], 1)} | {usage} |")
  return "\n".join(lines) + "\n"


def stacked_grids(workdirs: Sequence[str], pad: int = 6) -> np.ndarray:
  """The runs' recon_grid.png, one above the other (padded to the widest, white gaps)."""
  grids = [np.asarray(Image.open(io.BytesIO((epath.Path(w) / "recon_grid.png").read_bytes()))
                      .convert("RGB")) for w in workdirs]
  width = max(g.shape[1] for g in grids)
  bands = []
  for g in grids:
    band = np.full((g.shape[0] + pad, width, 3), 255, np.uint8)
    band[:g.shape[0], :g.shape[1]] = g
    bands.append(band)
  return np.concatenate(bands)


def main(argv: Sequence[str]) -> None:
  del argv
  rows = [row(w) for w in _WORKDIRS.value]
  out = epath.Path(_OUT.value)
  table = markdown(rows)
  print(table)
  sweet_io.write_text(out / "compare.md", table)
  sweet_io.write_json(out / "compare.json", rows)
  save_png(out / "compare.png", stacked_grids(_WORKDIRS.value))


if __name__ == "__main__":
  run_tool(main)
