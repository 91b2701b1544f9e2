"""Loggers: wandb that goes offline by itself when it cannot reach its server."""

from __future__ import annotations

import netrc
import os
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

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


def wandb_logger(mode: str = "auto", **kwargs: Any) -> WandbLogger:
    """A Lightning ``WandbLogger`` whose ``mode`` is resolved by :func:`resolve_wandb_mode`;
    offline runs are real run folders that ``wandb sync`` uploads later."""
    resolved = resolve_wandb_mode(mode)
    return WandbLogger(offline=resolved == "offline", mode=resolved, **kwargs)


def log_final_summary(loggers: Iterable[Logger], final: dict[str, Any], step: int) -> None:
    """Puts the run's final numbers (status, iterations, final and best errors) in each wandb
    run's summary, where the dashboard's tables and filters find them, and logs them as a
    one-row wandb Table ``final`` at the last iteration. Other loggers are left alone: their
    numbers are in metrics.csv and status.json."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
            logger.experiment.summary.update(final)
            row = [list(final.values())]
            logger.log_table(key="final", columns=list(final), data=row, step=step)
