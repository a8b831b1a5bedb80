"""python -m sweet_jax.evaluate --config=CONFIG[:VARIANT] --workdir=RUN [--dataset=NAME]
[--split=SPLIT] [--step=N]: evaluates a run's checkpoint (EMA weights when kept); see
sweet_jax/evaluate/evaluator.py. Config overrides as for training (--config.FIELD=VALUE)."""

import json

from absl import app, flags
from ml_collections import config_flags

from sweet_jax.cli import run_tool

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (checkpoints/).")
_DATASET = flags.DEFINE_string("dataset", None, "TFDS name; default: the config's eval data.")
_SPLIT = flags.DEFINE_string("split", None, "Split; default: the config's eval split.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable-next=g-import-not-at-top  (TensorFlow is imported after set_up_process)
  from sweet_jax.evaluate.saved_run import evaluate_checkpoint
  record = evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, dataset=_DATASET.value,
                               split=_SPLIT.value, step=_STEP.value)
  print(json.dumps(record, indent=2))


if __name__ == "__main__":
  run_tool(main)
