"""A run's language codebook: built (or taken from the build cache) on the first start,
then read from the run's own copy.

A run keeps its copy in `workdir/codebook` (on any filesystem): the first start copies
it there from the build cache, later starts (resumes, evaluation, the words readout, a
loaded tokenizer) read that copy, so a checkpoint always meets the codebook it was
trained with (later edits of `config.codebook` do not apply to an existing run).
"""

from typing import Mapping

import jax
import ml_collections
from absl import logging
from etils import epath

from sweet_jax.codebook import artifact
from sweet_jax.codebook.artifact import WordGroup


def for_run(codebook: ml_collections.ConfigDict, fields: Mapping[str, str],
            workdir: str | None = None) -> dict[str, WordGroup]:
  """The word groups a model needs: model field -> the codebook group named by `fields`
  (e.g. {"word_group": "spatial"}); none when `fields` is empty. `codebook` is
  config.codebook."""
  if not fields:
    return {}
  run_copy = epath.Path(workdir) / "codebook" if workdir else None
  if run_copy is not None and (run_copy / "manifest.json").exists():
    book = artifact.load(run_copy)
  else:
    # pylint: disable-next=g-import-not-at-top  (the builder loads GloVe and POS lists)
    from sweet_jax.codebook import build, pos
    book = build.cached_codebook(
        codebook.cache_dir or build.default_cache_dir(), source=codebook.source,
        embeddings=codebook.embeddings, tensor=codebook.tensor, vocab=codebook.vocab,
        pos_dir=codebook.pos_dir, cooccurrence=codebook.cooccurrence, knn=codebook.knn,
        min_log_prob=codebook.min_log_prob, min_length=codebook.min_length,
        exclude=codebook.exclude or pos.EXCLUDED_WORDS_FILE, sizes=dict(codebook.sizes))
    if run_copy is not None and jax.process_index() == 0:
      artifact.save(run_copy, book.spatial, book.temporal, book.manifest)
  logging.info("Language codebook %s: %s", book.manifest["hash"][:12], book.manifest["sizes"])
  groups = {"spatial": book.spatial, "temporal": book.temporal}
  return {field: groups[group] for field, group in fields.items()}
