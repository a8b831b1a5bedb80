"""Atomic file I/O on any filesystem: local disks and object stores (gs://...) alike.

Every file a run writes (config, metrics, evaluation records, pictures, videos, words)
goes through here or through `etils.epath`, never bare `open`. On a local disk a file is
written under a temporary name and renamed into place, so a crash never leaves half a
file; on an object store a single upload is already all-or-nothing. Files that ship
inside installed packages (photos, clips, weights, word lists) are found by `package_dir`.
"""

import importlib.util
import json
import os
import uuid
from typing import Any

from etils import epath

PathLike = str | epath.PathLike


def package_dir(module: str, missing: str) -> str:
  """The directory of an installed package, found without importing it (some wheels are
  installed for their data alone); FileNotFoundError(`missing`) when it is not there."""
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(missing)
  return list(spec.submodule_search_locations)[0]


def is_local(path: PathLike) -> bool:
  """Whether `path` is on a local (POSIX) filesystem, not a URL such as gs://."""
  return "://" not in str(path)


def absolute(path: PathLike) -> str:
  """Local paths made absolute (orbax needs them so); URLs as they are."""
  return os.path.abspath(path) if is_local(path) else str(path)


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically, creating the parent directories."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(path):
    path.write_bytes(data)
    return
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
  try:
    tmp.write_bytes(data)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text(path: PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, value: Any) -> None:
  write_text(path, json.dumps(value, indent=2))


def read_json(path: PathLike, default: Any = None) -> Any:
  """The JSON in `path`, or `default` when there is no such file."""
  path = epath.Path(path)
  if not path.exists():
    return default
  return json.loads(path.read_text())
