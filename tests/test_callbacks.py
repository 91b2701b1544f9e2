"""LayerResponses (Figure 7) on real Trainers, networks and tiny data."""

from __future__ import annotations

import csv
import functools
import json
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import nn
from wandb_files import wandb_records

from reslab.callbacks import LayerResponses, response_layers
from reslab.data import SyntheticDataModule
from reslab.fused import FusedClassifier
from reslab.fused import trainer as fused_trainer
from reslab.module import Classifier
from reslab.networks import build_network


def classifier(depth: int = 8, shortcut: str = "A") -> Classifier:
    net = build_network("cifar", depth, shortcut)
    return Classifier(net, optimizer=functools.partial(torch.optim.SGD, lr=0.1))


def tiny_data() -> SyntheticDataModule:
    return SyntheticDataModule(
        num_train=48, num_test=24, image_size=8, batch_size=8, eval_batch_size=8, val_size=16
    )


def trainer(root: Path, callback: LayerResponses, **options) -> L.Trainer:
    options = {"max_steps": 2, "limit_val_batches": 1, "logger": False, **options}
    options.setdefault("log_every_n_steps", 1)
    return L.Trainer(
        default_root_dir=root, accelerator="cpu", devices=1, callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, **options,
    )  # fmt: skip


def responses_by_hand(net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every 3×3 layer's BN output of a CIFAR net, computed layer by layer."""
    out = {}
    x = net.stem[1](net.stem[0](images))
    out["stem.1"] = x
    x = F.relu(x)
    for s, stage in enumerate(net.stages):
        for b, block in enumerate(stage):
            h = block.bn1(block.conv1(x))
            out[f"stages.{s}.{b}.bn1"] = h
            out[f"stages.{s}.{b}.bn2"] = block.bn2(block.conv2(F.relu(h)))
            x = block(x)
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("shortcut", ["none", "A"])
def test_responses_equal_the_std_of_the_bn_outputs_over_the_test_batches(
    tmp_path: Path, shortcut: str
) -> None:
    module, data, callback = classifier(8, shortcut), tiny_data(), LayerResponses()
    run = trainer(tmp_path, callback, limit_test_batches=2)  # 16 of the 24 test images
    run.fit(module, datamodule=data)  # trained BN statistics, not the initial ones
    run.test(module, datamodule=data, verbose=False)

    net = module.net.eval()
    outputs: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for batch, _ in zip(data.test_dataloader(), range(2), strict=False):
            images, _labels = data.on_after_batch_transfer(batch, 0)  # mean subtracted, no crop
            for name, response in responses_by_hand(net, images).items():
                outputs.setdefault(name, []).append(response)
    expected = [torch.cat(o).std(correction=0).item() for o in outputs.values()]

    assert [(i, name) for i, name, _ in callback.last] == list(enumerate(outputs, start=1))
    assert [s for _, _, s in callback.last] == pytest.approx(expected, rel=1e-5)
    assert len(set(expected)) == len(expected) and min(expected) > 0
    rows = read_rows(tmp_path / "responses.csv")
    assert [(r["step"], r["split"], int(r["index"]), r["layer"]) for r in rows] == [
        ("2", "test", i, name) for i, name, _ in callback.last
    ]
    assert [float(r["std"]) for r in rows] == [s for _, _, s in callback.last]
    assert not any(m._forward_hooks for m in net.modules())  # the hooks are gone


@pytest.mark.parametrize("shortcut", ["none", "A"])
@pytest.mark.parametrize("depth", [8, 20])
def test_a_net_of_depth_6n_plus_2_has_6n_plus_1_layers(
    tmp_path: Path, depth: int, shortcut: str
) -> None:
    callback = LayerResponses()
    trainer(tmp_path, callback, limit_test_batches=1).test(
        classifier(depth, shortcut), datamodule=tiny_data(), verbose=False
    )
    assert [i for i, _, _ in callback.last] == list(range(1, depth))
    last_block = (depth - 2) // 6 - 1
    assert callback.last[0][1] == "stem.1"
    assert callback.last[-1][1] == f"stages.2.{last_block}.bn2"


def test_projections_bottleneck_1x1_and_7x7_layers_are_not_3x3_layers() -> None:
    assert len(response_layers(build_network("cifar", 8, "C"))) == 7  # a projection per block

    class Bottleneck(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(64, 16, 1), nn.BatchNorm2d(16)
            self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.conv3, self.bn3 = nn.Conv2d(16, 64, 1), nn.BatchNorm2d(64)
            self.shortcut = nn.Sequential(nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64))

    stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2), nn.BatchNorm2d(64), nn.ReLU())
    net = nn.Sequential(stem, nn.MaxPool2d(3, 2), nn.Sequential(Bottleneck(), Bottleneck()))
    assert [name for name, _ in response_layers(net)] == ["2.0.bn2", "2.1.bn2"]


