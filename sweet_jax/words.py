r"""Tokens you can read: the words behind each token of a language-codebook tokenizer.

    python -m sweet_jax.words --workdir=workdirs/cpu --image=photo.jpg [--image=...]
    python -m sweet_jax.words --workdir=workdirs/cpu            # embedded held-out images

With the MLC quantizer every spatial token is two adjectives (averaged) and a noun;
this prints them per token, in query order, for the latest checkpoint of a run. The
trainer logs the same table for a few held-out images as a TensorBoard text summary
and writes it to `workdir/words.md`.
"""

import json
import os
from typing import Sequence

import numpy as np
from absl import app, flags
from flax import linen as nn
from PIL import Image, UnidentifiedImageError

from sweet_jax.data.preprocess import resize_shorter_center_crop

FLAGS = flags.FLAGS


def define_flags() -> None:
  """CLI flags, defined only when run as a program (the trainer imports this module)."""
  flags.DEFINE_string("workdir", None, "A training run's directory.")
  flags.DEFINE_multi_string("image", [], "Image files to read (default: held-out set).")
  flags.DEFINE_integer("num_heldout", 4, "Held-out images when no --image.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.mark_flags_as_required(["workdir"])


def has_words(model: nn.Module) -> bool:
  """Whether the model's tokens are words (the MLC quantizer over a language codebook)."""
  return (getattr(model, "quantizer_type", None) == "mlc"
          and getattr(model, "mlc_codebook", None) == "language")


def token_words(model: nn.Module, indices: np.ndarray, temporal: bool = False
                ) -> list[list[str]]:
  """Indices [B, Q, 3] -> per image, per token 'adjective+adjective noun' (with
  `temporal`, the video CQAE's temporal tokens: 'adverb+adverb verb')."""
  quantizer = (model.make_temporal_quantizer if temporal else model.make_quantizer)(parent=None)
  words = quantizer.words(np.asarray(indices))
  return [[f"{a}+{b} {n}" for a, b, n in image] for image in words]


def words_markdown(model: nn.Module, indices: np.ndarray,
                   names: Sequence[str] | None = None) -> str:
  """A markdown table per image (TensorBoard renders it), one row per token."""
  parts = []
  for i, tokens in enumerate(token_words(model, indices)):
    title = names[i] if names else f"held-out image {i}"
    rows = "\n".join(f"| {t} | {w} |" for t, w in enumerate(tokens))
    parts.append(f"**{title}**\n\n| token | words |\n|---|---|\n{rows}\n")
  return "\n".join(parts)


def temporal_words_markdown(model: nn.Module, indices: np.ndarray) -> str:
  """The video CQAE's temporal tokens [B, N, 3] (one per patch position, row-major), as
  a grid of 'adverb+adverb verb' per clip."""
  clips = token_words(model, indices, temporal=True)
  side = int(round(len(clips[0]) ** 0.5))
  parts = []
  for i, cells in enumerate(clips):
    rows = "\n".join("| " + " | ".join(cells[r * side:(r + 1) * side]) + " |" for r in range(side))
    header = "| " + " | ".join(f"x{c}" for c in range(side)) + " |\n|" + "---|" * side
    parts.append(f"**held-out clip {i}: temporal tokens by position**\n\n{header}\n{rows}\n")
  return "\n".join(parts)


def load_image(path: str, size: int) -> np.ndarray:
  """An image file -> uint8 [size, size, 3] (shorter side resized, centre crop)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--image {path} does not exist")
  try:
    with Image.open(path) as image:
      array = np.asarray(image.convert("RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"--image {path} is not a readable image: {e}") from e
  return resize_shorter_center_crop(array, size)


def read_run(workdir: str, step: int | None = None):
  """(config, components, params, step) of a run's checkpoint, on this host's devices."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from sweet_jax import train  # pylint: disable=g-import-not-at-top
  from sweet_jax.checkpoint import restore_run_state  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(workdir)
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} is missing: is {workdir} a sweet_jax run?")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  components = train.build_components(config, workdir=workdir)
  state, step = restore_run_state(workdir, components, step)
  return config, components, state.eval_params, step


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  from sweet_jax import parallel  # pylint: disable=g-import-not-at-top
  from sweet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from sweet_jax.step import model_input  # pylint: disable=g-import-not-at-top
  config, c, params, step = read_run(FLAGS.workdir, FLAGS.step)
  if not has_words(c.model):
    raise app.UsageError(f"the model in {FLAGS.workdir} does not quantize with the language "
                         "codebook (config.model.quantizer_type='mlc'); its tokens are not words")
  size = config.data.image_size
  if FLAGS.image:
    images = np.stack([load_image(p, size) for p in FLAGS.image])
    names = list(FLAGS.image)
  else:
    source = pipeline.get_data_source(config.data.name, config.data.eval_split,
                                      config.data.data_dir)
    batches = pipeline.make_eval_batches(source, global_batch_size=FLAGS.num_heldout,
                                         image_size=size, process_index=0, process_count=1,
                                         preprocess=config.data.eval_preprocess)
    images = next(iter(batches))["image"][:FLAGS.num_heldout]
    names = [f"{config.data.name}/{config.data.eval_split} #{i}" for i in range(len(images))]
  # Pad to a multiple of the data-parallel size, then drop the padding.
  dp = parallel.data_parallel_size(c.mesh, c.rules)
  padded = np.concatenate([images, np.zeros((-len(images) % dp,) + images.shape[1:], np.uint8)])
  encode = jax.jit(lambda p, x: c.model.apply(
      {"params": p}, model_input(c.model, {"image": x}), method=c.model.encode_to_indices))
  with parallel.run_context(c.mesh, c.rules):
    indices = jax.device_get(encode(params, jax.device_put(padded, c.batch_sharding)))
  if isinstance(indices, dict):  # a video model: an image has spatial tokens only
    indices = indices["spatial"]
  indices = np.asarray(indices)[:len(images)]
  print(f"Words of {len(images)} image(s), checkpoint step {step} of {FLAGS.workdir}:\n")
  print(words_markdown(c.model, indices, names))


if __name__ == "__main__":
  define_flags()
  app.run(main)
