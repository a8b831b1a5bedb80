"""What a person watching a run sees (issue #21): a quiet log with a progress line whose
rate leaves out evaluation and checkpoint pauses, and a short summary with the paths."""

import re

from sweet_jax.evaluate import artifacts
from sweet_jax.progress import TrainingProgress, duration


class FakeClock:

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def test_the_rate_leaves_out_compiling_and_pauses():
  clock = FakeClock()
  tracker = TrainingProgress(total_steps=100, clock=clock)
  clock.now = 30.0  # step 1 compiled for 30 s
  tracker.mark(1)
  assert tracker.steps_per_second() is None
  assert "timing after the first steps" in tracker.line(1, {})
  clock.now += 4.0  # steps 2-5 at 1 step/s
  tracker.mark(5)
  with tracker.paused():  # a 60-second evaluation
    clock.now += 60.0
  clock.now += 5.0  # steps 6-10
  tracker.mark(10)
  assert tracker.steps_per_second() == 1.0
  assert tracker.eta_seconds(10) == 90.0
  tracker.restart()  # a new stage: its first step compiles again
  clock.now += 20.0
  tracker.mark(11)
  clock.now += 2.0
  tracker.mark(15)
  assert tracker.steps_per_second() == 2.0


def test_the_progress_line_is_compact():
  clock = FakeClock()
  tracker = TrainingProgress(total_steps=3000, clock=clock)
  tracker.mark(1)
  clock.now = 149 / 2.13
  tracker.mark(150)
  line = tracker.line(150, {"loss": 0.24349, "psnr": 13.361, "nonfinite_steps": 0,
                            "grad_norm": 0.3, "loss_recon": 0.2})
  assert line == "step 150/3000 (5%) | loss 0.2435 | psnr 13.36 dB | nonfinite 0 | " \
                 "2.13 steps/s, ETA 22m18s"
  assert [duration(s) for s in (42, 1330, 11100)] == ["42s", "22m10s", "3h05m"]


def test_the_summary_gives_the_headline_against_the_thumbnail_and_the_paths(tmp_path):
  for name in ("metrics.json", "recon_grid.png", "words.md", "config.json",
               "eval_300.json", "eval_1200.json", "events.out.tfevents.1.host"):
    (tmp_path / name).write_text("x")
  (tmp_path / "checkpoints").mkdir()
  metrics = {"num_images": 64, "psnr": 21.3256, "ssim": 0.5435, "lpips": 0.5591,
             "fd_vgg": 593.84, "bits_per_image": 927.95, "thumbnail_side": 7,
             "thumbnail_psnr": 20.851, "thumbnail_ssim": 0.4993, "step": 3000,
             "parameters": 514990, "train_seconds": 600.0}
  summary = artifacts.run_summary(metrics, str(tmp_path), seconds=780.0)
  assert summary.splitlines() == [
      "Step 3000 in 13.0 min (10.0 min training), 514,990 parameters, 928 bits per image.",
      "Held-out (64 images): PSNR 21.33 dB, SSIM 0.543, LPIPS 0.559, FD-VGG 593.8 "
      "(bit-matched 7x7 thumbnail: PSNR 20.85 dB, SSIM 0.499)",
      f"Wrote in {tmp_path}: metrics.json, recon_grid.png, words.md, eval_300.json, "
      f"eval_1200.json, config.json, checkpoints/, TensorBoard events (tensorboard "
      f"--logdir {tmp_path})"]
  preempted = artifacts.run_summary({"step": 40, "preempted": True}, str(tmp_path), 9.0)
  assert preempted.startswith("Preempted (SIGTERM) at step 40, with its checkpoint; run the "
                              "same command again to resume.")


def test_a_run_log_is_quiet_and_ends_with_the_summary(tmp_path, embedded_data_dir, start_main):
  """No library banners, progress bars or metric dicts; progress lines; the summary on
  stdout. (The dataset build's one line: test_data.py.)"""
  proc = start_main("--config=configs/sweet_image.py:runlocal", f"--workdir={tmp_path / 'run'}",
                    "--config.total_steps=4", "--config.summary_every_steps=100",
                    data_dir=embedded_data_dir)
  log = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, log[-3000:]
  for noise in ("oneDNN", "absl::InitializeLog", "Unable to initialize backend", "Generating",
                "Downloading", "Shuffling", "OpenCV", "train/grad_norm", "Got images",
                "Type handler registry"):
    assert noise not in log, (noise, log)
  assert re.search(r"step 2/4 \(50%\) \| loss [0-9.]+ \| psnr [0-9.]+ dB \| nonfinite 0 \| ",
                   log), log
  lines = log.strip().splitlines()
  assert lines[-3].startswith("Step 4 in ")
  assert re.match(r"Held-out \(64 images\): PSNR [0-9.]+ dB, SSIM [0-9.]+, colour off by "
                  r"[0-9.]+/255 \(bit-matched 3x3 thumbnail: PSNR [0-9.]+ dB, SSIM [0-9.]+, "
                  r"colour off by [0-9.]+/255\)$", lines[-2]), lines[-2]
  assert lines[-1].startswith(f"Wrote in {tmp_path / 'run'}: metrics.json, recon_grid.png, "
                              "words.md, config.json")
  assert len(lines) < 25, log
