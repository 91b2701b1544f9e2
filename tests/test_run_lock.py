"""One process per run folder: a second process pointed at a folder that a live run is writing is
refused before anything in it changes, a lock left by a dead process is taken over, and two
runs that start in the same second get folders of their own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from reslab.config import CONFIG_DIR
from reslab.run_lock import LOCK_FILE, FolderInUse, RunFolderGuard, claim_new_folder, lock

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOLD = (  # a process that holds a folder's lock for a minute
    "import sys, time; from reslab.run_lock import lock; held = lock(sys.argv[1]); "
    "print('held', flush=True); time.sleep(60)"
)


def env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "offline"}


def test_a_held_lock_is_refused_naming_its_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse) as info:
            lock(tmp_path)
        assert f"is being written by pid {holder.pid} on {socket.gethostname()}" in str(info.value)
        assert str(info.value).startswith("the run folder") and "(hydra.run.dir=...)" in str(
            info.value
        )
        with pytest.raises(FolderInUse, match=r"^the sweep folder .*\(hydra\.sweep\.dir=\.\.\.\)"):
            lock(tmp_path, mode="sweep")  # a second reslab-resume of a sweep
        assert (tmp_path / LOCK_FILE).read_text() == f"pid {holder.pid} on {socket.gethostname()}\n"
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env()
    )
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert f"pid {holder.pid}" in (tmp_path / LOCK_FILE).read_text()  # its name is still there
    held = lock(tmp_path)
    try:
        mine = f"pid {os.getpid()} on {socket.gethostname()}\n"
        assert (tmp_path / LOCK_FILE).read_text() == mine
    finally:
        held.close()


def test_runs_that_start_in_the_same_second_get_folders_of_their_own(tmp_path: Path) -> None:
    first, second = claim_new_folder(tmp_path / "run"), claim_new_folder(tmp_path / "run")
    assert (first, second) == (tmp_path / "run", tmp_path / "run_2")
    assert claim_new_folder(tmp_path / "run") == tmp_path / "run_3"
    # Through the Hydra callback, with the default folder (no hydra.run.dir on the command line)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        folders = []
        for _ in range(2):
            cfg = compose("train", return_hydra_config=True)
            with open_dict(cfg):
                cfg.hydra.run.dir = str(tmp_path / "same_second")
            guard = RunFolderGuard()
            guard.on_run_start(cfg)
            folders.append(cfg.hydra.run.dir)
            guard.on_run_end(cfg)
    assert folders == [str(tmp_path / "same_second"), str(tmp_path / "same_second_2")]


@pytest.mark.slow
def test_a_second_run_in_a_live_runs_folder_is_refused_before_it_changes_anything(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    common = ["data=synthetic", "debug=smoke", "logger=csv", "model.depth=8",
              f"hydra.run.dir={run}"]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "reslab.cli", *common, "optim.max_steps=1000000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.csv").is_file():  # training, logging
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended"
            time.sleep(0.5)
        before = {p: p.read_bytes() for p in (run / ".hydra").iterdir()}
        second = subprocess.run(
            [sys.executable, "-m", "reslab.cli", *common, "model.depth=14", "optim.max_steps=2"],
            capture_output=True, text=True, env=env(), timeout=300,
        )  # fmt: skip
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1] == (
            f"reslab-train: error: the run folder {run} is being written by pid {first.pid} on "
            f"{socket.gethostname()}; wait for it to end, or choose another folder "
            "(hydra.run.dir=...)"
        )
        assert {p: p.read_bytes() for p in (run / ".hydra").iterdir()} == before
        status = json.loads((run / "status.json").read_text())
        assert status == {"status": "running", "name": "resnet-8A", "pid": first.pid,
                          "host": socket.gethostname()}  # fmt: skip
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
