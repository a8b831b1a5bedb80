"""Everything an evaluation leaves behind, written in one place: TensorBoard summaries
(scalars, the picture, the words) and the run's files, on any filesystem:

  metrics.json         the final held-out metrics (per stage under "stages")
  stage_metrics.json   the held-out metrics after each curriculum stage, as they come
  eval_<step>.json     a split evaluation (trainer's periodic one, or the evaluate CLI)
  recon_grid.png       images: originals / reconstructions / bit-matched thumbnails
  recon.mp4, recon_<stage>.mp4   clips: originals above reconstructions
  samples_grid.png, samples.mp4  a generator's samples, decoded by its tokenizer
  baselines_grid.png   training crops, their tokens decoded, samples, marginal tokens
  words.md             the words of the shown examples' tokens (language codebook)
"""

from typing import Any

import jax
from absl import logging
from etils import epath

from sweet_jax import io
from sweet_jax.evaluate.evaluator import EvalResult
from sweet_jax.evaluate.images import save_png
from sweet_jax.evaluate.video import write_mp4, write_video_summary
from sweet_jax.models.tokenizer import Tokenizer
from sweet_jax.readout.words import sample_words_markdown, words_markdown


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
  """The scalar entries (per-frame curves and nested records left out)."""
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def log_summary(writer: Any, result: EvalResult, prefix: str, model: Tokenizer,
                num_word_images: int) -> None:
  """The held-out picture, scalars and (language codebook) words under `prefix`."""
  if model.modality == "video":
    write_video_summary(writer, result.step, f"{prefix}/originals_recons", result.picture)
  else:
    writer.write_images(result.step,
                        {f"{prefix}/originals_recons_thumbnails": result.picture[None]})
  log_scalars(writer, result.step, prefix, result.metrics)
  if model.has_words:
    spatial = result.shown_indices
    spatial = spatial["spatial"] if isinstance(spatial, dict) else spatial
    writer.write_texts(result.step, {
        f"{prefix}/words": words_markdown(model, spatial[:num_word_images])})


def log_scalars(writer: Any, step: int, prefix: str, metrics: dict[str, Any]) -> None:
  writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in numeric(metrics).items()})


def record_split_evaluation(writer: Any, workdir: str, result: EvalResult,
                            chief: bool) -> None:
  """A split evaluation (the trainer's periodic one, or the evaluate command): scalars
  under eval_<dataset>_<split>/, `eval_<step>.json` (written by the chief) and a log line.
  The record holds the split, whether reference statistics were cached, and the metrics."""
  prefix = f"eval_{result.dataset}_{result.split}".replace("/", "_")
  log_scalars(writer, result.step, prefix, result.metrics)
  if chief:
    io.write_json(epath.Path(workdir) / f"eval_{result.step}.json", result.record())
  logging.info("Evaluation of step %d on %s:%s: %s", result.step, result.dataset,
               result.split, numeric(result.metrics))


def write_stage_metrics(workdir: str, stage_results: dict[str, Any]) -> epath.Path:
  path = epath.Path(workdir) / "stage_metrics.json"
  io.write_json(path, stage_results)
  return path


def read_stage_metrics(workdir: str) -> dict[str, Any]:
  return io.read_json(epath.Path(workdir) / "stage_metrics.json", default={})


def write_stage_video(workdir: str, stage: str, result: EvalResult) -> epath.Path:
  """recon_<stage>.mp4: the held-out clips after a curriculum stage."""
  path = epath.Path(workdir) / f"recon_{stage}.mp4"
  write_mp4(path, result.picture)
  return path


def write_run_outputs(workdir: str, metrics: dict[str, Any], result: EvalResult,
                      model: Tokenizer, picture_name: str = "recon") -> list[epath.Path]:
  """metrics.json, the picture (<picture_name>.mp4 or <picture_name>_grid.png) and
  words.md (of `model`'s tokens); the paths."""
  workdir = epath.Path(workdir)
  paths = [workdir / "metrics.json"]
  io.write_json(paths[0], metrics)
  if model.modality == "video":
    paths.append(workdir / f"{picture_name}.mp4")
    write_mp4(paths[-1], result.picture)
  else:
    paths.append(workdir / f"{picture_name}_grid.png")
    save_png(paths[-1], result.picture)
  if model.has_words:
    paths.append(workdir / "words.md")
    names = None
    if picture_name == "samples":  # a generator's samples, not held-out examples
      count = len(jax.tree.leaves(result.shown_indices)[0])
      names = [f"sample {i}" for i in range(count)]
    io.write_text(paths[-1], sample_words_markdown(model, result.shown_indices, names))
  return paths


def write_baselines_picture(workdir: str, picture: Any) -> epath.Path:
  """baselines_grid.png: a generator's samples between its baselines."""
  path = epath.Path(workdir) / "baselines_grid.png"
  save_png(path, picture)
  return path


