"""Nothing lost: checkpoint files written atomically, and a run folder that resumes where its
last checkpoint stands (train.py), with its metrics.csv cut back to that iteration.

A checkpoint is written to ``<name>.tmp`` beside its final path, flushed to disk, and renamed
over the old file; a kill at any moment leaves the previous checkpoint whole (rename is atomic
on POSIX file systems). The Classifier's part of the checkpoint holds the random number
generators and the data order is a function of the iteration (``BatchLoader``), so training
from a checkpoint at iteration k repeats, number for number, what the interrupted run did
after k.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

METRICS_FILE = "metrics.csv"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic for local files: temporary file, fsync,
    rename. Other file systems (fsspec URLs) are written as Lightning writes them."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options!r}"
            )
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path)
            return
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # fails here, before any file is touched, if it must
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def checkpoint_step(path: str | Path) -> int:
    """The iteration a checkpoint was saved at (it is loaded on the CPU, weights only)."""
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def cut_metrics(run_dir: Path, step: int) -> int:
    """Drops the rows of ``run_dir/metrics.csv`` logged after iteration ``step`` (the resumed
    run logs them again); returns how many it dropped. Written to a temporary file and
    renamed."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if not row.get("step") or float(row["step"]) <= step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, path)
    return len(rows) - len(kept)
