"""Word graphs for the language codebook's GCN: kNN by cosine similarity, or word pairs.

Edges are directed `(senders, receivers)` int32 arrays listing both directions of every
undirected edge, without self-loops; `gcn_normalize` adds those and the GCN weights.
"""

import os

import numpy as np

_BLOCK_BYTES = 32 << 20  # a [rows, V] float32 similarity block (and its partition copy)


def _symmetric_unique(senders: np.ndarray, receivers: np.ndarray, num_nodes: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Both directions of every edge, once each, self-loops dropped, sorted by (receiver, sender)."""
  s = np.concatenate([senders, receivers]).astype(np.int64)
  r = np.concatenate([receivers, senders]).astype(np.int64)
  keep = s != r
  codes = np.unique(r[keep] * num_nodes + s[keep])
  return (codes % num_nodes).astype(np.int32), (codes // num_nodes).astype(np.int32)


def knn_edges(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Undirected kNN graph by cosine similarity: edge i-j if j is among i's k nearest
  (self excluded) or i among j's. Ties go to the lower index, so the graph is the same
  on every run; rows are processed in blocks to bound memory."""
  vectors = np.asarray(vectors, np.float32)
  if vectors.ndim != 2:
    raise ValueError(f"kNN needs a 2-D [words, dim] matrix, got shape {vectors.shape}")
  if k < 1:
    raise ValueError(f"kNN needs k >= 1, got {k}")
  num = vectors.shape[0]
  k = min(k, num - 1)
  if k < 1:
    return np.zeros(0, np.int32), np.zeros(0, np.int32)
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  unit = vectors / np.maximum(norms, 1e-12)
  block = max(1, _BLOCK_BYTES // (4 * num))
  neighbours = np.empty((num, k), np.int64)
  for start in range(0, num, block):
    rows = np.arange(start, min(start + block, num))
    sims = unit[rows] @ unit.T
    sims[np.arange(len(rows)), rows] = -np.inf
    neighbours[rows] = _top_k_stable(sims, k)
  senders = neighbours.reshape(-1)
  receivers = np.repeat(np.arange(num), k)
  return _symmetric_unique(senders, receivers, num)


def _top_k_stable(sims: np.ndarray, k: int) -> np.ndarray:
  """Column indices of each row's k largest values; equal values: lower column first."""
  threshold = np.partition(sims, -k, axis=1)[:, -k]
  rows, cols = np.nonzero(sims >= threshold[:, None])  # every tie at the threshold
  order = np.lexsort((cols, -sims[rows, cols], rows))
  rows, cols = rows[order], cols[order]
  starts = np.searchsorted(rows, np.arange(sims.shape[0]))
  rank = np.arange(len(rows)) - starts[rows]
  return cols[rank < k].reshape(sims.shape[0], k)


def read_pairs(path: str) -> list[tuple[str, str]]:
  """Word pairs from lines `word1<TAB or comma>word2[,count]` (`#` comments, blank lines
  skipped). The count is accepted but unused: GCNConv's default graph is unweighted."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"co-occurrence file {path} does not exist")
  pairs = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      fields = [x.strip() for x in line.replace("\t", ",").split(",")]
      if len(fields) not in (2, 3) or not fields[0] or not fields[1]:
        raise ValueError(f"{path}:{number}: expected `word1<TAB or ,>word2[,count]`, "
                         f"got {line!r}")
      pairs.append((fields[0].lower(), fields[1].lower()))
  if not pairs:
    raise ValueError(f"co-occurrence file {path} holds no word pairs")
  return pairs


def pair_edges(words: list[str], pairs: list[tuple[str, str]]
               ) -> tuple[np.ndarray, np.ndarray, int]:
  """(senders, receivers, skipped): the pairs as a symmetric graph over `words`.

  Pairs with a word outside `words` are skipped (and counted); self-pairs and
  duplicates collapse (self-loops come from `gcn_normalize`).
  """
  row = {w: i for i, w in enumerate(words)}
  known = [(row[a], row[b]) for a, b in pairs if a in row and b in row]
  skipped = len(pairs) - len(known)
  s, r = (np.asarray(x, np.int64) for x in zip(*known)) if known else (np.zeros(0),) * 2
  senders, receivers = _symmetric_unique(s, r, len(words))
  return senders, receivers, skipped


def gcn_normalize(senders: np.ndarray, receivers: np.ndarray, num_nodes: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Â = D^-1/2 (A + I) D^-1/2 as edges, exactly torch_geometric GCNConv's default
  (`gcn_norm`, add_self_loops=True, improved=False): existing self-loops are replaced by
  one per node of weight 1, degrees are counted at the receiver including that loop, and
  duplicate edges count twice. Sorted by (receiver, sender)."""
  senders = np.asarray(senders, np.int64).reshape(-1)
  receivers = np.asarray(receivers, np.int64).reshape(-1)
  if senders.shape != receivers.shape:
    raise ValueError(f"{len(senders)} senders but {len(receivers)} receivers")
  if len(senders) and (min(senders.min(), receivers.min()) < 0
                       or max(senders.max(), receivers.max()) >= num_nodes):
    raise ValueError(f"an edge points outside the {num_nodes} nodes")
  keep = senders != receivers
  nodes = np.arange(num_nodes)
  senders = np.concatenate([senders[keep], nodes])
  receivers = np.concatenate([receivers[keep], nodes])
  degree = np.bincount(receivers, minlength=num_nodes).astype(np.float64)
  inv_sqrt = 1.0 / np.sqrt(degree)  # every degree >= 1: the self-loop
  weights = inv_sqrt[senders] * inv_sqrt[receivers]
  order = np.lexsort((senders, receivers))
  return (senders[order].astype(np.int32), receivers[order].astype(np.int32),
          weights[order].astype(np.float32))
