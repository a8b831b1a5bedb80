"""Entry point: python -m sweet_jax.main --config=configs/sweet_image.py:cpu --workdir=DIR"""

from absl import app, flags, logging
from ml_collections import config_flags

from sweet_jax.cli import set_up_process

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  set_up_process()
  from sweet_jax import train  # pylint: disable=g-import-not-at-top  (after TF is set up)
  metrics = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("Final metrics: %s", metrics)
  print(metrics)


if __name__ == "__main__":
  app.run(main)
