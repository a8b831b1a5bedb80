"""Entry point: python -m sweet_jax.main --config=configs/sweet_image.py:cpu --workdir=DIR
[--stop_at_step=N] [--allow_config_change]
[--distributed [--coordinator_address=H:P --num_processes=N --process_id=I]]"""

from sweet_jax import preemption  # first: from here on SIGTERM stops the run cleanly

preemption.install()

# pylint: disable=g-import-not-at-top,wrong-import-position
import time

from absl import app, flags, logging
from ml_collections import config_flags

from sweet_jax.cli import run_tool, verbose

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_STOP_AT_STEP = flags.DEFINE_integer(
    "stop_at_step", None, "End this invocation at this step, with a checkpoint; the schedules "
    "still follow the whole run (a time-boxed job: rerun to continue).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a run with a config that differs from its "
    "config.json in more than the lengths, intervals and paths a restart may change.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  start = time.time()
  # (imported once TF is set up)
  from sweet_jax import io, train  # pylint: disable=g-import-not-at-top
  from sweet_jax.evaluate import artifacts  # pylint: disable=g-import-not-at-top
  metrics = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                     stop_at_step=_STOP_AT_STEP.value,
                                     allow_config_change=_ALLOW_CONFIG_CHANGE.value,
                                     log_all_metrics=verbose())
  logging.debug("Final metrics: %s", metrics)
  print(artifacts.run_summary(metrics, io.absolute(_WORKDIR.value), time.time() - start),
        flush=True)


if __name__ == "__main__":
  run_tool(main)
