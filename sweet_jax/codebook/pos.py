"""Parts of speech for the language codebook: which embedding words become codebook rows.

The lexicon comes from PyPI `spacy-lookups-data` (files in its `data/` directory):
`en_lemma_index.json.gz` (WordNet lemma lists per part of speech), `en_lemma_lookup.json.gz`
(inflected form -> lemma) and `en_lexeme_prob.json.gz` (unigram log-probabilities).
Stop words are scikit-learn's list, shipped next to this file.
"""

import dataclasses
import functools
import gzip
import json
import os
from collections.abc import Collection, Iterable, Mapping

from sweet_jax.codebook import exclusions, sources

POS_KEYS = ("adj", "adv", "noun", "verb")
# Within a group a word takes one part of speech; the first of each pair wins.
GROUP_OF_POS = {"adj": "spatial", "noun": "spatial", "adv": "temporal", "verb": "temporal"}
WINNER_OVER = {"noun": "adj", "verb": "adv"}
LEXICON_FILES = {"pos_lists": "en_lemma_index.json.gz", "lemma_of": "en_lemma_lookup.json.gz",
                 "log_prob": "en_lexeme_prob.json.gz"}
LEXICON_PACKAGE = "spacy_lookups_data"
STOP_WORDS_FILE = os.path.join(os.path.dirname(__file__), "stop_words.txt")
# Words left out by default, each with its reason (see exclusions.py).
EXCLUDED_WORDS_FILE = exclusions.DEFAULT_FILE
# The filters of `select_words`, in the order they run (the report counts survivors).
FILTERS = ("wordnet", "alphabetic", "min_length", "not_stop_word", "not_excluded",
           "in_vocabulary",
           "not_inflected", "frequent", "one_pos_per_group", "selected")
INFLECTION_RULE = "drop a word whose lemma_of[word] exists and differs from it"


@dataclasses.dataclass(frozen=True, eq=False)
class PosLexicon:
  """WordNet lemma lists per part of speech, inflection -> lemma, and word log-frequency."""

  pos_lists: dict[str, frozenset[str]]
  lemma_of: dict[str, str]
  log_prob: dict[str, float]
  directory: str


def default_pos_dir() -> str:
  return os.path.join(sources.package_dir(LEXICON_PACKAGE), "data")


def load_pos_lexicon(path: str | None = None) -> PosLexicon:
  """The lexicon in directory `path` (default: the installed spacy-lookups-data).

  Parsed lexicons are cached per directory and file state: the 1M-entry frequency table
  takes about a second to parse, and tests and builds ask for it repeatedly.
  """
  directory = os.path.abspath(path or default_pos_dir())
  files = {key: os.path.join(directory, name) for key, name in LEXICON_FILES.items()}
  missing = [p for p in files.values() if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"part-of-speech lexicon {directory} lacks {missing}")
  state = tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files.values())
  return _load_lexicon(directory, state)


@functools.lru_cache(maxsize=4)
def _load_lexicon(directory: str, state: tuple) -> PosLexicon:
  del state  # only part of the cache key
  raw = {key: _read_json_gz(os.path.join(directory, name)) for key, name in LEXICON_FILES.items()}
  index_path = os.path.join(directory, LEXICON_FILES["pos_lists"])
  if not isinstance(raw["pos_lists"], dict):
    raise ValueError(f"{index_path} must map parts of speech to word lists")
  missing = [k for k in POS_KEYS if k not in raw["pos_lists"]]
  if missing:
    raise ValueError(f"{index_path} lacks parts of speech {missing}; it has "
                     f"{sorted(raw['pos_lists'])}")
  empty = [k for k in POS_KEYS if not raw["pos_lists"][k]]
  if empty:
    raise ValueError(f"{index_path}: the word lists of {empty} are empty")
  for key in ("lemma_of", "log_prob"):
    if not isinstance(raw[key], dict):
      raise ValueError(f"{os.path.join(directory, LEXICON_FILES[key])} must be a JSON object")
  return PosLexicon(pos_lists={k: frozenset(raw["pos_lists"][k]) for k in POS_KEYS},
                    lemma_of=raw["lemma_of"], log_prob=raw["log_prob"], directory=directory)


def load_lemma_of(path: str | None = None) -> dict[str, str]:
  """Inflected form -> lemma ("guns" -> "gun") alone, for the readout's check of old
  codebooks: a fraction of a second, where the whole lexicon takes about one."""
  directory = os.path.abspath(path or default_pos_dir())
  return _load_lemma_of(os.path.join(directory, LEXICON_FILES["lemma_of"]))


@functools.lru_cache(maxsize=2)
def _load_lemma_of(path: str) -> dict[str, str]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"part-of-speech lexicon file {path} is missing "
                            "(pip install spacy-lookups-data)")
  lemma_of = _read_json_gz(path)
  if not isinstance(lemma_of, dict):
    raise ValueError(f"{path} must be a JSON object")
  return lemma_of


