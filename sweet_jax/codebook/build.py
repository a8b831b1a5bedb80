r"""Builds the language codebook: word groups, their vectors and GCN-normalised graphs.

    python -m sweet_jax.codebook.build --out=DIR [--source=glove|minilm|safetensors|npz]
        [--embeddings=PATH] [--tensor=NAME] [--vocab=PATH] [--pos_dir=DIR]
        [--sizes=adj=5078,noun=5403,adv=1872,verb=9267] [--min_log_prob=-16]
        [--knn=10] [--cooccurrence=PATH] [--exclude=PATH]

spatial = [adjectives..., nouns...], temporal = [adverbs..., verbs...] (see pos.py for the
word filters); each group's graph is the kNN graph of its vectors (or the user's word
pairs), GCN-normalised. The default sizes are the SweetTok paper's; the builder takes what
the vocabulary and filters allow and reports it. The trainer uses `cached_codebook`.

`--exclude=FILE` replaces the default exclusion list (exclusions.py: profanity, slurs,
sexual terms, protected attributes, violence, drugs) by the user's own, one word a line
or `word<TAB>reason`; to add words, pass a copy of the default list with them appended.
`--exclude=` (empty) excludes nothing. The manifest records each word the list removed
from the candidates with its reason.
"""

import argparse
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging
from etils import epath

from sweet_jax import io as sweet_io
from sweet_jax.codebook import artifact, exclusions, graph, pos, sources
from sweet_jax.codebook.artifact import LanguageCodebook, WordGroup

DEFAULT_SIZES = {"adj": 5078, "noun": 5403, "adv": 1872, "verb": 9267}
# Unigram log-probability floor. With GloVe, -16 still fills the paper's adjective and noun
# sizes (5254 and 12989 candidates) and drops the long tail: just below it sit "fain",
# "shew", "cere"; the table's floor, -19.5, holds ~half of all words (unseen ones).
DEFAULT_MIN_LOG_PROB = -16.0
DEFAULT_MIN_LENGTH = 3
DEFAULT_KNN = 10
# Bump when the builder's output for the same options changes (invalidates caches).
BUILDER_VERSION = 3  # 2: excluded words; 3: the safety list, removals and reasons


def resolve_sizes(sizes: Mapping[str, int] | None) -> dict[str, int]:
  """Requested words per part of speech: the paper's defaults, overridden by `sizes`."""
  sizes = dict(sizes or {})
  unknown = sorted(set(sizes) - set(pos.POS_KEYS))
  if unknown:
    raise ValueError(f"unknown parts of speech {unknown} in sizes; known: {pos.POS_KEYS}")
  resolved = {k: int(sizes.get(k, DEFAULT_SIZES[k])) for k in pos.POS_KEYS}
  if any(v < 1 for v in resolved.values()):
    raise ValueError(f"sizes must be positive, got {resolved}")
  return resolved


