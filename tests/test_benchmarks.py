"""The benchmark scripts run end to end in a tiny mode and print their tables; no timings."""

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_throughput_tiny() -> None:
    out = run_script(
        "throughput.py", "--depths", "8", "--steps", "2", "--rounds", "1", "--warmup", "1"
    )
    assert "Training throughput" in out
    assert "ResNet-8" in out
    assert "reslab/plain" in out


def test_data_tiny() -> None:
    out = run_script("data.py", "--batches", "3", "--rounds", "1", "--train-steps", "1")
    assert "Augmented images per second" in out
    assert "torchvision" in out
    assert "ResNet-20 training (measured" in out


def test_data_given_training_rate() -> None:
    out = run_script(
        "data.py", "--batches", "2", "--rounds", "1", "--workers", "0", "--train-img-s", "500"
    )
    assert "ResNet-20 training (given" in out


def test_gpu_script_dry_run_on_the_cpu() -> None:
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), "--dry-run"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "DRY RUN" in out
    assert "ms per iteration and the paper's 64k iterations" in out
    for row in ("ResNet-8", "eager fp32", "fast"):
        assert row in out
    assert "ResNet-14, batch 16: memory" in out
    assert "met" not in out and "missed" not in out  # no targets in a dry run


def test_gpu_script_refuses_to_time_without_a_gpu() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # no GPU, even on a machine with one
    )  # fmt: skip
    assert result.returncode == 2
    assert "no CUDA device is available; run with --dry-run" in result.stderr
