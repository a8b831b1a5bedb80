"""Token datasets: tokenize a run's data, read it back through grain, resume, refuse mixing."""

import numpy as np
import pytest
from etils import epath

from sweet_jax import api
from sweet_jax.data import tokens as token_data
from sweet_jax.tokenize import tokenize
from tests.runs import make_run


def test_tokenize_reads_back_resumes_and_refuses_other_weights(image_run, tmp_path):
  out = str(tmp_path / "tokens")
  result = tokenize(image_run, out, split="eval[:12]", flip=True, shard_size=5)
  tok = api.load_tokenizer(image_run)
  source = token_data.token_source(out, "eval_12")
  assert len(source) == result["num_examples"] == result["coded"]
  assert result["num_shards"] == -(-result["num_examples"] // 5)
  # The stored tokens are the tokenizer's own of the model's view (and of its mirror).
  from sweet_jax.data import pipeline
  photos = pipeline.get_data_source("sweet_embedded_photos", "eval",
                                    tok.config.data.data_dir)
  images = [np.asarray(photos[i]["image"]) for i in (0, 3)]
  expected = tok.encode(images)
  np.testing.assert_array_equal(np.stack([source[0]["spatial"], source[3]["spatial"]]),
                                expected)
  mirrored = tok.encode(np.flip(tok.prepare(images), axis=-2))
  np.testing.assert_array_equal(source[3]["flip_spatial"], mirrored[1])
  meta = token_data.read_metadata(out)
  assert meta["tokenizer"]["params_sha256"] == token_data.params_fingerprint(tok.params)
  assert meta["tokenizer"]["step"] == tok.step

  # Read back as the generator does: flat sequences in the layout's ranges.
  layout = token_data.layout(out)
  it = token_data.make_token_train_iterator(out, "eval_12", global_batch_size=4, seed=0,
                                            process_index=0, process_count=1)
  batch = next(it)
  assert batch["tokens"].shape == (4, layout.seq_len)
  ranges = layout.allowed_ranges()
  assert np.all((batch["tokens"] >= ranges[:, 0]) & (batch["tokens"] < ranges[:, 1]))
  state = it.get_state()
  following = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["tokens"], following["tokens"])

  # Resuming redoes nothing; a lost shard is redone, identically.
  shard = epath.Path(out) / token_data.shard_name("eval_12", 1, result["num_shards"])
  before = shard.read_bytes()
  assert tokenize(image_run, out, split="eval[:12]", flip=True, shard_size=5)["coded"] == 0
  shard.unlink()
  (epath.Path(out) / token_data.SHARDS / "eval_12-00001.json").unlink()
  assert tokenize(image_run, out, split="eval[:12]", flip=True, shard_size=5)["coded"] == 5
  assert shard.read_bytes() == before

  # Never mixed: other settings for the split, or other weights.
  with pytest.raises(token_data.TokenDatasetError, match="other settings.*flip"):
    tokenize(image_run, out, split="eval[:12]", flip=False, shard_size=5)
  config = tok.config
  with config.unlocked():
    config.seed += 1  # (other initial weights)
  other = make_run(config, str(tmp_path / "other_run"))
  with pytest.raises(token_data.TokenDatasetError, match="other weights"):
    tokenize(other, out, split="eval[:12]", flip=True, shard_size=5)


def test_random_crops_are_seeded(image_run, tmp_path):
  a = tokenize(image_run, str(tmp_path / "a"), split="eval[:2]", crops_per_image=3,
               shard_size=4)
  tokenize(image_run, str(tmp_path / "b"), split="eval[:2]", crops_per_image=3, shard_size=4)
  assert a["num_examples"] == 6
  sa = token_data.token_source(str(tmp_path / "a"), "eval_2")
  sb = token_data.token_source(str(tmp_path / "b"), "eval_2")
  np.testing.assert_array_equal(np.stack([sa[i]["spatial"] for i in range(6)]),
                                np.stack([sb[i]["spatial"] for i in range(6)]))
  assert [int(sa[i]["id"]) for i in range(6)] == list(range(6))
  assert not np.array_equal(sa[0]["spatial"], sa[1]["spatial"])  # different crops
