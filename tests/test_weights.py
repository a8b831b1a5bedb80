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


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4])
def test_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
  """Protocols 0-2 have no bytes opcode: numpy's array and scalar data come back through
  `_codecs.encode(str, 'latin1')` (and `bytes()` when empty), as in older checkpoints."""
  tree = {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "empty": np.zeros(0),
          "step": np.int64(7), "scale": np.float64(0.5), "bias": [np.ones(2, np.float16)],
          "text": np.array(["a", "bc"])}
  path = tmp_path / f"p{protocol}.ckpt"
  path.write_bytes(pickle.dumps(tree, protocol=protocol))
  loaded = weights.load_numpy_pickle(path)
  assert loaded.keys() == tree.keys()
  for name in ("kernel", "empty", "step", "scale", "text"):
    assert loaded[name].dtype == tree[name].dtype, name
    np.testing.assert_array_equal(loaded[name], tree[name], err_msg=name)
  np.testing.assert_array_equal(loaded["bias"][0], tree["bias"][0])


class _Reduces:
  """Unpickles as `function(*args)`: what a hostile pickle asks for."""

  def __init__(self, function, *args):
    self.function, self.args = function, args

  def __reduce__(self):
    return (self.function, self.args)


def test_protocol_2_pickles_that_run_code_or_misuse_codecs_are_refused(tmp_path):
  import builtins  # pylint: disable=g-import-not-at-top
  import codecs  # pylint: disable=g-import-not-at-top
  sentinel = tmp_path / "created"
  hostile = {
      "system": (_Reduces(os.system, f"touch {sentinel}"), r"(posix|os)\.system"),
      "open": (_Reduces(builtins.open, str(sentinel), "w"), r"(__builtin__|builtins|io)\.open"),
      "eval": (_Reduces(builtins.eval, f"open({str(sentinel)!r}, 'w')"),
               r"(__builtin__|builtins)\.eval"),
      "rot13": (_Reduces(codecs.encode, "abc", "rot13"),
                r"_codecs\.encode other than as encode\(str, 'latin1'\)"),
      "bytes": (_Reduces(bytes, 2**40), r"calls bytes\(1099511627776,\)"),
  }
  for name, (payload, match) in hostile.items():
    path = tmp_path / f"{name}.ckpt"
    path.write_bytes(pickle.dumps({"kernel": np.ones(2), "x": payload}, protocol=2))
    with pytest.raises(weights.UnsafeWeightsError, match=f"{name}.ckpt: refusing to load: .*"
                       + match):
      weights.load_numpy_pickle(path)
    assert not sentinel.exists(), name
