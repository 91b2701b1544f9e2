"""The run folder's contract, all of it: what a run leaves in its folder, written so that a
reader never sees half a file, and read back by resumes, sweeps and reports.

A run folder (``outputs/runs/<date>_<name>/`` or a sweep's ``<job>_<name>/``) holds::

    .hydra/config.yaml, overrides.yaml   the resolved config and the command line's overrides
    status.json       running, finished, failed, diverged or interrupted, with the final errors
    metrics.csv       every logged value, one row per logging iteration (``step``)
    hparams.yaml      what the run was (network, depth, shortcut, dataset, parameters, config)
    checkpoints/last.ckpt   the last checkpoint
    wandb_id.txt      the wandb run's id, so a resumed run continues the same wandb run
    error.txt         the traceback of a failed sweep job
    responses.csv     Figure 7's layer responses, when measured

Nothing here imports torch, Lightning or Hydra: the report side reads run folders with it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.yaml"
WANDB_ID_FILE = "wandb_id.txt"
ERROR_FILE = "error.txt"
RESPONSES_FILE = "responses.csv"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.ckpt"
OVERRIDES_FILE = ".hydra/overrides.yaml"

STATUSES = ("finished", "running", "interrupted", "diverged", "failed")
# The final numbers status.json keeps, and reports read.
FINAL_ERRORS = ("train/error", "val/error", "test/error", "val/error_top5", "test/error_top5")


def atomic_write(path: str | Path, data: str | bytes, *, fsync: bool = False) -> None:
    """Writes ``data`` to ``path`` through ``<path>.tmp`` and a rename: a reader (or a kill)
    sees the old file or the new one, never half of one. ``fsync`` flushes it to the disk
    first (checkpoints). The folder is made when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_status(run_dir: str | Path, status: str, **fields: Any) -> None:
    """``status.json``: ``{"status": status, **fields}`` (name, iterations, final errors...)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    text = json.dumps({"status": status, **fields}, indent=2) + "\n"
    atomic_write(Path(run_dir) / STATUS_FILE, text)


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's status.json as a dict; {} when there is none yet. A ValueError naming the
    file when it is not a JSON object."""
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return {}
    try:
        status = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(status, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return status


def final_metric(status: dict[str, Any]) -> float:
    """The number a sweeper optimises: the final ``val/error``, else ``test/error``, else nan."""
    return float(status.get("val/error", status.get("test/error", float("nan"))))


def cut_metrics(run_dir: str | Path, step: int) -> int:
    """Drops the rows of metrics.csv logged after iteration ``step`` (a resumed run logs them
    again); returns how many it dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if not row.get("step") or float(row["step"]) <= step]
    atomic_write(path, _csv_text(fields, kept))
    return len(rows) - len(kept)


def _csv_text(fields: list[str], rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def job_order(folder: Path) -> tuple[str, int, str]:
    """Sort key of run folders: by parent, then a sweep's job number (``3_resnet-20A``)."""
    head = folder.name.split("_", 1)[0]
    return (str(folder.parent), int(head) if head.isdigit() else 1 << 30, folder.name)


def run_folders(path: str | Path) -> list[Path]:
    """``path`` itself when it is a run folder (it has a status.json), else every run folder
    under it, in job order; [] when there is none."""
    path = Path(path)
    if (path / STATUS_FILE).is_file():
        return [path]
    return sorted((p.parent for p in path.rglob(STATUS_FILE)), key=job_order)
