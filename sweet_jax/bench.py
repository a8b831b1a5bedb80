r"""Benchmark of the train step: time, throughput, achieved FLOP/s against this
machine's measured matmul ceiling, compile time and peak memory.

  python -m sweet_jax.bench --config=configs/sweet_image.py:cpu --json=bench.json

Synthetic uint8 batches (the data pipeline is not timed); same jitted step,
shardings and donation as training.
"""

import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import linen as nn
from ml_collections import config_flags

from sweet_jax import parallel
from sweet_jax.train import build_components, validate_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].",
                                          lock_config=True)
_JSON = flags.DEFINE_string("json", None, "Where to write the results as JSON.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")
flags.mark_flags_as_required(["config"])


def matmul_ceiling(size: int = 2048, reps: int = 10) -> float:
  """Median float32 GFLOP/s of a jitted square matmul in this process."""
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


def benchmark(config, steps: int) -> dict:
  validate_config(config, jax.device_count())
  c = build_components(config)
  mesh, rules = c.mesh, c.rules
  size = config.data.image_size
  rng = np.random.default_rng(0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = c.init_state()
    batch = parallel.to_global(
        {"image": rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8)},
        c.batch_sharding)
    t = time.perf_counter()
    compiled = c.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.jitted.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0))
    for _ in range(2):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t)
  median = statistics.median(times)
  ceiling = matmul_ceiling()
  achieved = flops / median / 1e9
  return {
      "config": f"{config.model.name}:{config.get('variant', '')}",
      "devices": jax.device_count(),
      "batch_size": config.batch_size,
      "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
      "step_median_s": median,
      "step_min_s": min(times),
      "images_per_s": config.batch_size / median,
      "gflop_per_step": flops / 1e9,
      "achieved_gflop_s": achieved,
      "matmul_ceiling_gflop_s": ceiling,
      "fraction_of_ceiling": achieved / ceiling,
      "compile_s": compile_s,
      "peak_rss_mb": peak_rss_mb(),
  }


def main(argv):
  del argv
  result = benchmark(_CONFIG.value, _STEPS.value)
  width = max(len(k) for k in result)
  print("\n".join(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                  for k, v in result.items()))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
