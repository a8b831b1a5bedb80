"""Virtual CPU devices for the tools that compile or run for a target mesh (the planner,
the benchmark). Kept apart from `sweet_jax.cli`, whose multi-host flags belong to the
train and evaluate entry points only."""

import os
import sys

_CPU_DEVICES_ENV = "SWEET_JAX_CPU_DEVICES"


def restart_with_cpu_devices(count: int, module: str) -> None:
  """Re-runs `python -m module` with this command line in a fresh process that has
  `count` virtual CPU devices (XLA fixes the count when jax starts); returns at once in
  the process that already has them. For the tools that compile for a target mesh."""
  if os.environ.get(_CPU_DEVICES_ENV) == str(count):
    return
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{_CPU_DEVICES_ENV: str(count)})
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
  os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
