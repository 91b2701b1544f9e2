"""A run killed (SIGKILL) at any system call that writes its folder resumes to the uninterrupted
run's files: strace's fault injection kills a real ``reslab-train`` at the N-th ``write``
or ``rename`` of the run folder's files, for every N the uninterrupted run makes, and
``reslab-resume`` finishes each. The write order that makes this hold: an iteration's metrics rows
are on the disk before its checkpoint is renamed into place (reslab.checkpoints.AtomicCheckpointIO),
a torn last row is cut on resume (reslab.resume), every other file is written whole
(reslab.run_folder.atomic_write)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ARGS = ["model.depth=8", "data=synthetic", "debug=smoke", "logger=csv"]  # 4 iterations, ckpt: 2, 4
FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "status.json",
         "provenance.json", "git.diff", "hparams.yaml", "metrics.csv", "checkpoints/last.ckpt",
         ".lock")  # fmt: skip
# (a kill at an fsync leaves what one at the write before it leaves: the same state on the disk)
SYSCALLS = ("write", "rename")


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}


def traced(folder: Path, *strace: str) -> list[str]:
    """strace's options for ``reslab-train`` into ``folder``: only calls on its files (and
    their ``.tmp``), then ``strace``'s own."""
    paths = [str(folder / name) + tmp for name in FILES for tmp in ("", ".tmp")]
    return ["strace", "-f", "-qq", *(f"-P{p}" for p in paths), *strace]


def train(folder: Path, *strace: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*traced(folder, *strace), sys.executable, "-m", "reslab.cli", *ARGS,
         f"hydra.run.dir={folder}"],
        capture_output=True, text=True, timeout=300, env=env(),
    )  # fmt: skip


def resume(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from reslab.cli import resume_main; resume_main()", str(folder)],
        capture_output=True, text=True, timeout=300, env=env(),
    )  # fmt: skip


@pytest.mark.slow  # about 30 killed runs and their resumes, two at a time
def test_a_run_killed_at_any_write_of_its_folder_resumes_to_the_uninterrupted_runs_rows(
    tmp_path: Path,
) -> None:
    whole, log = tmp_path / "whole", tmp_path / "strace.log"
    result = train(whole, "-o", str(log), "-e", f"trace={','.join(SYSCALLS)}")
    assert result.returncode == 0, result.stderr[-3000:]
    calls = [re.match(r"\d+ +(\w+)\(", line) for line in log.read_text().splitlines()]
    counts = {name: sum(m is not None and m.group(1) == name for m in calls) for name in SYSCALLS}
    assert counts["rename"] >= 6 and counts["write"] >= 10, counts  # status, checkpoints, rows
    expected = (whole / "metrics.csv").read_bytes()

    def killed_and_resumed(case: tuple[str, int]) -> str | None:
        """What went wrong with the run killed at ``case`` (None: nothing)."""
        name, n = case
        folder = tmp_path / f"{name}{n}"
        killed = train(folder, "-o", os.devnull, "-e", f"trace={name}",
                       "-e", f"inject={name}:signal=KILL:when={n}")  # fmt: skip
        if killed.returncode != -9:  # strace exits with its tracee's status
            return f"not killed: exit {killed.returncode}"
        if not (folder / "status.json").is_file():  # killed before the run began
            again = train(folder)  # its command again (it says how, below)
            return None if again.returncode == 0 else f"not started again: {again.stderr[-800:]}"
        resumed = resume(folder)
        if resumed.returncode != 0:
            return f"resume failed: {resumed.stdout[-500:]}{resumed.stderr[-1500:]}"
        status = json.loads((folder / "status.json").read_text())
        if status["status"] != "finished" or status["iterations"] != 4:
            return f"status.json after the resume: {status}"
        torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
        rows = (folder / "metrics.csv").read_bytes()
        return None if rows == expected else f"metrics.csv differs:\n{rows.decode()[-600:]}"

    cases = [(name, n) for name in SYSCALLS for n in range(1, counts[name] + 1)]
    with ThreadPoolExecutor(2) as pool:
        found = dict(zip(cases, pool.map(killed_and_resumed, cases), strict=True))
    wrong = {f"{name} {n}": said for (name, n), said in found.items() if said is not None}
    assert not wrong, (
        f"{len(wrong)} of {len(cases)} kills ({counts}):\n"
        + "\n".join(f"- killed at {case}: {said}" for case, said in wrong.items())
        + f"\nexpected:\n{expected.decode()}"
    )
