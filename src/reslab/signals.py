"""Stopping on a signal: Ctrl-C, SIGTERM (and SIGUSR2 in a SLURM job) stop training at a whole
iteration with a checkpoint there, so the resumed run repeats nothing and skips nothing."""

import os
import signal
import sys
import threading
from typing import Any

import lightning as L

from reslab.checkpoints import RunCheckpoint, commit_checkpoint
from reslab.module import logging_iteration


class RunInterrupted(BaseException):
    """A run stopped by a signal after its checkpoint at iteration ``step`` (None: at once, by a
    second signal). A BaseException, so it stops a sweep too; ``exit_code`` is the shell's
    (130 for SIGINT, 143 for SIGTERM and SIGUSR2)."""

    def __init__(self, signum: int, step: int | None) -> None:
        self.signum, self.step = signum, step
        self.exit_code = 128 + (signal.SIGTERM if signum == signal.SIGUSR2 else signum)
        super().__init__(f"{signal.Signals(signum).name} at iteration {step}")


def interrupt_now(signum: int, frame: Any) -> None:
    """reslab-train's SIGTERM and SIGINT handler outside :class:`StopOnSignal`'s training loop:
    stop at once, so that the run and the sweep still say how they ended."""
    raise RunInterrupted(signum, None)


class StopOnSignal(L.Callback):
    """On SIGINT or SIGTERM (and, in a SLURM job, SIGUSR2: submitit's warning before the time
    limit), the training step in progress (its K iterations) finishes, ``last.ckpt`` is saved at
    it, its logging and a validation due at it run, and training stops before the next one with
    :class:`RunInterrupted`. A second Ctrl-C stops at once; a scheduler's further signals change
    nothing. Under DDP the ranks agree at logging iterations. Its handlers replace Lightning's
    (which would stop without a checkpoint) while ``fit`` trains; Lightning's teardown restores
    those before fit, which ``setup`` records."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped_at: int | None = None
        self._before: dict[int, Any] = {}  # the handlers before fit

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            slurm = [signal.SIGUSR2] if os.environ.get("SLURM_JOB_ID") else []
            self._before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, *slurm)}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # handlers live there
            for signum in self._before:
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the user wants out now
                raise KeyboardInterrupt
            return  # a scheduler's second word (SIGTERM, then USR2): the stop is under way
        self.signum = signum
        print(f"\n[reslab] {signal.Signals(signum).name}: saving a checkpoint at the end of "
              "this iteration, then stopping (again to stop at once)", file=sys.stderr,
              flush=True)  # fmt: skip

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.stopped_at is not None:
            return
        step = trainer.global_step
        if trainer.world_size > 1:  # every rank must stop at the same iteration
            if not logging_iteration(trainer, step):
                return
            if not trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
                return
            self.signum = self.signum or signal.SIGTERM  # a rank that got none
        elif self.signum is None:
            return
        if isinstance(trainer.checkpoint_callback, RunCheckpoint):
            trainer.checkpoint_callback.save_final(trainer)
        self.stopped_at = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.stopped_at is not None:  # the stopped iteration is logged and validated
            commit_checkpoint(trainer)  # (before the checkpoint callback's turn)
            raise RunInterrupted(self.signum or signal.SIGTERM, self.stopped_at)

    def pass_on(self) -> None:
        """Once the run is recorded, calls the handler there before fit for the signal received
        (submitit's: it requeues the job and exits), unless it is Python's own Ctrl-C or none."""
        handler = self._before.get(self.signum)
        if callable(handler) and handler not in (signal.default_int_handler, interrupt_now):
            handler(self.signum, None)
