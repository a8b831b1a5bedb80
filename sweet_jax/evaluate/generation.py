"""The generation evaluator: samples token sequences with a generator's parameters, decodes
them with the tokenizer that made its token dataset, and scores the pictures against two
references:

  training data   the pixels behind `config.eval.reference_examples` random examples of
                  the generator's training tokens (the crops or clips the tokenizer coded,
                  rebuilt from the token dataset's settings): what the generator models,
                  as gFID is computed against ImageNet's training images (ADM's reference
                  batches, arXiv:2105.05233). Metrics `fd_vgg`, `gfid`, `gfvd`.
  held-out data   the tokenizer run's held-out images or clips: `*_heldout`. With a small
                  training set (the embedded photos) the gap between the two sets of
                  photos dominates it, for samples and baselines alike.

  FD-VGG  Fréchet distance of VGG16 relu5_3 features (LPIPS's trunk, averaged over space)
          of images (or clip frames): offline, not comparable to FID
  gFID    the same on FID-InceptionV3 pool3 features, with the user's Inception file
          (config.eval.inception_weights); images only
  gFVD    on I3D Kinetics-400 logits of clips (video tokenizers)

The tokenizer is the one the token dataset records (or config.tokens.tokenizer_workdir);
its weights must hash as recorded, so samples are never decoded by other weights. The
same scoring applies to any sequences in the dataset's layout (`score_sequences`): the
generate job's baselines use it on real training tokens and on tokens drawn from their
per-position marginals. Few samples (hundreds) make a Fréchet distance biased upwards;
compare only numbers computed on the same count.

With config.tokens.eval_split (tokens of held-out data, `python -m sweet_jax.tokenize
--split=...`), `run` also reports `heldout_nll`: nats per token of those sequences under
the generator (AR: the sequence likelihood; MaskGIT: the hidden tokens under the training
masks, a fixed seed), each position renormalised over its own id range as the sampler
draws; the baselines add the per-position marginals' `marginal_heldout_nll`.

The training data's statistics are cached in the token dataset (`reference/`). With a
`reference_cache` the held-out data's are read from, or written to, the same `.npz` files
as the reconstruction evaluator's (evaluate/evaluator.py: per dataset, split, resolution,
preprocessing and network), so a dataset's statistics are computed once for every
tokenizer and generator evaluated on it.
"""

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from sweet_jax import experiment as experiment_lib, parallel
from sweet_jax.data import pipeline, streams, tokens as token_data
from sweet_jax.evaluate import frechet
from sweet_jax.evaluate.evaluator import FEATURE_NETWORKS, EvalResult, reference_cache_path
from sweet_jax.evaluate.images import make_grid, to_uint8, with_row_labels
from sweet_jax.generator_step import make_token_nll
from sweet_jax.nets import frozen as frozen_lib
from sweet_jax.nets.i3d import fvd_preprocess
from sweet_jax.nets.lpips import LPIPS, pooled_vgg_features
from sweet_jax.step import model_to_unit

MARGINAL_EXAMPLES = 10_000
# Metric name -> the feature it compares.
METRICS = {"fd_vgg": "vgg", "gfid": "inception", "gfvd": "i3d"}


