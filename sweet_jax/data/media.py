"""User photos and videos -> model-ready uint8 arrays, under one documented policy.

`python -m sweet_jax.reconstruct` and `tok.reconstruct` take files we did not make, so
every oddity is resolved here, once, and every failure is a `MediaError` of one line
naming the file, the problem and the fix. All I/O goes through `etils.epath`, so inputs
and outputs may live in buckets (`gs://...`); files are read whole and decoded from
memory.

Policy:
* Files: the suffix decides (case-insensitive): `IMAGE_SUFFIXES` or `VIDEO_SUFFIXES`.
  A directory is read non-recursively, in name order; other files, sub-directories and
  hidden files (`.x.png`, and macOS `._x.jpg` resource forks, which are not images) are
  skipped. Files above `MAX_FILE_BYTES` are refused before they are read.
* Images come out as the viewer shows them: EXIF orientation applied; 16-bit pixels
  scaled to 8 bits (round(v / 257), so 65535 -> 255; never clipped, which would turn a
  16-bit photo white); 32-bit integer images are read as 16-bit when their values fit
  0..65535 and refused otherwise; float images (mode F) are refused, their range being
  undefined. Transparent pixels (alpha, palette or tRNS transparency) are composited
  over white, `ALPHA_BACKGROUND`: the page colour on which logos and cut-outs are
  drawn and usually shown, so the reconstruction looks like what the user sees.
  Grayscale is replicated to RGB, CMYK and other modes converted by PIL; ICC profiles
  are not applied (pixels are taken as sRGB). Multi-frame files (GIF, WebP, TIFF) give
  their first frame. Images of more than `MAX_IMAGE_PIXELS` are refused from their
  header, before any pixel is decoded (decompression bombs).
* Videos: frames decoded by `video.decode_video`, turned upright by the stream's
  display rotation (portrait phone videos are stored landscape plus a rotation; flips
  are not applied). A frame above `MAX_IMAGE_PIXELS` and a decoded clip above
  `MAX_VIDEO_PIXELS` (T * H * W) are refused; `max_frames` and `max_side` bound it.
* Model input of square side `size`: the shorter side is resized to `size` (bicubic,
  antialiased) and the central square kept (`preprocess.resize_shorter_center_crop`,
  the eval view). A clip keeps its FIRST `num_frames` frames, each cropped the same
  way: deterministic, and the start of the file is what a user compares against;
  `usable_frames` gives the longest clip (1 + k * temporal_patch_size frames) a
  shorter video allows.
"""

import io
import warnings

import av
import numpy as np
from absl import logging
from etils import epath
from PIL import Image, ImageOps

from sweet_jax.data import preprocess
from sweet_jax.data import video as video_lib

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# 64 megapixels: above any phone photo (50 MP), below PIL's own limits (89 MP warns,
# 179 MP raises).
MAX_IMAGE_PIXELS = 64_000_000
# 500 M decoded pixels (1.5 GB as uint8 RGB): 241 frames of 1080p.
MAX_VIDEO_PIXELS = 500_000_000
# Files are read whole into memory (PyAV and PIL decode from bytes).
MAX_FILE_BYTES = 2 * 2**30
ALPHA_BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class MediaError(ValueError):
  """A user file that cannot be used; the message is one line: file, problem, fix."""


def list_media(path: epath.PathLike) -> list[epath.Path]:
  """The media files `--input` names: the file itself, or a directory's, by name."""
  path = epath.Path(path)
  if not path.exists():
    raise MediaError(f"--input {path} does not exist; pass an image, a video or a directory.")
  if not path.is_dir():
    if not _is_media(path):
      raise MediaError(f"--input {path} is not an image ({_suffixes(IMAGE_SUFFIXES)}) or "
                       f"video ({_suffixes(VIDEO_SUFFIXES)}) file; convert it to one.")
    return [path]
  files = sorted((p for p in path.iterdir()
                  if not p.name.startswith(".") and _is_media(p) and not p.is_dir()),
                 key=lambda p: p.name)
  if not files:
    raise MediaError(f"--input {path} holds no image ({_suffixes(IMAGE_SUFFIXES)}) or video "
                     f"({_suffixes(VIDEO_SUFFIXES)}) file; sub-directories are not searched.")
  return files