class HooksDuringTraining(L.Callback):
    """Records, before every training step, whether any module of the net carries a hook."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(any(m._forward_hooks for m in pl_module.net.modules()))


def test_two_measurements_append_to_one_csv_and_log_scalars(tmp_path: Path) -> None:
    callback, probe = LayerResponses(every_n_steps=4), HooksDuringTraining()
    logger = CSVLogger(save_dir=tmp_path, name="", version="")
    run = trainer(
        tmp_path, callback, max_steps=6, val_check_interval=2, limit_test_batches=1, logger=logger
    )
    run.callbacks.append(probe)
    module, data = classifier(8, "none"), tiny_data()
    run.fit(module, datamodule=data)  # validates at 2, 4 (measured) and 6
    run.test(module, datamodule=data, verbose=False)
    logger.save()

    assert probe.seen == [False] * 6  # no hook outlives its measurement
    lines = (tmp_path / "responses.csv").read_text().splitlines()
    assert lines[0] == "step,split,index,layer,std" and lines.count(lines[0]) == 1
    rows = read_rows(tmp_path / "responses.csv")
    assert [(r["step"], r["split"]) for r in rows] == [("4", "val")] * 7 + [("6", "test")] * 7
    assert [int(r["index"]) for r in rows] == list(range(1, 8)) * 2
    val, test = [float(r["std"]) for r in rows[:7]], [float(r["std"]) for r in rows[7:]]
    assert test == [s for _, _, s in callback.last] and val != test

    metrics = read_rows(tmp_path / "metrics.csv")
    measured = [(r["step"], k) for r in metrics for k, v in r.items() if k.startswith("resp") and v]
    assert sorted(measured) == sorted(
        [("4", f"responses/val/{s}_std") for s in ("mean", "max", "min")]
        + [("6", f"responses/test/{s}_std") for s in ("mean", "max", "min")]
    )
    at = {
        (r["step"], k): float(v)
        for r in metrics
        for k, v in r.items()
        if k.startswith("resp") and v
    }
    assert at["4", "responses/val/mean_std"] == pytest.approx(sum(val) / 7)
    assert at["4", "responses/val/max_std"] == pytest.approx(max(val))
    assert at["6", "responses/test/min_std"] == pytest.approx(min(test))


def test_wandb_run_holds_the_responses_table(tmp_path: Path) -> None:
    import wandb

    logger = WandbLogger(offline=True, save_dir=tmp_path, project="reslab-test")
    try:
        trainer(tmp_path, LayerResponses(), limit_test_batches=1, logger=logger).test(
            classifier(8, "A"), datamodule=tiny_data(), verbose=False
        )
    finally:
        wandb.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    (records,) = run.glob("run-*.wandb")
    wandb_records(records)  # once wandb's service has written it all
    data = records.read_bytes()
    assert b"responses" in data and b"table-file" in data
    assert b"responses/test/mean_std" in data and b"responses/test/max_std" in data
    (table,) = (run / "files" / "media" / "table").glob("responses_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"] == ["step", "split", "index", "layer", "std"]
    names = ["stem.1"] + [f"stages.{s}.0.bn{k}" for s in range(3) for k in (1, 2)]
    assert [row[:4] for row in content["data"]] == [
        [0, "test", i, n] for i, n in enumerate(names, 1)
    ]


@pytest.mark.parametrize("every_n_steps", [0, -5, 2.5, True, "100"])
def test_bad_every_n_steps_is_refused(every_n_steps) -> None:
    with pytest.raises(ValueError, match=rf"every_n_steps={every_n_steps!r} is not valid"):
        LayerResponses(every_n_steps=every_n_steps)


@pytest.mark.parametrize("filename", ["", "responses.txt", "runs/responses.csv", None])
def test_bad_filename_is_refused(filename) -> None:
    with pytest.raises(ValueError, match=rf"filename must be .*got {filename!r}"):
        LayerResponses(filename=filename)


def test_a_3x3_conv_without_bn_fails_before_training(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8))
    module = Classifier(net, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    with pytest.raises(ValueError, match=r"3×3 conv '0' is followed by '1' \(ReLU\)"):
        trainer(tmp_path, LayerResponses()).fit(module, datamodule=tiny_data())


def test_every_n_steps_off_the_validation_interval_warns(tmp_path: Path) -> None:
    callback = LayerResponses(every_n_steps=3)
    with pytest.warns(UserWarning, match="multiples of 6 iterations"):
        callback.setup(trainer(tmp_path, callback, val_check_interval=2), classifier(), "fit")


@pytest.mark.parametrize(("every", "warns"), [(8, False), (6, True)])
def test_the_validation_interval_is_compared_in_iterations_with_fused_iterations(
    tmp_path: Path, every: int, warns: bool
) -> None:
    callback = LayerResponses(every_n_steps=every)
    built = fused_trainer(  # validation every 4 iterations: 2 Lightning steps of K = 2
        fused_iterations=2, default_root_dir=tmp_path, accelerator="cpu", devices=1,
        max_steps=8, val_check_interval=4, log_every_n_steps=2, logger=False,
        callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
    )  # fmt: skip
    net = build_network("cifar", 8, "A")
    module = FusedClassifier(net, functools.partial(torch.optim.SGD, lr=0.1), fused_iterations=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.setup(built, module, "fit")
    said = [str(w.message) for w in caught if "LayerResponses" in str(w.message)]
    assert bool(said) == warns, said
    if warns:
        assert "multiples of 12 iterations" in said[0]