class GenerationEvaluator:
  """`run(params, step) -> EvalResult` for a generator `Experiment` (kind "generator")."""

  def __init__(self, experiment: experiment_lib.Experiment, *, num_samples: int | None = None,
               num_shown: int | None = None, reference_cache: str | None = None):
    e = experiment
    if e.kind != "generator":
      raise ValueError("GenerationEvaluator scores generators; use ReconstructionEvaluator")
    config = e.config
    self.experiment = e
    self.num_samples = num_samples or config.eval.num_samples
    self.num_shown = config.num_summary_images if num_shown is None else num_shown
    self.batch_size = config.eval_batch_size
    record = e.token_metadata["tokenizer"]
    workdir = config.tokens.tokenizer_workdir or record["workdir"]
    tok_config = ml_collections.ConfigDict(json.loads(record["config"]))
    with tok_config.unlocked():  # data parallel over the generator's devices
      tok_config.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
      tok_config.batch_size = tok_config.eval_batch_size = self.batch_size
      if "curriculum" in tok_config:
        for stage in tok_config.curriculum.stages.values():
          stage.batch_size = self.batch_size
      tok_config.eval.lpips = config.eval.lpips
      tok_config.eval.fvd = config.eval.fvd
      tok_config.eval.i3d_weights = config.eval.i3d_weights
      tok_config.eval.inception_weights = config.eval.inception_weights
    devices = list(e.mesh.devices.flat)
    self.tokenizer = experiment_lib.build(tok_config, devices=devices, workdir=workdir,
                                          frozen_networks=False)
    state, self.tokenizer_step = self.tokenizer.restore(workdir, record["step"],
                                                        purpose="decoding samples")
    self.tokenizer_params = state.eval_params
    del state
    found = token_data.params_fingerprint(jax.device_get(self.tokenizer_params))
    if found != record["params_sha256"]:
      raise token_data.TokenDatasetError(
          f"the tokenizer in {workdir} (step {record['step']}) is not the one that made "
          f"{config.tokens.dir}: its weights hash {found[:12]}, the dataset records "
          f"{record['params_sha256'][:12]}; set --config.tokens.tokenizer_workdir")
    self.nets = frozen_lib.load(tok_config, self.tokenizer.mesh, modality=e.modality,
                                perceptual=False, alignment_width=None)
    self.features = tuple(name for name, net in (("vgg", self.nets.lpips),
                                                 ("inception", self.nets.inception),
                                                 ("i3d", self.nets.i3d)) if net is not None)
    self.eval_split = config.tokens.get("eval_split")
    if self.eval_split:
      nll = make_token_nll(e.model, kind=config.model.name,
                           allowed_ranges=e.layout.allowed_ranges())
      self._nll = jax.jit(nll, in_shardings=(e.state_sharding.params, e.batch_sharding,
                                             parallel.replicated(e.mesh)))
    self._decode = jax.jit(self._decode_and_features)
    self._real = jax.jit(self._features)
    self._heldout: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    self.reference_cache = reference_cache
    self.heldout_source = "computed"  # or "cached", once the statistics are known
    self._training: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    self.training_source = "computed"
    self.reference_examples = config.eval.get("reference_examples", 1024)
    self.shown_samples: np.ndarray | None = None  # the last `run`'s decoded samples shown

  @property
  def shown_model(self):
    """The tokenizer whose tokens the results show (words readouts)."""
    return self.tokenizer.model

  # -- device functions ------------------------------------------------------------

  def _features(self, pixels: jax.Array, frozen: dict[str, Any]) -> dict[str, jax.Array]:
    """Features of pixels in [0, 1] (images [B, S, S, 3] or clips [B, T, S, S, 3])."""
    out = {}
    frames = pixels.reshape((-1,) + pixels.shape[-3:])
    if self.nets.lpips is not None:
      taps = self.nets.lpips.apply({"params": frozen["lpips"]}, frames * 2 - 1,
                                   method=LPIPS.trunk_features)
      out["vgg"] = pooled_vgg_features(taps)
    if self.nets.inception is not None and pixels.ndim == 4:
      out["inception"] = self.nets.inception.apply(frozen["inception"], pixels)
    if self.nets.i3d is not None and pixels.ndim == 5:
      out["i3d"] = self.nets.i3d.apply(frozen["i3d"], fvd_preprocess(pixels))
    return out

  def _decode_and_features(self, params: Any, indices: Any, frozen: dict[str, Any]):
    model = self.tokenizer.model
    x = model.apply({"params": params}, indices, method=model.decode_from_indices)
    pixels = model_to_unit(x)
    return pixels, self._features(pixels, frozen)

  # -- scoring ---------------------------------------------------------------------

  def training_statistics(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(mean, covariance) per feature of the pixels behind `reference_examples` random
    examples of the generator's training tokens (the crops the tokenizer coded, rebuilt
    from the token dataset's recorded settings), cached in the token dataset's directory
    (`reference/`)."""
    if self._training is None and not self.features:
      self._training = {}  # no feature network: nothing to compare
    if self._training is None:
      e = self.experiment
      split = e.config.tokens.train_split
      settings = e.token_metadata["splits"][split]
      tokens = token_data.token_source(e.config.tokens.dir, split)
      count = min(self.reference_examples, len(tokens))
      paths = {name: str(epath.Path(e.config.tokens.dir) / "reference" /
                         f"{split}-{count}-{FEATURE_NETWORKS[name + '_real']}.npz")
               for name in self.features}
      if paths and all(epath.Path(p).exists() for p in paths.values()):
        self._training = {}
        for name, path in paths.items():
          mean, covariance, rows = frechet.load_stats(path)
          most = count * self._rows_per_example(name)
          if not count <= rows <= most:
            raise ValueError(f"cached reference statistics {path} have {rows} feature rows, "
                             f"not {count}" + (f" to {most}" if most > count else "") +
                             ": delete the file to recompute them")
          self._training[name] = (mean, covariance)
        self.training_source = "cached"
      else:
        chosen = np.sort(np.random.default_rng(0).choice(len(tokens), count, replace=False))
        example_ids = [int(tokens[int(i)]["id"]) for i in chosen]
        stats = self._features_of_views(self._training_views(settings, example_ids))
        self._training = {name: st.mean_and_covariance() for name, st in stats.items()}
        if jax.process_index() == 0:
          for name, path in paths.items():
            frechet.save_stats(path, *self._training[name], stats[name].count)
    return self._training

  def _rows_per_example(self, name: str) -> int:
    """Feature rows per clip (at most: VGG features are per frame) or image."""
    if self.tokenizer.modality == "video" and name == "vgg":
      return self.tokenizer.model.num_frames
    return 1

  def _training_views(self, settings: dict[str, Any], example_ids: list[int]) -> Any:
    """The model views of token examples `example_ids` (uint8), one at a time."""
    tok = self.tokenizer
    data = tok.config.video_data if tok.modality == "video" else tok.config.data
    source = pipeline.get_data_source(settings["dataset"], settings["source_split"],
                                      data.get("data_dir"))
    clip_frames = ((tok.model.temporal_patch_size, tok.model.num_frames)
                   if tok.modality == "video" else None)
    crops = settings["crops_per_image"]
    for example_id in example_ids:
      element = source[example_id // crops]
      pixels = np.asarray(element["video"] if "video" in element else element["image"])
      yield token_data.source_view(pixels, example_id, settings, data.image_size, clip_frames)

  def _features_of_views(self, views: Any) -> dict[str, frechet.FeatureStats]:
    """Feature statistics of uint8 views, in padded batches of the evaluation's size."""
    def batches():
      batch: list[np.ndarray] = []
      for view in views:
        batch.append(view)
        if len(batch) == self.batch_size:
          yield _padded(batch, self.batch_size)
          batch = []
      if batch:
        yield _padded(batch, self.batch_size)

    return self._pixel_statistics(batches())

  def _pixel_statistics(self, batches: Any) -> dict[str, frechet.FeatureStats]:
    """Feature statistics of (uint8 pixels [B, ...], bool keep [B]) batches."""
    stats = {name: frechet.FeatureStats() for name in self.features}
    tok = self.tokenizer
    with parallel.run_context(tok.mesh, tok.rules):
      for pixels, keep in batches:
        pixels = jnp.asarray(pixels, jnp.float32) / 255.0
        add_features(stats, jax.device_get(self._real(pixels, self.nets.params)), keep)
    return stats

  def heldout_statistics(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(mean, covariance) per feature of the tokenizer run's held-out data: computed once,
    or read from the reference cache."""
    if self._heldout is None and not self.features:
      self._heldout = {}
    if self._heldout is None:
      tok = self.tokenizer
      data = streams.eval_data(tok.config, tok.modality)
      paths = {}
      if self.reference_cache is not None:
        paths = {name: reference_cache_path(self.reference_cache, tok.modality, data,
                                            data.eval_split, f"{name}_real")
                 for name in self.features}
      if paths and all(epath.Path(p).exists() for p in paths.values()):
        self._heldout = {name: self._load_cached(path, name, data)
                           for name, path in paths.items()}
        self.heldout_source = "cached"
      else:
        stats = self._heldout_features(data)
        self._heldout = {name: s.mean_and_covariance() for name, s in stats.items()}
        if paths and jax.process_index() == 0:
          for name, path in paths.items():
            frechet.save_stats(path, *self._heldout[name], stats[name].count)
            logging.info("Cached reference statistics %s", path)
    return self._heldout

  def _heldout_features(self, data: ml_collections.ConfigDict) -> dict[str, Any]:
    tok = self.tokenizer
    hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
    batches = streams.eval_batches(data, tok.modality, data.eval_split, self.batch_size, hosts)
    return self._pixel_statistics((batch["video" if "video" in batch else "image"],
                                   np.asarray(batch["mask"])) for batch in batches)

  def _load_cached(self, path: str, name: str, data: ml_collections.ConfigDict
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Cached statistics, refused when their count cannot come from the split as it is
    now (a split that grew or shrank since)."""
    mean, covariance, count = frechet.load_stats(path)
    examples = len(pipeline.get_data_source(data.name, data.eval_split, data.data_dir))
    per_example = data.num_frames if self.tokenizer.modality == "video" and name == "vgg" else 1
    most = examples * per_example
    if not (1 - data.max_bad_fraction) * most <= count <= most:
      raise ValueError(f"cached reference statistics {path} count {count} feature rows; "
                       f"{data.name}:{data.eval_split} now gives up to {most}: delete the "
                       "file to recompute them")
    return mean, covariance

  def score_sequences(self, sequences: np.ndarray, with_metrics: bool = True
                      ) -> tuple[dict[str, float], np.ndarray, Any]:
    """Flat sequences [N, seq_len] (the token dataset's layout) -> (metrics, the decoded
    pictures of the first `num_shown`, uint8, and their tokenizer indices). Without
    `with_metrics`, only the pictures and indices (no reference statistics)."""
    layout = self.experiment.layout
    stats = {name: frechet.FeatureStats() for name in self.features}
    shown, shown_indices = [], []
    tok = self.tokenizer
    with parallel.run_context(tok.mesh, tok.rules):
      for start in range(0, len(sequences), self.batch_size):
        part = np.asarray(sequences[start:start + self.batch_size])
        count = len(part)
        if count < self.batch_size:  # a fixed batch shape: one compile
          part = np.concatenate([part, np.repeat(part[-1:], self.batch_size - count, 0)])
        by_branch = layout.unflatten(part)
        indices = by_branch if tok.modality == "video" else by_branch["spatial"]
        pixels, features = jax.device_get(self._decode(self.tokenizer_params, indices,
                                                       self.nets.params))
        add_features(stats, features, np.arange(len(part)) < count)
        if sum(len(s) for s in shown) < self.num_shown:
          shown.append(to_uint8(np.asarray(pixels)[:count]))
          shown_indices.append(jax.tree.map(lambda a: np.asarray(a)[:count], indices))
    metrics: dict[str, float] = {"num_samples": int(len(sequences))}
    references = ({"": self.training_statistics(), "_heldout": self.heldout_statistics()}
                  if with_metrics else {})
    for suffix, reference in references.items():
      for metric, feature in METRICS.items():
        if feature in reference and feature in stats and stats[feature].count >= 2:
          metrics[metric + suffix] = frechet.frechet_distance(
              *reference[feature], *stats[feature].mean_and_covariance())
    pictures = np.concatenate(shown)[:self.num_shown] if shown else np.zeros((0,), np.uint8)
    indices = jax.tree.map(lambda *a: np.concatenate(a)[:self.num_shown], *shown_indices)
    return metrics, pictures, indices

  def heldout_nll(self, params: Any) -> float:
    """Nats per token of config.tokens.eval_split's sequences (see the module docstring)."""
    e = self.experiment
    hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
    batches = token_data.make_token_eval_batches(e.config.tokens.dir, self.eval_split,
                                                 global_batch_size=self.batch_size, **hosts)
    total, count = 0.0, 0
    rng = jax.random.PRNGKey(e.config.seed)
    with parallel.run_context(e.mesh, e.rules):
      for i, batch in enumerate(batches):
        out = jax.device_get(self._nll(params, parallel.to_global(batch, e.batch_sharding),
                                       jax.random.fold_in(rng, i)))
        total, count = total + float(out["nll_sum"]), count + int(out["count"])
    return total / max(count, 1)

  def labels(self, num: int, classes: np.ndarray | None = None) -> np.ndarray:
    """`num` labels taking `classes` (default: every class) in turn; zeros for an
    unconditional model."""
    num_classes = self.experiment.model.num_classes
    if num_classes == 0:
      return np.zeros(num, np.int32)
    classes = np.arange(num_classes) if classes is None else np.asarray(classes)
    return classes[np.arange(num) % len(classes)].astype(np.int32)

  def sample(self, params: Any, num: int, seed: int = 0,
             labels: np.ndarray | None = None) -> np.ndarray:
    """`num` sequences [num, seq_len] for `labels` (default: classes in turn);
    deterministic per seed."""
    e = self.experiment
    labels = self.labels(num) if labels is None else np.asarray(labels, np.int32)
    padded = np.concatenate([labels, np.zeros(-num % self.batch_size, np.int32)])
    out = []
    for i, start in enumerate(range(0, num, self.batch_size)):
      rng = jax.random.fold_in(jax.random.PRNGKey(seed), i)
      with parallel.run_context(e.mesh, e.rules):
        batch = jax.device_put(padded[start:start + self.batch_size], e.batch_sharding)
        out.append(np.asarray(jax.device_get(e.eval_step(params, batch, rng))))
    return np.concatenate(out)[:num]

  def baselines(self, split: str | None = None, seed: int = 0,
                samples: np.ndarray | None = None
                ) -> tuple[dict[str, float], np.ndarray | None]:
    """The scores that bracket a generator, on as many sequences as `run` scores:
    real training tokens decoded (`real_tokens_*`: the tokenizer's ceiling) and tokens
    drawn independently per position from those tokens' marginal frequencies
    (`marginal_*`: what a generator must beat to have learned any structure). Also, for
    images, a labelled picture: training crops, their tokens decoded, `samples` (uint8
    decoded samples, when given) and marginal tokens decoded, a row of 8 each."""
    e = self.experiment
    split = split or e.config.tokens.train_split
    source = token_data.token_source(e.config.tokens.dir, split)
    rng = np.random.default_rng(seed)
    # The marginals from up to MARGINAL_EXAMPLES random training examples.
    count = min(len(source), max(self.num_samples, MARGINAL_EXAMPLES))
    examples = [source[int(i)] for i in rng.choice(len(source), size=count, replace=False)]
    real = e.layout.flatten({b: np.stack([x[b] for x in examples]) for b in e.layout.shapes})
    marginal = np.stack([real[rng.integers(0, len(real), self.num_samples), j]
                         for j in range(real.shape[1])], axis=1)
    out, rows = {}, {}
    for name, sequences in (("real_tokens", real[:self.num_samples]), ("marginal", marginal)):
      metrics, pictures, _ = self.score_sequences(sequences)
      out.update({f"{name}_{k}": v for k, v in metrics.items() if k != "num_samples"})
      rows[name] = pictures
    if self.eval_split:
      out["marginal_heldout_nll"] = self.marginal_nll(real, self.eval_split)
    if self.tokenizer.modality == "video" or min(len(r) for r in rows.values()) < 8:
      return out, None
    crops = np.stack(list(self._training_views(e.token_metadata["splits"][split],
                                               [int(x["id"]) for x in examples[:8]])))
    labelled = [("training crops", crops), ("their tokens\ndecoded", rows["real_tokens"])]
    if samples is not None and len(samples) >= 8:
      labelled.append(("generator\nsamples", samples))
    labelled.append(("marginal\ntokens", rows["marginal"]))
    grid = make_grid([np.asarray(x[:8], np.uint8) for _, x in labelled])
    return out, with_row_labels(grid, [name for name, _ in labelled])

  def marginal_nll(self, train: np.ndarray, split: str) -> float:
    """Nats per token of `split`'s sequences under per-position frequencies of the
    sequences `train`, add-half smoothed over each position's id range (a held-out id
    that training never showed has a finite cost)."""
    e = self.experiment
    ranges = e.layout.allowed_ranges()
    source = token_data.token_source(e.config.tokens.dir, split)
    held_out = e.layout.flatten({b: np.stack([source[i][b] for i in range(len(source))])
                                 for b in e.layout.shapes})
    total = 0.0
    for j, (low, high) in enumerate(ranges):
      counts = np.bincount(train[:, j] - low, minlength=high - low) + 0.5
      total -= np.log(counts[held_out[:, j] - low] / counts.sum()).sum()
    return float(total / held_out.size)

  def run(self, params: Any, step: int) -> EvalResult:
    """Samples `num_samples` (the same seed every time: comparable across steps), decodes
    and scores them; the picture is a grid of the first `num_shown`."""
    sequences = self.sample(params, self.num_samples, seed=self.experiment.config.seed + 1)
    metrics, pictures, indices = self.score_sequences(sequences)
    self.shown_samples = pictures  # (the baselines' picture shows them beside theirs)
    metrics["unique_sequences"] = int(len(np.unique(sequences, axis=0)))
    if self.eval_split:
      metrics["heldout_nll"] = self.heldout_nll(params)
    return EvalResult(step=int(step), dataset=str(self.experiment.config.tokens.dir),
                      split="samples", metrics=metrics, picture=sample_picture(pictures),
                      shown_indices=indices,
                      reference_statistics=(f"training: {self.training_source}, "
                                            f"held-out: {self.heldout_source}"))


def add_features(stats: dict[str, frechet.FeatureStats], features: dict[str, Any],
                 keep: np.ndarray) -> None:
  """Adds to `stats` the rows of the examples `keep` (bool [B]) of each feature, [B, D] or
  per frame [B, T, D]."""
  for name, value in features.items():
    value = np.asarray(value)
    value = value.reshape(len(keep), -1, value.shape[-1])[keep]
    stats[name].add(value.reshape(-1, value.shape[-1]))


def _padded(views: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
  """`views` stacked and padded to `size` with copies of the last, and which are real."""
  return (np.stack(views + [views[-1]] * (size - len(views))),
          np.arange(size) < len(views))


def sample_picture(pictures: np.ndarray, per_row: int = 8) -> np.ndarray:
  """A grid of sampled images (rows of `per_row`), or for clips a video whose frames are
  such grids."""
  if pictures.size == 0:
    return np.zeros((1, 1, 3), np.uint8)
  if pictures.ndim == 5:  # clips [N, T, S, S, 3] -> frames of grids
    return np.stack([sample_picture(pictures[:, t], per_row) for t in range(pictures.shape[1])])
  rows = [pictures[i:i + per_row] for i in range(0, len(pictures), per_row)]
  if len(rows) > 1 and len(rows[-1]) < per_row:
    pad = np.full((per_row - len(rows[-1]),) + rows[-1].shape[1:], 255, np.uint8)
    rows[-1] = np.concatenate([rows[-1], pad])
  return make_grid(rows)