def build_codebook(out_dir: str, *, source: str = "glove", embeddings: str | None = None,
                   tensor: str | None = None, vocab: str | None = None,
                   pos_dir: str | None = None, sizes: Mapping[str, int] | None = None,
                   min_log_prob: float = DEFAULT_MIN_LOG_PROB,
                   min_length: int = DEFAULT_MIN_LENGTH, knn: int = DEFAULT_KNN,
                   cooccurrence: str | None = None,
                   exclude: str | None = exclusions.DEFAULT_FILE) -> LanguageCodebook:
  """Builds and saves (`artifact.save`) a codebook; same inputs give the same hash.

  `exclude` names a word list to leave out: by default ours (exclusions.py); a user's
  list replaces it; None or an empty file: none."""
  sizes = resolve_sizes(sizes)
  sources.check_source_args(source, embeddings=embeddings, vocab=vocab)
  lexicon = pos.load_pos_lexicon(pos_dir)
  stop_words = pos.load_stop_words()
  excluded = exclusions.load(exclude) if exclude else {}
  # Only words some part-of-speech list knows can be selected: read only their vectors.
  known = frozenset().union(*lexicon.pos_lists.values())
  words, vectors = sources.load_embeddings(source, embeddings=embeddings, tensor=tensor,
                                           vocab=vocab, keep=known)
  selected, report = pos.select_words(words, lexicon, sizes=sizes, min_log_prob=min_log_prob,
                                      min_length=min_length, stop_words=stop_words,
                                      excluded=excluded)
  removed = pos.excluded_candidates(words, lexicon, min_log_prob=min_log_prob,
                                    min_length=min_length, stop_words=stop_words,
                                    excluded=excluded)
  for key in pos.POS_KEYS:
    if not selected[key]:
      raise ValueError(f"no {key} words survived the filters ({report[key]}); lower "
                       "--min_log_prob or use an embedding source with a larger vocabulary")
  row_of = {w: i for i, w in enumerate(words)}
  pairs = graph.read_pairs(cooccurrence) if cooccurrence else None
  exclusion = _describe_exclusions(exclude, excluded, removed)
  groups, graph_info = {}, {}
  for name, (first, second) in artifact.GROUP_POS.items():
    rows = [row_of[w] for w in selected[first] + selected[second]]
    groups[name], graph_info[name] = _make_group(
        name, selected[first], selected[second], vectors[rows], knn=knn, pairs=pairs,
        user_exclusions=exclusion["list"] != "default")
  manifest = {
      "source": sources.describe(source, embeddings=embeddings, tensor=tensor, vocab=vocab),
      "pos_lexicon": _describe_lexicon(pos_dir),
      "filters": {"min_log_prob": float(min_log_prob), "min_length": int(min_length),
                  "alphabetic": "lowercase ASCII letters only",
                  "stop_words": {"source": "scikit-learn ENGLISH_STOP_WORDS",
                                 "count": len(stop_words)},
                  "excluded_words": exclusion,
                  "inflection_rule": pos.INFLECTION_RULE,
                  "one_pos_per_group": "adjective over noun, adverb over verb",
                  "order": list(pos.FILTERS)},
      "sizes_requested": sizes,
      "sizes_obtained": {k: len(selected[k]) for k in pos.POS_KEYS},
      "filter_report": report,
      "graph": _describe_graph(knn, cooccurrence, graph_info),
      "vector_dim": int(vectors.shape[1]),
      "builder_version": BUILDER_VERSION,
  }
  return artifact.save(out_dir, groups["spatial"], groups["temporal"], manifest)


_OPTION_DEFAULTS = {name: p.default for name, p in
                    inspect.signature(build_codebook).parameters.items() if name != "out_dir"}


def _describe_exclusions(path: str | None, excluded: Mapping[str, str],
                         removed: Mapping[str, str]) -> dict:
  """The manifest's record of the exclusion list: which list, its identity, and each word
  it removed from the candidates with its reason (plus counts per reason)."""
  if not path:
    kind = "none"
  elif os.path.abspath(path) == os.path.abspath(exclusions.DEFAULT_FILE):
    kind = "default"
  else:
    kind = "user"
  per_reason = {}
  for reason in removed.values():
    per_reason[reason] = per_reason.get(reason, 0) + 1
  return {"list": kind, "path": path, "count": len(excluded),
          "sha256": sources.file_sha256(path) if path else None,
          "removed": dict(removed), "removed_per_reason": dict(sorted(per_reason.items()))}


def _make_group(name: str, first: list[str], second: list[str], vectors: np.ndarray, *,
                knn: int, pairs: list[tuple[str, str]] | None,
                user_exclusions: bool = False) -> tuple[WordGroup, dict]:
  """A group's WordGroup and its graph statistics."""
  words = first + second
  info = {}
  if pairs is None:
    senders, receivers = graph.knn_edges(vectors, knn)
  else:
    senders, receivers, info["skipped_pairs"] = graph.pair_edges(words, pairs)
  info["undirected_edges"] = len(senders) // 2
  senders, receivers, weights = graph.gcn_normalize(senders, receivers, len(words))
  info["directed_edges_with_self_loops"] = len(senders)
  group = WordGroup(name=name, words=np.array(words), vectors=np.ascontiguousarray(vectors),
                    senders=senders, receivers=receivers, edge_weights=weights,
                    num_first=len(first), user_exclusions=user_exclusions)
  return group, info


def _describe_lexicon(pos_dir: str | None) -> dict:
  if pos_dir is None:
    return {"package": "spacy-lookups-data",
            "version": sources.package_version(pos.LEXICON_PACKAGE)}
  return {"path": os.path.abspath(pos_dir),
          "sha256": {name: sources.file_sha256(os.path.join(pos_dir, name))
                     for name in sorted(pos.LEXICON_FILES.values())}}


