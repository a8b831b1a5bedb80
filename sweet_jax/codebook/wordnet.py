"""A reader of the WordNet 3.0 database files (Debian `wordnet-base`, /usr/share/wordnet).

Only the exclusion-list generator (`exclusion_rules.py`) reads WordNet; the codebook
build and the readout read the list it writes. Files and their formats (WordNet's
wndb(5WN) and cntlist(5WN) manual pages):

  data.noun/.verb/.adj/.adv   one synset a line: `offset lex_filenum ss_type w_cnt (hex)
                              word lex_id ... p_cnt (decimal) [symbol offset pos
                              source/target]... [frames] | gloss`
  index.noun/.verb/.adj/.adv  `lemma pos synset_cnt p_cnt [symbol]... sense_cnt
                              tagsense_cnt offset...`, senses most frequent first
  cntlist.rev                 `sense_key sense_number tag_cnt`: how often each sense was
                              tagged in the semantic concordance texts
"""

import dataclasses
import os
import re

DEFAULT_DIR = "/usr/share/wordnet"
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# A synset's `ss_type`: "s" (adjective satellite) lives in data.adj like "a".
FILE_POS = {"n": "n", "v": "v", "a": "a", "s": "a", "r": "r"}
SENSE_KEY_TYPES = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}
_MARKER = re.compile(r"\((a|p|ip)\)$")  # adjective position markers: "galore(ip)"

SynsetId = tuple[str, int]  # (file POS "n" | "v" | "a" | "r", byte offset)


@dataclasses.dataclass(frozen=True)
class Pointer:
  """A relation to another synset. `source`/`target` are 1-based word numbers of a lexical
  pointer (one word to one word), 0 for a semantic pointer (whole synset to synset)."""

  symbol: str
  target: SynsetId
  source: int
  target_word: int


@dataclasses.dataclass(frozen=True)
class Synset:
  id: SynsetId
  ss_type: str
  lex_filenum: int
  words: tuple[str, ...]  # as written ("American", "ice_cream"), markers stripped
  lex_ids: tuple[int, ...]
  pointers: tuple[Pointer, ...]
  gloss: str

  def lemmas(self) -> tuple[str, ...]:
    """The words lowercased: the form index files and codebooks use."""
    return tuple(w.lower() for w in self.words)


@dataclasses.dataclass(frozen=True, eq=False)
class WordNet:
  """The synsets, each lemma's senses (most frequent first) and the sense tag counts."""

  synsets: dict[SynsetId, Synset]
  senses: dict[tuple[str, str], tuple[SynsetId, ...]]  # (lemma, file POS) -> synsets
  tag_counts: dict[tuple[str, SynsetId], int]  # (lemma, synset) -> tagged occurrences
  directory: str
  version: str

  def synset(self, name: str) -> Synset:
    """A synset by name "lemma.pos.NN": the NN-th sense of lemma in the index files, e.g.
    "religious_person.n.01"; a name the database lacks is a ValueError."""
    lemma, pos, number = name.rsplit(".", 2)
    senses = self.senses.get((lemma, FILE_POS[pos]), ())
    if not 1 <= int(number) <= len(senses):
      raise ValueError(f"WordNet {self.directory} has no synset {name} ({lemma!r} has "
                       f"{len(senses)} {POS_FILES[FILE_POS[pos]]} senses)")
    return self.synsets[senses[int(number) - 1]]

  def word_senses(self, lemma: str) -> list[SynsetId]:
    """Every synset of `lemma`, nouns, verbs, adjectives, adverbs in turn."""
    return [s for pos in POS_FILES for s in self.senses.get((lemma, pos), ())]


