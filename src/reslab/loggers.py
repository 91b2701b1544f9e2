"""Loggers: wandb, offline by itself without a key or its server, continuing its own run when the
run folder resumes; a CSV logger that appends to the run folder's metrics.csv."""

import csv
import netrc
import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from reslab.run_folder import METRICS_FILE, WANDB_ID_FILE, atomic_write, write_csv

WANDB_MODES = ("auto", "online", "offline", "disabled")
_WANDB_LOGGER_ARGS = ("log_model", "prefix", "checkpoint_name")  # the others go to wandb.init


def _wandb_server() -> tuple[str, int]:
    """The host and port of wandb's server (``WANDB_BASE_URL``; a self-hosted one may give a
    port, else the scheme's; ("", 0) for a malformed one)."""
    try:
        url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
        port = url.port
    except ValueError:  # a bad IPv6 literal, a port that is no number or out of range
        return "", 0
    return url.hostname or "", (80 if url.scheme == "http" else 443) if port is None else port


def has_wandb_api_key() -> bool:
    """True when wandb would find an API key (environment or ~/.netrc) without prompting."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(_wandb_server()[0]) is not None
    except (OSError, netrc.NetrcParseError):
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
    host, port = _wandb_server()
    try:
        if not host or not port:
            raise OSError(f"WANDB_BASE_URL={os.environ.get('WANDB_BASE_URL')!r} names no server")
        socket.create_connection((host, port), timeout=3.0).close()
    except OSError as err:
        rank_zero_warn(f"wandb server {host}:{port} is unreachable: logging offline ({err})")
        return "offline"
    return "online"


def wandb_run_id(save_dir: str | Path) -> str | None:
    """The wandb run id of the run folder ``save_dir``, from its ``wandb_id.txt`` (made by rank 0
    the first time): a resumed run continues the same wandb run, online or offline."""
    path = Path(save_dir) / WANDB_ID_FILE
    if path.is_file() and (run_id := path.read_text().strip()):
        return run_id
    if rank_zero_only.rank != 0:
        return None
    # a wandb sweep agent's id (wandb logs under it), else 8 hex digits (a wandb-style id)
    run_id = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
    atomic_write(path, run_id + "\n")
    return run_id


class StepWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` stepped by the training iteration (wandb's own count restarts in
    each process: ``wandb sync`` would drop a resumed offline run's rows); rows up to the last step
    ``step_file`` held at the start are skipped, so iterations a resumed run redoes keep theirs."""

    def __init__(self, *args: Any, step_file: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_file = step_file
        self.after_step = int(step_file.read_text()) if step_file and step_file.is_file() else None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.after_step is not None and step <= self.after_step:
            return
        self.experiment.log({**metrics, "trainer/global_step": step}, step=step)
        if self.step_file is not None:
            atomic_write(self.step_file, f"{step}\n")


def wandb_logger(mode: str = "auto", save_dir: str | None = None, **kwargs: Any) -> WandbLogger:
    """A :class:`StepWandbLogger` over reslab's own ``wandb.init(**kwargs)`` (rank 0 only; without
    the ``anonymous=None`` Lightning's passes, which wandb warns about) in the mode
    :func:`resolve_wandb_mode` picks; with ``save_dir`` and no ``id``, :func:`wandb_run_id`."""
    resolved = resolve_wandb_mode(mode)
    own = {key: kwargs.pop(key) for key in _WANDB_LOGGER_ARGS if key in kwargs}
    wanted = save_dir and not kwargs.get("id") and resolved != "disabled"
    if wanted and (run_id := wandb_run_id(save_dir)):
        kwargs["id"], own["step_file"] = run_id, Path(save_dir, "wandb", f"reslab-step-{run_id}")
    run = None
    if rank_zero_only.rank == 0:
        import wandb

        run = wandb.init(dir=save_dir, mode=resolved, resume="allow", **kwargs)
        run.define_metric("trainer/global_step")  # the x axis, as Lightning's logger sets it
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    names = {"project": kwargs.get("project"), "name": kwargs.get("name")}
    return StepWandbLogger(experiment=run, save_dir=save_dir, **names, **own)


class AppendingCSVLogger(Logger):
    """The run folder's metrics.csv and hparams.yaml as Lightning's ``CSVLogger`` writes them (a
    sorted column per metric, and ``step``), but appended to, row by row: a resumed run adds its
    rows after those of the run it continues. A new metric rewrites the file atomically."""

    name = version = ""  # the files are the run folder's own, beside its other files

    def __init__(self, save_dir: str | Path) -> None:
        super().__init__()
        self._save_dir = str(save_dir)
        self._keys: list[str] | None = None  # metrics.csv's header, once read
        self._hparams: dict[str, Any] = {}

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Any, *args: Any, **kwargs: Any) -> None:
        self._hparams.update(params if isinstance(params, Mapping) else vars(params))
        Path(self._save_dir).mkdir(parents=True, exist_ok=True)
        save_hparams_to_yaml(Path(self._save_dir) / "hparams.yaml", self._hparams)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        row["step"] = step
        path, rows = Path(self._save_dir) / METRICS_FILE, []
        if path.is_file() and (self._keys is None or not set(row) <= set(self._keys)):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows, self._keys = list(reader), list(reader.fieldnames or [])
        if path.is_file() and set(row) <= set(self._keys or ()):
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._keys).writerow(row)
                f.flush()
                os.fsync(f.fileno())  # on the disk before a later checkpoint's rename
            return
        self._keys = sorted({*(self._keys or ()), *row})
        write_csv(path, self._keys, [*rows, row])  # every row again, below the wider header


def log_final_summary(loggers: Iterable[Logger], final: dict[str, Any], step: int) -> None:
    """The run's final numbers (status, iterations, errors) into each wandb run's summary, where
    the dashboard finds them, and as a one-row wandb Table ``final`` at the last iteration."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
            logger.log_table(key="final", columns=list(final), data=[[*final.values()]], step=step)
            # Commit the last iteration's history row now: committed later (at finish), its
            # values would become the summary's again, over the final ones (null if diverged).
            logger.experiment.log({}, step=step, commit=True)
            logger.experiment.summary.update(final)
