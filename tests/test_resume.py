"""Nothing lost: identical metrics for the same seed, a SIGKILLed run resumed to the same
numbers as an uninterrupted one, the same wandb run, atomic checkpoints, and the divergence
guard."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reslab.checkpoints import AtomicCheckpointIO, verify_checkpoint
from reslab.run_folder import cut_metrics
from reslab.train import train

TESTS = Path(__file__).resolve().parent
# 64 training images in batches of 16: 4 iterations per epoch, so 12 iterations cross two
# epoch boundaries; checkpoints every 3 iterations, so a resume lands mid-epoch.
RUN = [
    "model.depth=8", "data=synthetic", "debug=smoke", "data.num_train=96", "optim.max_steps=12",
    "callbacks.checkpoint.every_n_train_steps=3", "trainer.val_check_interval=3",
]  # fmt: skip


def own_env(**extra: str) -> dict[str, str]:
    """This process's environment for a reslab-train of its own: without WANDB_SERVICE, which
    an earlier in-process wandb run of the test session set. A child would otherwise share
    this process's wandb service, which still holds the run of a child killed with SIGKILL
    ("run ID ... is in use" when it resumes), as no real resume does: a requeued job or a
    command typed again starts its own service."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "WANDB_MODE": "offline", **extra}


def reslab_train(run_dir: Path, *overrides: str, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "reslab.cli", *RUN, f"hydra.run.dir={run_dir}", *overrides],
        capture_output=True, text=True, timeout=300, env=own_env(**(env or {})),
    )  # fmt: skip


def test_same_config_and_seed_give_identical_metrics(tmp_path: Path, hydra_cfg) -> None:
    texts = []
    for name in ("first", "second"):
        train(hydra_cfg(tmp_path / name, [*RUN, "logger=csv"]))
        texts.append((tmp_path / name / "metrics.csv").read_text())
    assert texts[0] == texts[1]
    assert texts[0].count("\n") > 8  # train, val and test rows
    other = tmp_path / "seed1"
    train(hydra_cfg(other, [*RUN, "logger=csv", "seed=1"]))
    assert (other / "metrics.csv").read_text() != texts[0]  # the seed matters


