"""``trainer=ddp`` on 2 CPU processes (gloo), through ``reslab-train`` on the tiny CIFAR-10
files: each rank trains on its own half of every global batch (``data.batch_size``), the two
halves together are the batch one process would see, the ranks end with the same weights, and
the logged metrics are synced over them.

What each rank saw is recorded by ``ddp_worker.RankRecorder``, a callback that the command line
adds on every rank (``+callbacks.record._target_=...``, with this folder on ``PYTHONPATH``)."""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CIFAR_BATCH
from hydra import compose, initialize_config_dir
from processes import run_group
from test_bad_input import IMAGENET_SMALL

from reslab.checks import check_run
from reslab.config import CONFIG_DIR, instantiate
from reslab.launch import SUPPORTED_STRATEGIES

TESTS = Path(__file__).resolve().parent
WORLD = 2


def run_args(data_dir: Path) -> list[str]:
    """A 4-iteration ResNet-8 run (debug=smoke: global batch 16) on the tiny CIFAR-10 files."""
    return ["model.depth=8", "data=cifar10", f"data.data_dir={data_dir}", "data.download=false",
            "debug=smoke", "logger=csv"]  # fmt: skip


def image_keys(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[bytes, int]]:
    """Each (uint8 image, label) as a hashable key: the raw bytes name the image."""
    return [(img.numpy().tobytes(), int(y)) for img, y in zip(images, labels, strict=True)]


