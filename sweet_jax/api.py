"""The public API: a trained tokenizer, loaded from its run directory, to use on your own
images and clips.

    import sweet_jax
    tok = sweet_jax.load_tokenizer("workdirs/sweet_image_cpu")  # latest checkpoint, EMA
    codes = tok.encode(images)        # uint8 [B, H, W, 3] (any H, W) -> token indices
    images_hat = tok.decode(codes)    # -> uint8 [B, S, S, 3]
    inputs, images_hat = tok.reconstruct(images)  # the model's view of the inputs, and
                                                  # its reconstruction of them
    tok.words(images)                 # per image, per token "adjective+adjective noun"

Inputs are uint8 RGB, one array [B, H, W, 3] (or [B, T, H, W, 3] for clips) or a list of
arrays of different sizes. Policy (`sweet_jax.data.media`): an image's shorter side is
resized to the model's `image_size` (antialiased) and the central square kept; a clip
keeps its first frames, as many as the model can take (1 + k * temporal_patch_size, at
most the trained length), each frame cropped like an image. A video model given images
codes one-frame clips; an image model takes images only (pass a clip's frames as images).

Everything runs jitted on this host's devices (data parallel, parameters replicated),
in fixed-size batches (`batch_size`, padded), so a call compiles once per input shape.
"""

import json
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from sweet_jax import experiment, parallel
from sweet_jax.checkpoint import existing_checkpoints
from sweet_jax.data import media
from sweet_jax.evaluate.images import to_uint8
from sweet_jax.models.tokenizer import Tokenizer
from sweet_jax.readout.words import token_words
from sweet_jax.step import images_to_model, model_to_unit

Pixels = np.ndarray | Sequence[np.ndarray]


class RunNotFoundError(FileNotFoundError):
  """A directory that is not a sweet_jax run, or one with no checkpoint."""


def load_tokenizer(workdir: str, step: int | None = None, *,
                   batch_size: int | None = None) -> "LoadedTokenizer":
  """The tokenizer of a run directory (local or a bucket): its config, its codebook copy
  and its checkpoint (latest, or `step`), with EMA weights when the run kept them."""
  config_path = epath.Path(workdir) / "config.json"
  if not config_path.exists():
    raise RunNotFoundError(f"{workdir} has no config.json: is it the --workdir of a "
                           "sweet_jax training run (python -m sweet_jax.main)?")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  try:
    existing_checkpoints(str(workdir))
  except FileNotFoundError as error:
    raise RunNotFoundError(f"{error}: the run has not saved a checkpoint yet") from None
  devices = _local_data_parallel_devices(config)
  with config.unlocked():  # data parallel over this host's devices
    config.mesh = tuple((name, len(devices) if i == 0 else 1)
                        for i, (name, _) in enumerate(config.mesh))
  e = experiment.build(config, devices=devices, workdir=str(workdir), frozen_networks=False)
  try:
    state, step = e.restore(str(workdir), step)
  except FileNotFoundError as error:
    raise RunNotFoundError(f"{error}: the run has not saved a checkpoint yet") from None
  params = state.eval_params
  del state  # optimizer moments and the discriminator are not needed
  return LoadedTokenizer(e, params, step, ema=e.config.ema.decay > 0,
                         batch_size=batch_size or 4 * len(devices))


def _local_data_parallel_devices(config: ml_collections.ConfigDict) -> list[jax.Device]:
  """The most local devices over which every batch size of the run divides evenly (the
  assembly checks them; the API's own batches are padded to any size)."""
  sizes = [config.batch_size, config.eval_batch_size]
  if "curriculum" in config:
    sizes += [s.get("batch_size", config.batch_size) for s in config.curriculum.stages.values()]
  local = jax.local_devices()
  count = max(n for n in range(1, len(local) + 1) if all(size % n == 0 for size in sizes))
  return local[:count]


