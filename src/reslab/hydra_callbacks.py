"""Hydra callbacks (train-level, like train.py): what a user sees when a sweep ends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from reslab.train import STATUS_FILE

ERRORS = ("train/error", "val/error", "test/error")


def sweep_table(sweep_dir: Path) -> Table:
    """One row per run folder of the sweep: network, status, iterations, final errors, time."""
    table = Table(title=f"reslab sweep: {sweep_dir}")
    for column in ("run", "status", "iterations", *ERRORS, "seconds"):
        table.add_column(column, justify="left" if column in ("run", "status") else "right")
    for status_file in sorted(sweep_dir.glob(f"*/{STATUS_FILE}"), key=_job_number):
        status = json.loads(status_file.read_text())
        state = status.get("status", "?")
        if "diverged_at" in status:
            state += f" at {status['diverged_at']}"
        table.add_row(
            status_file.parent.name,
            state,
            str(status.get("iterations", "")),
            *(f"{status[k]:.2f}" if k in status else "" for k in ERRORS),
            str(status.get("seconds", "")),
        )
    return table


def _job_number(path: Path) -> tuple[int, str]:
    head = path.parent.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.parent.name)


class SweepFailed(SystemExit):
    """Some jobs of a sweep failed; the others ran to their end. A SystemExit, because Hydra
    turns a callback's ordinary exceptions into warnings: this one prints its message and
    makes the command exit with status 1."""


class SweepSummary(Callback):
    """Prints the table of :func:`sweep_table` when a multirun ends; then, if jobs failed
    (train.py lets the other jobs run), raises :class:`SweepFailed` naming them, so the command
    exits non-zero."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        console = Console()
        console.width = max(console.width, 110)  # logs and pipes get 80 columns otherwise
        console.print(sweep_table(sweep_dir))
        if any(sweep_dir.glob("*/wandb/offline-run-*")):
            print(
                "[reslab] to upload the offline wandb runs: "
                f"wandb sync {sweep_dir}/*/wandb/offline-run-*"
            )
        failed = [
            f.parent.name
            for f in sorted(sweep_dir.glob(f"*/{STATUS_FILE}"), key=_job_number)
            if json.loads(f.read_text()).get("status") == "failed"
        ]
        if failed:
            raise SweepFailed(
                f"[reslab] {len(failed)} job(s) of the sweep failed: {', '.join(failed)} (their "
                "status.json and error.txt say why); the other jobs ran to their end"
            )
