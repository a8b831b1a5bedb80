"""How a tokenizer's indices become one flat sequence over one vocabulary, for a generator.

A tokenizer emits indices per branch (`spatial`, and `temporal` for the video model):
[Q] for a VQ or TiTok, [Q, 3] for the language codebook (two first-POS words and one
second-POS word per token). A generator models a flat sequence of `seq_len` ids from a
`vocab_size` vocabulary. The layout is a list of segments, each a run of positions that
all draw from one codebook's own id range:

  words (SweetTokenizer, arXiv:2412.10443; the official generator, utils/lm_transformer.py):
    [S_start] adjectives (2 per token) [smn] [sms] nouns [S_end]
    [T_start] adverbs (2 per token) [tms] [tmn] verbs [T_end]          (video only)
  codes (VQ, TiTok, SoftVQ): the Q indices, one codebook (or one segment per codebook)

Each part of speech has its own id range (the official offsets: adjectives, nouns, adverbs,
verbs in that order after the 8 markers). The official code gives the class labels ids
that overlap the markers' when it starts without an SOS token; here the class is not a
sequence id at all (the generator embeds it separately), so the vocabulary is the markers
and the codebooks only. `allowed_ranges()` lets a sampler draw each position from its own
range: a marker position has exactly one allowed id.
"""

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

# The official marker ids (Net2NetTransformer.__init__): spatial start/end, temporal
# start/end, and the separators between the two parts of speech of each branch.
MARKERS = ("spatial_start", "spatial_end", "temporal_start", "temporal_end",
           "spatial_sep_1", "spatial_sep_2", "temporal_sep_1", "temporal_sep_2")
# Where the markers go around a word branch: before, between its parts of speech, after.
# (The official order: [S_start] adj [smn] [sms] noun [S_end], [T_start] adv [tms] [tmn]
# verb [T_end]; smn is marker 5 and sms marker 4.)
_BRANCH_MARKERS = {"spatial": (("spatial_start",), ("spatial_sep_2", "spatial_sep_1"),
                               ("spatial_end",)),
                   "temporal": (("temporal_start",), ("temporal_sep_1", "temporal_sep_2"),
                                ("temporal_end",))}

IndexGroups = Mapping[str, tuple[Sequence[int] | None, int]]


