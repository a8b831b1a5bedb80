"""The language-codebook artifact: word groups with vectors and a normalised word graph.

On disk a codebook is a directory holding `codebook.npz` (plain arrays, read with
`allow_pickle=False`) and `manifest.json` (format version, source, filters, requested
and obtained sizes, graph settings, and the content hash). The hash covers every
array's dtype, shape and bytes in a fixed order, so the same inputs give the same hash
whatever the zip timestamps.

A codebook has two groups, as SweetTokenizer's MLC quantizer needs them:
`spatial` (adjectives, then nouns) and `temporal` (adverbs, then verbs). Rows
`[0, num_first)` of a group are its first part of speech, the rest its second.
"""

import dataclasses
import hashlib
import io
import json
import zipfile

import numpy as np
from etils import epath

from sweet_jax import io as sweet_io

FORMAT_VERSION = 1
GROUP_POS = {"spatial": ("adj", "noun"), "temporal": ("adv", "verb")}
_ARRAYS = ("words", "vectors", "senders", "receivers", "edge_weights")


@dataclasses.dataclass(frozen=True, eq=False)
class WordGroup:
  """One codebook group: words of two parts of speech and their GCN-normalised graph.

  `senders`/`receivers`/`edge_weights` list every directed edge of Â = D^-1/2 (A+I) D^-1/2
  (self-loops included): message passing is `segment_sum(w * h[senders], receivers)`.
  """

  name: str
  words: np.ndarray  # [V] str
  vectors: np.ndarray  # [V, E] float32, frozen word embeddings
  senders: np.ndarray  # [M] int32
  receivers: np.ndarray  # [M] int32
  edge_weights: np.ndarray  # [M] float32
  num_first: int
  # Built with the user's own exclusion list (or none): the readout prints every word as
  # it is. False for the default list and for codebooks from before the manifest said
  # (builder version < 3): the readout withholds words on the default list.
  user_exclusions: bool = False

  @property
  def pos_names(self) -> tuple[str, str]:
    return GROUP_POS[self.name]

  @property
  def size(self) -> int:
    return len(self.words)

  @property
  def num_second(self) -> int:
    return self.size - self.num_first

  def pos_of(self, row: int) -> str:
    return self.pos_names[0] if row < self.num_first else self.pos_names[1]

  def validate(self) -> None:
    """Raises ValueError naming what is malformed."""
    v = self.size
    if self.vectors.ndim != 2 or self.vectors.shape[0] != v:
      raise ValueError(f"codebook group {self.name!r}: vectors have shape "
                       f"{self.vectors.shape}, expected [{v}, E]")
    if not 0 < self.num_first < v:
      raise ValueError(f"codebook group {self.name!r} needs words of both "
                       f"{self.pos_names}; got {self.num_first} and {v - self.num_first}")
    m = self.senders.shape
    if self.receivers.shape != m or self.edge_weights.shape != m or len(m) != 1:
      raise ValueError(f"codebook group {self.name!r}: edge arrays differ in shape")
    if m[0] and (self.senders.min() < 0 or max(self.senders.max(), self.receivers.max()) >= v):
      raise ValueError(f"codebook group {self.name!r}: an edge points outside the {v} words")
    if not np.all(np.isfinite(self.vectors)):
      raise ValueError(f"codebook group {self.name!r}: non-finite word vectors")


@dataclasses.dataclass(frozen=True, eq=False)
class LanguageCodebook:
  spatial: WordGroup
  temporal: WordGroup
  manifest: dict

  def group(self, name: str) -> WordGroup:
    if name not in GROUP_POS:
      raise ValueError(f"unknown codebook group {name!r}; known: {sorted(GROUP_POS)}")
    return getattr(self, name)


def chose_own_exclusions(manifest: dict) -> bool:
  """Whether the manifest says the builder applied the user's own exclusion list (or
  none), rather than the default one; old manifests do not say (False)."""
  excluded = manifest.get("filters", {}).get("excluded_words", {})
  return isinstance(excluded, dict) and excluded.get("list") in ("user", "none")


def content_hash(groups: dict[str, WordGroup]) -> str:
  digest = hashlib.sha256()
  for name in sorted(groups):
    group = groups[name]
    digest.update(f"{name}:{group.num_first};".encode())
    for field in _ARRAYS:
      array = np.ascontiguousarray(getattr(group, field))
      digest.update(f"{field}:{array.dtype.str}:{array.shape};".encode())
      digest.update(array.tobytes())
  return digest.hexdigest()


def save(out_dir: str, spatial: WordGroup, temporal: WordGroup, manifest: dict) -> LanguageCodebook:
  """Writes `codebook.npz` + `manifest.json` (with format version and hash) to `out_dir`
  (any filesystem; the manifest last, so a reader that finds it finds the arrays)."""
  groups = {"spatial": spatial, "temporal": temporal}
  for group in groups.values():
    group.validate()
  arrays = {}
  for name, group in groups.items():
    arrays[f"{name}/num_first"] = np.asarray(group.num_first, np.int64)
    for field in _ARRAYS:
      arrays[f"{name}/{field}"] = np.asarray(getattr(group, field))
  manifest = dict(manifest, format_version=FORMAT_VERSION, hash=content_hash(groups),
                  sizes={name: {g.pos_names[0]: g.num_first, g.pos_names[1]: g.num_second}
                         for name, g in groups.items()})
  # Each file is written atomically: a crash never leaves a half-written artifact in place.
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  sweet_io.write_bytes(epath.Path(out_dir) / "codebook.npz", buffer.getvalue())
  sweet_io.write_text(epath.Path(out_dir) / "manifest.json",
                      json.dumps(manifest, indent=2, sort_keys=True))
  return LanguageCodebook(spatial=spatial, temporal=temporal, manifest=manifest)


def load(path: str) -> LanguageCodebook:
  """Reads a codebook directory (or its `codebook.npz`) without pickle; checks its hash."""
  path = epath.Path(path)
  directory = path.parent if path.name.endswith(".npz") else path
  npz_path, manifest_path = directory / "codebook.npz", directory / "manifest.json"
  for p in (npz_path, manifest_path):
    if not p.exists():
      raise FileNotFoundError(f"language codebook file {p} is missing; build one with "
                              f"`python -m sweet_jax.codebook.build --out={directory}`")
  manifest = json.loads(manifest_path.read_text())
  if manifest.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{manifest_path}: format version {manifest.get('format_version')}, "
                     f"this code reads {FORMAT_VERSION}; rebuild the codebook")
  try:
    with np.load(io.BytesIO(npz_path.read_bytes()), allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except ValueError as e:
    raise ValueError(f"{npz_path} is not a plain-array .npz ({e})") from e
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise ValueError(f"{npz_path} is truncated or corrupt ({e}); rebuild the codebook") from e
  groups = {}
  for name in GROUP_POS:
    missing = [f for f in ("num_first",) + _ARRAYS if f"{name}/{f}" not in arrays]
    if missing:
      raise ValueError(f"{npz_path}: group {name!r} lacks arrays {missing}")
    groups[name] = WordGroup(name=name, num_first=int(arrays[f"{name}/num_first"]),
                             user_exclusions=chose_own_exclusions(manifest),
                             **{f: arrays[f"{name}/{f}"] for f in _ARRAYS})
    groups[name].validate()
  actual = content_hash(groups)
  if actual != manifest.get("hash"):
    raise ValueError(f"{npz_path}: content hash {actual[:12]} does not match the manifest's "
                     f"{str(manifest.get('hash'))[:12]}; the artifact is corrupt or was edited")
  return LanguageCodebook(manifest=manifest, **groups)
