"""A run folder is a thing of its own: moved or copied, it resumes from its own last checkpoint;
resuming it when it has finished changes none of its files; a damaged checkpoint is refused in
one line, before it loads, and the folder still says what it said."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from reslab.checkpoints import (
    AtomicCheckpointIO,
    DamagedCheckpointError,
    RunCheckpoint,
    verify_checkpoint,
)

RUN = ["model.depth=8", "data=synthetic", "debug=smoke"]  # 4 iterations, a checkpoint every 2


def env() -> dict[str, str]:
    """A reslab command of its own: offline wandb, without an earlier in-process wandb
    service (see test_resume.own_env)."""
    own = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**own, "WANDB_MODE": "offline"}


def reslab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reslab.cli", *args],
        capture_output=True, text=True, timeout=300, env=env(),
    )  # fmt: skip


def reslab_resume(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from reslab.cli import resume_main; resume_main()", *args],
        capture_output=True, text=True, timeout=300, env=env(),
    )  # fmt: skip


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` and the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def global_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``reslab-train data=synthetic debug=smoke logger=wandb``: a run finished at iteration 4
    (tests copy it, and the copy is a run folder elsewhere)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    result = reslab(*RUN, "logger=wandb", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    return run


def copy_of(finished: Path, to: Path) -> Path:
    shutil.copytree(finished, to, symlinks=True)
    return to


# --- 1. a moved folder resumes from its own last checkpoint ----------------------------------
@pytest.mark.slow  # two resumes in subprocesses
def test_a_moved_run_folder_extends_from_its_own_last_checkpoint(
    finished: Path, tmp_path: Path
) -> None:
    moved = copy_of(finished, tmp_path / "elsewhere" / "moved")
    result = reslab_resume(str(moved), "optim.max_steps=8")  # a higher max_steps extends it
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming from {moved}/checkpoints/last.ckpt at iteration 4" in result.stdout
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == [
        "last.ckpt",
    ]  # fmt: skip
    assert global_step(moved / "checkpoints" / "last.ckpt") == 8
    # nothing in the checkpoint names the folder it was written in
    assert str(tmp_path) not in str(torch.load(moved / "checkpoints" / "last.ckpt"))
    assert '"iterations": 8' in (moved / "status.json").read_text()

    result = reslab_resume(str(moved), "optim.max_steps=10")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "at iteration 8" in result.stdout
    assert global_step(moved / "checkpoints" / "last.ckpt") == 10


def test_the_checkpoint_callbacks_state_names_no_folder(tmp_path: Path) -> None:
    """Its state, written in one folder, names none of its paths, and restores in another
    without Lightning's "dirpath has changed" warning."""
    here = RunCheckpoint(dirpath=str(tmp_path / "old" / "checkpoints"), save_last=True)
    here.last_model_path = str(tmp_path / "old" / "checkpoints" / "last.ckpt")
    state = here.state_dict()
    assert str(tmp_path) not in str(state)
    again = RunCheckpoint(dirpath=str(tmp_path / "new" / "checkpoints"), save_last=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.load_state_dict(state)
    assert again.dirpath == str(tmp_path / "new" / "checkpoints")


# --- 2. resuming a finished run changes nothing ----------------------------------------------
def test_resuming_a_finished_run_changes_no_file(finished: Path, tmp_path: Path) -> None:
    run = copy_of(finished, tmp_path / "run")
    before = snapshot(run)
    assert any(name.startswith("wandb/") for name in before)
    for extra in ([], ["optim.max_steps=2"]):  # the same max_steps, and one below it
        result = reslab_resume(str(run), *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        steps = extra[0].split("=")[1] if extra else "4"
        assert result.stdout.strip() == (
            f"reslab-resume: {run} is complete: it finished at iteration 4 and "
            f"optim.max_steps={steps} asks for no more; nothing to do (a higher "
            "optim.max_steps extends it)"
        )
        assert snapshot(run) == before


def test_train_itself_leaves_a_complete_run_alone(
    finished: Path, tmp_path: Path, hydra_cfg
) -> None:
    """``reslab-train ... ckpt_path=last`` in a finished folder (a requeued job too): train()
    returns the run's metric and writes nothing."""
    from reslab.train import train

    run = copy_of(finished, tmp_path / "run")
    before = snapshot(run)
    metric = train(hydra_cfg(run, [*RUN, "logger=wandb", "ckpt_path=last"]))
    assert metric == json.loads((run / "status.json").read_text())["val/error"]
    assert snapshot(run) == before


# --- 3. a damaged checkpoint ---------------------------------------------------------------
def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # 4 KB of its middle overwritten
        middle = len(data) // 2
        data[middle - 2048 : middle + 2048] = bytes(4096)
    path.write_bytes(bytes(data))


def damaged_line(prog: str, ckpt: Path, how: str) -> str:
    """The one line that refuses checkpoint ``ckpt`` damaged ``how``, as a regex."""
    what = (
        r"it is not a whole torch checkpoint \(.+\)" if how == "truncated"
        else r"its entry \S+ does not match its CRC-32"
    )  # fmt: skip
    return (
        f"{prog}: error: checkpoint {re.escape(str(ckpt))} is damaged: {what}; start the run "
        r"again \(ckpt_path=null, in a new folder\), or restore this file from a copy"
    )


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_reslab_resume_refuses_a_damaged_checkpoint_in_one_line(
    finished: Path, tmp_path: Path, how: str
) -> None:
    run = copy_of(finished, tmp_path / "run")
    ckpt = run / "checkpoints" / "last.ckpt"
    damage(ckpt, how)
    before = snapshot(run)
    result = reslab_resume(str(run), "optim.max_steps=8")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert re.fullmatch(damaged_line("reslab-resume", ckpt, how), line), line
    assert snapshot(run) == before  # status.json still says finished; nothing else moved either


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_reslab_train_refuses_a_damaged_checkpoint_and_keeps_the_status(
    finished: Path, tmp_path: Path, how: str
) -> None:
    """The same through ``reslab-train ckpt_path=last`` (Hydra rewrites .hydra/ as any
    reslab-train does, and .lock names the process that held the folder last; the run's own
    files stay)."""
    run = copy_of(finished, tmp_path / "run")
    ckpt = run / "checkpoints" / "last.ckpt"
    damage(ckpt, how)
    ours = (".hydra/", ".lock")
    before = {k: v for k, v in snapshot(run).items() if not k.startswith(ours)}
    result = reslab(*RUN, "logger=wandb", "optim.max_steps=8", f"hydra.run.dir={run}",
                    "ckpt_path=last")  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and re.fullmatch(damaged_line("reslab-train", ckpt, how), errors[0])
    assert "Traceback" not in result.stderr
    after = {k: v for k, v in snapshot(run).items() if not k.startswith(ours)}
    assert after == before


def test_a_checkpoint_is_whole_even_when_killed_after_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 6, "w": torch.ones(3)}, path)
    verify_checkpoint(path)

    def killed_after_the_rename(src: object, dst: object) -> None:
        os.rename(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed_after_the_rename)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 9, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert global_step(path) == 9
    verify_checkpoint(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no .tmp left
    io.remove_checkpoint(path)
    assert not any(path.parent.iterdir())


def test_a_held_checkpoint_replaces_the_last_one_only_when_committed(tmp_path: Path) -> None:
    """While training, a checkpoint waits as ``last.ckpt.tmp`` until its iteration's rows are
    written (commit); discarded (an exception before), the one before stays."""
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 2}, path)
    io.hold = True
    io.save_checkpoint({"global_step": 4}, path)
    assert global_step(path) == 2 and global_step(path.with_name("last.ckpt.tmp")) == 4
    io.commit()
    assert global_step(path) == 4 and not path.with_name("last.ckpt.tmp").exists()
    io.save_checkpoint({"global_step": 6}, path)
    io.save_checkpoint({"global_step": 8}, path)  # (the one held before is committed first)
    assert global_step(path) == 6
    io.discard()
    assert global_step(path) == 6 and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_a_damaged_checkpoint_is_refused_by_its_crcs(tmp_path: Path) -> None:
    """Any torch checkpoint (reslab's or from elsewhere) is read whole before loading: each
    entry of torch's zip file has a CRC-32, and 4 KB overwritten in tensor data fail it."""
    path = tmp_path / "other.ckpt"
    torch.save({"global_step": 3, "w": torch.arange(4096.0)}, path)
    verify_checkpoint(path)
    damage(path, "overwritten")
    with pytest.raises(DamagedCheckpointError, match=r"other\.ckpt is damaged: its entry .*CRC"):
        verify_checkpoint(path)
    damage(path, "truncated")
    with pytest.raises(DamagedCheckpointError, match=r"is not a whole torch checkpoint"):
        verify_checkpoint(path)


def test_a_signal_as_a_continuation_starts_leaves_its_folder_as_it_was(
    finished: Path, tmp_path: Path
) -> None:
    """SIGINT as the continuation opens last.ckpt (strace delivers it at that system call: after
    Hydra has rewritten .hydra/ and the lock .lock, before training): exit 130, and every file of
    the folder as it was, byte for byte (Hydra calls no callback for a signal; record_failure
    puts the folder back)."""
    run = copy_of(finished, tmp_path / "run")
    before = snapshot(run)
    ckpt = run / "checkpoints" / "last.ckpt"
    strace = ["strace", "-f", "-qq", "-o", os.devnull, "-P", str(ckpt),
              "-e", "trace=openat", "-e", "inject=openat:signal=SIGINT:when=1"]  # fmt: skip
    result = subprocess.run(
        [*strace, sys.executable, "-m", "reslab.cli", *RUN, "logger=wandb", "optim.max_steps=8",
         f"hydra.run.dir={run}", "ckpt_path=last"],
        capture_output=True, text=True, timeout=300, env=env(),
    )  # fmt: skip
    assert result.returncode == 130, result.stderr[-3000:]
    assert snapshot(run) == before
