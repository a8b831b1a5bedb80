r"""Tokens you can read: the words behind each token of a language-codebook tokenizer.

    python -m sweet_jax.words --workdir=workdirs/sweet_image_cpu --image=photo.jpg [--image=...]
    python -m sweet_jax.words --workdir=workdirs/sweet_image_cpu   # embedded held-out images

With the MLC quantizer every spatial token is two adjectives (averaged) and a noun;
this prints them per token, in query order, for a run's checkpoint (the latest, or
--step), through `sweet_jax.load_tokenizer`. The trainer logs the same table for a few
held-out images as a TensorBoard text summary and writes it to `workdir/words.md`.
"""

import numpy as np
from absl import app, flags

from sweet_jax.cli import run_tool
from sweet_jax.data import media
from sweet_jax.readout.words import words_markdown

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Flags, defined only when run as a program (other tools define --workdir too)."""
  flags.DEFINE_string("workdir", None, "A training run's directory.")
  flags.DEFINE_multi_string("image", [], "Image files to read (default: held-out set).")
  flags.DEFINE_integer("num_heldout", 4, "Held-out images when no --image.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from sweet_jax import api  # pylint: disable=g-import-not-at-top  (imports TF: after set-up)
  from sweet_jax.data import streams  # pylint: disable=g-import-not-at-top  (the same)
  tok = api.load_tokenizer(FLAGS.workdir, FLAGS.step)
  if not tok.has_words:
    raise ValueError(f"the model in {FLAGS.workdir} does not quantize with the language "
                     "codebook (config.model.quantizer_type='mlc'); its tokens are not words")
  if FLAGS.image:
    images = [media.read_image(path) for path in FLAGS.image]
    names = list(FLAGS.image)
  else:
    data = tok.config.data
    batches = streams.eval_batches(data, "image", data.eval_split, FLAGS.num_heldout,
                                   dict(process_index=0, process_count=1))
    batch = next(iter(batches))
    images = batch["image"][batch["mask"].astype(bool)][:FLAGS.num_heldout]
    names = [f"{data.name}/{data.eval_split} #{i}" for i in range(len(images))]
  indices = tok.encode(images)
  indices = np.asarray(indices["spatial"] if isinstance(indices, dict) else indices)
  print(f"Words of {len(names)} image(s), checkpoint step {tok.step} of {FLAGS.workdir}:\n")
  print(words_markdown(tok.model, indices, names))


if __name__ == "__main__":
  define_flags()
  run_tool(main)
