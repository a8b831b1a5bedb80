"""Generators on tokens end to end: train an AR generator on a tokenizer run's tokens
with the shared loop, kill it and resume bitwise, sample and score; the sharded step
equals one device."""

import os
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import ar_generator, maskgit as maskgit_config
from sweet_jax import api, experiment, parallel
from sweet_jax.data import pipeline, tokens as token_data
from sweet_jax.evaluate import frechet
from sweet_jax.evaluate.generation import GenerationEvaluator
from sweet_jax.sample import write_samples
from sweet_jax.train import train_and_evaluate
from test_reliability import checkpoint_steps, signal_on_line


def generator_config(image_tokens, module=ar_generator):
  config = module.get_config("runlocal")
  with config.unlocked():
    config.tokens.dir = image_tokens
  return config


def _saved_params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def test_ar_generator_trains_a_killed_run_resumes_bitwise_and_samples(
    image_tokens, tmp_path, start_main):
  config = generator_config(image_tokens)
  straight = str(tmp_path / "straight")
  metrics = train_and_evaluate(config, straight)
  assert metrics["step"] == 6 and metrics["num_samples"] == config.eval.num_samples
  assert os.path.exists(os.path.join(straight, "samples_grid.png"))
  with open(os.path.join(straight, "words.md")) as f:  # the samples' words
    assert "**sample 0**" in f.read()
  # SIGKILLed as it starts writing the step-4 checkpoint: the restart resumes from the
  # last complete one (step 2, or 4 when this small state was written before the signal
  # landed), the token iterator's state with it, and ends with the same weights. (A kill
  # in the middle of a write, every time: the tokenizers' tests, the same code path.)
  resumed = str(tmp_path / "resumed")
  proc = start_main("--config=configs/ar_generator.py:runlocal", f"--workdir={resumed}",
                    f"--config.tokens.dir={image_tokens}")
  log, _ = signal_on_line(proc, "Writing the checkpoint of step 4", signal.SIGKILL)
  assert proc.returncode == -signal.SIGKILL, log[-3000:]
  assert checkpoint_steps(resumed) in ([2], [2, 4]), log[-3000:]
  train_and_evaluate(config, resumed)
  jax.tree.map(np.testing.assert_array_equal, _saved_params(straight, 6),
               _saved_params(resumed, 6))
  # python -m sweet_jax.sample: deterministic per seed (the trainer's evaluation drew
  # seed 1 with the same settings), settings overridable.
  first = write_samples(straight, str(tmp_path / "a"), num=5, seed=3)
  assert [p.name for p in first] == ["samples_grid.png", "samples.npz", "words.md"]
  assert "**sample 4**" in first[2].read_text()
  a = np.load(str(first[1]))
  assert a["indices_spatial"].shape == (5, 8, 3)
  greedy = write_samples(straight, str(tmp_path / "c"), num=5, seed=3,
                         sampling=["temperature=0"])
  c = np.load(str(greedy[1]))
  assert (c["sequences"] == c["sequences"][:1]).all()  # unconditional and greedy: one sample
  assert not (a["sequences"] == a["sequences"][:1]).all()
  with pytest.raises(ValueError, match="has no field"):
    write_samples(straight, str(tmp_path / "d"), sampling=["temprature=0"])


def test_sampled_tokens_respect_the_layout(image_tokens):
  e = experiment.build(generator_config(image_tokens))
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
  # The baselines' picture: training crops, their tokens decoded, samples, marginal tokens.
  evaluator = GenerationEvaluator(e, num_samples=8, num_shown=8)
  _, pictures, _ = evaluator.score_sequences(sequences)
  _, picture = evaluator.baselines(samples=pictures)
  assert picture.dtype == np.uint8 and picture.shape[0] == 4 * 32 + 5 * 2


def test_heldout_nll_is_the_mean_token_likelihood(image_tokens):
  """The evaluator's held-out NLL (batched, padded, sharded over 8 devices) against the
  model's logits in numpy, each position renormalised over its range; and the marginal
  baseline's against counting by hand."""
  config = generator_config(image_tokens)
  with config.unlocked():
    config.tokens.eval_split = "eval_12"  # 12 sequences: a padded second batch of 8
  e = experiment.build(config)
  evaluator = GenerationEvaluator(e, num_samples=8)
  params = e.init_state().params
  source = token_data.token_source(image_tokens, "eval_12")
  held_out = e.layout.flatten({b: np.stack([source[i][b] for i in range(len(source))])
                               for b in e.layout.shapes})
  logits = np.asarray(e.model.apply({"params": params}, held_out,
                                    np.zeros(len(held_out), np.int32)), np.float64)
  rows = np.arange(len(held_out))
  expected = []
  for j, (low, high) in enumerate(e.layout.allowed_ranges()):
    z = logits[:, j, low:high]
    log_p = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(
        -1, keepdims=True)
    expected.append(-log_p[rows, held_out[:, j] - low])
  np.testing.assert_allclose(evaluator.heldout_nll(params), np.mean(expected), rtol=1e-5)

  train = held_out[:8]
  by_hand = []
  for j, (low, high) in enumerate(e.layout.allowed_ranges()):
    for token in held_out[:, j]:
      by_hand.append(-np.log((np.sum(train[:, j] == token) + 0.5) / (8 + 0.5 * (high - low))))
  np.testing.assert_allclose(evaluator.marginal_nll(train, "eval_12"), np.mean(by_hand),
                             rtol=1e-6)