@dataclasses.dataclass(frozen=True)
class Segment:
  """`length` consecutive sequence positions. A codebook segment reads `columns` of
  branch `branch`'s indices (of the trailing axis when `word_axis`, else token positions;
  None: all) and shifts them by `offset`; a marker segment holds one fixed id."""

  name: str
  length: int
  offset: int
  size: int  # ids allowed at these positions: [offset, offset + size)
  branch: str | None = None  # None: a marker
  columns: tuple[int, ...] | None = None
  word_axis: bool = False


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """A flat sequence layout (see the module docstring). Build with `from_index_groups`."""

  segments: tuple[Segment, ...]
  shapes: Mapping[str, tuple[int, ...]]  # branch -> one sample's index shape
  vocab_size: int

  @property
  def seq_len(self) -> int:
    return sum(s.length for s in self.segments)

  @classmethod
  def from_index_groups(cls, shapes: Mapping[str, Sequence[int]],
                        groups: Mapping[str, IndexGroups], *, markers: bool | None = None
                        ) -> "TokenLayout":
    """The layout of indices whose per-sample shapes are `shapes` (branch -> shape) and
    whose codebooks are `groups` (branch -> the tokenizer's `index_groups()`). `markers`
    (default: when the tokens are words, [Q, 3]) adds the official marker tokens."""
    shapes = {b: tuple(int(n) for n in s) for b, s in shapes.items()}
    unknown = set(shapes) ^ set(groups)
    if unknown:
      raise ValueError(f"branches {sorted(unknown)} have a shape or index groups but not both")
    words = all(len(s) == 2 for s in shapes.values())
    markers = words if markers is None else markers
    if markers and not set(shapes) <= set(_BRANCH_MARKERS):
      raise ValueError(f"marker tokens are defined for branches {sorted(_BRANCH_MARKERS)}, "
                       f"got {sorted(shapes)}")
    offset = len(MARKERS) if markers else 0
    codebooks: list[Segment] = []
    for branch in sorted(shapes, key=lambda b: (b != "spatial", b)):  # spatial first
      shape = shapes[branch]
      for name, (columns, size) in groups[branch].items():
        columns = None if columns is None else tuple(int(c) for c in columns)
        word_axis = len(shape) == 2
        if word_axis:
          length = shape[0] * (shape[1] if columns is None else len(columns))
        else:
          length = shape[0] if columns is None else len(columns)
        codebooks.append(Segment(name, length, offset, int(size), branch, columns, word_axis))
        offset += int(size)
    segments: list[Segment] = []
    marker_id = {name: i for i, name in enumerate(MARKERS)}
    for branch in dict.fromkeys(s.branch for s in codebooks):
      parts = [s for s in codebooks if s.branch == branch]
      if not markers:
        segments += parts
        continue
      if len(parts) != 2:
        raise ValueError(f"marker tokens need two parts of speech in branch {branch!r}, "
                         f"got {[p.name for p in parts]}")
      before, between, after = (tuple(Segment(m, 1, marker_id[m], 1) for m in names)
                                for names in _BRANCH_MARKERS[branch])
      segments += [*before, parts[0], *between, parts[1], *after]
    return cls(tuple(segments), shapes, offset)

  def to_metadata(self) -> dict[str, Any]:
    """A JSON-able description (a token dataset's metadata records it)."""
    return {"vocab_size": self.vocab_size, "seq_len": self.seq_len,
            "shapes": {b: list(s) for b, s in self.shapes.items()},
            "segments": [dataclasses.asdict(s) for s in self.segments]}

  @classmethod
  def from_metadata(cls, meta: Mapping[str, Any]) -> "TokenLayout":
    segments = tuple(Segment(**{**s, "columns": None if s["columns"] is None
                                else tuple(s["columns"])}) for s in meta["segments"])
    shapes = {b: tuple(s) for b, s in meta["shapes"].items()}
    return cls(segments, shapes, int(meta["vocab_size"]))

  def allowed_ranges(self) -> np.ndarray:
    """[seq_len, 2] int32: the [start, end) of the ids each position may take."""
    rows = [np.tile([s.offset, s.offset + s.size], (s.length, 1)) for s in self.segments]
    return np.concatenate(rows).astype(np.int32)

  def flatten(self, indices: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """Indices (a branch dict, or one array for a one-branch tokenizer) [B, ...] ->
    sequences [B, seq_len] int32."""
    indices = self._by_branch(indices)
    batch = len(next(iter(indices.values())))
    for branch, shape in self.shapes.items():
      got = tuple(np.shape(indices[branch]))[1:]
      if got != shape:
        raise ValueError(f"branch {branch!r}: indices of shape {got} per sample, the layout "
                         f"expects {shape}")
    parts = []
    for s in self.segments:
      if s.branch is None:
        parts.append(np.full((batch, 1), s.offset, np.int32))
        continue
      x = np.asarray(indices[s.branch])
      if s.columns is not None:
        x = x[..., list(s.columns)] if s.word_axis else x[:, list(s.columns)]
      x = x.reshape(batch, -1)
      if x.size and (x.min() < 0 or x.max() >= s.size):
        raise ValueError(f"segment {s.name!r}: an index outside [0, {s.size}) "
                         f"(min {x.min()}, max {x.max()}): tokens of another tokenizer?")
      parts.append(x.astype(np.int32) + s.offset)
    return np.concatenate(parts, axis=1)

  def unflatten(self, sequences: np.ndarray) -> dict[str, np.ndarray]:
    """Sequences [B, seq_len] -> indices by branch (markers dropped). An id outside its
    position's range (a sampler without `allowed_ranges`) is clipped into it."""
    sequences = np.asarray(sequences)
    if sequences.ndim != 2 or sequences.shape[1] != self.seq_len:
      raise ValueError(f"sequences of shape {sequences.shape}, expected [B, {self.seq_len}]")
    batch = len(sequences)
    out = {b: np.zeros((batch,) + shape, np.int32) for b, shape in self.shapes.items()}
    start = 0
    for s in self.segments:
      part = sequences[:, start:start + s.length]
      start += s.length
      if s.branch is None:
        continue
      ids = np.clip(part - s.offset, 0, s.size - 1).astype(np.int32)
      target = out[s.branch]
      if s.word_axis:
        columns = list(range(target.shape[-1])) if s.columns is None else list(s.columns)
        target[..., columns] = ids.reshape(batch, target.shape[1], len(columns))
      elif s.columns is None:
        target[:] = ids
      else:
        target[:, list(s.columns)] = ids
    return out

  def _by_branch(self, indices: Mapping[str, np.ndarray] | np.ndarray
                 ) -> Mapping[str, np.ndarray]:
    if isinstance(indices, Mapping):
      return indices
    if len(self.shapes) != 1:
      raise ValueError(f"a layout of branches {sorted(self.shapes)} needs a dict of indices")
    return {next(iter(self.shapes)): indices}
