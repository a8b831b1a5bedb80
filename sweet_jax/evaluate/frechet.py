"""Fréchet distance between Gaussian fits of two feature sets (FID, FVD, FD-VGG).

Everything here is float64 numpy on the host: the statistic subtracts traces of
matrices whose entries are large, and float32 loses the answer.

    d^2 = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))

The trace of the matrix square root is computed as the sum of the square roots of the
eigenvalues of S_1^(1/2) S_2 S_1^(1/2) (symmetric positive semi-definite, so `eigh`
applies), which has the same eigenvalues as S_1 S_2; this avoids `scipy.linalg.sqrtm`'s
complex round-off on near-singular covariances (few samples, as on our held-out sets).
"""

import dataclasses
import io

import numpy as np

from sweet_jax import io as sweet_io
from sweet_jax.weights import load_npz


@dataclasses.dataclass
class FeatureStats:
  """Running first and second moments of [N, D] features, in float64."""

  count: int = 0
  total: np.ndarray | None = None  # [D]
  outer: np.ndarray | None = None  # [D, D]

  def add(self, features: np.ndarray) -> None:
    f = np.asarray(features, np.float64)
    if f.ndim != 2:
      raise ValueError(f"features must be [N, D], got shape {f.shape}")
    if self.total is None:
      self.total = np.zeros(f.shape[1])
      self.outer = np.zeros((f.shape[1], f.shape[1]))
    self.count += len(f)
    self.total += f.sum(axis=0)
    self.outer += f.T @ f

  def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (N - 1, as numpy's `np.cov` and pytorch-fid)."""
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
    mean = self.total / self.count
    cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
    return mean, cov


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """The squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics of different dimension: {mu1.shape} vs {mu2.shape}")
  sqrt_sigma1 = _psd_sqrt(sigma1)
  middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
  eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def frechet_distance_of_features(a: np.ndarray, b: np.ndarray) -> float:
  stats_a, stats_b = FeatureStats(), FeatureStats()
  stats_a.add(a)
  stats_b.add(b)
  return frechet_distance(*stats_a.mean_and_covariance(), *stats_b.mean_and_covariance())


def save_stats(path: str, mean: np.ndarray, covariance: np.ndarray, count: int) -> None:
  """Reference statistics as `.npz` on any filesystem (written atomically: a crash leaves
  no half file)."""
  buffer = io.BytesIO()
  np.savez(buffer, mean=mean, covariance=covariance, count=np.asarray(count))
  sweet_io.write_bytes(path, buffer.getvalue())


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray, int]:
  stats = load_npz(path)
  return stats["mean"], stats["covariance"], int(stats["count"])