# The headline figures of a summary, in order, with how to print each.
_HEADLINE = (("psnr", "PSNR {:.2f} dB"), ("ssim", "SSIM {:.3f}"), ("lpips", "LPIPS {:.3f}"),
             ("fd_vgg", "FD-VGG {:.1f}"), ("rfvd", "rFVD {:.1f}"),
             ("mean_color_error", "colour off by {:.1f}/255"))


def run_outputs(workdir: str) -> list[str]:
  """What a training run leaves in `workdir`, by name, in reading order (those present)."""
  workdir = epath.Path(workdir)
  present = {p.name for p in workdir.iterdir()} if workdir.is_dir() else set()
  first = ["metrics.json", "stage_metrics.json", "recon_grid.png", "recon.mp4",
           "samples_grid.png", "samples.mp4", "baselines_grid.png", "words.md"]
  names = [n for n in first if n in present]
  names += sorted(n for n in present if n.startswith("recon_") and n.endswith(".mp4"))
  names += sorted((n for n in present if n.startswith("eval_") and n.endswith(".json")),
                  key=lambda n: int(n[5:-5]) if n[5:-5].isdigit() else -1)
  names += [n for n in ("config.json", "codebook") if n in present]
  if "checkpoints" in present:
    names.append("checkpoints/")
  if any(n.startswith("events.out.tfevents") for n in present):
    names.append(f"TensorBoard events (tensorboard --logdir {workdir})")
  return names


def headline(metrics: dict[str, Any]) -> str:
  """'PSNR 21.33 dB, SSIM 0.543 (bit-matched 7x7 thumbnail: PSNR 20.85 dB, SSIM 0.499)'."""
  ours = ", ".join(spec.format(metrics[k]) for k, spec in _HEADLINE if k in metrics)
  thumb = ", ".join(spec.format(metrics[f"thumbnail_{k}"]) for k, spec in _HEADLINE
                    if f"thumbnail_{k}" in metrics)
  if thumb:
    side = metrics.get("thumbnail_side")
    ours += f" (bit-matched {side}x{side} thumbnail: {thumb})"
  return ours


def generation_lines(metrics: dict[str, Any]) -> list[str]:
  """A generator's scores beside its baselines (where the run computed them)."""
  def beside(key: str, digits: int = 1) -> str:
    extra = [f"{name} {metrics[f'{prefix}_{key}']:.{digits}f}"
             for prefix, name in (("marginal", "marginal tokens"), ("real_tokens", "real tokens"))
             if f"{prefix}_{key}" in metrics]
    return f"{metrics[key]:.{digits}f}" + (f" ({', '.join(extra)})" if extra else "")

  lines = []
  for key, name in (("fd_vgg", "FD-VGG"), ("gfid", "gFID"), ("gfvd", "gFVD")):
    if key in metrics:
      line = f"{name} against the training data: {beside(key)}"
      if f"{key}_heldout" in metrics:
        line += f"; against held-out data: {beside(key + '_heldout')}"
      lines.append(line)
  if "heldout_nll" in metrics:
    lines.append(f"Held-out tokens: {beside('heldout_nll', 3)} nats per token")
  return lines or ["No feature network: no Fréchet distance."]


def run_summary(metrics: dict[str, Any], workdir: str, seconds: float) -> str:
  """The few lines a training run ends with: how far, the held-out figures against the
  thumbnail (per curriculum stage too) and the paths it wrote."""
  minutes = lambda s: f"{s / 60:.1f} min"
  if metrics.get("preempted"):
    where = (f"at step {metrics['step']}, with its checkpoint" if metrics.get("step") is not None
             else "before training, with the run as it was")
    return (f"Preempted (SIGTERM) {where}; run the same command again to resume.\n"
            f"Run directory: {workdir}")
  if "num_samples" in metrics:  # a generator
    return "\n".join([
        f"Step {metrics['step']} in {minutes(seconds)} ({minutes(metrics['train_seconds'])} "
        f"training), {metrics['parameters']:,} parameters; {metrics['num_samples']} samples, "
        f"{metrics.get('unique_sequences', '?')} distinct.",
        *generation_lines(metrics),
        f"Wrote in {workdir}: " + ", ".join(run_outputs(workdir))])
  count = metrics.get("num_images", metrics.get("num_clips"))
  what = "images" if "num_images" in metrics else "clips"
  lines = [f"Step {metrics['step']} in {minutes(seconds)} ({minutes(metrics['train_seconds'])} "
           f"training), {metrics['parameters']:,} parameters, "
           f"{metrics.get('bits_per_image', metrics.get('bits_per_clip', 0)):.0f} bits per "
           f"{what[:-1]}."]
  for stage, record in metrics.get("stages", {}).items():
    lines.append(f"  after stage {stage!r}: {headline(record)}")
  lines.append(f"Held-out ({count} {what}): {headline(metrics)}")
  lines.append(f"Wrote in {workdir}: " + ", ".join(run_outputs(workdir)))
  return "\n".join(lines)

