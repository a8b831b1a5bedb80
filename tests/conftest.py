"""Test set-up: 8 virtual CPU devices (so sharding is real), XLA compiling for speed of
compilation, parsed absl flags, a per-run compilation cache (several tests compile the
same train step), a fresh language-codebook cache, a small hand-made word graph for
quantizer tests, a tokenizer run and its token dataset shared by the tests that read
them, `start_main` for the tests that run (and kill) the trainer as a process, and the
`expensive` tests collected first."""

import os
import subprocess
import sys
import tempfile

# Most of the suite's time is XLA compiling small steps that then run a few times. These
# flags compile them about 40% faster (docs/testing.md): no LLVM optimisation, the loop
# fusion emitter in place of the MLIR one (slower to compile unoptimised) and one LLVM
# module per program (the two test workers already keep both cores busy). Subprocesses
# inherit them, so their compilations share the cache entries; the main job and the
# benchmark compile with XLA's defaults.
COMPILE_FAST_FLAGS = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                      "--xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = " ".join([
    COMPILE_FAST_FLAGS,
    os.environ.get("XLA_FLAGS", "--xla_force_host_platform_device_count=8")])

from absl import flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sweet_jax.codebook.artifact import WordGroup  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain workers read absl flags

# One cache for all the pytest-xdist workers of a run (tests/run.sh makes and removes it).
jax.config.update("jax_compilation_cache_dir", os.environ.get("SWEET_JAX_TEST_JIT_CACHE")
                  or tempfile.mkdtemp(prefix="sweet_jax_jit_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_collection_modifyitems(items):
  """Tests marked `expensive` (minutes each) run first, so that the two xdist workers
  (tests/run.sh) do not end with one of them alone on a long test."""
  items.sort(key=lambda item: item.get_closest_marker("expensive") is None)


@pytest.fixture(scope="session", autouse=True)
def codebook_cache(tmp_path_factory) -> str:
  """Language codebooks built during the tests go to a fresh cache, not ~/.cache."""
  cache = str(tmp_path_factory.mktemp("codebooks"))
  os.environ["SWEET_JAX_CACHE"] = cache
  return cache


def ring_word_group(num_words=30, num_first=12, dim=10, seed=0) -> WordGroup:
  """A ring graph with self-loops (every degree 3, so every GCN weight is 1/3)."""
  rng = np.random.default_rng(seed)
  nodes = np.arange(num_words)
  senders = np.concatenate([nodes, nodes, nodes])
  receivers = np.concatenate([nodes, (nodes + 1) % num_words, (nodes - 1) % num_words])
  order = np.lexsort((senders, receivers))
  return WordGroup(
      name="spatial", words=np.array([f"w{i}" for i in range(num_words)]),
      vectors=rng.normal(size=(num_words, dim)).astype(np.float32),
      senders=senders[order].astype(np.int32), receivers=receivers[order].astype(np.int32),
      edge_weights=np.full(3 * num_words, 1 / 3, np.float32), num_first=num_first)


@pytest.fixture(scope="session")
def embedded_data_dir(tmp_path_factory) -> str:
  """The embedded photo dataset, built once per test session."""
  from sweet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  pipeline.get_data_source("sweet_embedded_photos", "train", data_dir)
  return data_dir


@pytest.fixture(scope="session")
def clips_data_dir(tmp_path_factory) -> str:
  """The embedded clips dataset, built once per test session."""
  from sweet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds_clips"))
  pipeline.get_data_source("sweet_embedded_clips", "train", data_dir)
  return data_dir


@pytest.fixture(scope="session")
def image_run(tmp_path_factory, embedded_data_dir) -> str:
  """A run directory of the image SweetTokenizer (runlocal) holding a freshly initialised
  state, its EMA half its weights (tests/runs.py); shared, read only."""
  from configs import sweet_image  # pylint: disable=g-import-not-at-top
  from tests.runs import make_run  # pylint: disable=g-import-not-at-top
  config = sweet_image.get_config("runlocal")
  with config.unlocked():
    config.data.data_dir = embedded_data_dir
    config.ema.decay = 0.9
  return make_run(config, str(tmp_path_factory.mktemp("image_run")))


@pytest.fixture(scope="session")
def image_tokens(tmp_path_factory, image_run) -> str:
  """A token dataset of `image_run`: 2 random crops of each training photo, with their
  mirrored views, and split `eval_12`: the first 12 held-out crops; shared, read only."""
  from sweet_jax.tokenize import tokenize  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp("tokens") / "tokens")
  tokenize(image_run, out, crops_per_image=2, flip=True, shard_size=16)
  tokenize(image_run, out, split="eval[:12]", shard_size=16)
  return out


def main_env(data_dir: str | None = None,
             extra: dict[str, str] | None = None) -> dict[str, str]:
  """The environment of a trainer subprocess: this session's devices and compilation cache,
  the data in `data_dir`, and `extra`."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  if data_dir:
    env["SWEET_JAX_DATA_DIR"] = data_dir
  env.update(extra or {})
  return env


@pytest.fixture
def start_main():
  """`start(*flags, data_dir=None, env=None)` starts `python -m sweet_jax.main` (stdout and
  stderr merged, text) with this session's devices and compilation cache, and `env` added
  to the environment; killed at teardown."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = []

  def start(*flags: str, data_dir: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "sweet_jax.main", *flags], cwd=repo,
                            env=main_env(data_dir, env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    procs.append(proc)
    return proc

  yield start
  for proc in procs:
    proc.kill()
    proc.wait()
