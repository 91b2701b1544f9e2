"""Fused iterations (``module.fused_iterations=K``): one Lightning step runs K iterations, and
nothing a user sees changes. In fp32 on a CPU a run with K = 10 writes the metrics.csv of the
same run with K = 1, byte for byte (same data order, same random draws, same arithmetic); a
run killed with SIGKILL and resumed with K > 1 writes the uninterrupted run's; an interval K
does not divide is refused with the key to change."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from reslab.checks import check_run
from reslab.data.base import BatchLoader
from reslab.train import train

TESTS = Path(__file__).resolve().parent
# 96 training images in batches of 16: 6 batches per epoch, so groups of 4 run on into the next
# epoch's order; 44 iterations cross 7 epoch boundaries. Logging every 4, validation and
# checkpoints every 8, the last iteration (44) between them.
RUN = [
    "model.depth=8", "data=synthetic", "debug=smoke", "data.num_train=128", "data.val_size=32",
    "optim.max_steps=44", "trainer.log_every_n_steps=4", "trainer.val_check_interval=8",
    "callbacks.checkpoint.every_n_train_steps=8", "logger=csv", "optim.milestones=[13,30]",
]  # fmt: skip


def metrics(folder: Path) -> str:
    return (folder / "metrics.csv").read_text()


@pytest.mark.parametrize("graphed", [False, True])
def test_fused_iterations_write_the_metrics_of_single_ones(
    tmp_path: Path, hydra_cfg, graphed: bool
) -> None:
    """Also along the path of whole-step CUDA graphs (module.cuda_graphs: the first step
    eager, then the step's device work replayed with each iteration's learning rate from the
    host's schedule), which on a CPU runs the same steps without a graph."""
    single, fused = tmp_path / "k1", tmp_path / "k4"
    train(hydra_cfg(single, RUN))
    train(hydra_cfg(fused, [*RUN, "module.fused_iterations=4", f"module.cuda_graphs={graphed}"]))
    text = metrics(single)
    assert metrics(fused) == text
    rows = [r.split(",") for r in text.splitlines()]
    header, rows = rows[0], rows[1:]
    train_steps = [r[header.index("step")] for r in rows if r[header.index("train/loss")]]
    assert train_steps == [str(i) for i in range(4, 45, 4)]
    # The schedule stepped every iteration: the lr fell at 13 and at 30, inside fused steps.
    lrs = {r[header.index("lr")] for r in rows} - {""}
    assert len(lrs) == 3, lrs
    last = torch.load(fused / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 44


def test_ten_fused_iterations_with_the_warmup_and_plateau_free_schedule(
    tmp_path: Path, hydra_cfg
) -> None:
    """K = 10 as speed=fast sets it, with the paper's warm-up (section 4.2) ending inside a
    fused step: the warm-up's lr, its end and the schedule are those of K = 1."""
    run = [
        "model.depth=8", "data=synthetic", "debug=smoke", "data.num_train=160",
        "optim.max_steps=40", "trainer.log_every_n_steps=10", "trainer.val_check_interval=20",
        "logger=csv",
        "callbacks.checkpoint.every_n_train_steps=20", "optim.warmup.min_depth=8",
        "optim.warmup.window=3", "optim.warmup.until_train_error=95",
    ]  # fmt: skip
    train(hydra_cfg(tmp_path / "k1", run))
    train(hydra_cfg(tmp_path / "k10", [*run, "module.fused_iterations=10"]))
    graphed = [*run, "module.fused_iterations=10", "module.cuda_graphs=true"]
    train(hydra_cfg(tmp_path / "graphed", graphed))  # eager while warming up, then replayed
    text = metrics(tmp_path / "k1")
    assert metrics(tmp_path / "k10") == metrics(tmp_path / "graphed") == text
    assert "warmup_ended_at" in text.splitlines()[0]


@pytest.mark.slow  # three short runs in subprocesses
def test_a_sigkilled_fused_run_resumes_to_the_uninterrupted_runs_numbers(tmp_path: Path) -> None:
    from test_resume import reslab_train

    # test_resume's RUN: checkpoints and validations every 3 iterations, 12 in all
    fused = ["module.fused_iterations=3", "logger=csv", "trainer.log_every_n_steps=6"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert reslab_train(whole, *fused).returncode == 0
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    result = reslab_train(
        killed, *fused, "+callbacks.kill._target_=sigkill.SigkillAt", "+callbacks.kill.step=9",
        env={"PYTHONPATH": pythonpath},
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    result = reslab_train(killed, *fused, "ckpt_path=last")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "at iteration 6" in result.stdout  # killed before the checkpoint at 9 was saved
    assert metrics(killed) == metrics(whole)
    single = tmp_path / "single"
    assert reslab_train(single, *fused[1:]).returncode == 0
    assert metrics(single) == metrics(whole)  # and K = 3 is K = 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.log_every_n_steps=6",
         r"trainer.log_every_n_steps=6 is not a multiple of module.fused_iterations=4"),
        ("trainer.val_check_interval=6",
         r"trainer.val_check_interval=6 is not a multiple of module.fused_iterations=4"),
        ("callbacks.checkpoint.every_n_train_steps=6",
         r"every_n_train_steps=6 is not a multiple of module.fused_iterations=4"),
        ("optim.max_steps=42",
         r"optim.max_steps=42 is not a multiple of module.fused_iterations=4"),
    ],
)  # fmt: skip
def test_an_interval_the_fused_iterations_do_not_divide_is_refused(
    tmp_path: Path, hydra_cfg, override: str, message: str
) -> None:
    """Before any data loads (reslab-train's checks), and by fit itself."""
    cfg = hydra_cfg(tmp_path, [*RUN, "module.fused_iterations=4", override])
    with pytest.raises(ValueError, match=message):
        check_run(cfg)
    with pytest.raises(ValueError, match=message):
        train(cfg)


def test_fused_iterations_need_an_in_memory_dataset(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path, ["data=imagenet", "model=imagenet", "module.fused_iterations=2"])
    with pytest.raises(ValueError, match=r"module\.fused_iterations=2 needs an in-memory"):
        check_run(cfg)


def test_a_checkpoint_resumes_only_with_its_own_fused_iterations(tmp_path: Path, hydra_cfg) -> None:
    train(hydra_cfg(tmp_path, [*RUN, "optim.max_steps=8"]))
    cfg = hydra_cfg(tmp_path, [*RUN, "module.fused_iterations=4", "ckpt_path=last"])
    with pytest.raises(ValueError, match=r"trained with module\.fused_iterations=1"):
        train(cfg)


def test_the_fused_loader_groups_the_single_loaders_batches() -> None:
    labels = torch.arange(40)
    images = labels.reshape(40, 1, 1, 1)
    done = [0]

    def loader(fused: int, stop: int | None) -> BatchLoader:
        return BatchLoader(
            images, labels, 8, shuffle=True, drop_last=True, seed=2,
            batches_done=lambda: done[0], fused=fused, stop_at=lambda: stop,
        )  # fmt: skip

    single = []
    for _ in range(3):  # 3 epochs of 5 batches, positioned by the iteration
        for _, y in loader(1, None):
            single.append(y)
            done[0] += 1
    done[0], groups = 0, []
    while done[0] < 13:
        for x, y in loader(3, 13):
            assert x.shape == (len(y), 8, 1, 1, 1) and torch.equal(x.flatten(1), y)
            groups.extend(y)
            done[0] += len(y)
    assert done[0] == 13  # cut at stop_at
    assert all(torch.equal(a, b) for a, b in zip(groups, single[:13], strict=True))
    assert len(loader(3, None)) == 2  # 5 batches an epoch: groups starting in it


@pytest.mark.parametrize("fused", [1, 2])
def test_the_last_iteration_is_logged_between_logging_iterations(
    tmp_path: Path, hydra_cfg, fused: int
) -> None:
    """max_steps=6 with a row every 4 iterations: rows at 4 and at 6 (the mean of 5 and 6),
    whatever the fused iterations."""
    run = [
        *RUN, "optim.max_steps=6", "trainer.val_check_interval=2",
        "callbacks.checkpoint.every_n_train_steps=2", f"module.fused_iterations={fused}",
    ]  # fmt: skip
    train(hydra_cfg(tmp_path, run))
    rows = [r.split(",") for r in metrics(tmp_path).splitlines()]
    header = rows[0]
    logged = [r[header.index("step")] for r in rows[1:] if r[header.index("train/loss")]]
    assert logged == ["4", "6"]


def test_every_interval_the_fused_iterations_do_not_divide_is_named_at_once(
    tmp_path: Path, hydra_cfg
) -> None:
    """debug=smoke's intervals of 2 with speed=fast's 10: one message for all four."""
    cfg = hydra_cfg(tmp_path, ["model.depth=8", "data=synthetic", "debug=smoke", "speed=fast"])
    with pytest.raises(ValueError) as refused:
        check_run(cfg)
    message = str(refused.value)
    for said in ("trainer.log_every_n_steps=2", "trainer.val_check_interval=2",
                 "optim.max_steps=4", "callbacks.checkpoint.every_n_train_steps=2"):  # fmt: skip
        assert said in message, message
    assert "are not a multiple of module.fused_iterations=10" in message


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("+trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val=1.0"),
    ],
)
def test_settings_a_fused_step_cannot_keep_are_refused_before_data_loads(
    tmp_path: Path, hydra_cfg, override: str, said: str
) -> None:
    cfg = hydra_cfg(tmp_path, [*RUN, "module.fused_iterations=4", override])
    with pytest.raises(ValueError, match=r"module\.fused_iterations=4 cannot run with") as err:
        check_run(cfg)
    assert said in str(err.value)


def test_a_time_interval_for_validation_passes_the_checks(tmp_path: Path, hydra_cfg) -> None:
    """Lightning sets no val_check_interval attribute for a time ("00:00:10:00")."""
    check_run(hydra_cfg(tmp_path, [*RUN, "trainer.val_check_interval=00:00:10:00"]))
