"""Callbacks for tests/test_resume.py and tests/test_signals.py, loaded by ``reslab-train
+callbacks.kill._target_=sigkill.SigkillAt`` with this folder on PYTHONPATH: SigkillAt kills
the process with SIGKILL (no cleanup, no exception handler, no atexit) at the end of a given
iteration; PauseAt holds it there while a test sends it signals; MeetInSetup holds each job of a
sweep until the others have started too."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L


class SigkillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAt(L.Callback):
    """Waits at the end of iteration ``step`` while the file ``file`` exists (it writes it):
    a test sends its signals meanwhile, then removes the file. A signal sent here is seen
    by reslab's StopOnSignal at the end of the next iteration (this callback runs after it)."""

    def __init__(self, step: int, file: str) -> None:
        self.step, self.file = step, file

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step != self.step:
            return
        Path(self.file).write_text(f"{os.getpid()}\n")
        deadline = time.monotonic() + 120
        while Path(self.file).exists() and time.monotonic() < deadline:
            time.sleep(0.02)


class PauseInSetup(L.Callback):
    """Waits in ``setup``, before training starts (StopOnSignal's handlers not yet in place),
    while the file ``file`` exists (it writes it)."""

    def __init__(self, file: str) -> None:
        self.file = file

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        Path(self.file).write_text(f"{os.getpid()}\n")
        deadline = time.monotonic() + 120
        while Path(self.file).exists() and time.monotonic() < deadline:
            time.sleep(0.02)


class MeetInSetup(L.Callback):
    """Each of ``jobs`` jobs waits in ``setup`` until all have reached it (a file each in
    ``folder``); a job that waits 120 s for the others raises: they did not run at once."""

    def __init__(self, folder: str, jobs: int) -> None:
        self.folder, self.jobs = Path(folder), jobs

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(self.folder.iterdir())) < self.jobs:
            if time.monotonic() > deadline:
                said = f"the other jobs did not start while this one ran ({self.folder})"
                raise RuntimeError(said)
            time.sleep(0.05)
