"""Loggers: wandb that goes offline by itself when it cannot reach its server and continues its
own run when the run folder resumes; a CSV logger that appends to the run folder's metrics.csv
instead of deleting it."""

from __future__ import annotations

import csv
import netrc
import os
import secrets
import socket
import string
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from reslab.run_folder import WANDB_ID_FILE, atomic_write

WANDB_MODES = ("auto", "online", "offline", "disabled")


def _wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""


def has_wandb_api_key() -> bool:
    """True when wandb would find an API key (environment or ~/.netrc) without prompting."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(_wandb_host()) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_wandb_mode(mode: str = "auto") -> str:
    """The mode wandb will run in. ``auto`` honours ``WANDB_MODE``; without it, it goes online
    only with an API key and a reachable server, and offline otherwise (never prompting)."""
    if mode not in WANDB_MODES:
        raise ValueError(f"unknown wandb mode {mode!r}; valid choices are {', '.join(WANDB_MODES)}")
    if mode != "auto":
        return mode
    if env := os.environ.get("WANDB_MODE"):
        return "offline" if env == "dryrun" else env
    if not has_wandb_api_key():
        return "offline"
    if not _reachable(_wandb_host()):
        rank_zero_warn(f"wandb server {_wandb_host()} is unreachable: logging offline")
        return "offline"
    return "online"


def wandb_run_id(save_dir: str | Path) -> str | None:
    """The wandb run id of the run folder ``save_dir``: read from its ``wandb_id.txt``, or made
    and written there the first time (by rank 0; other DDP ranks log nothing to wandb), so a
    resumed run (same folder) continues the same wandb run, online or offline (``wandb sync``
    joins the pieces by id)."""
    path = Path(save_dir) / WANDB_ID_FILE
    if path.is_file() and (run_id := path.read_text().strip()):
        return run_id
    if rank_zero_only.rank != 0:
        return None
    # wandb's own ids: 8 lowercase letters and digits
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    atomic_write(path, run_id + "\n")
    return run_id


def read_wandb_records(path: str | Path) -> list[Any]:
    """The records of a wandb ``.wandb`` file (what ``wandb sync`` uploads), as wandb's
    protobuf ``Record`` messages. The file is a LevelDB-style log: a 7-byte header, then 32 KiB
    blocks of chunks, each a 7-byte header (crc32, length, type: 1 whole record, 2 first, 3
    middle, 4 last piece) and its bytes. A file cut short (a killed run, or one wandb's service
    is still writing) is read up to its last whole record."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = Path(path).read_bytes(), 32768
    position, records, pending = 7, [], b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or kind == 0:  # a block's padding
            position += left
            continue
        if position + 7 + length > len(data):
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(pending))
            pending = b""
    return records


def last_wandb_step(save_dir: str | Path, run_id: str) -> int | None:
    """The last history step that the pieces of wandb run ``run_id`` already in the run folder
    ``save_dir`` hold (its ``wandb/*run-*-<id>/run-<id>.wandb`` files); None without any."""
    steps = [
        record.history.step.num
        for path in sorted(Path(save_dir).glob(f"wandb/*run-*-{run_id}/run-{run_id}.wandb"))
        for record in read_wandb_records(path)
        if record.HasField("history")
    ]
    return max(steps, default=None)


class StepWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` whose history rows are stepped by the training iteration
    (wandb's ``_step``), not by wandb's own count of rows. Lightning logs ``trainer/
    global_step`` as a column and lets wandb count ``_step`` from 0 in each process, so a
    resumed offline run restarted at 0 and ``wandb sync`` dropped or replaced the rows.

    ``after_step``: rows at this iteration or before are not logged. A resumed run sets it to
    the last row its earlier wandb pieces hold, so its steps go on above theirs: the
    iterations it redoes after its checkpoint keep the rows the interrupted run wrote (the
    same numbers, as resuming is exact), as wandb itself does when an online run resumes."""

    def __init__(self, *args: Any, after_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after_step = after_step

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None:
            super().log_metrics(metrics, step)
            return
        if self.after_step is not None and step <= self.after_step:
            return
        self.experiment.log({**metrics, "trainer/global_step": step}, step=step)


def wandb_logger(mode: str = "auto", **kwargs: Any) -> WandbLogger:
    """A :class:`StepWandbLogger` whose ``mode`` is resolved by :func:`resolve_wandb_mode`;
    offline runs are real run folders that ``wandb sync`` uploads later. With ``save_dir`` (the
    run folder) and no ``id``, the run's id is the folder's (:func:`wandb_run_id`) and a
    resumed run continues it, its history above the rows the folder's wandb pieces hold."""
    resolved = resolve_wandb_mode(mode)
    wanted = kwargs.get("save_dir") and not kwargs.get("id") and resolved != "disabled"
    if wanted and (run_id := wandb_run_id(save_dir := kwargs["save_dir"])):
        kwargs.update(id=run_id, resume="allow", after_step=last_wandb_step(save_dir, run_id))
    logger = StepWandbLogger(offline=resolved == "offline", mode=resolved, **kwargs)
    # Lightning passes wandb.init(anonymous=None) whatever it is given, and wandb warns that
    # the setting has no effect whenever it is passed at all: leave it out.
    logger._wandb_init.pop("anonymous", None)
    return logger


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, minus deleting an existing metrics.csv: it appends to it, with
    the header it already has (train.py has cut it back to the checkpoint when resuming)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` whose metrics.csv survives a restart in the same folder: a resumed run
    adds its rows after those of the run it continues."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def log_final_summary(loggers: Iterable[Logger], final: dict[str, Any], step: int) -> None:
    """Puts the run's final numbers (status, iterations, final and best errors) in each wandb
    run's summary, where the dashboard's tables and filters find them, and logs them as a
    one-row wandb Table ``final`` at the last iteration. Other loggers are left alone: their
    numbers are in metrics.csv and status.json."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
            row = [list(final.values())]
            logger.log_table(key="final", columns=list(final), data=row, step=step)
            # Commit the last iteration's history row now: committed later (at finish), its
            # values would become the summary's again, over the final ones (null if diverged).
            logger.experiment.log({}, step=step, commit=True)
            logger.experiment.summary.update(final)
