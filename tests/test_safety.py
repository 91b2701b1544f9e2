"""Safe loading and no secrets: crafted CIFAR pickles and checkpoints that try to run code are
refused without running it, real checkpoints load with ``weights_only=True``, and an API key in
the environment never lands in a run folder."""

from __future__ import annotations

import json
import os
import pickle
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import make_cifar10

from reslab.checkpoints import UnsafeCheckpointError, check_ckpt_path, unsafe_globals
from reslab.cli import train_main as main
from reslab.data.cifar import load_pickle_batch
from reslab.train import train


class RunsShell:
    """Unpickled, runs ``touch marker`` in a shell: what a malicious file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch '{self.marker}'",))


class RunsExec:
    """Unpickled, writes ``marker`` through ``exec``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _cifar_like(payload: object) -> dict:
    return {b"batch_label": b"x", b"labels": [0], b"data": payload, b"filenames": [b"a.png"]}


PAYLOADS: dict[str, Callable[[Path], object]] = {
    "os.system": lambda marker: _cifar_like(RunsShell(marker)),
    "exec": lambda marker: _cifar_like(RunsExec(marker)),
    "inside-an-object-array": lambda marker: _cifar_like(
        np.array([RunsShell(marker)], dtype=object)
    ),
    "as-a-label": lambda marker: {
        b"data": np.zeros((1, 3072), np.uint8),
        b"labels": [RunsShell(marker)],
    },
}


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_crafted_cifar_pickle_is_refused_without_running_code(
    payload: str, protocol: int, tmp_path: Path
) -> None:
    make = PAYLOADS[payload]
    # The payload is real: a plain unpickler runs it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(make(control), protocol=protocol))
    assert control.exists()

    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(make(marker), protocol=protocol))
    with pytest.raises(ValueError, match=r"data_batch_1' is not safe to load: refusing to load"):
        load_pickle_batch(tmp_path / "data_batch_1")
    assert not marker.exists()


