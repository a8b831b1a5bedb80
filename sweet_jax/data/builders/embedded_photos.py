"""`sweet_embedded_photos`: real photos bundled with scikit-image, as a TFDS dataset.

Gives every config a small real-image dataset that builds offline in seconds,
so smoke runs, tests and the CPU benchmark read real photos through exactly the
same TFDS -> grain path as ImageNet.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from skimage import data as skdata

from sweet_jax.data import preprocess

# Photos only: synthetic images (colorwheel, checkerboard, logo, text, page,
# horse, binary_blobs, shepp_logan_phantom), the quantitative-phase `cell`, the
# 25x25 `lfw_subset` faces and `cat` (the same picture as `chelsea`) are left
# out. Both views of the stereo pair stay in train, so no scene crosses splits.
TRAIN_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skdata.astronaut,
    "brick": skdata.brick,
    "clock": skdata.clock,
    "coins": skdata.coins,
    "grass": skdata.grass,
    "gravel": skdata.gravel,
    "hubble_deep_field": skdata.hubble_deep_field,
    "immunohistochemistry": skdata.immunohistochemistry,
    "microaneurysms": skdata.microaneurysms,
    "moon": skdata.moon,
    "retina": skdata.retina,
    "stereo_motorcycle_left": lambda: skdata.stereo_motorcycle()[0],
    "stereo_motorcycle_right": lambda: skdata.stereo_motorcycle()[1],
}
EVAL_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "camera": skdata.camera,
    "chelsea": skdata.chelsea,
    "coffee": skdata.coffee,
    "rocket": skdata.rocket,
}
TRAIN_MAX_SIDE = 512
EVAL_CROPS_PER_PHOTO = 16
EVAL_CROP_SCALE = (0.35, 1.0)
EVAL_SIZE = 128
EVAL_SEED = 20240601


class EmbeddedPhotos(tfds.core.GeneratorBasedBuilder):
  """Real photos bundled with scikit-image, split by photo.

  * `train` (13 images): whole photos, downscaled with PIL's antialiased
    bicubic filter so that the longer side is at most 512 px; random crops
    are taken later by the input pipeline.
  * `eval` (64 images): 16 fixed square crops from each of 4 held-out photos
    (camera, chelsea, coffee, rocket), with sides uniform in 35-100 % of the
    shorter side (fixed numpy seed), resized to 128x128.

  Grayscale photos are replicated to 3 channels. Images are encoded by PIL here
  (training photos as JPEG q95 for fast decoding, eval crops as lossless PNG),
  so the build needs no TensorFlow and every build stores the same image bytes
  (the record files still differ: tf.Example map order varies).
  Features: `image` (uint8 HxWx3), `name` (photo name), `id` (index within the
  split, which is also the stored order).

  Source: scikit-image's bundled `skimage.data` images (cite scikit-image,
  van der Walt et al., PeerJ 2014; BibTeX in `CITATION`). Each loader's
  docstring gives the photo's origin: all but two are public domain or CC0;
  `moon` states no licence and `stereo_motorcycle` comes from the Middlebury
  2014 stereo dataset (Scharstein et al., GCPR 2014).
  """

  name = "sweet_embedded_photos"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Training photos stored as JPEG q95 (3x faster decoding)."}
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


def _train_examples() -> Iterator[tuple[int, dict]]:
  for i, (name, load) in enumerate(TRAIN_PHOTOS.items()):
    image = preprocess.to_rgb(load())
    height, width = image.shape[:2]
    scale = min(1.0, TRAIN_MAX_SIDE / max(height, width))
    if scale < 1.0:
      size = (round(width * scale), round(height * scale))
      image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    yield i, {"image": _jpeg(image), "name": name, "id": i}


def _eval_examples() -> Iterator[tuple[int, dict]]:
  i = 0
  for photo_index, (name, load) in enumerate(EVAL_PHOTOS.items()):
    image = preprocess.to_rgb(load())
    rng = np.random.default_rng([EVAL_SEED, photo_index])
    for _ in range(EVAL_CROPS_PER_PHOTO):
      crop = preprocess.random_resized_crop(image, EVAL_SIZE, rng, EVAL_CROP_SCALE, flip=False)
      yield i, {"image": _png(crop), "name": name, "id": i}
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
