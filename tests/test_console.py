"""What a run prints: its header line, and none of the libraries' chatter."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from reslab.console import (
    _LIGHTNING_LOGGERS,
    header,
    print_header,
    quiet_third_party,
    split_sizes,
)
from reslab.loggers import wandb_logger
from reslab.networks import build_network

# Lines seen before reslab.console (Lightning 2.6, wandb 0.31, torch 2.14), by a fragment each.
NOISE = (
    "┃ Name",  # Lightning's model summary
    "FLOPs",
    "LitLogger",
    "Tip",
    "DeprecationWarning",
    "deprecated",
    "smaller than the logging interval",
    "anonymous setting",
    "srun",
    "GPU available",
    "v_num",  # the progress bar's logger version
    "validation will run after every batch",  # fused iterations: steps of K, not batches
)


def test_header_text() -> None:
    line = header(
        "resnet-56A", 855_770, "125.75M", "cifar10", (45_000, 5_000, 10_000), "cpu",
        "32-true", "outputs/runs/2026-01-01_00-00-00_resnet-56A",
    )  # fmt: skip
    assert line == (
        "[reslab] resnet-56A: 855,770 parameters, 125.75M multiply-adds | cifar10: 45,000 train"
        " / 5,000 val / 10,000 test images | cpu, precision 32-true"
        " | outputs/runs/2026-01-01_00-00-00_resnet-56A"
    )
    assert "\n" not in line
    unknown = header("plain-20", 1, "1", "mine", None, "2 × NVIDIA H200", "bf16-mixed", "run")
    assert unknown == (
        "[reslab] plain-20: 1 parameters, 1 multiply-adds | mine | 2 × NVIDIA H200, "
        "precision bf16-mixed | run"
    )


def test_wandb_logger_passes_no_anonymous_setting(tmp_path: Path, capfd) -> None:
    """wandb warns "The anonymous setting has no effect" whenever it is given one, and
    Lightning's WandbLogger always gives anonymous=None (once a process: the smoke run below
    is a fresh one)."""
    logger = wandb_logger(mode="offline", project="reslab", save_dir=str(tmp_path))
    assert logger.experiment.offline
    logger.experiment.finish()
    out, err = capfd.readouterr()
    assert "anonymous" not in out + err


def test_split_sizes_of_image_lists() -> None:
    imagenet_like = SimpleNamespace(train_images=[0] * 3, val_images=[], test_images=[0] * 2)
    assert split_sizes(imagenet_like) == (3, 0, 2)
    assert split_sizes(SimpleNamespace()) is None


def test_header_is_printed_on_rank_zero_only(monkeypatch, capsys) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    print_header("resnet-20A", None, None, None, "run")  # returns before touching anything
    assert capsys.readouterr().out == ""


def test_quiet_third_party_silences_the_libraries_not_the_user() -> None:
    library = (
        ("The `srun` command is available on your system but is not used. HINT: ...",
         PossibleUserWarning),
        ("The number of training batches (50) is smaller than the logging interval"
         " Trainer(log_every_n_steps=100). ...", PossibleUserWarning),
        ("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning),
    )  # fmt: skip
    user = (
        ("GPU available but not used. You can set it by doing ...", PossibleUserWarning),
        ("data.val_size=0: no validation", UserWarning),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        quiet_third_party()  # twice changes nothing
        for message, category in library + user:
            warnings.warn(message, category, stacklevel=1)
    assert [str(w.message) for w in caught] == [m for m, _ in user]

    def shown(logger: str, message: str) -> bool:
        return bool(logging.getLogger(logger).filter(logging.makeLogRecord({"msg": message})))

    rank_zero, cuda, signals = _LIGHTNING_LOGGERS
    assert not shown(rank_zero, "💡 Tip: For seamless cloud logging and experiment tracking, ...")
    assert not shown(rank_zero, "GPU available: True (cuda), used: True")
    assert not shown(rank_zero, "TPU available: False, using: 0 TPU cores")
    assert not shown(cuda, "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]")
    # what the config set (debug=smoke), said per process: the config says it
    assert not shown(
        rank_zero, "`Trainer(limit_val_batches=1)` was configured so 1 batch will be used."
    )
    assert not shown(
        rank_zero, "`Trainer(limit_test_batches=1.0)` was configured so 100% of the ..."
    )
    assert not shown(signals, "SLURM auto-requeueing enabled. Setting signal handlers.")
    assert shown(rank_zero, "`Trainer(limit_val_batches=1)` is not a number")  # (not that one)
    assert shown(rank_zero, "`Trainer.fit` stopped: `max_steps=4` reached.")


@pytest.mark.parametrize("fused", ["module.fused_iterations=1", "module.fused_iterations=2"])
def test_smoke_run_prints_its_header_and_no_library_chatter(tmp_path: Path, fused: str) -> None:
    """What a user sees: wandb not silenced, offline; SLURM's srun on PATH (Lightning only
    checks that it exists); an epoch of 1 batch, shorter than the logging interval of 2."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    env = {
        k: v for k, v in os.environ.items()
        if k not in ("WANDB_SILENT", "WANDB_SERVICE") and not k.startswith("SLURM_")
    }  # fmt: skip
    env.update(WANDB_MODE="offline", PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-m", "reslab.cli", "data=synthetic", "debug=smoke",
            "logger=wandb", "data.train_subset=16", f"hydra.run.dir={run_dir}", fused,
        ],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "wandb: " in output  # wandb spoke (it was not silenced) ...
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in the output:\n{output}"

    params = sum(p.numel() for p in build_network("cifar", 20, "A").parameters())
    headers = [line for line in output.splitlines() if "multiply-adds" in line]
    assert len(headers) == 1, output
    assert headers[0].startswith(f"[reslab] resnet-20A: {params:,} parameters, "), headers[0]
    assert "| synthetic: 16 train / 32 val / 256 test images |" in headers[0]
    assert "| cpu, precision 32-true |" in headers[0]
    assert headers[0].endswith(f"| {run_dir}"), headers[0]
    assert "[reslab] resnet-20A: 4 iterations, " in output


@pytest.fixture(autouse=True)
def _keep_lightning_loggers():
    """quiet_third_party adds filters to Lightning's loggers: take them off again."""
    before = {name: list(logging.getLogger(name).filters) for name in _LIGHTNING_LOGGERS}
    yield
    for name, filters in before.items():
        logging.getLogger(name).filters[:] = filters
