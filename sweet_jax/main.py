"""Entry point: python -m sweet_jax.main --config=configs/sweet_image.py:cpu --workdir=DIR"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def hide_accelerators_from_tensorflow() -> None:
  """TF (used by TFDS features and TensorBoard) must not grab GPU/TPU memory from JAX."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tf.config.set_visible_devices([], "GPU")


class _QuietLibraries(std_logging.Filter):
  """Drops the libraries' INFO chatter (orbax logs every file it writes); keeps warnings."""

  NOISY = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/absl/")

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in self.NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  hide_accelerators_from_tensorflow()
  from sweet_jax import train  # pylint: disable=g-import-not-at-top  (after TF is set up)
  metrics = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("Final metrics: %s", metrics)
  print(metrics)


if __name__ == "__main__":
  app.run(main)
