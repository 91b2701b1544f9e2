"""A run's outcome in its folder, for every way a run ends (finished, diverged, stopped by a
signal, failed): status.json, the wandb summary and the result line. The folder's files belong
to rank 0: DDP's other ranks run train() too, after rank 0 has opened its loggers."""

import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from reslab import run_folder
from reslab.callbacks import DivergenceGuard
from reslab.loggers import log_final_summary
from reslab.run_lock import RunFolderGuard
from reslab.signals import RunInterrupted, StopOnSignal


@rank_zero_only
def write_status(run_dir: Path, status: str, **fields: Any) -> None:
    """:func:`reslab.run_folder.write_status` by rank 0, with the SLURM job it runs in
    (``slurm_job``, ``<array job>_<task>`` in an array) for reslab.slurm.say_how_slurm_ended."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    run_folder.write_status(run_dir, status, **{**fields, **({"slurm_job": job} if job else {})})


# A diverged run's errors are no result: null (what was measured before stays in metrics.csv).
_BROKEN = ("train/loss", "train/error", "val/error", "test/error")


def record(
    name: str, output_dir: Path, started: float, trainer: L.Trainer | None,
    metrics: dict[str, float], error: BaseException | None = None,
) -> float:  # fmt: skip
    """Records how the run ended; returns the sweeper's metric (:func:`run_folder.final_metric`;
    nan for a diverged, stopped or failed run). A run stopped by a signal is recorded
    ``interrupted`` (``preempted`` in a SLURM job) and raises :class:`RunInterrupted`; for a
    failed one (``error``) the caller raises the error on."""
    seconds = round(time.time() - started, 1)
    stopper = _callback(trainer, StopOnSignal)
    signum = error.signum if isinstance(error, RunInterrupted) else None  # interrupt_now's
    if isinstance(error, KeyboardInterrupt | SIGTERMException):
        signum = signal.SIGINT if isinstance(error, KeyboardInterrupt) else signal.SIGTERM
    if stopper is not None and (error is not None or stopper.stopped_at is not None):
        signum = stopper.signum or signum  # the first signal, which the stop obeyed
    if signum is not None:
        _record_stop(name, output_dir, signum, stopper, seconds)
    if error is not None:  # train() passes no trainer only with the error that stopped it
        record_failure(output_dir, name, error, started=True)
        _finish_wandb(exit_code=1)
        return math.nan
    step, diverged, budget = trainer.global_step, _diverged_at(trainer), out_of_time(trainer)
    if stopped_short(trainer):  # no result: not trained to its end
        final = {"status": "stopped", "stopped_at": step, "iterations": step, "seconds": seconds,
                 **({"max_time_s": round(budget, 1)} if budget else {}), **metrics}  # fmt: skip
        why = (f"its time budget, trainer.max_time ({budget:.0f} s), is spent; continue it with a "
               "new one" if budget else "the training loop ended before optim.max_steps="
               f"{trainer.max_steps} (a callback stopped it); continue it")  # fmt: skip
        said = f"stopped at iteration {step} (checkpoint there): {why}: {_resume(output_dir)}"
    else:
        status = "finished"
        if diverged is not None or any(not math.isfinite(v) for v in metrics.values()):
            status = "diverged"
            broken = [*_BROKEN, *(k for k in run_folder.FINAL_ERRORS if k in metrics)]
            metrics = {**metrics, **dict.fromkeys(broken)}
        final = {"status": status, "iterations": step, "seconds": seconds, **metrics}
        best, at = trainer.lightning_module.best_val_error, trainer.lightning_module.best_val_step
        # the final error is the paper's; the best, for reference, if measured before divergence
        if best is not None and (diverged is None or at < diverged):
            final |= {"val/error_best": best, "val/error_best_at": at}
        if diverged is not None:
            final["diverged_at"] = diverged
        errors = [f"{k} {v:.2f}%" for k, v in metrics.items() if "error" in k and v is not None]
        said = f"{step} iterations, {', '.join(errors) or 'no final errors (diverged)'}"
        said += f" ({seconds:.0f} s)"
    write_status(output_dir, name=name, **final)
    log_final_summary(trainer.loggers, {"network": name, **final}, step)
    _say(f"[reslab] {name}: {said}")
    _finish_wandb(exit_code=0)
    return run_folder.final_metric(metrics) if final["status"] == "finished" else math.nan


def _record_stop(
    name: str, output_dir: Path, signum: int, stopper: StopOnSignal | None, seconds: float
) -> NoReturn:
    """Records a stop by ``signum``, then passes the signal on (submitit's requeues the job)."""
    step = getattr(stopper, "stopped_at", None)
    status = "preempted" if os.environ.get("SLURM_JOB_ID") else "interrupted"
    fields: dict[str, Any] = {"name": name, "seconds": seconds}
    if step is None:
        fields["error"] = (f"stopped at once by {signal.Signals(signum).name} (a second signal, "
                           "or outside the training loop), without a checkpoint there")  # fmt: skip
    else:
        fields |= {"interrupted_at": step, "iterations": step}
    write_status(output_dir, status, **fields)
    _finish_wandb(exit_code=RunInterrupted(signum, step).exit_code)
    where = f"checkpoint at iteration {step}" if step is not None else "its last checkpoint"
    _say(f"[reslab] {name}: {status} ({where}); continue it: {_resume(output_dir)}")
    try:
        if stopper is not None:
            stopper.pass_on()
    except Exception as err:  # it did not requeue (its requeues used up): stopped for good
        write_status(output_dir, status, **fields, not_requeued=str(err))
        _say(f"[reslab] {name}: not requeued ({err}); continue it: {_resume(output_dir)}")
        raise
    raise RunInterrupted(signum, step) from None


@rank_zero_only
def record_failure(
    output_dir: Path, name: str | None, err: BaseException, *, started: bool = False
) -> None:
    """status.json ``failed`` with ``err``. A run that did not start leaves a folder's status.json
    as it is (the rest is put back by reslab.run_lock.RunFolderGuard, from here for a signal:
    Hydra calls no callback then); a started one keeps a failure it recorded (a DDP job's)."""
    status = run_folder.read_status(output_dir).get("status")
    if status is None and isinstance(err, RunInterrupted | KeyboardInterrupt):
        write_status(output_dir, "interrupted", name=name, interrupted_at=None,
                     error="stopped by a signal before training started")  # fmt: skip
    elif status is None or (started and status != "failed"):
        error = f"{type(err).__name__}: {err}"
        write_status(output_dir, "failed", name=name, error=error)
    if not isinstance(err, Exception):
        RunFolderGuard.put_back()


def _resume(output_dir: Path) -> str:
    """The command that continues the run in ``output_dir`` (shell-quoted: paste it)."""
    return f"reslab-resume {shlex.quote(str(output_dir))}"


def out_of_time(trainer: L.Trainer) -> float | None:
    """The ``trainer.max_time`` budget (s) that stopped training before ``max_steps``, if any."""
    timer = _callback(trainer, Timer)
    remaining = None if timer is None else timer.time_remaining("train")
    if remaining is None or remaining > 0 or 0 < trainer.max_steps <= trainer.global_step:
        return None
    return timer.time_elapsed("train") + remaining


def stopped_short(trainer: L.Trainer) -> bool:
    """Ended short of ``max_steps`` (out of time, or a callback's ``should_stop``), not diverged:
    no result, and a checkpoint to continue from."""
    short = trainer.max_steps > 0 and trainer.global_step < trainer.max_steps
    return short and _diverged_at(trainer) is None


def ended_early(trainer: L.Trainer) -> bool:
    """Stopped by a signal, diverged or :func:`stopped_short`: no final validation or test."""
    stopped = getattr(_callback(trainer, StopOnSignal), "stopped_at", None) is not None
    return stopped or _diverged_at(trainer) is not None or stopped_short(trainer)


def _diverged_at(trainer: L.Trainer) -> int | None:
    return getattr(_callback(trainer, DivergenceGuard), "diverged_at", None)


def _callback(trainer: L.Trainer | None, kind: type) -> Any:
    return next((c for c in (trainer.callbacks if trainer else []) if isinstance(c, kind)), None)


@rank_zero_only
def _say(text: str) -> None:
    print(text, flush=True)


def _finish_wandb(exit_code: int) -> None:
    """Closes the wandb run (failed on a non-zero exit code): each job of a multirun has its own."""
    wandb = sys.modules.get("wandb")  # imported only where a logger uses it
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)