def test_both_references_are_cached_and_stale_ones_refused(image_tokens, image_run, tmp_path,
                                                           monkeypatch):
  """The training reference is the pixels the tokenizer coded (re-encoded: the same
  tokens); both references' statistics go to their caches once, are read back by the next
  evaluator, and a file whose count cannot be right is refused. (The VGG features: the
  generate job; here a stand-in, to keep the network out of the suite.)"""
  tokens_dir = str(tmp_path / "tokens")  # a copy: the training statistics are cached there
  shutil.copytree(image_tokens, tokens_dir)
  e = experiment.build(generator_config(tokens_dir))
  source = token_data.token_source(tokens_dir, "train")
  chosen = (0, 5, 17)
  views = np.stack(list(GenerationEvaluator(e, num_samples=8)._training_views(
      e.token_metadata["splits"]["train"], [int(source[i]["id"]) for i in chosen])))
  np.testing.assert_array_equal(api.load_tokenizer(image_run).encode(views),
                                np.stack([source[i]["spatial"] for i in chosen]))

  rng = np.random.default_rng(0)
  computed = []

  def fake_heldout(self, data):  # a row per held-out image, as the real features
    del self
    stats = frechet.FeatureStats()
    stats.add(rng.normal(size=(len(pipeline.get_data_source(data.name, data.eval_split,
                                                            data.data_dir)), 4)))
    computed.append("held-out")
    return {"vgg": stats}

  def fake_training(self, views):  # a row per view
    del self
    stats = frechet.FeatureStats()
    stats.add(rng.normal(size=(sum(1 for _ in views), 4)))
    computed.append("training")
    return {"vgg": stats}

  monkeypatch.setattr(GenerationEvaluator, "_heldout_features", fake_heldout)
  monkeypatch.setattr(GenerationEvaluator, "_features_of_views", fake_training)
  cache = str(tmp_path / "cache")
  first, second = (GenerationEvaluator(e, num_samples=8, reference_cache=cache)
                   for _ in range(2))
  for evaluator in (first, second):
    evaluator.features = ("vgg",)
  a = first.heldout_statistics(), first.training_statistics()
  b = second.heldout_statistics(), second.training_statistics()
  assert computed == ["held-out", "training"]
  assert (first.heldout_source, first.training_source) == ("computed", "computed")
  assert (second.heldout_source, second.training_source) == ("cached", "cached")
  for x, y in zip(a, b):
    np.testing.assert_allclose(x["vgg"][1], y["vgg"][1])
  (path,) = (tmp_path / "cache").iterdir()
  assert "sweet_embedded_photos" in path.name and "lpips_vgg16" in path.name
  (training_path,) = (tmp_path / "tokens" / "reference").iterdir()
  assert training_path.name == f"train-{len(source)}-lpips_vgg16_relu5_3.npz"
  for stale in (path, training_path):
    frechet.save_stats(str(stale), *a[0]["vgg"], count=10**6)  # more rows than there are
  second._heldout = second._training = None  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="delete the file"):
    second.heldout_statistics()
  with pytest.raises(ValueError, match="delete the file"):
    second.training_statistics()


@pytest.mark.parametrize("module", [ar_generator, maskgit_config], ids=["ar", "maskgit"])
def test_sharded_generator_step_equals_one_device(image_tokens, module):
  config = generator_config(image_tokens, module)
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


def test_bench_times_the_generator_step_and_both_samplers(image_tokens):
  from sweet_jax import bench
  rows = bench.benchmark(generator_config(image_tokens), steps=1, devices=jax.devices()[:1],
                         ceiling=100.0)
  assert [r["stage"] for r in rows] == ["train", "kv_cache", "recompute"]
  assert rows[0]["gflop_per_step"] > 0 and rows[1]["tokens_per_s"] > 0
  table = bench.format_table(rows)
  assert "tokens_per_s" in table and "step_median_s" in table
