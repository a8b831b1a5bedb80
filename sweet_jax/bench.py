r"""Benchmark of the train step: time, throughput, achieved FLOP/s against this
machine's measured matmul ceiling, compile time and peak memory.

  python -m sweet_jax.bench --config=configs/sweet_image.py:cpu --json=bench.json
  python -m sweet_jax.bench --config=configs/sweet_video.py:cpu --devices=1,2,4,8

Every distinct train step of the config is timed (one per curriculum-stage variant:
images, clips, clips with the perceptual and GAN terms), on synthetic uint8 batches of
the stage's shape (the data pipeline is not timed), with the same jitted step,
shardings and donation as training. A generator's config (configs/ar_generator.py,
configs/maskgit.py) times its train step on random token sequences of its token dataset's
layout, and its sampler: tokens/s and samples/s, for the AR transformer both with the
KV cache and with full recomputation at every position. `--devices` sweeps data parallelism over that many
of this process's devices (virtual CPU devices are added as needed: the sweep measures
partitioning overhead on this CPU, not scaling).
"""

import functools
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sweet_jax import io
from sweet_jax.cli import run_tool
from sweet_jax.virtual_devices import restart_with_cpu_devices



def matmul_ceiling(size: int = 2048, reps: int = 10) -> float:
  """Median float32 GFLOP/s of a jitted square matmul in this process (one device)."""
  a = jnp.ones((size, size), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * size**3 / statistics.median(times) / 1e9


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _time_steps(step, state, batch, steps: int) -> tuple[list[float], float, float, object]:
  """(step times, compile seconds, GFLOP per step, final state)."""
  t = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.jitted.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # XLA counts the partitioned program, i.e. one device's share: the step's total is that
  # times the devices.
  flops = float(cost.get("flops", 0.0)) * len(jax.tree.leaves(batch)[0].sharding.device_set)
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return times, compile_s, flops / 1e9, state


def benchmark(config, steps: int, devices=None, ceiling: float | None = None) -> list[dict]:
  """One row per distinct stage step of `config` on `devices` (default: all)."""
  from sweet_jax import experiment, parallel  # pylint: disable=g-import-not-at-top
  from sweet_jax.data import streams  # pylint: disable=g-import-not-at-top
  devices = list(jax.devices() if devices is None else devices)
  experiment.validate(config, len(devices))
  c = experiment.build(config, devices)
  rng = np.random.default_rng(0)
  ceiling = matmul_ceiling() if ceiling is None else ceiling
  keys, rows, timed = c.distinct_stage_steps(), [], set()
  state = c.init_state()
  params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
  for stage in c.stages:
    step = c.stage_steps[stage.name]
    if keys[stage.name] in timed:
      continue
    timed.add(keys[stage.name])
    if stage.data == "tokens":
      local = random_token_batch(c, stage.batch_size, rng)
    else:
      key_name, shape = streams.batch_shape(config, stage)
      local = {key_name: rng.integers(0, 256, shape, dtype=np.uint8)}
    batch = parallel.to_global(local, c.batch_sharding)
    times, compile_s, gflop, state = _time_steps(step, state, batch, steps)
    median = statistics.median(times)
    achieved = gflop / median
    rows.append({
        "config": f"{config.model.name}:{config.get('variant', '')}",
        "stage": stage.name,
        "data": stage.data,
        "devices": len(devices),
        "mesh": dict(c.mesh.shape),
        "batch_size": stage.batch_size,
        "params": params,
        "step_median_s": median,
        "step_min_s": min(times),
        "examples_per_s": stage.batch_size / median,
        "gflop_per_step": gflop,
        "achieved_gflop_s": achieved,
        "matmul_ceiling_gflop_s": ceiling,
        "fraction_of_ceiling": achieved / ceiling,
        "compile_s": compile_s,
        "peak_rss_mb": peak_rss_mb(),
    })
  if c.kind == "generator":
    rows += benchmark_sampling(c, state.params, max(2, steps // 5))
  return rows


def random_token_batch(e, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Token sequences drawn uniformly inside each position's id range, and labels."""
  if e.layout is not None:
    ranges = e.layout.allowed_ranges()
  else:  # a config that sizes the model itself (no token dataset)
    vocab = e.config.model.vocab_size
    ranges = np.tile([0, vocab], (e.config.model.seq_len, 1))
  tokens = ranges[:, 0] + rng.integers(0, 1 << 30, (batch_size, len(ranges))) % (
      ranges[:, 1] - ranges[:, 0])
  labels = rng.integers(0, max(e.config.model.num_classes, 1), batch_size)
  return {"tokens": tokens.astype(np.int32), "label": labels.astype(np.int32)}


def benchmark_sampling(e, params, reps: int) -> list[dict]:
  """Sampling throughput rows: the run's sampler (the AR one with its KV cache), and for
  the AR transformer the same draws by full recomputation at every position."""
  from sweet_jax import parallel  # pylint: disable=g-import-not-at-top
  from sweet_jax.sampling import ar as ar_sampling  # pylint: disable=g-import-not-at-top
  batch = e.config.eval_batch_size
  seq_len = e.config.model.seq_len or e.layout.seq_len
  samplers = {"kv_cache" if e.config.model.name == "ar" else "maskgit": e.eval_step}
  if e.config.model.name == "ar":
    ranges = e.layout.allowed_ranges() if e.layout is not None else None
    full = functools.partial(ar_sampling.sample, e.model, allowed_ranges=ranges,
                             use_cache=False, **e.config.sampling)
    samplers["recompute"] = parallel.BoundStep(
        jax.jit(lambda p, labels, key, frozen: full(p, labels, key),
                in_shardings=(e.state_sharding.params, e.batch_sharding,
                              parallel.replicated(e.mesh), {})), {}, e.mesh, e.rules)
  labels = jax.device_put(np.zeros(batch, np.int32), e.batch_sharding)
  rows = []
  for name, sampler in samplers.items():
    t = time.perf_counter()
    jax.block_until_ready(sampler(params, labels, jax.random.PRNGKey(0)))
    first = time.perf_counter() - t
    times = []
    for i in range(reps):
      t = time.perf_counter()
      jax.block_until_ready(sampler(params, labels, jax.random.PRNGKey(i + 1)))
      times.append(time.perf_counter() - t)
    median = statistics.median(times)
    rows.append({"config": f"{e.config.model.name}:sampling", "stage": name,
                 "devices": len(e.mesh.devices.flat), "batch_size": batch,
                 "seq_len": seq_len, "sample_median_s": median,
                 "samples_per_s": batch / median, "tokens_per_s": batch * seq_len / median,
                 "compile_s": first - median, "peak_rss_mb": peak_rss_mb()})
  return rows


COLUMNS = [("config", "{}"), ("stage", "{}"), ("devices", "{}"), ("batch_size", "{}"),
           ("step_median_s", "{:.3f}"), ("examples_per_s", "{:.1f}"),
           ("gflop_per_step", "{:.2f}"), ("achieved_gflop_s", "{:.1f}"),
           ("matmul_ceiling_gflop_s", "{:.0f}"), ("fraction_of_ceiling", "{:.2f}"),
           ("compile_s", "{:.1f}"), ("peak_rss_mb", "{:.0f}")]


SAMPLING_COLUMNS = [("config", "{}"), ("stage", "{}"), ("devices", "{}"), ("batch_size", "{}"),
                    ("seq_len", "{}"), ("sample_median_s", "{:.3f}"),
                    ("samples_per_s", "{:.2f}"), ("tokens_per_s", "{:.0f}"),
                    ("compile_s", "{:.1f}"), ("peak_rss_mb", "{:.0f}")]


def format_table(rows: list[dict]) -> str:
  """The train-step rows as a table, then the sampling rows (if any) as another."""
  steps = [r for r in rows if "step_median_s" in r]
  sampling = [r for r in rows if "sample_median_s" in r]
  tables = [_table(steps, COLUMNS)] if steps else []
  if sampling:
    tables.append(_table(sampling, SAMPLING_COLUMNS))
  return "\n\n".join(tables)


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
  cells = [[name for name, _ in columns]] + [[fmt.format(r[name]) for name, fmt in columns]
                                            for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
  lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  counts = [int(n) for n in _DEVICES.value] if _DEVICES.value else None
  if counts and max(counts) > jax.local_device_count():
    restart_with_cpu_devices(max(counts), "sweet_jax.bench")
  ceiling = matmul_ceiling()
  rows = []
  for count in counts or [None]:
    run_config = config
    if count is not None:
      run_config = config.copy_and_resolve_references()
      with run_config.unlocked():
        run_config.mesh = (("data", count), ("fsdp", 1), ("model", 1))
    rows += benchmark(run_config, _STEPS.value,
                      None if count is None else jax.devices()[:count], ceiling)
  print(format_table(rows))
  if _JSON.value:
    io.write_json(_JSON.value, rows)


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (so that the module can be
  imported next to other entry points)."""
  global _CONFIG, _JSON, _STEPS, _DEVICES
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].",
                                            lock_config=True)
  _JSON = flags.DEFINE_string("json", None, "Where to write the results as JSON.")
  _STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per stage (after 2 warm-up steps).")
  _DEVICES = flags.DEFINE_list("devices", None, "Device counts to sweep (data parallel), e.g. "
                               "1,2,4,8; default: config.mesh over all devices.")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  _define_flags()
  run_tool(main)
