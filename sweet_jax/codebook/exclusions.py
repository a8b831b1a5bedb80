"""Words a language codebook leaves out, each with its reason, and the readout's check.

The default list, `excluded_words.tsv`, holds profanity, slurs, sexual terms, terms for
protected attributes (religion, sexual orientation, ethnicity and nationality, gender,
disability, age), violence and self-harm, drugs, crime, politics, and judgments of a
person's looks, character or fortune: the published lists and WordNet category rules of
`exclusion_rules.py` (its REASONS), which writes it. Its lines are `word<TAB>reason<TAB>evidence`;
a user's list may also be one plain word a line (reason `listed`). `#` starts a comment.
"""

import functools
import os
from collections.abc import Iterable, Iterator, Mapping

DEFAULT_FILE = os.path.join(os.path.dirname(__file__), "excluded_words.tsv")
LISTED = "listed"  # the reason of a word on a plain one-word-a-line list


def read_lines(path: str, what: str = "excluded-word list") -> Iterator[tuple[str, str]]:
  """(word, reason) per line of a word list, plain or `word<TAB>reason[<TAB>evidence]`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} {path} is missing")
  with open(path, encoding="utf-8") as f:
    try:
      lines = f.readlines()
    except UnicodeDecodeError as e:
      raise ValueError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                       "save it as UTF-8, one word a line") from e
  for number, line in enumerate(lines, 1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    word, _, rest = line.partition("\t")
    word, reason = word.strip(), rest.partition("\t")[0].strip() or LISTED
    if not word or " " in word:
      raise ValueError(f"{path}:{number}: expected one word, or word<TAB>reason, got "
                       f"{line[:60]!r}")
    yield word.lower(), reason


def load(path: str = DEFAULT_FILE) -> dict[str, str]:
  """word -> reason of a list (the first line naming a word wins)."""
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"excluded-word list {path} is missing")
  stat = os.stat(path)
  return dict(_load(path, stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _load(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, str], ...]:
  del size, mtime_ns  # only part of the cache key: an edited list is read again
  reasons = {}
  for word, reason in read_lines(path):
    reasons.setdefault(word, reason)
  return tuple(reasons.items())


def unsafe_words(words: Iterable[str], excluded: Mapping[str, str],
                 lemma_of: Mapping[str, str]) -> set[str]:
  """The words that are on `excluded`, themselves or as their lemma: `lemma_of[word]`
  (inflected form -> lemma: "guns" -> "gun"), or for a word it does not know, the word
  less a plural -s or -es ("nazis" -> "nazi": a user's tokenizer may hold such words)."""
  return {w for w in words if any(form in excluded for form in _lemmas(w, lemma_of))}


def _lemmas(word: str, lemma_of: Mapping[str, str]) -> list[str]:
  if word in lemma_of:
    return [word, lemma_of[word]]
  return [word] + [word[:-len(suffix)] for suffix in ("s", "es")
                   if word.endswith(suffix) and len(word) - len(suffix) >= 3]
