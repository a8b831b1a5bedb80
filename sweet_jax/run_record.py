"""The run's record of its config: `workdir/config.json`, which the readers (evaluation,
words, reconstruct, `load_tokenizer`) build the model from.

A resumed run must be the run its checkpoints came from. `check_resume` compares the
config of a restart with the recorded one and refuses any difference outside
`CHANGEABLE` (how long to train, how often to log, save and evaluate, where the data
and caches are), naming the fields, unless the user allows it. `write` replaces the record
atomically, and the trainer calls it only once the run has restored (or starts fresh), so
a failed start leaves the record as it was; a record that changes keeps its predecessor
beside it.
"""

import fnmatch
import json
import time
from typing import Any

import ml_collections
from absl import logging
from etils import epath

from sweet_jax import io

RECORD = "config.json"

# Fields a restart may change: the length of the run and what it logs, saves and
# evaluates, where its data and caches are, and how it treats bad steps and data.
CHANGEABLE = (
    "total_steps", "log_every_steps", "summary_every_steps", "summary_eval_split",
    "checkpoint_every_steps",
    "keep_checkpoints", "num_summary_images", "num_word_images", "eval.*",
    "on_nonfinite", "max_consecutive_nonfinite", "inject_nan_at_step",
    "*data.data_dir", "*data.num_threads", "*data.prefetch_buffer_size",
    "*data.max_bad_fraction", "eval_batch_size",
)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Dotted field name -> value of a JSON config."""
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flat(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def read(workdir: str) -> dict[str, Any] | None:
  """The recorded config (as JSON), or None for a run that has none yet."""
  path = epath.Path(workdir) / RECORD
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); restore it from the run's logs, or "
                     "remove it to record this run's config anew") from None


def differences(recorded: dict[str, Any],
                config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
  """Field -> (recorded, now) for every field that differs (absent: None)."""
  before, now = _flat(recorded), _flat(_as_json(config))
  return {k: (before.get(k), now.get(k)) for k in sorted(set(before) | set(now))
          if before.get(k) != now.get(k)}


def is_changeable(field: str) -> bool:
  return any(fnmatch.fnmatchcase(field, pattern) for pattern in CHANGEABLE)


def check_resume(workdir: str, config: ml_collections.ConfigDict, *, allow_change: bool) -> None:
  """Refuses to resume the run in `workdir` with a config that differs from its record in
  a field outside `CHANGEABLE` (unless `allow_change`); logs the changes it lets through."""
  recorded = read(workdir)
  if recorded is None:
    return
  changed = differences(recorded, config)
  refused = {k: v for k, v in changed.items() if not is_changeable(k)}
  show = lambda fields: ", ".join(f"{k} ({v[0]!r} -> {v[1]!r})" for k, v in fields.items())
  if refused and not allow_change:
    raise ValueError(
        f"this config differs from the one the run in {workdir} was started with "
        f"({RECORD}) in {show(refused)}: resume with the run's config, start a new run in "
        "another --workdir, or pass --allow_config_change to continue this run with the "
        "new values")
  if changed:
    logging.warning("Resuming %s with changed config fields: %s", workdir, show(changed))


def write(workdir: str, config: ml_collections.ConfigDict, *, step: int) -> None:
  """Records `config` (atomically); a different earlier record is kept as
  config_before_step_<step>.json."""
  path = epath.Path(workdir) / RECORD
  text = config.to_json_best_effort(indent=2)
  if path.exists():
    previous = path.read_text()
    if previous == text:
      return
    if step > 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      io.write_text(epath.Path(workdir) / f"config_before_step_{step}_{stamp}.json", previous)
  io.write_text(path, text)
