"""One training run: instantiate what the config names, fit, test, record the result.

    from reslab.train import train
    train(cfg)   # cfg composed from conf/ (reslab-train does it: see reslab.cli)
"""

from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from reslab import console, run_folder
from reslab.callbacks import DivergenceGuard
from reslab.checkpoints import (
    RunCheckpoint,
    RunInterrupted,
    StopOnSignal,
    checkpoint_step,
    resume_checkpoint,
    run_complete,
    stop_status,
)
from reslab.config import instantiate
from reslab.loggers import log_final_summary
from reslab.provenance import provenance, trainer_device

# The run folder's files belong to rank 0: DDP's other ranks run train() too (Lightning starts
# them with the same command line), after rank 0 has opened its loggers.
write_status = rank_zero_only(run_folder.write_status)
write_provenance = rank_zero_only(run_folder.write_provenance)


def run_summary(cfg: DictConfig, dataset: str) -> dict[str, Any]:
    """Top-level keys a dashboard groups and filters by."""
    return {
        "network": cfg.name,
        "family": cfg.model.family,
        "depth": cfg.model.depth,
        "shortcut": cfg.model.shortcut,
        "residual": cfg.model.shortcut != "none",
        "dataset": dataset,
        "seed": cfg.seed,
    }


def _final_metrics(trainer: L.Trainer) -> dict[str, float]:
    keep = (*run_folder.FINAL_ERRORS, "train/loss", "warmup_ended_at")
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k in keep}


def train(cfg: DictConfig) -> float:
    """Train and test one network as ``cfg`` describes, in the run folder
    ``cfg.paths.output_dir``; returns the final ``val/error`` (or ``test/error`` when there is
    no validation split; nan when the run diverged) for Hydra's sweepers. Resuming a finished
    run with no more iterations to train changes nothing and returns its metric. On an
    exception the folder's status.json says failed, the wandb run is closed as failed, and the
    exception goes on; a run that could not start (its checkpoint missing or damaged) leaves
    the status.json a folder already had."""
    output_dir = Path(cfg.paths.output_dir)
    own_last = str(output_dir / run_folder.LAST_CHECKPOINT)
    started = time.time()
    try:
        resume = resume_checkpoint(cfg.ckpt_path, output_dir)
        done = run_complete(output_dir, cfg.trainer.max_steps) if resume == own_last else None
    except BaseException as err:
        record_failed_start(output_dir, cfg.name, err)
        raise
    if done:  # resuming would only redo its end: the folder stays as it is
        _say(f"[reslab] {cfg.name}: {done}")
        return run_folder.final_metric(run_folder.read_status(output_dir))
    write_status(output_dir, "running", name=cfg.name)
    stopper = None
    try:
        prepare_folder(cfg.name, output_dir, resume)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")  # bad data fails here, before any logger opens a run
        net = instantiate(
            cfg.model, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels
        )
        module = instantiate(cfg.module, net=net)
        loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
        callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
        trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks)
        console.print_header(cfg.name, net, datamodule, trainer, output_dir)

        config = OmegaConf.to_container(cfg, resolve=True)
        config.pop("hydra", None)  # present only when composed by hand (tests)
        hparams = {**run_summary(cfg, datamodule.name), **config}
        hparams["parameters"] = sum(p.numel() for p in net.parameters())
        record, diff = provenance(*trainer_device(trainer))
        write_provenance(output_dir, record, diff, resumed=resume is not None)
        hparams["provenance"] = record  # the wandb config too
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)

        stopper = next((c for c in trainer.callbacks if isinstance(c, StopOnSignal)), None)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        if stopper is not None and stopper.stopped_at is not None:  # at the last iteration
            raise RunInterrupted(stopper.signum, stopper.stopped_at)
        metrics = _final_metrics(trainer)  # validate() and test() replace the trainer's metrics
        diverged = next(
            (c.diverged_at for c in trainer.callbacks if isinstance(c, DivergenceGuard)), None
        )
        if not trainer.interrupted and diverged is None:
            if isinstance(trainer.checkpoint_callback, RunCheckpoint):
                trainer.checkpoint_callback.save_final(trainer)
            if datamodule.has_val and module.validated_at != trainer.global_step:
                trainer.validate(module, datamodule=datamodule, verbose=False)  # the final net
                metrics.update(_final_metrics(trainer))
            trainer.test(module, datamodule=datamodule, verbose=False)
            metrics.update(_final_metrics(trainer))
        status = "interrupted" if trainer.interrupted else "finished"
        if diverged is not None or any(not math.isfinite(v) for v in metrics.values()):
            status = "diverged"
        best = {}
        # the final error is the paper's; the best one for reference, if measured before any
        # divergence (the network is broken from there on)
        if module.best_val_error is not None and (
            diverged is None or module.best_val_step < diverged
        ):
            best = {
                "val/error_best": module.best_val_error,
                "val/error_best_at": module.best_val_step,
            }
        if diverged is not None:
            best["diverged_at"] = diverged
        if status == "diverged":  # a broken network's errors are no result: null (what was
            # measured before the divergence stays in metrics.csv at its iteration)
            broken = ["train/loss", "train/error", "val/error", "test/error"]
            broken += [k for k in run_folder.FINAL_ERRORS if k in metrics and k not in broken]
            metrics |= dict.fromkeys(broken)
        final = {
            "status": status, "iterations": trainer.global_step,
            "seconds": round(time.time() - started, 1), **metrics, **best,
        }  # fmt: skip
        write_status(output_dir, name=cfg.name, **final)
        log_final_summary(trainer.loggers, {"network": cfg.name, **final}, trainer.global_step)
        for logger in trainer.loggers:
            logger.save()
        _print_result(cfg.name, trainer.global_step, metrics, time.time() - started)
    except BaseException as err:
        signum = stopper.signum if stopper is not None else None
        if signum is None and isinstance(err, KeyboardInterrupt | SIGTERMException):
            signum = signal.SIGINT if isinstance(err, KeyboardInterrupt) else signal.SIGTERM
        if signum is not None:  # SIGINT, SIGTERM (outside training: at the last checkpoint)
            step = stopper.stopped_at if stopper is not None else None
            record_stop(cfg.name, output_dir, signum, step, time.time() - started)
            if stopper is not None:
                stopper.pass_on()  # submitit's handler: it requeues the job
            raise RunInterrupted(signum, step) from None
        write_status(output_dir, "failed", name=cfg.name, error=f"{type(err).__name__}: {err}")
        _finish_wandb(exit_code=1)
        raise
    _finish_wandb(exit_code=0)
    if status == "diverged":
        return float("nan")  # no error rate to compare: the sweep's table says diverged
    return run_folder.final_metric(metrics)


