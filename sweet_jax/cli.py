"""Process set-up shared by the command-line entry points (train, evaluate): logging,
TensorFlow kept off the accelerators, and the multi-host runtime.

Multi-host is opt-in (`--distributed` or SWEET_JAX_DISTRIBUTED=1): every process then
calls `jax.distributed.initialize`, which finds its peers on TPU pod slices, under
SLURM, Open MPI and Kubernetes by itself; on a bare cluster pass --coordinator_address,
--num_processes and --process_id to every process.
"""

import errno
import importlib
import logging as std_logging
import os
import re
import sys
import tempfile
import traceback
from typing import Callable

from absl import app, flags, logging

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", os.environ.get("SWEET_JAX_DISTRIBUTED", "").lower() in ("1", "true"),
    "Join a multi-host job through jax.distributed (default: $SWEET_JAX_DISTRIBUTED).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (bare clusters; otherwise detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Processes in the job (bare clusters).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's rank (bare clusters).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print everything: the libraries' banners and "
                             "logs, every metric, and on an error its whole traceback.")


def verbose() -> bool:
  """Whether the tool was asked for everything (--verbose): libraries' logs, tracebacks."""
  return _VERBOSE.value


# What a user's input or machine can get wrong (bad flags or files, a full or unwritable
# disk, a run that diverged): the tools end on these with their message alone.
USER_ERRORS = (ValueError, OSError, FloatingPointError, app.UsageError)


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow (if installed) with file descriptor 2 on a temporary file: its
  native start-up banners (oneDNN, CPU features, absl's) bypass Python's logging and
  TF_CPP_MIN_LOG_LEVEL. They are shown after all if the import fails, and always with
  --verbose (read from the command line: flags are parsed later)."""
  asked = any(arg == "--verbose" or arg.lower() in ("--verbose=true", "--verbose=1")
              for arg in sys.argv)
  if "tensorflow" in sys.modules or asked:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      importlib.import_module("tensorflow")
      failed = False
    except Exception:  # pylint: disable=broad-except  (TF is optional; reported below)
      failed = True
    finally:
      os.dup2(saved, 2)
      os.close(saved)
    if failed:
      captured.seek(0)
      sys.stderr.write(captured.read().decode(errors="replace"))


_import_tensorflow_quietly()  # tools import this module before anything that imports TF


def hide_accelerators_from_tensorflow() -> None:
  """TF (used by TFDS features and TensorBoard) must not grab GPU/TPU memory from JAX."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tf.config.set_visible_devices([], "GPU")


class _QuietLibraries(std_logging.Filter):
  """Drops the libraries' INFO chatter (orbax logs every file it writes) and keeps their
  warnings and errors, each as its one line: without the traceback that their background
  threads attach to every failure (a full disk gave one per thread and file), unless
  --verbose. The tool's own last line names the cause."""

  NOISY = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/absl/", "/jax/", "/clu/")
  # Warnings that every run would print and no one can act on.
  HARMLESS = ("OpenCV is not installed", "has no dataset_info.json",
              "Type handler registry type")

  def filter(self, record: std_logging.LogRecord) -> bool:
    if _VERBOSE.value:
      return True
    ours = "/sweet_jax/" in record.pathname
    if record.levelno < std_logging.WARNING:
      return ours or not any(part in record.pathname for part in self.NOISY)
    if not ours:
      if any(text in record.getMessage() for text in self.HARMLESS):
        return False
      record.exc_info = record.exc_text = record.stack_info = None
    return True


def initialize_distributed(enabled: bool, coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins the multi-host job when `enabled`; returns whether it did.

  Explicit settings must come together (all three) and only with `enabled`, so that a
  forgotten switch or a half-specified cluster fails here, not in a hung collective.
  """
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  given = sorted(name for name, value in explicit.items() if value is not None)
  if not enabled:
    if given:
      raise ValueError(f"--{', --'.join(given)} only apply to a multi-host job: add "
                       "--distributed (or set SWEET_JAX_DISTRIBUTED=1)")
    return False
  if given and len(given) != len(explicit):
    missing = sorted(set(explicit) - set(given))
    raise ValueError(f"a bare-cluster launch needs --coordinator_address, --num_processes "
                     f"and --process_id together; missing --{', --'.join(missing)}")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} is not in [0, {num_processes})")
  import jax  # pylint: disable=g-import-not-at-top
  logging.info("Joining the multi-host job (coordinator %s)",
               coordinator_address or "from the cluster's environment")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info("Process %d of %d, %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def shutdown_distributed(initialized: bool) -> None:
  """Waits for every process (so none exits while others still checkpoint), then leaves."""
  if not initialized:
    return
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.sync_global_devices("sweet_jax:end")
  jax.distributed.shutdown()


def set_up_process() -> bool:
  """Logging, TF, and the multi-host runtime; returns whether it joined a multi-host job."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
  hide_accelerators_from_tensorflow()
  if not _VERBOSE.value:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()  # (the embedded datasets build in seconds)
  return initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                                _PROCESS_ID.value)


def run_tool(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)` for a command-line tool, set up as `set_up_process`. Any error ends it
  with one line on stderr, "error: ...", and exit status 1: a user's error with its
  message (which names the fix); any other with its type, first line and the path of a
  file holding the traceback. --verbose prints the traceback instead."""

  def guarded(argv: list[str]) -> None:
    try:
      distributed = set_up_process()
      main(argv)
    except Exception as e:  # pylint: disable=broad-except; reported as one line below
      if _VERBOSE.value:
        raise
      print(f"error: {one_line_report(e)}", file=sys.stderr)
      # Without the interpreter's shutdown: orbax's and tensorstore's threads, cut off by
      # the error, print a traceback each ("Event loop is closed", hundreds) as they die.
      # Saves are atomic (orbax renames a finished checkpoint into place), so nothing
      # half-written is left behind as a checkpoint.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(1)  # pylint: disable=protected-access
    shutdown_distributed(distributed)

  app.run(guarded)


def _causes(error: BaseException, implicit: bool = False) -> list[BaseException]:
  """`error` and what it was raised from (`raise ... from`), outermost first; `implicit`
  adds what it was raised while handling."""
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or (error.__context__ if implicit else None)
  return chain


def _disk_full(error: BaseException) -> str | None:
  """The one line for a full disk, wherever it surfaced: an OSError (ENOSPC) from our code
  or orbax, or TensorFlow's ResourceExhaustedError from the summary writer, which clu
  re-raises from its writer thread as an AsyncError."""
  for e in _causes(error, implicit=True):
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      where = f" writing {e.filename}" if e.filename else ""
    elif "No space left on device" in str(e):
      path = re.search(r"(\S+); No space left on device", str(e))
      where = f" writing {path[1]}" if path else ""
    else:
      continue
    return (f"the disk is full (no space left on device{where}): free some space or write "
            "elsewhere, then run again (a trainer resumes from its last complete checkpoint)")
  return None


def one_line_report(error: Exception) -> str:
  """The line a tool ends with: a full disk as such; the message of a user's error, also
  when it surfaced wrapped in a library's own error; otherwise the error's type and first
  line, with its traceback saved to a file (named in the line)."""
  disk_full = _disk_full(error)
  if disk_full:
    return disk_full
  for e in _causes(error):
    if isinstance(e, USER_ERRORS):
      return " ".join(str(e).split()) or type(e).__name__
  message = str(error).strip()
  first = message.splitlines()[0][:300] if message else ""
  try:
    with tempfile.NamedTemporaryFile("w", prefix="sweet_jax_error_", suffix=".txt",
                                     delete=False) as f:
      traceback.print_exception(error, file=f)
    where = f"its traceback is in {f.name}, or rerun with --verbose"
  except OSError:
    where = "rerun with --verbose for its traceback"
  return f"{type(error).__name__}: {first} (an internal error; {where})"