def _describe_graph(knn: int, cooccurrence: str | None, info: dict) -> dict:
  described = {"normalization": "GCN: D^-1/2 (A + I) D^-1/2", "groups": info}
  if cooccurrence:
    return dict(described, kind="cooccurrence", path=os.path.abspath(cooccurrence),
                sha256=sources.file_sha256(cooccurrence))
  return dict(described, kind="knn", k=int(knn), metric="cosine")


# ---------------------------------------------------------------------------------------
# Cache.


def default_cache_dir() -> str:
  """`$SWEET_JAX_CACHE/codebooks`, else `~/.cache/sweet_jax/codebooks`."""
  root = os.environ.get("SWEET_JAX_CACHE") or os.path.expanduser("~/.cache/sweet_jax")
  return os.path.join(root, "codebooks")


def resolve_options(**options) -> dict:
  """All build options with defaults filled in and paths made absolute."""
  unknown = sorted(set(options) - set(_OPTION_DEFAULTS))
  if unknown:
    raise TypeError(f"unknown codebook options {unknown}; known: {sorted(_OPTION_DEFAULTS)}")
  resolved = {name: options.get(name, default) for name, default in _OPTION_DEFAULTS.items()}
  resolved["sizes"] = resolve_sizes(resolved["sizes"])
  resolved["min_log_prob"] = float(resolved["min_log_prob"])
  for name in ("embeddings", "vocab", "pos_dir", "cooccurrence", "exclude"):
    if resolved[name]:
      resolved[name] = os.path.abspath(resolved[name])
  return resolved


def cache_key(**options) -> str:
  """sha256 of the options, the builder and artifact versions, and the inputs' identity
  (package versions; path, size and mtime of user files; the exclusion list's content)."""
  opts = resolve_options(**options)
  payload = {
      "options": opts,
      "format_version": artifact.FORMAT_VERSION,
      "builder_version": BUILDER_VERSION,
      "source": sources.fingerprint(opts["source"], embeddings=opts["embeddings"],
                                    vocab=opts["vocab"]),
      "pos": (sources.fingerprint("npz", embeddings=opts["pos_dir"]) if opts["pos_dir"]
              else sources.package_version(pos.LEXICON_PACKAGE)),
      "cooccurrence": sources.fingerprint("npz", embeddings=opts["cooccurrence"]),
      "exclude": (sources.file_sha256(opts["exclude"])  # small: its content, not its mtime
                  if opts["exclude"] and os.path.isfile(opts["exclude"]) else None),
  }
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


# What `artifact.load` raises for a damaged entry (zip damage surfaces as BadZipFile).
_BROKEN_ENTRY = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def cached_codebook(cache_dir: str, **options) -> LanguageCodebook:
  """The codebook for `options` from `cache_dir/<key>/`, built there first if needed.

  A build goes to a temporary directory that is renamed into place, so a reader never
  sees a half-written codebook; when two processes race, the loser loads the winner's.
  In a bucket (gs://...) the build is copied in with its manifest written last, so a
  reader that finds the manifest finds the arrays.
  """
  opts = resolve_options(**options)
  if not sweet_io.is_local(cache_dir):
    return _cached_in_bucket(epath.Path(cache_dir) / cache_key(**opts), opts)
  final = os.path.join(cache_dir, cache_key(**opts))
  if os.path.exists(final):
    try:
      return artifact.load(final)
    except _BROKEN_ENTRY as e:
      logging.warning("Rebuilding the cached language codebook %s: %s", final, e)
      _discard(final)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".building-", dir=cache_dir)
  try:
    codebook = build_codebook(tmp, **opts)
    try:
      os.replace(tmp, final)
    except OSError:  # another process renamed its build into place first
      try:
        return artifact.load(final)
      except _BROKEN_ENTRY:
        return codebook
    return codebook
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _cached_in_bucket(final: epath.Path, opts: dict) -> LanguageCodebook:
  if (final / "manifest.json").exists():
    try:
      return artifact.load(final)
    except _BROKEN_ENTRY as e:
      logging.warning("Rebuilding the cached language codebook %s: %s", final, e)
  with tempfile.TemporaryDirectory(prefix="sweet_jax_codebook_") as tmp:
    codebook = build_codebook(tmp, **opts)
  return artifact.save(str(final), codebook.spatial, codebook.temporal, codebook.manifest)


