r"""Memory planner: will this config's train step fit on that mesh of accelerators?

  python -m sweet_jax.plan --config=configs/sweet_image.py:B \
    --mesh="(('data', 8), ('fsdp', 8), ('model', 1))" --json=plan.json

Lowers and compiles every distinct train step of the config (one per curriculum-stage
variant) for the target mesh from abstract inputs: no data, no parameters, no
accelerator. The mesh's devices are virtual CPU devices (the planner restarts itself
with that many), so the numbers are XLA's CPU SPMD compilation of the same partitioned
program: per-device parameter and optimizer bytes are exact (shard shapes), activation
("temp") bytes are XLA's buffer assignment on CPU, a guide to within the backends'
layout and fusion differences (TPU pads minor dimensions to 128; GPU fuses differently).
"""

import ast
from typing import Any

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sweet_jax import io
from sweet_jax.cli import run_tool
from sweet_jax.virtual_devices import restart_with_cpu_devices


GIB = 2**30
# Per-device (per-chip for TPU v5e, per-TensorCore pair = chip for v5p) HBM.
ACCELERATORS = {"TPU v5p": 95 * GIB, "TPU v5e": 16 * GIB, "H100": 80 * GIB}
# Headroom kept free for the runtime, fragmentation and the data pipeline's buffers.
USABLE_FRACTION = 0.9


def parse_mesh(text: str) -> tuple[tuple[str, int], ...]:
  try:
    mesh = ast.literal_eval(text)
    mesh = tuple((str(name), int(size)) for name, size in mesh)
  except (ValueError, SyntaxError, TypeError) as e:
    raise ValueError(f"--mesh={text!r} is not a tuple of (axis, size) pairs, e.g. "
                     "\"(('data', 8), ('fsdp', 8), ('model', 1))\"") from e
  if any(size < 1 for _, size in mesh):
    raise ValueError(f"--mesh={text!r}: the planner needs every axis size (no -1)")
  return mesh