def is_video(path: epath.PathLike) -> bool:
  """Whether `path` is read with `read_video` (else `read_image`): the suffix decides."""
  return epath.Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_image(path: epath.PathLike, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
  """Reads an image file as the viewer shows it: uint8 [H, W, 3] (see module policy)."""
  path = epath.Path(path)
  data = _read_bytes(path)
  try:
    with warnings.catch_warnings():  # our own limit below is the one that counts
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    raise MediaError(f"{path} is refused as a decompression bomb ({_reason(e)}); "
                     "use a smaller image.") from e
  except Image.UnidentifiedImageError as e:
    raise MediaError(f"{path} is not an image PIL can read (wrong suffix or corrupt file?); "
                     "convert it to PNG or JPEG.") from e
  except Exception as e:  # untrusted bytes: any decoder failure is the file's
    raise MediaError(f"{path} is not a readable image ({_reason(e)}); "
                     "convert it to PNG or JPEG.") from e
  width, height = image.size
  if width * height > max_pixels:
    raise MediaError(f"{path} is {width}x{height} = {width * height / 1e6:.0f} megapixels, "
                     f"above the limit of {max_pixels / 1e6:.0f}; downscale it first.")
  if width * height == 0:
    raise MediaError(f"{path} is empty ({width}x{height} pixels); use a real image.")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image.load()
  except Exception as e:
    raise MediaError(f"{path} is truncated or corrupt ({_reason(e)}); "
                     "re-export or re-download it.") from e
  try:
    image = ImageOps.exif_transpose(image)
  except Exception as e:  # viewers show a photo with unreadable EXIF as stored, so do we
    logging.warning("%s: unreadable EXIF orientation (%s); using the stored orientation.",
                    path, _reason(e))
  return _to_rgb8(image, path)


def read_video(
    path: epath.PathLike,
    *,
    max_frames: int | None = None,
    max_side: int | None = None,
    max_pixels: int = MAX_VIDEO_PIXELS,
) -> np.ndarray:
  """Reads the first `max_frames` frames of a video file, upright: uint8 [T, H, W, 3].

  With `max_side`, frames are downscaled so that their longer side is at most
  `max_side`. Refuses a clip whose decoded T * H * W would exceed `max_pixels`.
  """
  path = epath.Path(path)
  data = _read_bytes(path)
  width, height, rotation = _probe_video(data, path)
  if width * height > MAX_IMAGE_PIXELS:
    raise MediaError(f"{path} has {width}x{height} frames, above the limit of "
                     f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels a frame; downscale it first.")
  frame_pixels = _downscaled_pixels(width, height, max_side)
  cap = max_pixels // frame_pixels
  limit = cap + 1 if max_frames is None else min(max_frames, cap + 1)
  try:
    frames = video_lib.decode_video(data, max_frames=limit, max_side=max_side)
  except ValueError as e:
    raise MediaError(f"{path} is not a readable video ({_reason(e.__cause__ or e)}); "
                     "re-encode it as H.264 MP4.") from e
  if len(frames) > cap:
    raise MediaError(f"{path}: more than {cap} frames of {frames.shape[2]}x{frames.shape[1]} "
                     f"exceed {max_pixels / 1e6:.0f} M decoded pixels; pass max_frames or "
                     "max_side, or trim the video.")
  k = round(rotation / 90) % 4  # `rotation` is counter-clockwise, as np.rot90
  return np.ascontiguousarray(np.rot90(frames, k, axes=(1, 2))) if k else frames


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
  """Model view of an image: shorter side resized to `size`, central square kept."""
  return preprocess.resize_shorter_center_crop(image, size)


def fit_clip(
    video: np.ndarray, num_frames: int, size: int, *, name: epath.PathLike = "the video"
) -> np.ndarray:
  """Model view of a video: its first `num_frames` frames, each as `fit_image`.

  `name` (the file) is what the error message names when the video is too short.
  """
  if num_frames <= 0:
    raise ValueError(f"num_frames must be positive, got {num_frames}.")
  length = np.shape(video)[0] if np.ndim(video) else 0
  if length < num_frames:
    raise MediaError(f"{name} has {length} frames; the model needs at least {num_frames} "
                     f"(config model.num_frames={num_frames}); use a longer video.")
  # The first frames, then center_clip's central square: the same view as fit_image.
  return video_lib.center_clip(np.asarray(video)[:num_frames], num_frames, size)


def usable_frames(n: int, temporal_patch_size: int, max_frames: int) -> int:
  """The longest clip a video of `n` frames gives a model taking 1 + k * t frames.

  That is the largest 1 + k * `temporal_patch_size` <= min(n, `max_frames`), so that
  videos shorter than the training clips are reconstructed too.
  """
  if temporal_patch_size < 1 or max_frames < 1:
    raise ValueError(f"temporal_patch_size and max_frames must be positive, got "
                     f"{temporal_patch_size} and {max_frames}.")
  if n < 1:
    raise MediaError(f"a video of {n} frames has nothing to reconstruct; it needs at least 1.")
  longest = min(n, max_frames)
  return 1 + (longest - 1) // temporal_patch_size * temporal_patch_size


def _to_rgb8(image: Image.Image, path: epath.Path) -> np.ndarray:
  """Any PIL mode -> uint8 [H, W, 3], by the module's policy."""
  mode = image.mode
  if mode in _SIXTEEN_BIT_MODES or mode == "I":  # (a rare 16-bit tRNS colour key is ignored)
    values = np.asarray(image)
    if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
      raise MediaError(f"{path} is a 32-bit integer image with values in "
                       f"[{values.min()}, {values.max()}], not 0..65535; "
                       "save it as an 8- or 16-bit PNG.")
    scaled = np.rint(values.astype(np.float32) / 257.0).astype(np.uint8)
    return preprocess.to_rgb(scaled)
  if mode == "F":
    raise MediaError(f"{path} is a floating-point image (range undefined); "
                     "save it as an 8- or 16-bit PNG.")
  try:
    if image.has_transparency_data:
      rgba = image.convert("RGBA")
      background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
      image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))
  except Exception as e:
    raise MediaError(f"{path} has an unsupported pixel format ({mode}: {_reason(e)}); "
                     "save it as an 8-bit RGB PNG.") from e


