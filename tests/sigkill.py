"""A callback for tests/test_resume.py, loaded by ``reslab-train +callbacks.kill._target_=
sigkill.SigkillAt`` with this folder on PYTHONPATH: the process kills itself with SIGKILL (no
cleanup, no exception handler, no atexit) at the end of a given iteration."""

from __future__ import annotations

import os
import signal

import lightning as L


class SigkillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
