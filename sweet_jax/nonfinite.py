"""Host side of the non-finite guard (`config.on_nonfinite`).

The train step itself never lets a non-finite loss or gradient reach the state
(`step.discard_unless_finite`); it flags such a step in its metrics ("nonfinite"). This
module reads those flags whenever the trainer fetches metrics (at log steps and before
every checkpoint save), so the check costs no extra device-to-host transfer per step:

  "halt"  stop at the first flagged step, naming it and its non-finite loss terms and
          gradient groups (nothing after it is checkpointed, and its update never applied)
  "skip"  count flagged steps (logged as train/nonfinite_steps) and go on; stop after
          `max_consecutive` flagged steps in a row
"""

from typing import Any, Sequence

import numpy as np

MODES = ("halt", "skip")


class NonFiniteStepError(FloatingPointError):
  """A training step produced non-finite values (see the message for which)."""


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"config.on_nonfinite={mode!r}; use one of {MODES}")


def nonfinite_parts(metrics: dict[str, Any]) -> tuple[list[str], list[str]]:
  """(loss terms, gradient groups) of one step's metrics whose values are not finite."""
  terms = sorted(k[len("loss_"):] for k, v in metrics.items()
                 if k.startswith("loss_") and not np.isfinite(v))
  groups = sorted(k[len("grad_norm_"):] for k, v in metrics.items()
                  if k.startswith("grad_norm_") and not np.isfinite(v))
  return terms, groups


class NonFiniteGuard:
  """Counts the discarded steps and raises NonFiniteStepError when the mode says stop."""

  def __init__(self, mode: str, max_consecutive: int):
    check_mode(mode)
    if max_consecutive < 1:
      raise ValueError(f"config.max_consecutive_nonfinite={max_consecutive} must be >= 1")
    self.mode, self.max_consecutive = mode, max_consecutive
    self.total = 0
    self.consecutive = 0

  def observe(self, first_step: int, history: Sequence[dict[str, Any]], where: str = ""
              ) -> list[dict[str, Any]]:
    """Reads fetched per-step metrics (the first one from step `first_step`); returns the
    finite steps' metrics (what the logged means average)."""
    finite = []
    for offset, metrics in enumerate(history):
      if not metrics.get("nonfinite", 0.0):
        self.consecutive = 0
        finite.append(metrics)
        continue
      self.total += 1
      self.consecutive += 1
      step = first_step + offset
      terms, groups = nonfinite_parts(metrics)
      what = (f"non-finite values at step {step}{where}: loss terms {terms or 'none'}, "
              f"gradient groups {groups or 'none'} (the update was discarded: the state is "
              "the one before that step)")
      if self.mode == "halt":
        raise NonFiniteStepError(f"{what}. Stopping (config.on_nonfinite='halt'); rerun to "
                                 "resume from the last checkpoint, or set "
                                 "--config.on_nonfinite=skip to discard such steps")
      if self.consecutive >= self.max_consecutive:
        raise NonFiniteStepError(
            f"{self.consecutive} consecutive steps discarded, the last {what}. Stopping "
            f"(config.max_consecutive_nonfinite={self.max_consecutive})")
    return finite