def _probe_video(data: bytes, path: epath.Path) -> tuple[int, int, int]:
  """(width, height, counter-clockwise display rotation) from the header and first frame.

  The frame size is checked by the caller before decoding the clip; the rotation is
  the display matrix FFmpeg attaches to decoded frames.
  """
  try:
    with av.open(io.BytesIO(data)) as container:
      if not container.streams.video:
        raise MediaError(f"{path} has no video stream; use a file with video in it.")
      stream = container.streams.video[0]
      width, height = stream.codec_context.width, stream.codec_context.height
      if width * height == 0:
        raise MediaError(f"{path} declares no frame size; re-encode it as H.264 MP4.")
      if width * height > MAX_IMAGE_PIXELS:
        return width, height, 0  # refused by the caller, before any frame is decoded
      rotation = next(container.decode(stream), None)
      return width, height, int(rotation.rotation) if rotation is not None else 0
  except MediaError:
    raise
  except Exception as e:  # untrusted bytes: any demuxer failure is the file's
    raise MediaError(f"{path} is not a readable video ({_reason(e)}); "
                     "re-encode it as H.264 MP4.") from e


def _downscaled_pixels(width: int, height: int, max_side: int | None) -> int:
  """Pixels of a frame after `decode_video`'s `max_side` downscaling."""
  if max_side is None or max(width, height) <= max_side:
    return width * height
  scale = max_side / max(width, height)
  return max(1, round(width * scale)) * max(1, round(height * scale))


def _read_bytes(path: epath.Path) -> bytes:
  """The file's bytes, with absence and size as MediaErrors."""
  try:
    size = path.stat().length
  except FileNotFoundError as e:
    raise MediaError(f"{path} does not exist; check the path.") from e
  except OSError as e:
    raise MediaError(f"{path} cannot be read ({_reason(e)}); check the path.") from e
  if size > MAX_FILE_BYTES:
    raise MediaError(f"{path} is {size / 2**30:.1f} GiB, above the "
                     f"{MAX_FILE_BYTES / 2**30:.0f} GiB read into memory; trim or re-encode it.")
  try:
    return path.read_bytes()
  except OSError as e:
    raise MediaError(f"{path} cannot be read ({_reason(e)}); check the path.") from e


def _is_media(path: epath.Path) -> bool:
  return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES


def _suffixes(suffixes: tuple[str, ...]) -> str:
  return ", ".join(suffixes)


def _reason(error: BaseException) -> str:
  """An exception as one short line (decoders' messages may span lines)."""
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
