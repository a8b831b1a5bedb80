"""Process set-up shared by the command-line entry points (train, evaluate)."""

import logging as std_logging

from absl import logging


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


def set_up_process() -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  hide_accelerators_from_tensorflow()