def record_stop(name: str, output_dir: Path, signum: int, step: int | None, seconds: float) -> None:
    """A run stopped by a signal: status.json ``interrupted`` (``preempted`` under SLURM) at
    the iteration of its checkpoint (``interrupted_at``; without one, stopped at once by a
    second signal or outside the training loop), and the resume command said."""
    fields: dict[str, Any] = {"interrupted_at": step, "iterations": step}
    if step is None:
        fields = {"error": f"stopped at once by {signal.Signals(signum).name} (a second signal, "
                  "or outside the training loop), without a checkpoint there"}  # fmt: skip
    write_status(output_dir, stop_status(), name=name, seconds=round(seconds, 1), **fields)
    _finish_wandb(exit_code=RunInterrupted(signum, step).exit_code)
    where = f"checkpoint at iteration {step}" if step is not None else "its last checkpoint"
    _say(f"[reslab] {name}: {stop_status()} ({where}); continue it: reslab-resume {output_dir}")


@rank_zero_only
def record_failed_start(output_dir: Path, name: str | None, err: BaseException) -> None:
    """A run that failed before it started: a new folder says failed; a folder that already
    says something (a finished or interrupted run that a resume could not continue) keeps it."""
    if not (output_dir / run_folder.STATUS_FILE).exists():
        error = f"{type(err).__name__}: {err}"
        run_folder.write_status(output_dir, "failed", name=name, error=error)


@rank_zero_only
def _say(text: str) -> None:
    print(text, flush=True)


@rank_zero_only
def prepare_folder(name: str, output_dir: Path, resume: str | None) -> None:
    """A resumed run cuts metrics.csv back to its checkpoint (it logs the rest again) and keeps
    its wandb run; a fresh start in a folder that has them begins a new metrics.csv and a new
    wandb run."""
    if resume is None:
        for stale in (run_folder.METRICS_FILE, run_folder.WANDB_ID_FILE):
            (output_dir / stale).unlink(missing_ok=True)
        return
    step = checkpoint_step(resume)
    dropped = run_folder.cut_metrics(output_dir, step)
    print(
        f"[reslab] {name}: resuming from {resume} at iteration {step}"
        + (f" ({dropped} later rows of metrics.csv dropped)" if dropped else ""),
        flush=True,
    )


@rank_zero_only
def _print_result(
    name: str, iterations: int, metrics: dict[str, float | None], seconds: float
) -> None:
    parts = [f"{k} {v:.2f}%" for k, v in metrics.items() if "error" in k and v is not None]
    said = ", ".join(parts) or "no final errors (diverged)"
    print(f"[reslab] {name}: {iterations} iterations, {said} ({seconds:.0f} s)")


def _finish_wandb(exit_code: int) -> None:
    """Close the wandb run (marked failed on a non-zero exit code) so that each job of a
    multirun gets a run of its own."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