def _read_json_gz(path: str):
  try:
    with gzip.open(path, "rt", encoding="utf-8") as f:
      return json.load(f)
  except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not gzip-compressed JSON: {e}") from e


@functools.lru_cache(maxsize=1)
def load_stop_words() -> frozenset[str]:
  """scikit-learn's English stop words (shipped next to this file, one a line, read as the
  exclusion lists are)."""
  return frozenset(word for word, _ in exclusions.read_lines(STOP_WORDS_FILE, "stop-word list"))


def _word_checks(vocab_words: Iterable[str], lexicon: PosLexicon, *, min_log_prob: float,
                 min_length: int, stop_words: Collection[str], excluded: Collection[str]):
  """(filter name, word -> passes) for the per-word filters of FILTERS, in order."""
  vocab = set(vocab_words)
  log_prob = lexicon.log_prob
  return (
      ("alphabetic", sources.is_plain_word),
      ("min_length", lambda w: len(w) >= min_length),
      ("not_stop_word", lambda w: w not in stop_words),
      ("not_excluded", lambda w: w not in excluded),
      ("in_vocabulary", lambda w: w in vocab),
      ("not_inflected", lambda w: lexicon.lemma_of.get(w, w) == w),
      ("frequent", lambda w: log_prob.get(w, -float("inf")) >= min_log_prob),
  )


def select_words(vocab_words: Iterable[str], lexicon: PosLexicon, *, sizes: Mapping[str, int],
                 min_log_prob: float, min_length: int = 3,
                 stop_words: Collection[str] | None = None, excluded: Collection[str] = ()
                 ) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
  """(words per part of speech, most frequent first; survivors per filter and POS).

  Filters, in order: lowercase ASCII letters only (no names, numbers, hyphens);
  at least `min_length` letters (drops "ox"-like fragments and abbreviations); not a
  stop word; not in `excluded` (a collection or a word -> reason mapping; by default
  words unsafe to print next to a stranger's photo, see exclusions.py); in the embedding vocabulary; not an inflected form (codebook rows are
  lemmas: "years" and "said" would duplicate "year" and "say"); log-probability at least
  `min_log_prob` (rare and junk words have poor vectors; words without a frequency are
  dropped). Then one part of speech per word within a group (an adjective is not also a
  noun, an adverb not also a verb, as in the official SweetTok code; a word may still be
  a noun in `spatial` and a verb in `temporal`), and the `sizes[pos]` most frequent words
  (ties by the word, so the result does not depend on set order). Every embedding
  source goes through these filters: they see only the word strings.
  """
  unknown = sorted(set(sizes) - set(POS_KEYS))
  if unknown or any(k not in sizes for k in POS_KEYS):
    raise ValueError(f"sizes must give exactly {POS_KEYS}; got {sorted(sizes)}")
  if any(int(sizes[k]) < 1 for k in POS_KEYS):
    raise ValueError(f"sizes must be positive, got {dict(sizes)}")
  stop_words = load_stop_words() if stop_words is None else stop_words
  checks = _word_checks(vocab_words, lexicon, min_log_prob=min_log_prob,
                        min_length=min_length, stop_words=stop_words, excluded=excluded)
  log_prob = lexicon.log_prob
  report = {pos: {} for pos in POS_KEYS}
  candidates = {}
  for pos in POS_KEYS:
    words = lexicon.pos_lists[pos]
    report[pos]["wordnet"] = len(words)
    for name, check in checks:
      words = {w for w in words if check(w)}
      report[pos][name] = len(words)
    candidates[pos] = words
  selected = {}
  for pos in POS_KEYS:
    words = candidates[pos] - candidates[WINNER_OVER[pos]] if pos in WINNER_OVER else \
        candidates[pos]
    report[pos]["one_pos_per_group"] = len(words)
    ranked = sorted(words, key=lambda w: (-log_prob[w], w))
    selected[pos] = ranked[:int(sizes[pos])]
    report[pos]["selected"] = len(selected[pos])
  return selected, report


def excluded_candidates(vocab_words: Iterable[str], lexicon: PosLexicon, *,
                        min_log_prob: float, min_length: int = 3,
                        stop_words: Collection[str] | None = None,
                        excluded: Mapping[str, str]) -> dict[str, str]:
  """The words `excluded` took out of the candidates (word -> reason): those that every
  other per-word filter of `select_words` lets through in some part of speech."""
  stop_words = load_stop_words() if stop_words is None else stop_words
  checks = _word_checks(vocab_words, lexicon, min_log_prob=min_log_prob,
                        min_length=min_length, stop_words=stop_words, excluded=())
  known = frozenset().union(*lexicon.pos_lists.values())
  removed = (w for w in excluded if w in known and all(check(w) for _, check in checks))
  return {w: excluded[w] for w in sorted(removed)}