def ddp_run(tmp: Path, data_dir: Path, *overrides: str) -> list[dict]:
    """The records of ranks 0 and 1 of one ``reslab-train trainer=ddp`` run on 2 CPUs."""
    record = tmp / "record"
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": pythonpath}
    result = run_group(
        [sys.executable, "-m", "reslab.cli", *run_args(data_dir), "trainer=ddp",
         "trainer.accelerator=cpu", f"trainer.devices={WORLD}",
         "+callbacks.record._target_=ddp_worker.RankRecorder",
         f"+callbacks.record.out_dir={record}", f"hydra.run.dir={tmp / 'run'}", *overrides],
        env=env, cwd=tmp, timeout=180,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Starting with 2 processes" in output, output[-3000:]
    assert "It is recommended to use `self.log(" not in output  # the step: the same on each rank
    found = sorted(p.name for p in record.iterdir())
    assert found == [f"rank{r}.pt" for r in range(WORLD)], found
    records = [torch.load(record / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, rec in enumerate(records):
        assert (rec["rank"], rec["world_size"]) == (r, WORLD)
    return records


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, tiny_cifar10: Path) -> list[dict]:
    """The records of ranks 0 and 1 of one ``reslab-train trainer=ddp`` run on 2 CPUs."""
    return ddp_run(tmp_path_factory.mktemp("ddp"), tiny_cifar10)


@pytest.mark.slow  # a second DDP run: about 30 s
def test_fused_iterations_under_ddp_train_as_single_ones(
    ranks: list[dict], tiny_cifar10: Path, tmp_path: Path
) -> None:
    """module.fused_iterations=2: each iteration's gradients are still averaged over the
    ranks (one all-reduce per backward pass), so both ranks end with the parameters of the
    run with single iterations, rank 0 (whose checkpoints hold the run) with its batch-norm
    statistics too, and they log its synced metrics. (DDP sends rank 0's statistics to the
    others at each forward pass through it: once per step, every K iterations.)"""
    fused = ddp_run(tmp_path, tiny_cifar10, "module.fused_iterations=2")
    for rank, single in zip(fused, ranks, strict=True):
        assert rank["global_step"] == single["global_step"] == 4
        # the same raw images, two batches a step
        groups = [torch.cat(list(images)) for images, _ in rank["batches"]]
        assert torch.equal(torch.cat(groups), torch.cat([b[0] for b in single["batches"]]))
        for key, value in single["trained"].items():
            if rank["rank"] == 0 or not key.rsplit(".", 1)[-1].startswith(("running", "num")):
                assert torch.allclose(rank["trained"][key], value, rtol=1e-5, atol=1e-7), key
        assert rank["fit_metrics"] == pytest.approx(single["fit_metrics"], rel=1e-5)


def global_batches(data_dir: Path, steps: int) -> list[list[tuple]]:
    """The first ``steps`` global batches that one process would train on with the config of
    :func:`run_args` and its seed (tests/test_slurm.py checks a SLURM-started run with it)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=run_args(data_dir))
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()  # no trainer: rank 0 of 1
    assert loader.batch_size == cfg.data.batch_size == 16
    epochs = itertools.chain.from_iterable(iter(loader) for _ in range(steps))
    return [image_keys(*batch) for batch in itertools.islice(epochs, steps)]


@pytest.fixture(scope="module")
def single_process_batches(tiny_cifar10: Path, ranks: list[dict]) -> list[list[tuple]]:
    """The global batches that one process would train on with the same config and seed."""
    return global_batches(tiny_cifar10, len(ranks[0]["batches"]))


def test_each_rank_trains_on_its_own_half_of_every_global_batch(
    ranks: list[dict], single_process_batches: list[list[tuple]]
) -> None:
    steps = ranks[0]["global_step"]
    assert steps == 4
    for rec in ranks:
        assert rec["global_step"] == steps and len(rec["batches"]) == steps
    for step, expected in enumerate(single_process_batches):
        assert len(set(expected)) == 16  # distinct images: "disjoint" means something
        halves = []
        for rec in ranks:
            images, labels = rec["batches"][step]
            assert images.dtype == torch.uint8 and images.shape == (16 // WORLD, 3, 32, 32)
            assert labels.shape == (16 // WORLD,)
            halves.append(image_keys(images, labels))
        assert not set(halves[0]) & set(halves[1]), f"step {step}: the ranks share images"
        assert sorted(halves[0] + halves[1]) == sorted(expected), (
            f"step {step}: the ranks together did not see the single-process global batch"
        )


def test_the_ranks_end_with_the_same_trained_weights(ranks: list[dict]) -> None:
    """Gradients are averaged, so the parameters stay equal step by step; batch-norm statistics
    are each rank's own until DDP sends rank 0's to all at the start of the next forward pass
    (the test's, at the latest), so the run ends with every tensor equal."""
    first, second = ranks
    keys = list(first["initial"])
    buffers = [k for k in keys if k.rsplit(".", 1)[-1] in ("running_mean", "running_var")]
    assert buffers  # batch-norm buffers are compared too
    parameters = [k for k in keys if k not in buffers and not k.endswith("num_batches_tracked")]
    for stage, names in (("initial", keys), ("trained", parameters), ("tested", keys)):
        assert list(second[stage]) == keys
        differ = [k for k in names if not torch.equal(first[stage][k], second[stage][k])]
        assert not differ, f"{stage}: the ranks differ in {differ}"
    unchanged = [k for k in keys if torch.equal(first["initial"][k], first["tested"][k])]
    assert not unchanged, f"training left {unchanged} as they were"


def test_logged_metrics_are_synced_over_the_ranks(ranks: list[dict]) -> None:
    first, second = ranks
    # test/error: every rank reports the error over both ranks' test images, not its own.
    wrong = sum(rec["test_wrong"] for rec in ranks)
    seen = sum(rec["test_seen"] for rec in ranks)
    assert first["test_seen"] > 0 and second["test_seen"] > 0
    for rec in ranks:
        assert rec["test_metrics"]["test/error"] == pytest.approx(100.0 * wrong / seen)
    assert first["test_metrics"] == second["test_metrics"]
    # train/loss: the mean of the last logging window (2 iterations under debug=smoke) over
    # both ranks' own losses, which differ, so a rank that logged its own would fail here.
    window = 2
    own = [sum(rec["losses"][-window:]) / window for rec in ranks]
    assert own[0] != pytest.approx(own[1])
    for rec in ranks:
        assert rec["fit_metrics"]["train/loss"] == pytest.approx(sum(own) / WORLD, rel=1e-5)
    assert first["fit_metrics"] == second["fit_metrics"]
    assert "val/error" in first["fit_metrics"]


def test_evaluation_sets_are_counted_once_over_the_ranks(ranks: list[dict]) -> None:
    """debug=smoke evaluates one batch (eval_batch_size 64) of 32 val and of the test images:
    the ranks together see each image once, and val/error is a whole number of the 32."""
    assert sum(rec["test_seen"] for rec in ranks) == min(64, CIFAR_BATCH)
    for rec in ranks:
        wrong = rec["fit_metrics"]["val/error"] * 32 / 100
        assert wrong == pytest.approx(round(wrong), abs=1e-4), rec["fit_metrics"]["val/error"]


@pytest.mark.parametrize("strategy", SUPPORTED_STRATEGIES)
def test_the_supported_strategies_pass_the_checks(strategy: str, tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path, ["data=synthetic", "debug=smoke", "trainer.devices=2",
                               f"+trainer.strategy={strategy}"])  # fmt: skip
    check_run(cfg)  # no error


@pytest.mark.slow
def test_imagenet_evaluation_counts_each_val_image_once_over_the_ranks(
    tmp_path: Path, tiny_imagenet: Path
) -> None:
    """5 val images on 2 ranks (3 + 2, not padded to 3 + 3): the errors are whole fifths, and
    those one process computes from the run's last checkpoint."""
    args = [*IMAGENET_SMALL, f"data.data_dir={tiny_imagenet}", "debug=smoke", "data.val_size=5",
            "trainer.limit_val_batches=1.0", "trainer.limit_test_batches=1.0"]  # fmt: skip
    result = run_group(
        [sys.executable, "-m", "reslab.cli", *args, "data.num_workers=1", "logger=csv",
         "trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={WORLD}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, timeout=300, env={**os.environ, "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "finished" and status["iterations"] == 4, status
    for key in ("val/error", "test/error"):
        wrong = status[key] * 5 / 100
        assert wrong == pytest.approx(round(wrong), abs=1e-4), (key, status[key])
    # one process, the same checkpoint, the same images
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*args, "data.num_workers=0"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    net = instantiate(cfg.model, num_classes=datamodule.num_classes, in_channels=3)
    module = instantiate(cfg.module, net=net)
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == status["iterations"]
    module.load_state_dict(checkpoint["state_dict"])
    one = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    (val,) = one.validate(module, datamodule=datamodule, verbose=False)
    (test,) = one.test(module, datamodule=datamodule, verbose=False)
    assert status["val/error"] == pytest.approx(val["val/error"])
    assert status["test/error"] == pytest.approx(test["test/error"])
