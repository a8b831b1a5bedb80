"""Reconstruction and codebook metrics in pure jnp, so they run inside jitted eval steps.

Images are batch-first NHWC floats in [0, max_val]; every image metric returns one value
per image ([B]) so callers choose how to aggregate across batches and hosts.
"""

import jax
import jax.numpy as jnp


def psnr(x: jax.Array, y: jax.Array, max_val: float = 1.0) -> jax.Array:
  """Per-image PSNR in dB from the MSE over H, W, C; identical images give +inf.

  +inf (not a clamped value) keeps the metric honest; aggregate with care (e.g. a
  mean over images with one perfect reconstruction is +inf).
  """
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
  return 20.0 * jnp.log10(max_val) - 10.0 * jnp.log10(mse)


def _gaussian_kernel(size: int, sigma: float) -> jax.Array:
  coords = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
  g = jnp.exp(-jnp.square(coords) / (2.0 * sigma**2))
  return g / jnp.sum(g)


def _depthwise_blur(maps: jax.Array, kernel: jax.Array) -> jax.Array:
  """Separable 'valid' Gaussian blur applied to each channel of NHWC `maps` independently."""
  channels = maps.shape[-1]
  column = jnp.tile(kernel.reshape(-1, 1, 1, 1), (1, 1, 1, channels))  # HWIO, I = 1 per group.
  for rhs in (column, column.transpose(1, 0, 2, 3)):  # Filter along H, then along W.
    maps = jax.lax.conv_general_dilated(
        maps, rhs, window_strides=(1, 1), padding='VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=channels,
        precision=jax.lax.Precision.HIGHEST)
  return maps


def ssim(
    x: jax.Array,
    y: jax.Array,
    max_val: float = 1.0,
    filter_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jax.Array:
  """Per-image SSIM (Wang et al. 2004) with a Gaussian window, as `tf.image.ssim`.

  Local statistics use a separable Gaussian filter with 'valid' borders, per channel
  (population covariance); the SSIM map is averaged over space and channels. Matches
  skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=max_val, channel_axis=-1)`.
  """
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f'ssim expects two NHWC arrays of equal shape, got {x.shape} and {y.shape}.')
  height, width = x.shape[1:3]
  if height < filter_size or width < filter_size:
    raise ValueError(
        f'ssim needs images of at least {filter_size}x{filter_size} (the filter size); '
        f'got {height}x{width}.')
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  # Blur the five moment maps in one depthwise convolution.
  stats = _depthwise_blur(
      jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), _gaussian_kernel(filter_size, sigma))
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(stats, 5, axis=-1)
  c1 = (k1 * max_val) ** 2
  c2 = (k2 * max_val) ** 2
  var_x = e_xx - mu_x * mu_x
  var_y = e_yy - mu_y * mu_y
  cov_xy = e_xy - mu_x * mu_y
  luminance = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
  contrast_structure = (2.0 * cov_xy + c2) / (var_x + var_y + c2)
  return jnp.mean(luminance * contrast_structure, axis=(1, 2, 3))


def per_frame_metrics(recon: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[B, T, H, W, C] in [0, 1] -> (PSNR [B, T], SSIM [B, T]); pure jnp, for jitted steps."""
  if recon.shape != target.shape or recon.ndim != 5:
    raise ValueError(
        f"per_frame_metrics expects two [B, T, H, W, C] arrays of equal shape, got "
        f"{recon.shape} and {target.shape}.")
  b, t = recon.shape[:2]
  frames = lambda x: x.reshape((b * t,) + x.shape[2:])
  return (psnr(frames(recon), frames(target)).reshape(b, t),
          ssim(frames(recon), frames(target)).reshape(b, t))


def codebook_stats(indices: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
  """Code usage and perplexity of a batch of token indices (any int shape, values in [0, K)).

  usage: fraction of the K codes used at least once. perplexity: exp of the entropy of the
  empirical code distribution (K when uniform, 1 when collapsed to one code).
  """
  counts = jnp.bincount(indices.reshape(-1), length=codebook_size).astype(jnp.float32)
  probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
  return {'usage': jnp.mean(counts > 0), 'perplexity': jnp.exp(entropy)}


def codebook_stats_by_group(indices: jax.Array, groups: dict) -> dict[str, jax.Array]:
  """`codebook_{usage,perplexity}` per codebook group, named `codebook_<group>_<stat>`
  when there are several (the MLC's POS groups: adj over index columns 0-1, noun over 2).

  `groups` maps name -> (index columns, or None for indices without a column axis; size).
  With several token branches (the video CQAE), `indices` and `groups` are dicts keyed
  by branch and the names become `codebook_<branch>[_<group>]_<stat>`; branches absent
  from `indices` (no temporal tokens in an image) are skipped.
  """
  if isinstance(indices, dict):
    out = {}
    for branch, branch_indices in indices.items():
      if branch not in groups:
        raise ValueError(f"no codebook groups for token branch {branch!r}; groups cover "
                         f"{sorted(groups)}.")
      stats = codebook_stats_by_group(branch_indices, groups[branch])
      out.update({f"codebook_{branch}" + k[len("codebook"):]: v for k, v in stats.items()})
    return out
  out = {}
  for name, (columns, size) in groups.items():
    selected = indices if columns is None else indices[..., list(columns)]
    prefix = "codebook" if len(groups) == 1 else f"codebook_{name}"
    out.update({f"{prefix}_{k}": v for k, v in codebook_stats(selected, size).items()})
  return out
