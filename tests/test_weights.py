"""Safe loading: numpy-only pickles, .npz without pickle, safetensors; nothing else runs."""

import os
import pickle

import numpy as np
import pytest

from sweet_jax import weights


class _Exploit:
  """Unpickling this runs a shell command (the classic pickle attack)."""

  def __init__(self, sentinel):
    self.sentinel = sentinel

  def __reduce__(self):
    return (os.system, (f"touch {self.sentinel}",))


def test_numpy_pickles_load_and_malicious_pickles_are_refused(tmp_path):
  good = tmp_path / "good.ckpt"
  tree = {"layer": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "scale": np.ones(2)}
  good.write_bytes(pickle.dumps(tree))
  loaded = weights.load_numpy_pickle(good)
  np.testing.assert_array_equal(loaded["layer"]["kernel"], tree["layer"]["kernel"])

  sentinel = tmp_path / "pwned"
  bad = tmp_path / "bad.ckpt"
  bad.write_bytes(pickle.dumps({"kernel": _Exploit(str(sentinel))}))
  with pytest.raises(weights.UnsafeWeightsError, match="posix.system|os.system"):
    weights.load_numpy_pickle(bad)
  assert not sentinel.exists()

  truncated = tmp_path / "truncated.ckpt"
  truncated.write_bytes(good.read_bytes()[:40])
  with pytest.raises(ValueError, match="not a readable numpy-array pickle"):
    weights.load_numpy_pickle(truncated)
  with pytest.raises(FileNotFoundError, match="weights file not found"):
    weights.load_numpy_pickle(tmp_path / "missing.ckpt")


def test_npz_and_safetensors_and_nothing_else(tmp_path):
  flat = {"a/b": np.ones((2, 2), np.float32), "c": np.arange(3)}
  np.savez(tmp_path / "w.npz", **flat)
  assert weights.unflatten(weights.load_flat_weights(tmp_path / "w.npz"))["a"]["b"].shape == (2, 2)
  assert weights.flatten(weights.unflatten(flat)).keys() == flat.keys()
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file(flat, str(tmp_path / "w.safetensors"))
  np.testing.assert_array_equal(weights.load_flat_weights(tmp_path / "w.safetensors")["c"],
                                flat["c"])

  np.savez(tmp_path / "objects.npz", x=np.array([{"x": 1}], dtype=object))
  with pytest.raises(weights.UnsafeWeightsError, match="object arrays"):
    weights.load_npz(tmp_path / "objects.npz")
  with pytest.raises(weights.UnsafeWeightsError, match="unsupported weights format"):
    weights.load_flat_weights(tmp_path / "model.pt")
  (tmp_path / "broken.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a readable .npz"):
    weights.load_npz(tmp_path / "broken.npz")
