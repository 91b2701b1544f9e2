"""Smoke training through train.py, in-process on composed configs and as real multiruns."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from wandb_files import offline_runs, wandb_config, wandb_history, wandb_records

from reslab.train import train


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def test_cifar10_smoke_writes_metrics_checkpoint_and_offline_wandb_run(
    tmp_path: Path, hydra_cfg, tiny_cifar10: Path
) -> None:
    """The issue's acceptance command, in-process: reslab-train model.depth=20 shortcut=A
    data=cifar10 debug=smoke data.data_dir=<tiny CIFAR files>"""
    cfg = hydra_cfg(
        tmp_path / "run",
        ["model.depth=20", "shortcut=A", "data=cifar10", "debug=smoke",
         f"data.data_dir={tiny_cifar10}", "data.download=false"],
    )  # fmt: skip
    assert cfg.name == "resnet-20A"
    val_error = train(cfg)
    run = tmp_path / "run"
    rows = read_metrics(run)
    train_error = column(rows, "train/error")
    assert [s for s, _ in train_error] == [2, 4]  # every log_every_n_steps iterations
    assert all(0 <= e <= 100 for _, e in train_error)
    assert [s for s, _ in column(rows, "val/error")] == [2, 4]
    assert column(rows, "val/error")[-1][1] == pytest.approx(val_error)
    assert [s for s, _ in column(rows, "test/error")] == [4]
    assert [v for _, v in column(rows, "lr")] == pytest.approx([0.1, 0.1])
    assert (run / "checkpoints" / "last.ckpt").is_file()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["iterations"] == 4
    (wandb_run,) = offline_runs(run)
    (records,) = wandb_run.glob("run-*.wandb")  # what `wandb sync` uploads: config and history
    assert wandb_records(records)[-1].HasField("exit")  # the whole run is in the file
    config = wandb_config(records)
    assert (config["network"], config["residual"], config["shortcut"], config["depth"]) == (
        "resnet-20A", True, "A", 20,
    )  # fmt: skip
    assert config["parameters"] == 269_722
    # every value of metrics.csv is in the wandb run's history, at the same iteration
    history = wandb_history(records)
    for key in ("train/error", "val/error", "test/error", "lr"):
        logged = [(h["trainer/global_step"], h[key]) for h in history if key in h]
        expected = column(rows, key)
        assert [s for s, _ in logged] == [s for s, _ in expected], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected]), key


def test_real_fashion_mnist_smoke(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(
        tmp_path,
        ["data=fashion_mnist", "model.depth=8", "shortcut=none", "debug=smoke", "logger=csv",
         f"paths.data_dir={tmp_path / 'nothing_here'}"],
    )  # fmt: skip
    assert cfg.name == "plain-8"
    train(cfg)
    rows = read_metrics(tmp_path)
    assert column(rows, "train/error") and column(rows, "test/error")
    assert not (tmp_path / "wandb").exists()
    hparams = yaml.safe_load((tmp_path / "hparams.yaml").read_text())
    assert hparams["network"] == "plain-8" and hparams["residual"] is False
    assert (hparams["dataset"], hparams["depth"], hparams["parameters"]) == (
        "fashion_mnist",
        8,
        75_002,
    )


def test_lr_schedule_is_stepped_in_iterations(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(
        tmp_path,
        ["data=synthetic", "model.depth=8", "debug=smoke", "logger=csv", "optim.max_steps=8",
         "optim.milestones=[3,6]", "trainer.log_every_n_steps=1", "optim.lr=0.2"],
    )  # fmt: skip
    train(cfg)
    lrs = [v for _, v in column(read_metrics(tmp_path), "lr")]
    # lr used by iterations 1..8: divided by 10 after 3 and after 6 iterations
    assert lrs == pytest.approx([0.2, 0.2, 0.2, 0.02, 0.02, 0.02, 0.002, 0.002])


@pytest.mark.parametrize("shortcut", ["none", "A", "B", "C"])
@pytest.mark.parametrize("data", ["cifar10", "fashion_mnist", "synthetic"])
def test_every_shortcut_and_dataset_composes_and_instantiates(
    tmp_path: Path, hydra_cfg, shortcut: str, data: str
) -> None:
    cfg = hydra_cfg(tmp_path, [f"shortcut={shortcut}", f"data={data}", "model.depth=32"])
    dm = instantiate(cfg.data)
    net = instantiate(cfg.model, num_classes=dm.num_classes, in_channels=dm.in_channels)
    module = instantiate(cfg.module, net=net)
    optim = module.configure_optimizers()
    sgd = optim["optimizer"]
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (
        0.1,
        0.9,
        1e-4,
    )
    assert optim["lr_scheduler"]["interval"] == "step"
    assert optim["lr_scheduler"]["scheduler"].milestones == {32000: 1, 48000: 1}
    assert cfg.name == ("plain-32" if shortcut == "none" else f"resnet-32{shortcut}")
    assert cfg.trainer.max_steps == 64000 and cfg.optim.milestones == [32000, 48000]
    assert cfg.data.batch_size == 128 and cfg.optim.lr == 0.1
    assert net(torch.zeros(2, dm.in_channels, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("trainer", "accelerator", "devices", "strategy", "num_nodes"),
    [("cpu", "cpu", 1, None, None), ("gpu", "gpu", 1, None, None), ("ddp", "gpu", 2, "ddp", None),
     ("multinode", "gpu", 4, "ddp", 2)],
)  # fmt: skip
def test_trainer_presets_compose(
    tmp_path: Path,
    hydra_cfg,
    trainer: str,
    accelerator: str,
    devices: int,
    strategy: str | None,
    num_nodes: int | None,
) -> None:
    """Each preset's own values (conf/trainer/<preset>.yaml) over _base.yaml's, and a Trainer
    with that many devices, nodes and that strategy (on the CPU where the preset wants GPUs)."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    cfg = hydra_cfg(tmp_path, [f"trainer={trainer}"])
    t = cfg.trainer
    assert (t.accelerator, t.devices, t.get("strategy"), t.get("num_nodes")) == (
        accelerator, devices, strategy, num_nodes,
    )  # fmt: skip
    assert t.get("sync_batchnorm") is (False if strategy == "ddp" else None)  # the paper's BN
    assert (t._target_, t.max_steps) == ("reslab.fused.trainer", 64000)  # _base.yaml
    built = instantiate(t, logger=False, accelerator="cpu", enable_progress_bar=False)
    assert (built.max_steps, built.num_devices, built.num_nodes) == (64000, devices, num_nodes or 1)
    assert built.world_size == devices * (num_nodes or 1)
    assert isinstance(built.strategy, DDPStrategy if strategy == "ddp" else SingleDeviceStrategy)


