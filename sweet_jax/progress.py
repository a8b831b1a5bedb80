"""The trainer's progress line: where it is, how it is doing, how fast, and how long to go.

The rate counts training time alone: evaluations, summaries and checkpoint writes run
inside `paused()`, and the steps that compile (the first after the process starts and
after each stage switch) are not timed, so none of them shows up as a slowdown or a jump
in the ETA.
"""

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping

# The training scalars the line shows (all of them go to TensorBoard).
SHOWN = (("loss", "loss {:.4f}"), ("psnr", "psnr {:.2f} dB"),
         ("nonfinite_steps", "nonfinite {:d}"))


class TrainingProgress:
  """`mark(step)` whenever the device is known to have finished `step` (the trainer
  fetches the step metrics before every log and save); `line(step, scalars)` to log.

  Steps are dispatched asynchronously, so only such points are timed: the rate is the
  steps between them over the time between them, less the time spent `paused()`. The
  first point after `restart()` (the process's start, each stage switch: when a step
  compiles) only sets where timing begins.
  """

  def __init__(self, total_steps: int, clock: Callable[[], float] = time.monotonic):
    self.total_steps = total_steps
    self._clock = clock
    self._last: tuple[int, float] | None = None  # the last point: (step, time)
    self._paused = 0.0  # seconds paused since then
    self._seconds = 0.0  # timed training seconds and steps, this stretch
    self._steps = 0

  @property
  def started(self) -> bool:
    """Whether timing has begun (otherwise the next `mark` begins it)."""
    return self._last is not None

  def mark(self, step: int) -> None:
    now = self._clock()
    if self._last is not None:
      last_step, last_time = self._last
      self._seconds += max(now - last_time - self._paused, 0.0)
      self._steps += step - last_step
    self._last, self._paused = (step, now), 0.0

  def restart(self) -> None:
    """A new stretch (e.g. a curriculum stage, which runs at its own speed) begins."""
    self._last, self._seconds, self._steps = None, 0.0, 0

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Time spent inside is left out of the rate."""
    begin = self._clock()
    try:
      yield
    finally:
      self._paused += self._clock() - begin

  def steps_per_second(self) -> float | None:
    return self._steps / self._seconds if self._steps and self._seconds > 0 else None

  def eta_seconds(self, step: int) -> float | None:
    rate = self.steps_per_second()
    return None if rate is None else max(self.total_steps - step, 0) / rate

  def line(self, step: int, scalars: Mapping[str, float]) -> str:
    """'step 150/3000 (5%) | loss 0.2435 | psnr 13.36 dB | 2.13 steps/s, ETA 22m10s'."""
    parts = [f"step {step}/{self.total_steps} ({100 * step // max(self.total_steps, 1)}%)"]
    for key, spec in SHOWN:
      if key in scalars:
        value = scalars[key]
        parts.append(spec.format(int(value) if spec.endswith(":d}") else float(value)))
    rate, eta = self.steps_per_second(), self.eta_seconds(step)
    parts.append("timing after the first steps" if rate is None else
                 f"{rate:.2f} steps/s, ETA {duration(eta)}")
    return " | ".join(parts)


def duration(seconds: float) -> str:
  """'42s', '22m10s', '3h05m'."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