@pytest.mark.slow  # three short runs in subprocesses
def test_sigkilled_run_resumes_to_the_uninterrupted_runs_numbers(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert reslab_train(whole, "logger=wandb").returncode == 0
    # Killed at iteration 7 (its last checkpoint is at 6), in the middle of the second epoch.
    # This folder on PYTHONPATH for the callback, before the caller's (as test_ddp does).
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    result = reslab_train(
        killed, "logger=wandb", "+callbacks.kill._target_=sigkill.SigkillAt",
        "+callbacks.kill.step=7", env={"PYTHONPATH": pythonpath},
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert json.loads((killed / "status.json").read_text())["status"] == "running"
    torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)  # whole and readable

    result = reslab_train(killed, "logger=wandb", "ckpt_path=last")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from" in result.stdout and "at iteration 6" in result.stdout
    assert (killed / "metrics.csv").read_text() == (whole / "metrics.csv").read_text()
    status = json.loads((killed / "status.json").read_text())
    assert status["status"] == "finished" and status["iterations"] == 12
    # One wandb run, continued: both offline pieces carry the run folder's id.
    run_id = (killed / "wandb_id.txt").read_text().strip()
    pieces = sorted((killed / "wandb").glob("offline-run-*"))
    assert len(pieces) == 2 and all(p.name.endswith(f"-{run_id}") for p in pieces)


def test_ckpt_path_last_without_a_checkpoint_starts_at_iteration_0(
    tmp_path: Path, hydra_cfg, capsys
) -> None:
    """A run stopped before its first checkpoint (or a sweep job that never started) is
    continued from iteration 0, in its own folder."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text('{"status": "interrupted", "iterations": null}')
    (run / "metrics.csv").write_text("step,train/loss\n1,9.9\n")  # the stopped start's rows
    train(hydra_cfg(run, [*RUN, "logger=csv", "ckpt_path=last"]))
    assert f"{run} has no checkpoints/last.ckpt: it starts again at iteration 0" in (
        capsys.readouterr().out
    )
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["iterations"] == 12
    fresh = tmp_path / "fresh"
    train(hydra_cfg(fresh, [*RUN, "logger=csv"]))
    assert (run / "metrics.csv").read_text() == (fresh / "metrics.csv").read_text()


def test_a_fresh_run_in_a_used_folder_starts_a_new_metrics_file(tmp_path: Path, hydra_cfg) -> None:
    run = tmp_path / "run"
    train(hydra_cfg(run, [*RUN, "logger=csv", "optim.max_steps=4"]))
    first = (run / "metrics.csv").read_text()
    columns = first.splitlines()[0].count(",")
    with open(run / "metrics.csv", "a") as f:  # a row no run wrote: must not survive
        f.write("99" + "," * columns + "\n")
    train(hydra_cfg(run, [*RUN, "logger=csv", "optim.max_steps=4"]))
    assert (run / "metrics.csv").read_text() == first  # replaced, not appended to


def test_cut_metrics_keeps_the_rows_up_to_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(
        "lr,step,train/loss,val/error\n0.1,2,2.3,\n,2,,90.0\n0.1,4,2.2,\n0.1,6,2.1,\n,6,,80.0\n"
    )
    assert cut_metrics(tmp_path, 4) == 2
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "lr,step,train/loss,val/error", "0.1,2,2.3,", ",2,,90.0", "0.1,4,2.2,",
    ]  # fmt: skip


def test_cut_metrics_drops_the_rows_a_resumed_run_logs_again(tmp_path: Path) -> None:
    """A run resumed at its last iteration tests again, and validates again unless its
    checkpoint was taken after that validation (``revalidated``); its train rows stay."""
    rows = ["lr,step,test/error,train/loss,val/error", "0.1,2,,2.3,", ",2,,,90.0", "0.1,4,,2.2,",
            ",4,,,87.5", ",4,85.0,,"]  # fmt: skip
    for revalidated, kept in ((False, rows[:5]), (True, rows[:4])):
        (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
        assert cut_metrics(tmp_path, 4, revalidated=revalidated) == 6 - len(kept)
        assert (tmp_path / "metrics.csv").read_text().splitlines() == kept


def test_a_last_row_cut_at_any_byte_is_dropped_and_every_whole_row_kept(tmp_path: Path) -> None:
    """A kill mid-append leaves metrics.csv ending inside a row (``...,20,87.5,2.428``): at every
    byte it can be cut at, the resumed file holds exactly the whole rows before the cut."""
    header = "lr,step,train/loss,val/error\r\n"
    rows = ["0.1,2,2.30258,\r\n", ",2,,90.0\r\n", "0.1,4,2.21875,\r\n", ",4,,87.5\r\n"]
    full = header + "".join(rows)
    for cut in range(len(header), len(full) + 1):
        (tmp_path / "metrics.csv").write_bytes(full[:cut].encode())
        whole = [r for i, r in enumerate(rows) if len(header + "".join(rows[: i + 1])) <= cut]
        assert cut_metrics(tmp_path, 4) == 0, cut
        assert (tmp_path / "metrics.csv").read_bytes().decode() == header + "".join(whole), cut


def test_a_write_is_on_the_disk_before_it_counts(tmp_path: Path) -> None:
    """atomic_write, seen by strace in a real process: the temporary file is fsynced, renamed
    over the file, and then the folder is fsynced (the rename itself is on the disk)."""
    log, target = tmp_path / "strace.log", tmp_path / "run" / "status.json"
    code = f"from reslab.run_folder import atomic_write; atomic_write({str(target)!r}, '{{}}')"
    traced = "trace=openat,fsync,rename,renameat,renameat2"
    subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e", traced,
                    sys.executable, "-c", code], check=True)  # fmt: skip
    calls = [line.split(maxsplit=1)[-1] for line in log.read_text().splitlines()]
    opened = {}  # fd -> path, for the files this write opens
    order = []
    for call in calls:
        if call.startswith("openat(") and str(target.parent) in call and "= " in call:
            fd = call.rsplit("= ", 1)[1].split()[0]
            if fd.isdigit():
                opened[fd] = call.split('"')[1]
        elif call.startswith("fsync(") and call[6:].split(")")[0] in opened:
            order.append(("fsync", opened[call[6:].split(")")[0]]))
        elif call.startswith("rename") and str(target) in call:
            order.append(("rename", call.split('"')[1]))
    assert order == [("fsync", f"{target}.tmp"), ("rename", f"{target}.tmp"),
                     ("fsync", str(target.parent))], calls  # fmt: skip
    assert target.read_text() == "{}"


def test_a_failed_checkpoint_write_leaves_the_last_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 6, "w": torch.ones(3)}, path)
    with pytest.raises(Exception, match=r"pickle|lambda"):  # cannot be serialised at all
        io.save_checkpoint({"global_step": 9, "w": lambda: None}, path)

    def killed_before_rename(src: object, dst: object) -> None:
        raise KeyboardInterrupt  # as if the process stopped between writing and renaming

    monkeypatch.setattr(os, "replace", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 9, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 6 and torch.equal(loaded["w"], torch.ones(3))
    verify_checkpoint(path)  # whole: each entry matches its CRC-32
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_a_diverging_run_stops_within_one_log_interval_and_says_so(
    tmp_path: Path, hydra_cfg
) -> None:
    cfg = hydra_cfg(
        tmp_path / "run",
        [*RUN, "logger=wandb", "optim.lr=1e6", "optim.max_steps=40", "trainer.log_every_n_steps=2"],
    )
    with pytest.warns(UserWarning, match=r"diverged: train/loss is nan at iteration \d+"):
        error = train(cfg)
    assert error != error  # nan: the sweeper sees no number
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "diverged"
    at = status["diverged_at"]
    assert at % 2 == 0 and status["iterations"] == at < 40  # stopped at that logging step
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    losses = [r.split(",") for r in rows[1:]]
    header = rows[0].split(",")
    finite = [
        float(r[header.index("train/loss")])
        for r in losses
        if r[header.index("train/loss")] not in ("", "nan", "inf")
    ]
    assert len(finite) == at // 2 - 1  # every interval before the last one was finite
    from wandb_files import wandb_config, wandb_summary

    (piece,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    summary = wandb_summary(piece)  # the wandb summary says so too
    assert (summary["status"], summary["diverged_at"]) == ("diverged", at)
    # no final errors of the broken network, there or in status.json (strict JSON: no NaN)
    for key in ("train/error", "val/error", "test/error", "train/loss"):
        assert summary[key] is None and status[key] is None, key
    json.loads((tmp_path / "run" / "status.json").read_text(), parse_constant=_not_json)
    config = wandb_config(piece)  # and the wandb config says what produced the run
    assert config["provenance"] == json.loads((tmp_path / "run" / "provenance.json").read_text())


def test_a_broken_network_never_replaces_a_finite_checkpoint_and_is_no_result(
    tmp_path: Path, hydra_cfg
) -> None:
    """A checkpoint every iteration, logging every 10: the net breaks (lr 1e30) between logging
    iterations; every checkpoint of a non-finite net is discarded, the last finite one stays,
    and a run whose weights end non-finite before any logging iteration is ``diverged``."""
    args = [*RUN, "logger=csv", "optim.lr=1e30", "trainer.log_every_n_steps=10"]
    cfg = hydra_cfg(tmp_path / "a", [*args, "optim.max_steps=5", "trainer.val_check_interval=5",
                                     "callbacks.checkpoint.every_n_train_steps=1"])  # fmt: skip
    with pytest.warns(UserWarning, match="diverged"):
        train(cfg)
    checkpoint = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    assert 1 <= checkpoint["global_step"] < 5
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    assert json.loads((tmp_path / "a" / "status.json").read_text())["status"] == "diverged"


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def test_a_sweep_with_a_diverging_job_finishes_the_others_and_marks_it(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "-m", "optim.lr=1e6,0.1", "model.depth=8",
         "data=synthetic", "debug=smoke", "logger=csv", "optim.max_steps=12",
         "trainer.log_every_n_steps=2", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "150"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]  # diverging is a result, not a failure
    diverged, finished = (
        json.loads((sweep / job / "status.json").read_text())
        for job in ("0_resnet-8A", "1_resnet-8A")
    )
    assert diverged["status"] == "diverged" and diverged["iterations"] < 12
    assert finished["status"] == "finished" and finished["iterations"] == 12
    assert f"diverged at {diverged['diverged_at']}" in result.stdout  # the sweep's table


def reslab_resume(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``reslab-resume RUN_DIR overrides...`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-c", "from reslab.cli import resume_main; resume_main()",
         str(run_dir), *overrides],
        capture_output=True, text=True, timeout=300, env=own_env(),
    )  # fmt: skip


def test_reslab_resume_continues_a_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert reslab_train(run, "logger=csv", "optim.max_steps=4").returncode == 0
    result = reslab_resume(run, "optim.max_steps=8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming from {run}/checkpoints/last.ckpt at iteration 4" in result.stdout
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["iterations"] == 8
    steps = [line.split(",")[1] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps[0] == "2" and steps[-1] == "8"  # one file: the first run's rows, then these


def test_reslab_resume_names_what_is_missing(tmp_path: Path, capsys) -> None:
    from reslab.cli import resume_main

    with pytest.raises(SystemExit) as exit_info:  # not a run folder: no .hydra/overrides.yaml
        resume_main([str(tmp_path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"reslab-resume: error: {tmp_path} is not a reslab run folder")
    assert "it has no .hydra/overrides.yaml" in err
    (tmp_path / "a-file").write_text("")
    for name, why in (("nope", "it does not exist"), ("a-file", "it is not a folder")):
        with pytest.raises(SystemExit):
            resume_main([str(tmp_path / name)])
        assert f"{tmp_path / name} is not a reslab run folder: {why}" in capsys.readouterr().err



@pytest.mark.slow  # two short runs in subprocesses
def test_reslab_resume_starts_again_a_run_stopped_before_its_first_checkpoint(
    tmp_path: Path,
) -> None:
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert reslab_train(whole, "logger=csv").returncode == 0
    (run / ".hydra").mkdir(parents=True)  # what a kill at its first file operations leaves
    (run / ".hydra" / "overrides.yaml").write_bytes((whole / ".hydra/overrides.yaml").read_bytes())
    (run / "status.json").write_text('{"status": "running"}')
    result = subprocess.run(
        [sys.executable, "-c", "from reslab.cli import resume_main; resume_main()", str(run)],
        capture_output=True, text=True, timeout=300, env=own_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "it starts again at iteration 0" in result.stdout
    assert (run / "metrics.csv").read_text() == (whole / "metrics.csv").read_text()
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


def test_only_rank_zero_touches_the_run_folders_files(
    tmp_path: Path, hydra_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DDP's other ranks run train() too, after rank 0 has opened its loggers: they must not
    delete rank 0's metrics.csv or wandb_id.txt, nor write an id of their own."""
    from lightning.pytorch.utilities import rank_zero_only

    from reslab.loggers import wandb_run_id
    from reslab.train import prepare_folder

    run = tmp_path / "run"
    cfg = hydra_cfg(run, [*RUN, "logger=csv"])
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert wandb_run_id(run) is None and not (run / "wandb_id.txt").exists()
    (run / "metrics.csv").write_text("step\n2\n")
    (run / "wandb_id.txt").write_text("abc123\n")
    assert wandb_run_id(run) == "abc123"
    prepare_folder(cfg.name, run, None)  # a fresh start ...
    assert (run / "metrics.csv").exists() and (run / "wandb_id.txt").exists()  # ... of rank 0's
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    prepare_folder(cfg.name, run, None)
    assert not (run / "metrics.csv").exists() and not (run / "wandb_id.txt").exists()


def _reslab(run_dir: Path, overrides: list[str], env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "reslab.cli", *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600, env=own_env(**(env or {})),
    )  # fmt: skip


@pytest.mark.slow  # three 30-iteration runs in subprocesses
def test_a_checkpoint_inside_a_warmup_window_and_a_logging_interval_resumes_exactly(
    tmp_path: Path,
) -> None:
    """The checkpoint at iteration 7 cuts the warm-up window 6-10 and the logging interval
    5-8: what they had accumulated travels in it, so the warm-up ends where the uninterrupted
    run's does (at 15) and every row of metrics.csv is the same."""
    from test_schedules import WARMUP_RUN

    run = [o for o in WARMUP_RUN if not o.startswith("trainer.log_every_n_steps=")]
    run += ["trainer.log_every_n_steps=4", "optim.warmup.until_train_error=85",
            "callbacks.checkpoint.every_n_train_steps=7"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert (result := _reslab(whole, run)).returncode == 0, result.stderr[-2000:]
    assert json.loads((whole / "status.json").read_text())["warmup_ended_at"] == 15
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    kill = ["+callbacks.kill._target_=sigkill.SigkillAt", "+callbacks.kill.step=8"]
    result = _reslab(killed, [*run, *kill], env={"PYTHONPATH": pythonpath})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    result = _reslab(killed, [*run, "ckpt_path=last"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "at iteration 7" in result.stdout
    assert (killed / "metrics.csv").read_text() == (whole / "metrics.csv").read_text()
    assert json.loads((killed / "status.json").read_text())["warmup_ended_at"] == 15


def test_a_resumed_offline_wandb_run_steps_on_above_its_first_piece(tmp_path: Path) -> None:
    """wandb's step is the iteration in both offline pieces, and the second piece's rows are
    all above the first's: `wandb sync` appends them to one history (README)."""
    from wandb_files import offline_runs, wandb_history

    run = tmp_path / "run"
    result = reslab_train(run, "logger=wandb", "optim.max_steps=4")
    assert result.returncode == 0, result.stderr[-2000:]
    result = reslab_resume(run, "optim.max_steps=8")
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = offline_runs(run)
    steps = [[row["_step"] for row in wandb_history(p / f"run-{p.name[-8:]}.wandb")]
             for p in (first, second)]  # fmt: skip
    assert steps[0] == sorted(set(steps[0])) and steps[1] == sorted(set(steps[1]))
    assert steps[0][-1] == 4 and min(steps[1]) > 4 and steps[1][-1] == 8
    with open(run / "metrics.csv") as f:  # every step of metrics.csv, each in one piece
        logged = sorted({int(r["step"]) for r in csv.DictReader(f)})
    assert sorted(set(steps[0] + steps[1])) == logged


@pytest.mark.slow  # a short run, then a long resume stopped by kill
def test_reslab_resume_is_the_trainers_process_so_kill_reaches_it(tmp_path: Path) -> None:
    """``reslab-resume`` execs the trainer: the process the user started is the one training
    (status.json's pid), so ``kill PID`` stops the run at its iteration, with no orphan left
    behind and a status.json that says so."""
    run = tmp_path / "run"
    assert reslab_train(run, "logger=csv", "optim.max_steps=2").returncode == 0
    resumed = subprocess.Popen(
        [sys.executable, "-c", "from reslab.cli import resume_main; resume_main()", str(run),
         "optim.max_steps=100000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=own_env(), cwd=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while json.loads((run / "status.json").read_text())["status"] != "running":
        assert resumed.poll() is None and time.monotonic() < deadline, resumed.stdout.read()
        time.sleep(0.1)
    assert json.loads((run / "status.json").read_text())["pid"] == resumed.pid
    while not any(row["step"] == "4" for row in csv.DictReader((run / "metrics.csv").open())):
        assert resumed.poll() is None and time.monotonic() < deadline, resumed.stdout.read()
        time.sleep(0.1)  # into training: its iteration 4 logged
    resumed.send_signal(signal.SIGTERM)
    out = resumed.communicate(timeout=120)[0]
    assert resumed.returncode == 128 + signal.SIGTERM, out[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["interrupted_at"] > 2, status


@pytest.mark.parametrize(
    "other",
    [["model.depth=14"], ["shortcut=none"], ["shortcut=B"], ["model.widths=[8,16,32]"]],
    ids=["depth", "plain", "option-B", "widths"],
)
def test_a_resume_with_another_network_is_refused_and_changes_no_file(
    tmp_path: Path, hydra_cfg, other: list[str]
) -> None:
    # another depth, shortcut or width than the checkpoint's: refused before the folder changes
    # (Lightning's load would fail only after status.json, metrics.csv and hparams.yaml had
    # changed; a plain net's weights even load into option A's silently)
    run = [*RUN[:4], "optim.max_steps=3", "callbacks.checkpoint.every_n_train_steps=3",
           "trainer.val_check_interval=3", "logger=csv"]  # fmt: skip
    train(hydra_cfg(tmp_path, run))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cfg = hydra_cfg(tmp_path, [*run, "optim.max_steps=6", "ckpt_path=last", *other])
    trained = "another network's" if cfg.name == "resnet-8A" else "resnet-8A's"  # (widths)
    with pytest.raises(ValueError, match=f"holds {trained} weights, not {cfg.name}'s"):
        train(cfg)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    resumed = hydra_cfg(tmp_path, [*run, "optim.max_steps=6", "ckpt_path=last"])
    train(resumed)  # the same network resumes
    assert json.loads((tmp_path / "status.json").read_text())["iterations"] == 6


def test_a_resume_for_another_class_count_is_refused_and_changes_no_file(
    tmp_path: Path, hydra_cfg
) -> None:
    # the same network for 5 classes, not 10: its classifier differs (the data sets its width)
    run = [*RUN[:4], "optim.max_steps=3", "callbacks.checkpoint.every_n_train_steps=3",
           "trainer.val_check_interval=3", "logger=csv"]  # fmt: skip
    train(hydra_cfg(tmp_path, run))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cfg = hydra_cfg(tmp_path, [*run, "optim.max_steps=6", "ckpt_path=last", "data.classes=5"])
    said = r"holds another network's weights, not resnet-8A's \(net\.fc\.weight: \(10, 64\) in it"
    with pytest.raises(ValueError, match=said + r", \(5, 64\) in resnet-8A\)"):
        train(cfg)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.slow  # three short ImageNet runs in subprocesses, with a decoding worker
def test_an_imagenet_run_killed_mid_epoch_resumes_to_the_uninterrupted_runs_numbers(
    tmp_path: Path, tiny_imagenet: Path
) -> None:
    """36 training images in batches of 4: 9 iterations an epoch; killed at 7, resumed from the
    checkpoint at 6, in the middle of the first epoch. The resumed run sees the uninterrupted
    run's images with the same scale, crop, flip and colour noise (TrainOrder): its metrics.csv
    is the uninterrupted run's, byte for byte, and Lightning finds the loader resumable."""
    run = [
        sys.executable, "-m", "reslab.cli", "model=imagenet", "model.depth=18", "data=imagenet",
        f"data.data_dir={tiny_imagenet}", "data.crop_size=32", "data.scale=[36,40]",
        "data.eval_resize=36", "data.batch_size=4", "data.eval_batch_size=2", "debug=smoke",
        "data.val_size=3", "data.train_subset=null", "data.num_workers=1", "optim.max_steps=12",
        "callbacks.checkpoint.every_n_train_steps=3", "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1", "logger=csv",
    ]  # fmt: skip
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))

    def reslab(folder: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*run, f"hydra.run.dir={folder}", *extra], capture_output=True, text=True,
            timeout=600, env=own_env(PYTHONPATH=pythonpath),
        )  # fmt: skip

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert reslab(whole).returncode == 0
    result = reslab(killed, "+callbacks.kill._target_=sigkill.SigkillAt", "+callbacks.kill.step=7")
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    result = reslab(killed, "ckpt_path=last")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "at iteration 6" in result.stdout, result.stdout[-2000:]
    assert "not resumable" not in result.stdout + result.stderr
    assert (killed / "metrics.csv").read_text() == (whole / "metrics.csv").read_text()
