"""One writer per run folder: a new folder for each run, and an exclusive ``flock`` on
``<run folder>/.lock`` while a process writes it (the system releases it however it dies)."""

import fcntl
import io
import os
import shlex
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from reslab.run_folder import LAST_CHECKPOINT, STATUS_FILE, read_status, write_status

LOCK_FILE = ".lock"  # held by the process writing the folder (pid and host inside)


class FolderInUse(RuntimeError):
    """The run folder is being written by another live process."""


class FolderTaken(RuntimeError):
    """A new run or sweep was pointed at the folder of another one."""


def lock(
    run_dir: str | Path, check: Callable[[], None] | None = None, mode: str = "run"
) -> io.TextIOWrapper:
    """The lock of ``run_dir`` (made when missing) for this process: the open lock file (close
    it to release). Raises :class:`FolderInUse` naming the live holder (pid and host), or what
    ``check`` raises once the lock is held; then nothing in the folder has changed."""
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
            f"the {mode} folder {run_dir} is being written by {holder}; wait for it to end, or "
            f"choose another folder (hydra.{mode}.dir=...)"
        ) from None
    try:
        if check is not None:
            check()
    except BaseException:
        file.close()
        raise
    file.truncate(0)  # (opened to append: the write goes to the start)
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
    """A Hydra callback (conf/train.yaml) that makes the run's (a multirun's: the sweep's) folder
    this process's before Hydra writes in it: a default folder already taken becomes
    ``<folder>_2``, one a live process writes is refused naming it, and a continuation that does
    not start leaves it byte for byte (:meth:`put_back`). DDP ranks other than 0 lock nothing."""

    kept: ClassVar[dict[Path, bytes | None]] = {}  # the continued run's files (one run a process)
    _lock: io.TextIOWrapper | None = None  # the lock file while the folder is held

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "sweep")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.put_back()
        if self._lock is not None:
            self._lock.close()

    on_multirun_end = on_run_end

    @classmethod
    def put_back(cls) -> None:
        """The continued folder as :func:`snapshot` took it, unless the run started: at the run's
        end, and from record_failure for a signal before training (Hydra calls no callback)."""
        restore(cls.kept)
        cls.kept = {}

    def _claim(self, config: DictConfig, mode: str) -> None:
        if rank_zero_only.rank != 0:
            return
        key = f"hydra.{mode}.dir"
        folder = Path(str(OmegaConf.select(config, key)))
        given = any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)
        try:
            if not given:
                folder = claim_new_folder(folder)
                with read_write(config.hydra), open_dict(config.hydra):
                    config.hydra[mode].dir = str(folder)
                    # a sweep's jobs compose their config again from the overrides: they follow
                    config.hydra.overrides.hydra.append(f"{key}={folder}")
            check = (lambda: self._continue(folder, config, mode)) if given else None
            self._lock = lock(folder, check, mode)
        except Exception as err:  # SystemExit: Hydra would only warn of an exception
            said = str(err) if isinstance(err, FolderInUse | FolderTaken) else repr(err)
            sys.stderr.write(f"reslab-train: error: {said}\n")
            raise SystemExit(1) from None

    def _continue(self, folder: Path, config: DictConfig, mode: str) -> None:
        """:class:`FolderTaken` unless this continues the run (resumes the sweep) in ``folder``."""
        from reslab.sweeps import RESUME_SWEEPER, SWEEP_FILE, is_sweep_folder

        state = read_status(folder).get("status")
        run = f"a {state} run ({STATUS_FILE})" if state is not None else None
        sweep = f"a sweep ({SWEEP_FILE} or job folders)" if is_sweep_folder(folder) else None
        if mode == "run":  # never among a sweep's job folders; in a run's only to continue it
            requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
            continued = OmegaConf.select(config, "ckpt_path") is not None or requeued
            what = sweep or (None if continued else run)
        else:  # never in a run's folder; in a sweep's only to resume it
            resumed = OmegaConf.select(config, "hydra.sweeper._target_") == RESUME_SWEEPER
            what = run or (None if resumed else sweep)
        if what is not None:
            raise FolderTaken(
                f"{folder} already holds {what}; continue it with reslab-resume "
                f"{shlex.quote(str(folder))}, or choose another folder (hydra.{mode}.dir=...): a "
                f"new {mode} never overwrites one"
            )
        if mode == "run":
            RunFolderGuard.kept = snapshot(folder)


# what Hydra and the lock rewrite as a run starts (:func:`snapshot`; hydra_plugins too)
_REWRITTEN = (LOCK_FILE, "reslab.log", "error.txt", ".hydra/config.yaml", ".hydra/hydra.yaml",
              ".hydra/overrides.yaml")  # fmt: skip


def say_killed(folder: Path) -> bool:
    """True, and status.json ``interrupted`` with ``killed: true`` at the last checkpoint's
    iteration (0 without one), when it said ``running`` and its writer (``pid`` on this
    ``host``) is gone: killed before it could say so (SIGKILL; joblib's loky tearing down)."""
    status = read_status(folder)
    pid = status.get("pid")
    if status.get("status") != "running" or not isinstance(pid, int):
        return False
    if status.get("host") != socket.gethostname() or _alive(pid):
        return False  # its writer lives, or it is on another machine (a SLURM node: slurm.py)
    last, step = folder / LAST_CHECKPOINT, 0
    if last.is_file():
        import torch

        checkpoint = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        step = int(checkpoint["global_step"])
    fields = {k: v for k, v in status.items() if k not in ("status", "pid", "host")}
    write_status(folder, "interrupted", **{**fields, "iterations": step},
                 interrupted_at=step, killed=True)  # fmt: skip
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def snapshot(folder: Path) -> dict[Path, bytes | None]:
    """The files of a run's ``folder`` that a start rewrites, status.json first ({} for no run)."""
    if not (folder / STATUS_FILE).is_file():
        return {}
    paths = (folder / name for name in (STATUS_FILE, *_REWRITTEN))
    return {path: path.read_bytes() if path.is_file() else None for path in paths}


def restore(kept: dict[Path, bytes | None]) -> None:
    """Puts back what :func:`snapshot` took, the folder byte for byte as before the start,
    unless the run started (its status.json changed): then what it wrote stays."""
    status = next(iter(kept), None)
    if status is None or not status.is_file() or status.read_bytes() != kept[status]:
        return
    for path, data in kept.items():
        if data is None:
            path.unlink(missing_ok=True)
        elif not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