def read(directory: str = DEFAULT_DIR) -> WordNet:
  """The WordNet database in `directory`; one clear error line when files are missing."""
  needed = [f"{kind}.{name}" for name in POS_FILES.values() for kind in ("data", "index")]
  missing = [n for n in needed if not os.path.isfile(os.path.join(directory, n))]
  if missing:
    raise FileNotFoundError(f"WordNet directory {directory} lacks {', '.join(missing)}: "
                            "install Debian wordnet-base (apt-get install wordnet-base), "
                            "or pass --wordnet_dir=DIR")
  synsets, senses = {}, {}
  version = "unknown"
  for pos, name in POS_FILES.items():
    for line in _lines(os.path.join(directory, f"data.{name}")):
      if line.startswith("  "):
        version = _license_version(line) or version
        continue
      synset = _parse_synset(line, pos)
      synsets[synset.id] = synset
    for line in _lines(os.path.join(directory, f"index.{name}")):
      if line.startswith("  "):
        continue
      fields = line.split()
      synset_cnt, pointer_cnt = int(fields[2]), int(fields[3])
      offsets = fields[6 + pointer_cnt:6 + pointer_cnt + synset_cnt]
      senses[(fields[0], pos)] = tuple((pos, int(o)) for o in offsets)
  counts_path = os.path.join(directory, "cntlist.rev")
  counts = _tag_counts(synsets, counts_path) if os.path.isfile(counts_path) else {}
  return WordNet(synsets=synsets, senses=senses, tag_counts=counts,
                 directory=os.path.abspath(directory), version=version)


def _lines(path: str):
  with open(path, encoding="utf-8", errors="replace") as f:
    yield from (line.rstrip("\n") for line in f if line.strip())


def _license_version(line: str) -> str | None:
  match = re.search(r"WordNet (\d+(\.\d+)*) Copyright", line)
  return match.group(1) if match else None


def _parse_synset(line: str, file_pos: str) -> Synset:
  data, _, gloss = line.partition(" | ")
  fields = data.split()
  try:
    offset, lex_filenum, ss_type = int(fields[0]), int(fields[1]), fields[2]
    count = int(fields[3], 16)
    words = tuple(_MARKER.sub("", fields[4 + 2 * i]) for i in range(count))
    lex_ids = tuple(int(fields[5 + 2 * i], 16) for i in range(count))
    at = 4 + 2 * count
    pointers = []
    for i in range(int(fields[at])):
      symbol, target, pos, source_target = fields[at + 1 + 4 * i:at + 5 + 4 * i]
      pointers.append(Pointer(symbol, (FILE_POS[pos], int(target)),
                              int(source_target[:2], 16), int(source_target[2:], 16)))
  except (IndexError, ValueError, KeyError) as e:
    raise ValueError(f"malformed WordNet data.{POS_FILES[file_pos]} line {line[:60]!r}: "
                     f"{e}") from e
  return Synset(id=(file_pos, offset), ss_type=ss_type, lex_filenum=lex_filenum, words=words,
                lex_ids=lex_ids, pointers=tuple(pointers), gloss=gloss.strip())


def _tag_counts(synsets: dict[SynsetId, Synset], path: str) -> dict[tuple[str, SynsetId], int]:
  """(lemma, synset) -> tag count, joining cntlist.rev's sense keys
  `lemma%ss_type:lex_filenum:lex_id:head_word:head_id` to the synsets."""
  by_key = {}
  for synset in synsets.values():
    head = ""
    if synset.ss_type == "s":  # a satellite's key names the first word of its head synset
      heads = [p.target for p in synset.pointers if p.symbol == "&"]
      if heads and heads[0] in synsets:
        h = synsets[heads[0]]
        head = f"{h.lemmas()[0]}:{h.lex_ids[0]:02d}"
    for lemma, lex_id in zip(synset.lemmas(), synset.lex_ids):
      key = (f"{lemma}%{SENSE_KEY_TYPES[synset.ss_type]}:{synset.lex_filenum:02d}:"
             f"{lex_id:02d}:{head or ':'}")
      by_key[key] = (lemma, synset.id)
  counts = {}
  for line in _lines(path):
    fields = line.split()
    if len(fields) == 3 and fields[0] in by_key:
      counts[by_key[fields[0]]] = int(fields[2])
  return counts
