"""``trainer=ddp`` on 2 CPU processes (gloo), through ``reslab-train`` on the tiny CIFAR-10
files: each rank trains on its own half of every global batch (``data.batch_size``), the two
halves together are the batch one process would see, the ranks end with the same weights, and
the logged metrics are synced over them.

What each rank saw is recorded by ``ddp_worker.RankRecorder``, a callback that the command line
adds on every rank (``+callbacks.record._target_=...``, with this folder on ``PYTHONPATH``)."""

from __future__ import annotations

import itertools
import json
import math
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
from reslab.data.augment import crop_flip_draws
from reslab.launch import SUPPORTED_STRATEGIES

TESTS = Path(__file__).resolve().parent
WORLD = 2
# What no rank prints (issue 21): Lightning's sync_dist warning (reslab logs its step synced),
# its notices of the config's own settings (debug=smoke's limits), its SLURM requeue handlers
NOISE = ("It is recommended to use `self.log(", "was configured so",
         "SLURM auto-requeueing enabled")  # fmt: skip


def run_args(data_dir: Path) -> list[str]:
    """A 4-iteration ResNet-8 run (debug=smoke: global batch 16) on the tiny CIFAR-10 files."""
    return ["model.depth=8", "data=cifar10", f"data.data_dir={data_dir}", "data.download=false",
            "debug=smoke", "logger=csv"]  # fmt: skip


def image_keys(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[bytes, int]]:
    """Each (uint8 image, label) as a hashable key: the raw bytes name the image."""
    return [(img.numpy().tobytes(), int(y)) for img, y in zip(images, labels, strict=True)]


