r"""Reconstruct your own photos and videos with a trained tokenizer.

    python -m sweet_jax.reconstruct --workdir=RUN --input=FILE_OR_DIR --out=DIR [--step=N]

Every image (.png, .jpg, .webp, ...) and video (.mp4, .avi, .mov, ...) in --input (a
file, or a directory's files) goes through the run's tokenizer (`load_tokenizer`: the
latest checkpoint's EMA weights) under the policy of `sweet_jax.data.media`: the
shorter side resized to the model's size and the central square kept. Videos keep their
first --max_frames frames; a video model codes them in consecutive clips of its trained
length (a shorter last clip as 1 + k * temporal_patch_size frames), an image model
frame by frame. Written to --out (local or a bucket):

  <name>_<ext>.png    the model's view of the image | its reconstruction
  <name>_<ext>.mp4    the same, side by side, for a video
  reconstruct.md      one row per file: PSNR, SSIM, bits, the first tokens' words
  reconstruct.json    the same per file, with every token's words and per-frame PSNR

A file that cannot be read is reported (one line naming it and why) and skipped; the
command fails (exit status 1) when no file could be reconstructed.
"""

from typing import Any

import numpy as np
from absl import app, flags, logging
from etils import epath

from sweet_jax import io, metrics
from sweet_jax.cli import run_tool
from sweet_jax.data import media
from sweet_jax.evaluate.images import make_grid, save_png
from sweet_jax.evaluate.video import write_mp4
from sweet_jax.readout.words import token_words

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Flags, defined only when run as a program (other tools define --workdir too)."""
  flags.DEFINE_string("workdir", None, "A training run's directory.")
  flags.DEFINE_string("input", None, "An image or video file, or a directory of them.")
  flags.DEFINE_string("out", None, "Where to write the reconstructions and the table.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_integer("max_frames", None, "Frames of a video to reconstruct (default: a "
                       "video model's trained clip length; 16 for an image model).")
  flags.mark_flags_as_required(["workdir", "input", "out"])

WORDS_SHOWN = 4  # tokens whose words the table shows (all of them are in the JSON)


def reconstruct_file(tok: Any, path: epath.Path, out_dir: epath.Path,
                     max_frames: int | None) -> dict:
  """Reconstructs one file into `out_dir`; its record (metrics, bits, words, output)."""
  out = out_dir / path.name.replace(".", "_")
  record: dict[str, Any] = {"file": str(path)}
  if media.is_video(path):
    if max_frames is None:
      max_frames = tok.model.num_frames if tok.modality == "video" else 16
    video = media.read_video(path, max_frames=max_frames)
    views, recons, bits = _reconstruct_video(tok, video)
    write_mp4(f"{out}.mp4", np.stack([make_grid([np.stack([v, r])]) for v, r in
                                      zip(views, recons)]))
    record.update(kind="video", frames=len(views), output=f"{out}.mp4")
    frame_psnr = np.asarray(metrics.psnr(views / 255.0, recons / 255.0))
    record["psnr_per_frame"] = [round(float(v), 3) for v in frame_psnr]
    first = views[:1]
  else:
    image = media.read_image(path)
    views, recons = tok.reconstruct([image])
    bits = tok.bits_per_sample(1)
    save_png(f"{out}.png", make_grid([np.concatenate([views, recons])]))
    record.update(kind="image", output=f"{out}.png")
    first = views
  record["psnr"] = float(np.mean(np.asarray(metrics.psnr(views / 255.0, recons / 255.0))))
  record["ssim"] = float(np.mean(np.asarray(metrics.ssim(views / 255.0, recons / 255.0))))
  record["bits"] = float(bits)
  if tok.has_words:
    indices = tok.encode(list(first))
    spatial = indices["spatial"] if isinstance(indices, dict) else indices
    record["words"] = token_words(tok.model, spatial)[0]
  return record


def _reconstruct_video(tok: Any, video: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
  """(model views [T, S, S, 3], reconstructions, bits of all the tokens)."""
  if tok.modality == "image":
    views, recons = tok.reconstruct(list(video))
    return views, recons, len(views) * tok.bits_per_sample(1)
  views, recons, bits, start = [], [], 0.0, 0
  while start < len(video):
    length = media.usable_frames(len(video) - start, tok.model.temporal_patch_size,
                                 tok.model.num_frames)
    view, recon = tok.reconstruct([video[start:start + length]])
    views.append(view[0])
    recons.append(recon[0])
    bits += tok.bits_per_sample(length)
    start += length
  return np.concatenate(views), np.concatenate(recons), bits


def table(records: list[dict]) -> str:
  """The Markdown table of the reconstructed files."""
  lines = ["| file | kind | PSNR (dB) | SSIM | bits | words of the first tokens |",
           "|---|---|---|---|---|---|"]
  for r in records:
    if "error" in r:
      lines.append(f"| {r['file']} | error | | | | {r['error']} |")
      continue
    kind = r["kind"] + (f", {r['frames']} frames" if r["kind"] == "video" else "")
    words = "; ".join(r.get("words", [])[:WORDS_SHOWN]) or "-"
    lines.append(f"| {r['file']} | {kind} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                 f"{r['bits']:.0f} | {words} |")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from sweet_jax import api  # pylint: disable=g-import-not-at-top  (imports TF: after set-up)
  files = media.list_media(FLAGS.input)
  tok = api.load_tokenizer(FLAGS.workdir, FLAGS.step)
  out_dir = epath.Path(FLAGS.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  records = []
  for i, path in enumerate(files):
    try:
      records.append(reconstruct_file(tok, path, out_dir, FLAGS.max_frames))
    except media.MediaError as e:
      logging.warning("Skipping %s", e)
      print(f"skipped: {e}")
      records.append({"file": str(path), "error": str(e)})
    print(f"[{i + 1}/{len(files)}] {path.name}", flush=True)
  summary = table(records)
  io.write_text(out_dir / "reconstruct.md", summary)
  io.write_json(out_dir / "reconstruct.json",
                {"workdir": FLAGS.workdir, "step": tok.step,
                 "weights": "ema" if tok.ema else "raw", "files": records})
  print(f"\nCheckpoint step {tok.step} of {FLAGS.workdir}:\n\n{summary}")
  print(f"Wrote {out_dir / 'reconstruct.md'}, {out_dir / 'reconstruct.json'} and "
        f"{sum('error' not in r for r in records)} reconstruction(s) to {out_dir}")
  if all("error" in r for r in records):
    raise ValueError(f"none of the {len(files)} file(s) in --input {FLAGS.input} could be "
                     "reconstructed (see the reasons above)")


if __name__ == "__main__":
  define_flags()
  run_tool(main)