def test_multinode_trainer_sizes_the_slurm_launcher(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path, ["trainer=multinode", "hydra/launcher=slurm"])
    assert (cfg.trainer.num_nodes, cfg.trainer.devices, cfg.trainer.strategy) == (2, 4, "ddp")
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


def test_unknown_choices_name_the_valid_ones(tmp_path: Path, hydra_cfg) -> None:
    with pytest.raises(
        MissingConfigException, match=r"(?s)shortcut/D.*Available options.*\bA\b.*\bnone\b"
    ):
        hydra_cfg(tmp_path, ["shortcut=D"])
    with pytest.raises(
        MissingConfigException, match=r"(?s)data/imagenet22k.*Available options.*cifar10"
    ):
        hydra_cfg(tmp_path, ["data=imagenet22k"])


def test_bad_depth_fails_clearly_and_marks_the_run_failed(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path, ["data=synthetic", "model.depth=21", "debug=smoke", "logger=csv"])
    message = r"model.depth=21 is not valid; valid: an integer >= 8 of the form 6n\+2"
    with pytest.raises(ValueError, match=message):
        train(cfg)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "model.depth=21" in status["error"]
    assert not (tmp_path / "checkpoints").exists()


def test_multirun_makes_one_folder_and_one_wandb_run_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "-m", "model.depth=8,14", "shortcut=A",
         "data=synthetic", "debug=smoke", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in runs] == ["0_resnet-8A", "1_resnet-14A"]
    ids = set()
    for run in runs:
        assert column(read_metrics(run), "train/error")
        assert json.loads((run / "status.json").read_text())["status"] == "finished"
        (wandb_run,) = offline_runs(run)
        ids.add(wandb_run.name.rsplit("-", 1)[-1])
    assert len(ids) == 2
    assert "reslab sweep" in result.stdout and "resnet-14A" in result.stdout
    assert f"wandb sync {sweep}/*/wandb/offline-run-*" in result.stdout  # one command for all


def test_missing_dataset_fails_before_any_run_is_opened(tmp_path: Path, hydra_cfg) -> None:
    run = tmp_path / "run"
    cfg = hydra_cfg(run, ["data=cifar10", f"data.data_dir={tmp_path}", "data.download=false"])
    with pytest.raises(FileNotFoundError, match=r"cifar10 not found in .*missing data_batch_1"):
        train(cfg)
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert not (run / "wandb").exists() and not (run / "checkpoints").exists()


def test_final_network_is_validated_even_off_the_interval(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(
        tmp_path,
        ["data=synthetic", "model.depth=8", "debug=smoke", "logger=csv", "optim.max_steps=5",
         "trainer.val_check_interval=3"],
    )  # fmt: skip
    val_error = train(cfg)
    val = column(read_metrics(tmp_path), "val/error")
    assert [s for s, _ in val] == [3, 5]
    assert val[-1][1] == pytest.approx(val_error)


def test_demo_experiment_composes_as_a_four_job_sweep(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path, ["experiment=demo"])
    assert cfg.group == "demo" and cfg.hydra.mode.name == "MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {"model.depth": "8,32", "shortcut": "none,A"}
    assert cfg.data._target_ == "reslab.data.FashionMNISTDataModule"
    assert (cfg.data.train_subset, cfg.data.augment, cfg.data.batch_size) == (6400, False, 128)
    assert (cfg.trainer.max_steps, list(cfg.optim.milestones)) == (800, [400, 600])
