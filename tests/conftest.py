"""Test set-up: 8 virtual CPU devices (so sharding is real), parsed absl flags, and
a per-session compilation cache (several tests compile the same train step)."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from absl import flags  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain workers read absl flags

jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="sweet_jax_jit_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def embedded_data_dir(tmp_path_factory) -> str:
  """The embedded photo dataset, built once per test session."""
  from sweet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  pipeline.get_data_source("sweet_embedded_photos", "train", data_dir)
  return data_dir