def run_command(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``reslab-train args`` in this process (the console script's own entry point)."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(sys, "argv", ["reslab-train", *args])
    try:
        main()
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
    return 0


def test_crafted_cifar_batch_fails_the_command_without_running_code(
    tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps(PAYLOADS["os.system"](marker), protocol=2))
    run = tmp_path / "run"
    code = run_command(
        ["data=cifar10", f"data.data_dir={data}", "data.download=false", "debug=smoke",
         "logger=csv", f"hydra.run.dir={run}"],
        monkeypatch,
    )  # fmt: skip
    out, err = capfd.readouterr()
    assert code == 1
    assert (
        f"data_batch_1' is not safe to load: refusing to load {os.system.__module__}.system" in err
    )
    assert "Traceback" not in out + err
    assert not marker.exists()
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


# --- checkpoints -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of ``reslab-train data=synthetic model.depth=8 debug=smoke
    optim=paper_imagenet`` (a plateau schedule: its state is in the checkpoint too)."""
    run = tmp_path_factory.mktemp("smoke") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        code = run_command(
            ["data=synthetic", "model.depth=8", "debug=smoke", "optim=paper_imagenet",
             "logger=csv", f"hydra.run.dir={run}"],
            monkeypatch,
        )  # fmt: skip
    assert code == 0
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    return run


def test_a_real_checkpoint_loads_with_weights_only(smoke_run: Path) -> None:
    path = smoke_run / "checkpoints" / "last.ckpt"
    assert unsafe_globals(path) == []
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert isinstance(checkpoint["reslab"], dict)  # the module's own state, plain types
    assert checkpoint["lr_schedulers"] and checkpoint["callbacks"]
    check_ckpt_path(str(path))  # resuming from it passes the command's checks


@pytest.fixture
def evil_checkpoint(smoke_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A real checkpoint with one object in it that runs ``touch marker`` when unpickled;
    returns (checkpoint, marker)."""
    checkpoint = torch.load(smoke_run / "checkpoints" / "last.ckpt", weights_only=True)
    control = tmp_path / "control"
    checkpoint["reslab"]["note"] = RunsShell(control)
    torch.save(checkpoint, tmp_path / "control.ckpt")
    torch.load(tmp_path / "control.ckpt", weights_only=False)  # the payload is real
    assert control.exists()

    marker = tmp_path / "pwned"
    checkpoint["reslab"]["note"] = RunsShell(marker)
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    return tmp_path / "evil.ckpt", marker


def test_crafted_checkpoint_is_refused_by_the_command(
    evil_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, marker = evil_checkpoint
    run = tmp_path / "run"
    code = run_command(
        ["data=synthetic", "model.depth=8", "debug=smoke", "logger=csv", f"ckpt_path={path}",
         f"hydra.run.dir={run}"],
        monkeypatch,
    )  # fmt: skip
    out, err = capfd.readouterr()
    assert code == 1
    assert (
        f"ckpt_path={path} is not safe to load: it refers to {os.system.__module__}.system" in err
    )
    assert "Traceback" not in out + err
    assert not marker.exists()
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert not (run / "checkpoints").exists()  # refused before anything trained


def test_crafted_checkpoint_is_refused_past_the_commands_checks(
    evil_checkpoint: tuple[Path, Path], tmp_path: Path, hydra_cfg
) -> None:
    """train() itself, without the command's checks, refuses it before loading it (the loads
    on the way, torch.load with weights_only, would refuse it too: the test below)."""
    path, marker = evil_checkpoint
    run = tmp_path / "run"
    cfg = hydra_cfg(
        run, ["data=synthetic", "model.depth=8", "debug=smoke", "logger=csv", f"ckpt_path={path}"]
    )
    with pytest.raises(UnsafeCheckpointError, match=rf"{os.system.__module__}\.system"):
        train(cfg)
    assert not marker.exists()
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("weights_only", [None, True])
def test_lightnings_resume_loader_refuses_a_crafted_checkpoint(
    weights_only: bool | None, evil_checkpoint: tuple[Path, Path]
) -> None:
    """What Trainer.fit(ckpt_path=...) calls to read the file: its default (None: torch's
    default, True since torch 2.6) and weights_only=True refuse it without running it."""
    path, marker = evil_checkpoint
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    with pytest.raises(pickle.UnpicklingError, match=rf"GLOBAL {os.system.__module__}\.system"):
        trainer.strategy.load_checkpoint(path, weights_only=weights_only)
    assert not marker.exists()


# --- secrets -----------------------------------------------------------------------------------
def test_no_secret_lands_in_the_run_folder(tmp_path: Path) -> None:
    """A wandb (offline) + CSV smoke run with an API key and another secret in the
    environment: neither appears in any file of the run folder (config dumps, metrics.csv,
    hparams.yaml, status.json, the wandb run and its logs) nor in the output."""
    api_key = secrets.token_hex(20)
    token = "tok_" + secrets.token_hex(16)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": api_key,
           "RESLAB_TEST_SERVICE_TOKEN": token}  # fmt: skip
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("WANDB_SILENT", None)
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "data=synthetic", "model.depth=8", "debug=smoke",
         "logger=wandb", f"hydra.run.dir={run}", "tags=[safety]"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.yaml", "hydra.yaml", "overrides.yaml", "metrics.csv", "hparams.yaml",
            "status.json", "last.ckpt"} <= names  # fmt: skip
    assert any(p.suffix == ".wandb" for p in files)
    assert any(p.name == "debug-internal.log" for p in files)
    for secret in (api_key, token):
        assert secret not in result.stdout + result.stderr
        leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaked, f"a secret is in {leaked}"
    # wandb's own folder outside the run (cwd/wandb), if it made one
    for p in (tmp_path / "wandb").rglob("*") if (tmp_path / "wandb").exists() else []:
        if p.is_file():
            assert api_key.encode() not in p.read_bytes(), p
