"""Generators on tokens end to end: tokenize a tokenizer run's data, train an AR generator
with the shared loop, resume bitwise, sample and score; the sharded step equals one
device."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import ar_generator, maskgit as maskgit_config, sweet_image
from sweet_jax import experiment, parallel
from sweet_jax.evaluate.generation import GenerationEvaluator
from sweet_jax.sample import write_samples
from sweet_jax.tokenize import tokenize
from sweet_jax.train import train_and_evaluate
from tests.test_api import make_run


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory, embedded_data_dir):
  """Tokens of a (freshly initialised) image SweetTokenizer: 2 random crops of each
  training photo, with their mirrored views."""
  config = sweet_image.get_config("runlocal")
  with config.unlocked():
    config.data.data_dir = embedded_data_dir
  run = make_run(config, str(tmp_path_factory.mktemp("tokenizer_run")))
  out = str(tmp_path_factory.mktemp("tokens") / "tokens")
  tokenize(run, out, crops_per_image=2, flip=True, shard_size=16)
  return out


def generator_config(token_dir, module=ar_generator):
  config = module.get_config("runlocal")
  with config.unlocked():
    config.tokens.dir = token_dir
  return config


def _saved_params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def test_ar_generator_trains_resumes_bitwise_and_samples(token_dir, tmp_path):
  config = generator_config(token_dir)
  straight = str(tmp_path / "straight")
  metrics = train_and_evaluate(config, straight)
  assert metrics["step"] == 6 and metrics["num_samples"] == config.eval.num_samples
  assert os.path.exists(os.path.join(straight, "samples_grid.png"))
  assert os.path.exists(os.path.join(straight, "words.md"))  # the samples' words
  resumed = str(tmp_path / "resumed")
  train_and_evaluate(config, resumed, stop_at_step=4)
  train_and_evaluate(config, resumed)
  jax.tree.map(np.testing.assert_array_equal, _saved_params(straight, 6),
               _saved_params(resumed, 6))
  # python -m sweet_jax.sample: deterministic per seed (the trainer's evaluation drew
  # seed 1 with the same settings), settings overridable.
  first = write_samples(straight, str(tmp_path / "a"), num=5, seed=3)
  assert [p.name for p in first] == ["samples_grid.png", "samples.npz", "words.md"]
  a = np.load(str(first[1]))
  assert a["indices_spatial"].shape == (5, 8, 3)
  greedy = write_samples(straight, str(tmp_path / "c"), num=5, seed=3,
                         sampling=["temperature=0"])
  c = np.load(str(greedy[1]))
  assert (c["sequences"] == c["sequences"][:1]).all()  # unconditional and greedy: one sample
  assert not (a["sequences"] == a["sequences"][:1]).all()
  with pytest.raises(ValueError, match="has no field"):
    write_samples(straight, str(tmp_path / "d"), sampling=["temprature=0"])


def test_sampled_tokens_respect_the_layout(token_dir):
  e = experiment.build(generator_config(token_dir))
  evaluator = GenerationEvaluator(e, num_samples=8, num_shown=4)
  params = e.init_state().params
  sequences = evaluator.sample(params, 8)
  np.testing.assert_array_equal(evaluator.sample(params, 8), sequences)  # per seed
  assert not np.array_equal(evaluator.sample(params, 8, seed=1), sequences)
  ranges = e.layout.allowed_ranges()
  assert sequences.shape == (8, e.layout.seq_len)
  assert np.all((sequences >= ranges[:, 0]) & (sequences < ranges[:, 1]))
  metrics, pictures, indices = evaluator.score_sequences(sequences)
  assert pictures.shape == (4, 32, 32, 3) and indices.shape == (4, 8, 3)


@pytest.mark.parametrize("module", [ar_generator, maskgit_config], ids=["ar", "maskgit"])
def test_sharded_generator_step_equals_one_device(token_dir, module):
  config = generator_config(token_dir, module)
  with config.unlocked():
    config.mesh = (("data", 2), ("fsdp", 2), ("model", 2))
  sharded = experiment.build(config)
  with config.unlocked():
    config.mesh = (("data", 1), ("fsdp", 1), ("model", 1))
  single = experiment.build(config, devices=jax.devices()[:1])
  batch = {"tokens": np.stack([np.arange(sharded.layout.seq_len) % sharded.layout.vocab_size
                               for _ in range(8)]).astype(np.int32),
           "label": np.zeros(8, np.int32)}
  batch["tokens"] = np.maximum(batch["tokens"], sharded.layout.allowed_ranges()[:, 0])
  results = []
  for e in (sharded, single):
    state = e.init_state()
    with parallel.run_context(e.mesh, e.rules):
      state, metrics = e.train_step(state, parallel.to_global(batch, e.batch_sharding))
    results.append((jax.device_get(state.params), jax.device_get(metrics["loss"])))
  np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), results[0][0],
               results[1][0])


def test_bench_times_the_generator_step_and_both_samplers(token_dir):
  from sweet_jax import bench
  rows = bench.benchmark(generator_config(token_dir), steps=1, devices=jax.devices()[:1],
                         ceiling=100.0)
  assert [r["stage"] for r in rows] == ["train", "kv_cache", "recompute"]
  assert rows[0]["gflop_per_step"] > 0 and rows[1]["tokens_per_s"] > 0
  table = bench.format_table(rows)
  assert "tokens_per_s" in table and "step_median_s" in table
