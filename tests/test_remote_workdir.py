"""A run whose workdir is a bucket: train on gs://, SIGKILL, resume in a new process, and
every output (checkpoints, TensorBoard events, metrics, grid, words, codebook copy,
evaluation records, cached reference statistics) lands in the bucket; the run then
loads and reconstructs from there.

The bucket is `tests/fake_gcs.py`, an in-memory GCS server on 127.0.0.1 in this process
that the real clients talk to: tensorstore (orbax's arrays), TensorFlow's GCS filesystem
(tf.summary, and etils.epath for gs://) and google-cloud-storage (orbax's bucket check).
The jobs run as processes, so the kill is a real SIGKILL and the resume a fresh start.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from skimage import data as skimage_data

import fake_gcs
from test_reliability import signal_on_line

BUCKET = "sweet-jax-test"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  if not shutil.which("openssl"):  # (Debian's openssl: in every image we run on)
    pytest.fail("the openssl command is needed for the fake GCS server's certificates")
  server = fake_gcs.FakeGcsServer(buckets=[BUCKET],
                                  cert_dir=str(tmp_path_factory.mktemp("certs"))).start()
  yield server
  server.stop()


def objects(server, prefix: str) -> dict[str, bytes]:
  """The bucket's objects under `prefix` (names relative to it) and their bytes, without
  the empty "directory/" markers that TensorFlow's makedirs leaves."""
  with server.store.lock:
    return {name[len(prefix):]: obj.data for name, obj in server.store.buckets[BUCKET].items()
            if name.startswith(prefix) and not name.endswith("/")}


def complete_checkpoints(server, run: str) -> list[int]:
  """Steps whose checkpoint orbax finished (on GCS it marks them with commit_success.txt)."""
  return sorted(int(m[1]) for name in objects(server, f"{run}/checkpoints/")
                if (m := re.fullmatch(r"(\d+)/commit_success.txt", name)))


@pytest.mark.expensive
def test_a_run_in_a_bucket_survives_sigkill_and_writes_everything_there(
    gcs, start_main, embedded_data_dir):
  run, workdir = "runs/image", f"gs://{BUCKET}/runs/image"
  flags = ["--config=configs/sweet_image.py:runlocal", f"--workdir={workdir}",
           f"--config.data.data_dir={embedded_data_dir}", "--config.data.eval_split=eval[:8]",
           "--config.eval_batch_size=8", "--config.eval.lpips=True",
           "--config.eval.every_steps=3",
           f"--config.eval.reference_cache=gs://{BUCKET}/reference"]
  env = gcs.client_env()

  proc = start_main(*flags, env=env)
  # Killed half a second into writing step 4 (its upload may or may not have finished;
  # step 2's has: two steps and two evaluations ran since).
  log, _ = signal_on_line(proc, "Writing the checkpoint of step 4", signal.SIGKILL, delay=0.5)
  assert proc.returncode == -signal.SIGKILL, log[-3000:]
  assert 2 in complete_checkpoints(gcs, run), log[-3000:]
  assert "config.json" in objects(gcs, f"{run}/")

  resumed = start_main(*flags, env=env)
  log = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, log[-3000:]
  step = int(re.search(r"Resuming stage 'train' from the checkpoint of step (\d+)", log)[1])
  assert step in (2, 4) and step in complete_checkpoints(gcs, run)
  assert complete_checkpoints(gcs, run)[-1] == 6

  files = objects(gcs, f"{run}/")
  metrics = json.loads(files["metrics.json"])
  assert metrics["step"] == 6 and metrics["num_images"] == 8 and "lpips" in metrics
  assert files["recon_grid.png"].startswith(b"\x89PNG")
  assert files["words.md"].decode().count("held-out image") == 4
  assert {"codebook/manifest.json", "codebook/codebook.npz"} <= set(files)
  assert any(name.startswith("events.out.tfevents") for name in files)
  periodic = json.loads(files["eval_6.json"])
  assert periodic["reference_statistics"] == "cached" and "eval_3.json" in files
  cached = list(objects(gcs, "reference/"))
  assert len(cached) == 1 and cached[0].endswith("_lpips_vgg16_relu5_3.npz"), cached
  assert not any(".tmp" in name for name in files)

  # The run loads from the bucket and reconstructs into it.
  photo = os.path.join(os.path.dirname(skimage_data.__file__), "coffee.png")
  out = subprocess.run(
      [sys.executable, "-m", "sweet_jax.reconstruct", f"--workdir={workdir}",
       f"--input={photo}", f"--out=gs://{BUCKET}/reconstructions"],
      env=dict(os.environ, JAX_PLATFORMS="cpu", **env), cwd=REPO, capture_output=True,
      text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  written = objects(gcs, "reconstructions/")
  assert written["coffee_png.png"].startswith(b"\x89PNG")
  record = json.loads(written["reconstruct.json"])
  assert record["step"] == 6 and record["files"][0]["words"]
