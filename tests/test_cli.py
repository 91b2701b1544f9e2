"""``reslab-train --help`` is reslab's own, and Hydra's own flags keep working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reslab.cli import help_text, train_main
from reslab.config import config_groups


def reslab_train(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("reslab-train")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "reslab.cli"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=120)


def test_help_names_every_group_its_choices_and_the_examples() -> None:
    text = help_text()
    assert text.startswith("reslab-train: train the paper's networks")
    for group, choices in config_groups().items():
        line = next(line for line in text.splitlines() if line.strip().startswith(group + " "))
        for choice in choices:
            assert choice in line, (group, choice, line)
    trainer = next(line for line in text.splitlines() if line.strip().startswith("trainer "))
    assert "default" not in trainer and "_base" not in trainer  # internal, not a choice
    assert "[cpu]" in trainer and "[A]" in text and "[cifar10]" in text  # train.yaml's defaults
    for example in ("reslab-train -m ", "reslab-resume outputs/runs/", "reslab-report outputs/"):
        assert example in text, example
    assert "outputs/runs/<date>_<network>/" in text  # where results go


def test_help_through_the_real_command(capsys: pytest.CaptureFixture) -> None:
    result = reslab_train("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout == help_text()
    assert "Powered by Hydra" not in result.stdout  # not Hydra's stock text


def test_hydras_cfg_and_info_flags_still_work() -> None:
    result = reslab_train("model.depth=56", "shortcut=none", "--cfg", "job", "--resolve")
    assert result.returncode == 0, result.stderr
    assert "name: plain-56" in result.stdout and "depth: 56" in result.stdout
    info = reslab_train("--info", "defaults")
    assert info.returncode == 0, info.stderr
    assert "trainer/cpu" in info.stdout and "model/cifar" in info.stdout


def test_help_in_process_prints_and_returns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "argv", ["reslab-train", "-h"])
    train_main()
    assert capsys.readouterr().out == help_text()


def test_a_network_name_the_experiment_cannot_build_is_refused_in_one_line() -> None:
    result = reslab_train("experiment=fig6", "net=resnet-50B-v1.5", "--cfg", "job", "--resolve")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-2]
    assert line.startswith("reslab-train: error: net='resnet-50B-v1.5' is not in the cifar family")
    assert "valid cifar names: plain-N or resnet-N" in line
    resolved = reslab_train("experiment=fig6", "net=resnet-20A-1layer", "--cfg", "job", "--resolve")
    assert resolved.returncode == 0, resolved.stderr
    assert "name: resnet-20A-1layer" in resolved.stdout and "block_layers: 1" in resolved.stdout
