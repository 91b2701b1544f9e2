"""The paper's learning-rate rules through the real training path: the 110/1202-layer warm-up
(lr 0.01 until training error < 80%, then back to 0.1 and the normal schedule) and ImageNet's
divide-by-10 on a plateau of val/error, plus multi-crop evaluation and top-5 error."""

import csv
import functools
import json
from pathlib import Path

import pytest
import torch

from reslab.config import instantiate
from reslab.module import Classifier
from reslab.networks import build_network
from reslab.train import train
from reslab.warmup import PaperWarmup


def metric_rows(run_dir: Path, key: str) -> list[tuple[int, float]]:
    with open(run_dir / "metrics.csv") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


# Real Fashion-MNIST (Debian's dataset-fashion-mnist), the first 2,048 training images.
WARMUP_RUN = [
    "data=fashion_mnist", "model.depth=8", "shortcut=A", "logger=csv", "data.train_subset=2048",
    "data.val_size=512", "data.augment=false", "data.batch_size=64", "optim.max_steps=30",
    "optim.milestones=[25]", "trainer.log_every_n_steps=1", "trainer.val_check_interval=30",
    "optim.warmup.min_depth=8", "optim.warmup.window=5", "callbacks=default",
    "~callbacks.progress",
]  # fmt: skip


def test_warmup_runs_at_0_01_until_training_error_is_below_80_then_returns_to_0_1(
    tmp_path: Path, hydra_cfg
) -> None:
    cfg = hydra_cfg(tmp_path, WARMUP_RUN)
    assert instantiate(cfg.callbacks.warmup).lr == 0.01
    train(cfg)
    lrs = metric_rows(tmp_path, "lr")
    assert [s for s, _ in lrs] == list(range(1, 31))
    ended = json.loads((tmp_path / "status.json").read_text())["warmup_ended_at"]
    assert ended % 5 == 0 and 5 <= ended < 25  # decided at the end of a 5-iteration window
    by_step = dict(lrs)
    # iterations up to the one that ended the warm-up ran at 0.01; then 0.1 (not 0.01 for
    # ever), and the normal schedule still divides by 10 at iteration 25
    assert all(by_step[s] == pytest.approx(0.01) for s in range(1, int(ended) + 1))
    assert all(by_step[s] == pytest.approx(0.1) for s in range(int(ended) + 1, 26))
    assert all(by_step[s] == pytest.approx(0.01) for s in range(26, 31))
    # and the window that ended it really was below 80% training error
    errors = dict(metric_rows(tmp_path, "train/error"))
    window = [errors[s] for s in range(int(ended) - 4, int(ended) + 1)]
    assert sum(window) / 5 < 80.0
    assert all(
        sum(errors[s] for s in range(e - 4, e + 1)) / 5 >= 80 for e in range(5, int(ended), 5)
    )


def test_warmup_never_ends_while_the_error_stays_above_the_threshold(
    tmp_path: Path, hydra_cfg
) -> None:
    cfg = hydra_cfg(tmp_path, [*WARMUP_RUN, "optim.warmup.until_train_error=0.5",
                               "optim.max_steps=10"])  # fmt: skip
    train(cfg)
    assert [v for _, v in metric_rows(tmp_path, "lr")] == pytest.approx([0.01] * 10)
    assert "warmup_ended_at" not in json.loads((tmp_path / "status.json").read_text())


def warmup_of(cfg) -> PaperWarmup:
    warmup = instantiate(cfg.callbacks.warmup)
    assert isinstance(warmup, PaperWarmup) and warmup.warming_up == (warmup.lr is not None)
    return warmup


def test_the_paper_warms_up_its_110_and_1202_layer_nets_only(tmp_path: Path, hydra_cfg) -> None:
    for depth, expected in ((20, None), (56, None), (110, 0.01), (1202, 0.01)):
        assert warmup_of(hydra_cfg(tmp_path, [f"model.depth={depth}"])).lr == expected
    off = hydra_cfg(tmp_path, ["optim.warmup.min_depth=null", "model.depth=110"])
    assert warmup_of(off).lr is None
    assert PaperWarmup(110, lr=None, min_depth=110).lr is None
    assert PaperWarmup(44, lr=0.05, min_depth=20).lr == 0.05


def test_warmup_state_travels_in_checkpoints() -> None:
    warmup = PaperWarmup(110, lr=0.01, min_depth=110)
    assert warmup.warming_up
    warmup.warming_up, warmup.ended_at = False, 40
    resumed = PaperWarmup(110, lr=0.01, min_depth=110)
    resumed.load_state_dict(warmup.state_dict())
    assert (resumed.warming_up, resumed.ended_at) == (False, 40)
    net = build_network("cifar", 8, "A")
    module = Classifier(net, functools.partial(torch.optim.SGD, lr=0.1))
    module.validated_at = 40
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    resumed_module = Classifier(net, functools.partial(torch.optim.SGD, lr=0.1))
    resumed_module.on_load_checkpoint(checkpoint)
    assert resumed_module.validated_at == 40


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lr": -0.01}, r"warmup.lr=-0.01 is not valid; valid: a number > 0 or null"),
     ({"lr": 0.01, "until_train_error": 180},
      r"until_train_error=180 is not valid; valid: a number > 0 and <= 100"),
     ({"lr": 0.01, "window": 0}, r"warmup.window=0 is not valid; valid: an integer")],
)  # fmt: skip
def test_bad_warmup_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PaperWarmup(110, min_depth=110, **kwargs)


PLATEAU_RUN = [
    "data=synthetic", "model.depth=8", "debug=smoke", "logger=csv", "optim=paper_imagenet",
    "optim.max_steps=8", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
    "optim.patience=0", "optim.threshold=1000",
]  # fmt: skip


def test_plateau_schedule_divides_by_10_once_per_validation_not_per_iteration(
    tmp_path: Path, hydra_cfg
) -> None:
    # threshold 1000 points: no validation after the first counts as an improvement, and with
    # patience 0 each one divides the lr by 10. Validations after iterations 2, 4, 6 and 8.
    cfg = hydra_cfg(tmp_path, PLATEAU_RUN)
    train(cfg)
    lrs = [v for _, v in metric_rows(tmp_path, "lr")]
    assert lrs == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)


def test_plateau_schedule_without_a_validation_set_is_refused(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path, [*PLATEAU_RUN, "data.val_size=0"])
    with pytest.raises(ValueError, match=r"plateau of val/error.*data.val_size > 0"):
        train(cfg)


def test_ten_crop_batches_are_classified_by_the_mean_softmax_over_crops() -> None:
    torch.manual_seed(0)
    net = build_network("cifar", 8, "A").eval()
    module = Classifier(net, functools.partial(torch.optim.SGD, lr=0.1))
    crops = torch.randn(3, 10, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([net(c).softmax(1).mean(0) for c in crops])
        got = module(crops).exp()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()


def test_top5_error_is_logged_with_100_classes(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path, ["data=synthetic", "data.classes=100", "model.depth=8",
                               "debug=smoke", "logger=csv"])  # fmt: skip
    train(cfg)
    (top1,), (top5,) = metric_rows(tmp_path, "test/error"), metric_rows(tmp_path, "test/error_top5")
    assert 0 <= top5[1] <= top1[1] <= 100
    assert metric_rows(tmp_path, "val/error_top5")


def test_no_top5_error_with_10_classes(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path, ["data=synthetic", "model.depth=8", "debug=smoke", "logger=csv"])
    train(cfg)
    with open(tmp_path / "metrics.csv") as f:
        assert "test/error_top5" not in f.readline()
