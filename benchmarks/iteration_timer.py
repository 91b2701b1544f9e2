r"""A callback that records when each training batch ends, for timing a run of reslab-train
from outside (``benchmarks/overhead.py``)::

    PYTHONPATH=benchmarks reslab-train ... \
        +callbacks.timer._target_=iteration_timer.IterationTimer \
        +callbacks.timer.path=marks.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class IterationTimer(L.Callback):
    """Writes ``[[time, global_step], ...]`` (``time.perf_counter()`` at the start of training
    and at every training-batch end) to ``path`` as JSON when training ends. The global step
    counts optimizer iterations, so it advances by ``fused_iterations`` per batch end."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.marks: list[tuple[float, int]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks.append((time.perf_counter(), trainer.global_step))

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.marks.append((time.perf_counter(), trainer.global_step))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Path(self.path).write_text(json.dumps(self.marks))


def per_iteration(marks: list[tuple[float, int]], warmup: int) -> tuple[float, int]:
    """(seconds per iteration, iterations) from the first mark at ``warmup`` iterations or more
    to the last one."""
    start = next((t, s) for t, s in marks if s >= warmup)
    end = marks[-1]
    return (end[0] - start[0]) / (end[1] - start[1]), end[1] - start[1]