def _bytes_per_device(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded arrays or ShapeDtypeStructs."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    try:
      shape = leaf.sharding.shard_shape(leaf.shape)
    except ValueError as e:  # jax's IndivisibleError
      raise ValueError(
          f"{jax.tree_util.keystr(path)} of shape {leaf.shape} cannot be laid out as "
          f"{leaf.sharding.spec} on mesh {dict(leaf.sharding.mesh.shape)}: each mesh axis "
          "must divide the dimension it splits (change the mesh, or the rule in "
          "config.sharding_rules)") from e
    total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
  return total


def plan(config, only_stages: list[str] | None = None) -> dict[str, Any]:
  """Compiles each distinct stage step for config.mesh (of `only_stages`, when given);
  per-device memory in bytes."""
  # (Imported here: the parent process restarts before paying for TF and the models.)
  from sweet_jax import experiment  # pylint: disable=g-import-not-at-top
  from sweet_jax.data import streams  # pylint: disable=g-import-not-at-top
  c = experiment.build(config, abstract_frozen=True)
  keys = c.distinct_stage_steps()
  unknown = sorted(set(only_stages or ()) - set(keys))
  if unknown:
    raise ValueError(f"--stages: no stage {unknown} in this config; its stages are {list(keys)}")
  state = c.restore_target()
  memory = {
      "params": _bytes_per_device(state.params),
      "optimizer": _bytes_per_device(state.opt_state),
      "ema": _bytes_per_device(state.ema_params) if state.ema_params is not None else 0,
      "discriminator": _bytes_per_device(state.disc) if state.disc is not None else 0,
      "frozen_networks": _bytes_per_device(c.frozen),
  }
  stages, compiled_by_step = [], {}
  for stage in c.stages:
    if only_stages and stage.name not in only_stages:
      continue
    step = c.stage_steps[stage.name]
    key = keys[stage.name]
    if key not in compiled_by_step:
      if stage.data == "tokens":  # a generator: token sequences and labels
        batch = {"tokens": jax.ShapeDtypeStruct((stage.batch_size, c.model.seq_len), np.int32,
                                                sharding=c.batch_sharding),
                 "label": jax.ShapeDtypeStruct((stage.batch_size,), np.int32,
                                               sharding=c.batch_sharding)}
      else:
        key_name, shape = streams.batch_shape(config, stage)
        batch = {key_name: jax.ShapeDtypeStruct(shape, np.uint8, sharding=c.batch_sharding)}
      compiled = step.lower(state, batch).compile().jitted
      analysis = compiled.memory_analysis()
      compiled_by_step[key] = {
          "arguments": int(analysis.argument_size_in_bytes),
          "outputs": int(analysis.output_size_in_bytes),
          "aliased": int(analysis.alias_size_in_bytes),
          "activations_temp": int(analysis.temp_size_in_bytes),
      }
    m = compiled_by_step[key]
    # Live at the peak: the inputs (state donated into the outputs), the outputs not
    # written in place, and the step's temporaries (activations, gradients, fusions).
    total = m["arguments"] + m["outputs"] - m["aliased"] + m["activations_temp"]
    stages.append(dict(name=stage.name, data=stage.data, batch_size=stage.batch_size,
                       **m, total=total))
  peak = max(s["total"] for s in stages)
  return {
      "config": f"{config.model.name}:{config.get('variant', '')}",
      "mesh": dict(c.mesh.shape),
      "devices": c.mesh.devices.size,
      "compute_dtype": config.model.get("compute_dtype", "float32"),
      "remat": config.model.get("remat", "none"),
      "parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
      "state_per_device": memory,
      "stages": stages,
      "peak_per_device": peak,
      "fits": {name: peak <= USABLE_FRACTION * capacity
               for name, capacity in ACCELERATORS.items()},
  }


def format_plan(result: dict[str, Any]) -> str:
  gib = lambda b: f"{b / GIB:.2f} GiB"
  lines = [f"{result['config']}  mesh {result['mesh']} ({result['devices']} devices), "
           f"{result['parameters'] / 1e6:.1f} M parameters, compute {result['compute_dtype']}, "
           f"remat {result['remat']}",
           "per device:"]
  lines += [f"  {name:<16} {gib(b)}" for name, b in result["state_per_device"].items() if b]
  lines.append(f"  {'stage':<10} {'batch':>6} {'arguments':>11} {'activations':>12} "
               f"{'total':>11}")
  for s in result["stages"]:
    lines.append(f"  {s['name']:<10} {s['batch_size']:>6} {gib(s['arguments']):>11} "
                 f"{gib(s['activations_temp']):>12} {gib(s['total']):>11}")
  fits = ", ".join(f"{name} ({ACCELERATORS[name] / GIB:.0f} GiB): "
                   f"{'fits' if ok else 'does NOT fit'}" for name, ok in result["fits"].items())
  lines.append(f"peak {gib(result['peak_per_device'])} per device; {fits} "
               f"(at {USABLE_FRACTION:.0%} of memory)")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if _MESH.value:
    mesh = parse_mesh(_MESH.value)
    restart_with_cpu_devices(int(np.prod([size for _, size in mesh])), "sweet_jax.plan")
    with config.unlocked():
      config.mesh = mesh
  result = plan(config, _STAGES.value)
  print(format_plan(result))
  if _JSON.value:
    io.write_json(_JSON.value, result)


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (so that the module can be
  imported next to other entry points)."""
  global _CONFIG, _MESH, _JSON, _STAGES
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].",
                                            lock_config=True)
  _MESH = flags.DEFINE_string("mesh", None, "Target mesh, e.g. \"(('data', 8), ('fsdp', 8), "
                              "('model', 1))\"; default: config.mesh over this machine's devices.")
  _JSON = flags.DEFINE_string("json", None, "Where to write the plan as JSON.")
  _STAGES = flags.DEFINE_list("stages", None, "Plan only these curriculum stages, e.g. "
                              "decoder (default: every stage).")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  _define_flags()
  run_tool(main)
