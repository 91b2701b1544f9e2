"""What a user sees when a sweep ends: a table of its runs' final errors (a Hydra callback,
named in conf/train.yaml), and a non-zero exit when jobs failed. Report side: it reads run
folders and imports nothing of training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from reslab.run_folder import read_status
from reslab.runs import run_folders

ERRORS = ("train/error", "val/error", "test/error")


def sweep_table(sweep_dir: Path) -> Table:
    """One row per run folder of the sweep: network, status, iterations, final errors, time."""
    table = Table(title=f"reslab sweep: {sweep_dir}")
    for column in ("run", "status", "iterations", *ERRORS, "seconds"):
        table.add_column(column, justify="left" if column in ("run", "status") else "right")
    for folder in run_folders(sweep_dir):
        status = read_status(folder)
        state = status.get("status", "?")
        if "diverged_at" in status:
            state += f" at {status['diverged_at']}"
        table.add_row(
            folder.name,
            state,
            str(status.get("iterations", "")),
            *(f"{status[k]:.2f}" if status.get(k) is not None else "" for k in ERRORS),
            str(status.get("seconds", "")),
        )
    return table


class SweepFailed(SystemExit):
    """Some jobs of a sweep failed (the others ran to their end): a SystemExit, since Hydra
    turns a callback's other exceptions into warnings; the command exits with status 1."""


class SweepSummary(Callback):
    """Prints :func:`sweep_table` when a multirun ends, then raises :class:`SweepFailed` naming
    the failed jobs, if any."""

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
            f.name for f in run_folders(sweep_dir) if read_status(f).get("status") == "failed"
        ]
        if failed:
            raise SweepFailed(
                f"[reslab] {len(failed)} job(s) of the sweep failed: {', '.join(failed)} (their "
                "status.json and error.txt say why); the other jobs ran to their end"
            )
