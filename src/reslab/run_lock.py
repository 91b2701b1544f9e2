"""One writer per run folder: a new folder for each run, and a lock held while a process
writes one (an exclusive ``flock`` on ``<run folder>/.lock``, which the system releases when
the process dies, however it dies)."""

from __future__ import annotations

import fcntl
import io
import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

LOCK_FILE = ".lock"  # held by the process writing the folder (pid and host inside)


class FolderInUse(RuntimeError):
    """The run folder is being written by another live process."""


def lock(run_dir: str | Path) -> io.TextIOWrapper:
    """Takes the lock of ``run_dir`` (made when missing) for this process and returns the open
    lock file (close it to release). Raises :class:`FolderInUse` naming the holder (pid and
    host) when a live process holds it; then nothing in the folder has changed."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    file = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "another process"
        file.close()
        raise FolderInUse(
            f"the run folder {run_dir} is being written by {holder}; wait for it to end, or "
            "choose another folder (hydra.run.dir=...)"
        ) from None
    file.seek(0)
    file.truncate()
    file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    file.flush()
    return file


def claim_new_folder(path: str | Path) -> Path:
    """``path`` made anew for this run, or ``<path>_2``, ``<path>_3``, ... when it exists: two
    runs that start in the same second with the same name get folders of their own."""
    path, n = Path(path), 1
    while True:
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1


class RunFolderGuard(Callback):
    """A Hydra callback (conf/train.yaml) that makes the run's folder (a multirun's: the sweep's)
    this process's before Hydra writes in it: a default folder taken in the same second becomes
    ``<folder>_2``, one a live process writes is refused in one line naming it. DDP ranks other
    than 0 share rank 0's folder and lock nothing."""

    def __init__(self) -> None:
        self._lock: Any = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "sweep")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    on_multirun_end = on_run_end

    def _claim(self, config: DictConfig, mode: str) -> None:
        if rank_zero_only.rank != 0:
            return
        key = f"hydra.{mode}.dir"
        folder = Path(str(OmegaConf.select(config, key)))
        if not any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra):
            folder = claim_new_folder(folder)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra[mode].dir = str(folder)
        try:
            self._lock = lock(folder)
        except FolderInUse as err:  # a SystemExit: Hydra turns callbacks' exceptions into warnings
            sys.stderr.write(f"reslab-train: error: {err}\n")
            raise SystemExit(1) from None
