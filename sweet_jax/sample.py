r"""Sample from a trained generator and decode the samples with its tokenizer.

    python -m sweet_jax.sample --workdir=GEN_RUN --num=64 --out=DIR [--classes=3,7]
        [--seed=0] [--step=N] [--sampling=temperature=0.9,top_k=100]

The generator run's EMA weights (or raw ones when it kept no EMA) sample --num sequences
(classes in turn from --classes, default every class in turn; unconditional models
ignore it), deterministic per --seed; the tokenizer that made the run's token dataset
decodes them. Sampling settings come from the run's config.sampling, each overridable
with --sampling=FIELD=VALUE,... Written to --out (local or a bucket):

  samples_grid.png / samples.mp4   the decoded samples (images / clips)
  samples.npz                      the token sequences, their labels and tokenizer indices
  words.md                         the samples' words (a language-codebook tokenizer)
"""

import json

import jax
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath

from sweet_jax import experiment, io
from sweet_jax.cli import run_tool
from sweet_jax.evaluate.generation import GenerationEvaluator, sample_picture
from sweet_jax.evaluate.images import save_png
from sweet_jax.evaluate.video import write_mp4
from sweet_jax.readout.words import sample_words_markdown

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A generator's training run directory.")
  flags.DEFINE_string("out", None, "Where to write the samples.")
  flags.DEFINE_integer("num", 64, "Number of samples.")
  flags.DEFINE_list("classes", None, "Class labels to sample, in turn (default: all).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_list("sampling", [], "Overrides of the run's config.sampling, "
                    "FIELD=VALUE,... (e.g. temperature=0.9,top_k=100).")
  flags.mark_flags_as_required(["workdir", "out"])


def load_run_config(workdir: str, overrides: list[str]) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{workdir} has no config.json: is it the --workdir of a "
                            "generator's training run?")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  for override in overrides:
    name, sep, value = override.partition("=")
    if not sep:
      raise ValueError(f"--sampling={override!r}: write FIELD=VALUE")
    if name not in config.sampling:
      raise ValueError(f"config.sampling has no field {name!r} (fields: "
                       f"{sorted(config.sampling)})")
    kind = type(config.sampling[name])
    config.sampling[name] = (value.lower() in ("1", "true")) if kind is bool else kind(value)
  return config


def write_samples(workdir: str, out: str, *, num: int = 64, classes: list[int] | None = None,
                  seed: int = 0, step: int | None = None,
                  sampling: list[str] = ()) -> list[epath.Path]:
  """Samples `num` sequences of the run in `workdir`, decodes them and writes them to
  `out` (see the module docstring); returns the paths written."""
  config = load_run_config(workdir, list(sampling))
  e = experiment.build(config)
  if e.kind != "generator":
    raise ValueError(f"{workdir} is a tokenizer run; python -m sweet_jax.reconstruct "
                     "uses those")
  state, step = e.restore(workdir, step, purpose="sampling")
  evaluator = GenerationEvaluator(e, num_samples=num, num_shown=num)
  chosen = None
  if classes:
    chosen = np.asarray(classes, np.int32)
    if e.model.num_classes == 0 or chosen.min() < 0 or chosen.max() >= e.model.num_classes:
      raise ValueError(f"--classes={classes}: the model has {e.model.num_classes} classes "
                       "(0: unconditional)")
  labels = evaluator.labels(num, chosen)
  sequences = evaluator.sample(state.eval_params, num, seed=seed, labels=labels)
  _, pictures, indices = evaluator.score_sequences(sequences, with_metrics=False)
  out_dir = epath.Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  picture = sample_picture(pictures)
  paths = []
  if picture.ndim == 4:
    paths.append(out_dir / "samples.mp4")
    write_mp4(paths[-1], picture)
  else:
    paths.append(out_dir / "samples_grid.png")
    save_png(paths[-1], picture)
  by_branch = indices if isinstance(indices, dict) else {"spatial": indices}
  arrays = {"sequences": sequences, "labels": labels,
            **{f"indices_{b}": v for b, v in by_branch.items()}}
  paths.append(out_dir / "samples.npz")
  io.write_bytes(paths[-1], _npz_bytes(arrays))
  tokenizer = evaluator.shown_model
  if tokenizer.has_words:
    paths.append(out_dir / "words.md")
    names = [f"sample {i}" + (f" (class {int(c)})" if e.model.num_classes else "")
             for i, c in enumerate(labels)]
    io.write_text(paths[-1], sample_words_markdown(tokenizer, by_branch["spatial"], names))
  if jax.process_index() == 0:
    print(f"{num} samples from step {step} of {workdir}; wrote "
          + ", ".join(str(p) for p in paths))
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  write_samples(FLAGS.workdir, FLAGS.out, num=FLAGS.num,
                classes=[int(c) for c in FLAGS.classes] if FLAGS.classes else None,
                seed=FLAGS.seed, step=FLAGS.step, sampling=FLAGS.sampling)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  import io as std_io  # pylint: disable=g-import-not-at-top
  buffer = std_io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  return buffer.getvalue()


if __name__ == "__main__":
  define_flags()
  run_tool(main)