class LoadedTokenizer:
  """Jitted, batched encode / decode / reconstruct / words of a trained tokenizer."""

  def __init__(self, e: experiment.Experiment, params: Any, step: int, *, ema: bool,
               batch_size: int):
    self.experiment, self.params, self.step, self.ema = e, params, step, ema
    dp = parallel.data_parallel_size(e.mesh, e.rules)
    self.batch_size = -(-batch_size // dp) * dp
    model = e.model
    self._encode = jax.jit(lambda p, x: model.apply(
        {"params": p}, images_to_model(x), method=model.encode_to_indices))
    self._decode = jax.jit(lambda p, i, frames: _decode(model, p, i, frames),
                           static_argnums=2)
    self._reconstruct = jax.jit(
        lambda p, x: model_to_unit(model.apply({"params": p}, images_to_model(x))[0]))

  @property
  def model(self) -> Tokenizer:
    return self.experiment.model

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.experiment.config

  @property
  def modality(self) -> str:
    return self.model.modality

  @property
  def image_size(self) -> int:
    return self.model.image_size

  @property
  def has_words(self) -> bool:
    return self.model.has_words

  def bits_per_sample(self, num_frames: int | None = None) -> float:
    """Bits of one image's tokens, or of a clip of `num_frames` frames (video models)."""
    return self.model.bits_per_sample(num_frames if self.modality == "video" else None)

  # -- inputs ------------------------------------------------------------------------

  def prepare(self, pixels: Pixels) -> np.ndarray:
    """uint8 images or clips of any size -> the model's view, uint8 [B, S, S, 3] or
    [B, T, S, S, 3] (the policy in the module docstring)."""
    samples = [np.asarray(x) for x in (pixels if isinstance(pixels, (list, tuple)) else
                                      (np.asarray(pixels)[i] for i in range(len(pixels))))]
    if not samples:
      raise ValueError("no images or clips given")
    for x in samples:
      if x.dtype != np.uint8 or x.ndim not in (3, 4) or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected uint8 images [H, W, C] or clips [T, H, W, C] with C in "
                         f"(1, 3, 4), got {x.dtype} {x.shape}; convert with np.uint8")
    if samples[0].ndim == 3:
      return np.stack([media.fit_image(x, self.image_size) for x in samples])
    if self.modality == "image":
      raise ValueError("an image tokenizer codes images: pass a clip's frames as images")
    frames = min(len(x) for x in samples)
    frames = media.usable_frames(frames, self.model.temporal_patch_size, self.model.num_frames)
    return np.stack([media.fit_clip(x, frames, self.image_size) for x in samples])

  def _model_input(self, x: np.ndarray) -> np.ndarray:
    """Model-view pixels in the shape the model takes (images as one-frame clips for a
    video model)."""
    return x[:, None] if self.modality == "video" and x.ndim == 4 else x

  # -- the method surface ----------------------------------------------------------

  def encode(self, pixels: Pixels) -> Any:
    """Token indices (int32; [B, Q] or [B, Q, 3] for the language codebook; a dict per
    branch for the video model)."""
    x = self._model_input(self.prepare(pixels))
    return self._batched(self._encode, x)

  def decode(self, indices: Any, num_frames: int | None = None) -> np.ndarray:
    """uint8 reconstructions from token indices (video: `num_frames` frames, default one
    without temporal tokens, else the trained length)."""
    count = len(jax.tree.leaves(indices)[0])
    if self.modality == "video":
      default = self.model.num_frames if "temporal" in indices else 1
      num_frames = default if num_frames is None else num_frames
    fn = lambda p, i: self._decode(p, i, num_frames)
    return to_uint8(self._batched(fn, indices, count=count))

  def reconstruct(self, pixels: Pixels) -> tuple[np.ndarray, np.ndarray]:
    """(the model's view of the inputs, its reconstruction), both uint8, same shape."""
    x = self.prepare(pixels)
    recon = to_uint8(self._batched(self._reconstruct, self._model_input(x)))
    return x, recon.reshape(x.shape)

  def words(self, pixels: Pixels) -> list[list[str]]:
    """Per image (or clip), the words of its spatial tokens: "adjective+adjective noun"."""
    indices = self.encode(pixels)
    return token_words(self.model, indices["spatial"] if isinstance(indices, dict) else indices)

  def _batched(self, fn, inputs: Any, count: int | None = None) -> Any:
    """`fn(params, batch)` over fixed-size batches (the last one padded), on the mesh."""
    e = self.experiment
    count = len(jax.tree.leaves(inputs)[0]) if count is None else count
    outputs = []
    with parallel.run_context(e.mesh, e.rules):
      for start in range(0, count, self.batch_size):
        batch = jax.tree.map(lambda a: _pad(np.asarray(a)[start:start + self.batch_size],
                                            self.batch_size), inputs)
        batch = jax.device_put(batch, e.batch_sharding)
        outputs.append(jax.device_get(fn(self.params, batch)))
    return jax.tree.map(lambda *parts: np.concatenate(parts)[:count], *outputs)


def _decode(model: Tokenizer, params: Any, indices: Any, num_frames: int | None) -> jax.Array:
  kwargs = {} if num_frames is None else {"num_frames": num_frames}
  x = model.apply({"params": params}, indices, method=model.decode_from_indices, **kwargs)
  return model_to_unit(x)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  """`x` with zero rows appended up to `size` rows (a fixed batch shape: one compile)."""
  if len(x) == size:
    return x
  return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])