def ddp_run(tmp: Path, data_dir: Path | None, *overrides: str, world: int = WORLD) -> list[dict]:
    """The records of each rank of one ``reslab-train trainer=ddp`` run on ``world`` CPUs
    (``world`` 1: one process, ``trainer=cpu``), of :func:`run_args` (without ``data_dir``:
    synthetic data, ``debug=smoke``)."""
    record = tmp / "record"
    tmp.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": pythonpath}
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={world}"]
    result = run_group(
        [sys.executable, "-m", "reslab.cli",
         *(run_args(data_dir) if data_dir else ["data=synthetic", "debug=smoke", "logger=csv"]),
         *(ddp if world > 1 else []),
         "+callbacks.record._target_=ddp_worker.RankRecorder",
         f"+callbacks.record.out_dir={record}", f"hydra.run.dir={tmp / 'run'}", *overrides],
        env=env, cwd=tmp, timeout=180,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert world == 1 or f"Starting with {world} processes" in output, output[-3000:]
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in the output:\n{output[-3000:]}"
    found = sorted(p.name for p in record.iterdir())
    assert found == [f"rank{r}.pt" for r in range(world)], found
    records = [torch.load(record / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for r, rec in enumerate(records):
        assert (rec["rank"], rec["world_size"]) == (r, world)
    return records


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, tiny_cifar10: Path) -> list[dict]:
    """The records of ranks 0 and 1 of one ``reslab-train trainer=ddp`` run on 2 CPUs."""
    return ddp_run(tmp_path_factory.mktemp("ddp"), tiny_cifar10)


@pytest.fixture(scope="module")
def fused_ranks(tmp_path_factory: pytest.TempPathFactory, tiny_cifar10: Path) -> list[dict]:
    """The records of a second DDP run, with ``module.fused_iterations=2`` (about 30 s)."""
    return ddp_run(tmp_path_factory.mktemp("fused"), tiny_cifar10, "module.fused_iterations=2")


@pytest.mark.slow  # a second DDP run
def test_fused_iterations_under_ddp_train_as_single_ones(
    ranks: list[dict], fused_ranks: list[dict]
) -> None:
    """module.fused_iterations=2: each iteration's gradients are still averaged over the
    ranks (one all-reduce per backward pass), so both ranks end with the parameters of the
    run with single iterations, rank 0 (whose checkpoints hold the run) with its batch-norm
    statistics too, and they log its synced metrics. (DDP sends rank 0's statistics to the
    others at each forward pass through it: once per step, every K iterations.)"""
    for rank, single in zip(fused_ranks, ranks, strict=True):
        assert rank["global_step"] == single["global_step"] == 4
        # the same raw images, two batches a step
        groups = [torch.cat(list(images)) for images, _ in rank["batches"]]
        assert torch.equal(torch.cat(groups), torch.cat([b[0] for b in single["batches"]]))
        for key, value in single["trained"].items():
            if rank["rank"] == 0 or not key.rsplit(".", 1)[-1].startswith(("running", "num")):
                assert torch.allclose(rank["trained"][key], value, rtol=1e-5, atol=1e-7), key
        assert rank["fit_metrics"] == pytest.approx(single["fit_metrics"], rel=1e-5)


@pytest.mark.slow  # a one-process run beside the DDP one: about 20 s
def test_two_ranks_augment_the_global_batch_as_one_process_does(
    ranks: list[dict], fused_ranks: list[dict], tiny_cifar10: Path, tmp_path: Path
) -> None:
    """Each image's crop and flip is drawn from the seed, the iteration and its place in the
    global batch (rank r holds places r, r + 2, ...): the ranks' augmented halves, interleaved,
    are the one-process run's augmented global batch, byte for byte, for single and fused
    iterations; where every rank drew alike (the same generator, seeded alike), they were not."""
    (one,) = ddp_run(tmp_path, tiny_cifar10, world=1)
    assert len(one["augmented"]) == one["global_step"] == 4
    for step, whole in enumerate(one["augmented"]):
        assert whole.dtype == torch.float32 and whole.shape == (16, 3, 32, 32)
        for rank, rec in enumerate(ranks):
            assert torch.equal(rec["batches"][step][0], one["batches"][step][0][rank::WORLD])
            got = rec["augmented"][step]
            assert got.view(torch.int32).equal(whole[rank::WORLD].view(torch.int32)), (step, rank)
        for rank, rec in enumerate(fused_ranks):  # (2, 8, ...): two iterations a step
            got = rec["augmented"][step // 2][step % 2]
            assert got.view(torch.int32).equal(whole[rank::WORLD].view(torch.int32)), (step, rank)
        draws = crop_flip_draws(0, step, 1, torch.arange(16))[0]  # debug=smoke's seed: 0
        assert not torch.equal(draws[0::2], draws[1::2])  # rank 0's and rank 1's differ


@pytest.mark.slow  # two runs: about 40 s
def test_with_batch_norm_in_eval_mode_two_ranks_train_as_one_process(
    tiny_cifar10: Path, tmp_path: Path
) -> None:
    """Where no layer looks across the images of a batch (batch norm in eval mode, set by a test
    callback; SyncBatchNorm, the way to that in training mode, runs on GPUs only), a 2-rank run
    is the one-process run of the same global batch: each iteration's loss (the mean of the
    ranks' losses) and the trained weights agree to float rounding (fp32 sums of 8 and 8 images
    against one of 16, and the ranks' gradients averaged: 1e-5 relative, 1e-6 absolute)."""
    frozen = "+callbacks.frozen._target_=ddp_worker.BatchNormInEvalMode"
    (one,) = ddp_run(tmp_path / "one", tiny_cifar10, frozen, world=1)
    two = ddp_run(tmp_path / "two", tiny_cifar10, frozen)
    assert len(one["losses"]) == len(two[0]["losses"]) == 4
    pooled = [(a + b) / 2 for a, b in zip(two[0]["losses"], two[1]["losses"], strict=True)]
    assert pooled == pytest.approx(one["losses"], rel=1e-5, abs=1e-6)
    assert two[0]["losses"] != pytest.approx(two[1]["losses"])  # each rank's own half
    for key, value in one["trained"].items():
        for rank in two:
            assert torch.allclose(rank["trained"][key], value, rtol=1e-5, atol=1e-6), key
    assert two[0]["fit_metrics"] == pytest.approx(one["fit_metrics"], rel=1e-5, abs=1e-6)


@pytest.mark.slow  # a DDP run: about 25 s
def test_an_uneven_evaluation_set_is_measured_whole_under_ddp(tmp_path: Path) -> None:
    """257 test images in global batches of 2 x 64: the last batch's one image is rank 0's,
    rank 1 has one batch less (no empty batch, whose statistics made every value of Figure 7's
    responses.csv NaN); test/error counts each image once."""
    responses = "+callbacks.responses._target_=reslab.callbacks.LayerResponses"
    ranks = ddp_run(tmp_path, None, "data.num_test=257", "trainer.limit_test_batches=null",
                    responses)  # fmt: skip
    assert [rec["test_seen"] for rec in ranks] == [129, 128]
    rows = (tmp_path / "run" / "responses.csv").read_text().splitlines()[1:]
    stds = [float(row.rsplit(",", 1)[1]) for row in rows]
    assert len(stds) == 19 and all(math.isfinite(s) and s > 0 for s in stds), rows
    wrong = ranks[0]["test_metrics"]["test/error"] * 257 / 100
    assert wrong == pytest.approx(round(wrong), abs=1e-3)


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