def _discard(path: str) -> None:
  """Moves a broken cache entry aside before deleting it (another process may race us)."""
  trash = tempfile.mkdtemp(prefix=".discard-", dir=os.path.dirname(path))
  try:
    os.replace(path, os.path.join(trash, "entry"))
  except OSError:
    pass
  shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# CLI.


def parse_sizes(text: str) -> dict[str, int]:
  """'adj=5078,noun=5403' -> {'adj': 5078, 'noun': 5403}."""
  sizes = {}
  for item in filter(None, (x.strip() for x in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep or not value.strip().isdigit():
      raise ValueError(f"--sizes: expected POS=COUNT items like adj=5078, got {item!r}")
    sizes[key.strip()] = int(value)
  return resolve_sizes(sizes)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m sweet_jax.codebook.build",
                                   description=__doc__.split("\n\n")[1])
  parser.add_argument("--out", required=True, help="Output directory.")
  parser.add_argument("--source", default="glove", choices=sources.SOURCES)
  parser.add_argument("--embeddings", help="safetensors file/directory or .npz (user sources).")
  parser.add_argument("--tensor", help="safetensors: the embedding tensor's name.")
  parser.add_argument("--vocab", help="safetensors: tokenizer.json or one token per line.")
  parser.add_argument("--pos_dir", help="Directory of the spacy-lookups-data files.")
  parser.add_argument("--sizes", default="", help="Words per POS, e.g. adj=5078,verb=9267.")
  parser.add_argument("--min_log_prob", type=float, default=DEFAULT_MIN_LOG_PROB)
  parser.add_argument("--min_length", type=int, default=DEFAULT_MIN_LENGTH)
  parser.add_argument("--knn", type=int, default=DEFAULT_KNN)
  parser.add_argument("--cooccurrence", help="Word-pair file (replaces the kNN graph).")
  parser.add_argument("--exclude", default=exclusions.DEFAULT_FILE,
                      help="Words to leave out, one a line or word<TAB>reason; replaces the "
                           "default list (profanity, slurs, sexual terms, protected "
                           "attributes, violence, drugs); --exclude= keeps every word.")
  return parser


def format_report(codebook: LanguageCodebook) -> str:
  """The per-POS table (requested, obtained, survivors of each filter) and graph sizes."""
  m = codebook.manifest
  columns = ["requested", "obtained"] + list(pos.FILTERS[:-1])
  lines = ["pos   " + " ".join(f"{c:>{max(9, len(c))}}" for c in columns)]
  for key in pos.POS_KEYS:
    values = [m["sizes_requested"][key], m["sizes_obtained"][key]]
    values += [m["filter_report"][key][f] for f in pos.FILTERS[:-1]]
    lines.append(f"{key:<5} " + " ".join(f"{v:>{max(9, len(c))}}"
                                        for v, c in zip(values, columns)))
  g = m["graph"]
  kind = f"kNN (k={g['k']}, cosine)" if g["kind"] == "knn" else f"co-occurrence ({g['path']})"
  edges = ", ".join(f"{name} {info['undirected_edges']}" for name, info in g["groups"].items())
  lines.append(f"graph: {kind}; undirected edges: {edges}")
  excluded = m["filters"]["excluded_words"]
  reasons = ", ".join(f"{r} {n}" for r, n in excluded["removed_per_reason"].items())
  lines.append(f"excluded ({excluded['list']} list): {len(excluded['removed'])} candidate "
               f"words" + (f" ({reasons})" if reasons else ""))
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  start = time.perf_counter()
  try:
    codebook = build_codebook(
        args.out, source=args.source, embeddings=args.embeddings, tensor=args.tensor,
        vocab=args.vocab, pos_dir=args.pos_dir, sizes=parse_sizes(args.sizes),
        min_log_prob=args.min_log_prob, min_length=args.min_length, knn=args.knn,
        cooccurrence=args.cooccurrence, exclude=args.exclude)
  except (ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 1
  source = codebook.manifest["source"]
  origin = source.get("package") or source.get("path")
  print(f"source: {source['name']} ({origin} {source.get('version', '')}".rstrip()
        + f"), {codebook.manifest['vector_dim']}-d vectors")
  print(format_report(codebook))
  print(f"hash: {codebook.manifest['hash']}")
  print(f"wrote {os.path.abspath(args.out)} in {time.perf_counter() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
