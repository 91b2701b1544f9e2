"""The other datasets and families end to end: ImageNet-family training on a tiny JPEG tree with
10-crop testing, and CIFAR-100 with top-5 error."""

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from reslab.module import Classifier
from reslab.train import train


def metric(run_dir: Path, key: str) -> list[tuple[int, float]]:
    with open(run_dir / "metrics.csv") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def test_imagenet_smoke_trains_and_tests_with_ten_crops(
    tmp_path: Path, hydra_cfg, tiny_imagenet: Path
) -> None:
    """reslab-train model=imagenet model.depth=18 data=imagenet debug=smoke on a JPEG tree."""
    cfg = hydra_cfg(
        tmp_path,
        ["model=imagenet", "model.depth=18", "shortcut=B", "data=imagenet", "debug=smoke",
         "optim=paper_imagenet", f"data.data_dir={tiny_imagenet}", "data.crop_size=64",
         "data.scale=[72,96]", "data.eval_resize=72", "data.num_workers=2",
         "data.eval_batch_size=6", "logger=csv"],
    )  # fmt: skip
    assert cfg.name == "resnet-18B" and cfg.data.test_crops == 10
    train(cfg)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "finished" and status["iterations"] == 4
    assert [s for s, _ in metric(tmp_path, "train/error")] == [2, 4]
    assert [s for s, _ in metric(tmp_path, "val/error")] == [2, 4]
    ((_, test_error),) = metric(tmp_path, "test/error")

    # The logged test/error is the 10-crop error of the final network on the first test batch
    # (debug=smoke tests one batch): recompute it from the checkpoint.
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    images, labels = datamodule.on_after_batch_transfer(next(iter(datamodule.test_dataloader())), 0)
    assert images.shape == (6, 10, 3, 64, 64) and images.dtype == torch.float32
    net = instantiate(cfg.model, num_classes=3, in_channels=3)
    module = Classifier(net, optimizer=torch.optim.SGD)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    module.eval()
    with torch.no_grad():
        wrong = (module(images).argmax(1) != labels).float().mean().item() * 100
    assert test_error == pytest.approx(wrong, abs=1e-4)


def test_cifar100_smoke_logs_top5_error(tmp_path: Path, hydra_cfg) -> None:
    from test_cifar100 import make_cifar100

    data = make_cifar100(tmp_path / "data")
    run = tmp_path / "run"
    cfg = hydra_cfg(run, ["data=cifar100", "model.depth=8", "debug=smoke", "logger=csv",
                          f"data.data_dir={data}", "data.download=false"])  # fmt: skip
    train(cfg)
    hparams = (run / "hparams.yaml").read_text()
    assert "dataset: cifar100" in hparams
    # section 4.2's net with n = 1: 97,216 - 21,926 = 75,290 for 10 classes; 90 more classes
    # add 64 × 90 weights and 90 biases to the fully connected layer: 5,850
    assert "parameters: 81140" in hparams
    ((_, top1),), ((_, top5),) = metric(run, "test/error"), metric(run, "test/error_top5")
    assert 0 <= top5 <= top1 <= 100
