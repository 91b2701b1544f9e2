"""The Hydra entry point: compose the config, instantiate everything, fit, test, return the metric.

reslab-train model.depth=56 shortcut=none          # plain-56 on CIFAR-10
reslab-train -m model.depth=20,56 shortcut=none,A  # a sweep, one run folder per job
reslab-train experiment=demo                       # plain vs residual on Fashion-MNIST
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate as _instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from reslab import console  # reslab.console: what a run prints
from reslab.callbacks import DivergenceGuard
from reslab.checkpoints import METRICS_FILE, checkpoint_step, cut_metrics
from reslab.errors import check_ckpt_path, check_run, explain, run_cli
from reslab.launch import requeued_ckpt_path, run_ddp_job_alone
from reslab.loggers import WANDB_ID_FILE, log_final_summary
from reslab.networks import network_name, parse_network_name


def _net_field(spec: str, field: str) -> Any:
    return parse_network_name(spec)[field]


def paper_warmup_lr(depth: int, min_depth: int | None, lr: float | None) -> float | None:
    """The warm-up lr for a net of ``depth``: ``lr`` from ``min_depth`` layers on (the paper
    warms up its 110- and 1202-layer nets), None otherwise."""
    if lr is None or min_depth is None or depth < min_depth:
        return None
    return lr


OmegaConf.register_new_resolver("network_name", network_name, replace=True)
OmegaConf.register_new_resolver("net", _net_field, replace=True)
OmegaConf.register_new_resolver("paper_warmup_lr", paper_warmup_lr, replace=True)

_REPO_CONF = Path(__file__).resolve().parents[2] / "conf"
CONFIG_DIR = str(_REPO_CONF if _REPO_CONF.is_dir() else Path(__file__).with_name("conf"))
STATUS_FILE = "status.json"


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising our own bad-input errors (ValueError,
    FileNotFoundError) as they are instead of wrapped, so a user reads one clear message."""
    try:
        return _instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
            raise err.__cause__ from None
        raise


@rank_zero_only
def write_status(output_dir: Path, status: str, **fields: Any) -> None:
    """``status.json`` in the run folder: running, finished or failed, and the final metrics.
    Written to a temporary file and renamed, so a reader never sees half of it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps({"status": status, **fields}, indent=2) + "\n")
    tmp.replace(output_dir / STATUS_FILE)


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
    keep = (
        "train/loss", "train/error", "val/error", "test/error", "val/error_top5",
        "test/error_top5", "warmup_ended_at",
    )  # fmt: skip
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k in keep}


def train(cfg: DictConfig) -> float:
    """Train and test one network as ``cfg`` describes; returns the final ``val/error`` (or
    ``test/error`` when there is no validation split) for Hydra's sweepers."""
    console.quiet_third_party()  # reslab.console: no library chatter
    if (metric := run_ddp_job_alone(cfg)) is not None:  # multirun + DDP: see reslab.launch
        return metric
    output_dir = Path(cfg.paths.output_dir)
    started = time.time()
    # The run folder always holds .hydra/ when the CSV logger starts: nothing to warn about.
    warnings.filterwarnings(
        "ignore", message=r"Experiment logs directory .* exists and is not empty"
    )
    write_status(output_dir, "running", name=cfg.name)
    try:
        resume = resume_from(cfg, output_dir)
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
        console.print_header(cfg.name, net, datamodule, trainer, output_dir)  # reslab.console

        config = OmegaConf.to_container(cfg, resolve=True)
        config.pop("hydra", None)  # present only when composed by hand (tests)
        hparams = {**run_summary(cfg, datamodule.name), **config}
        hparams["parameters"] = sum(p.numel() for p in net.parameters())
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)

        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        metrics = _final_metrics(trainer)  # validate() and test() replace the trainer's metrics
        diverged = next(
            (c.diverged_at for c in trainer.callbacks if isinstance(c, DivergenceGuard)), None
        )
        if not trainer.interrupted and diverged is None:
            _checkpoint_the_end(trainer)
            if datamodule.has_val and module.validated_at != trainer.global_step:
                trainer.validate(module, datamodule=datamodule, verbose=False)  # the final net
                metrics.update(_final_metrics(trainer))
            trainer.test(module, datamodule=datamodule, verbose=False)
            metrics.update(_final_metrics(trainer))
        status = "interrupted" if trainer.interrupted else "finished"
        if diverged is not None or any(not math.isfinite(v) for v in metrics.values()):
            status = "diverged"
        best = {}
        if module.best_val_error is not None:  # the final error is the paper's; best for reference
            best = {
                "val/error_best": module.best_val_error,
                "val/error_best_at": module.best_val_step,
            }
        if diverged is not None:
            best["diverged_at"] = diverged
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
        write_status(output_dir, "failed", name=cfg.name, error=f"{type(err).__name__}: {err}")
        _finish_wandb(exit_code=1)
        raise
    _finish_wandb(exit_code=0)
    if status == "diverged":
        return float("nan")  # no error rate to compare: the sweep's table says diverged
    return metrics.get("val/error", metrics.get("test/error", float("nan")))


def _checkpoint_the_end(trainer: L.Trainer) -> None:
    """Saves ``last.ckpt`` at the final iteration when the checkpoint interval did not end
    there, so the run folder holds the final network and a resumed (extended) run starts
    from the end, not from the last interval."""
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or not callback.save_last or not callback.dirpath:
        return
    last = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    if trainer.global_step > 0 and callback._last_global_step_saved != trainer.global_step:
        trainer.save_checkpoint(last)


def resume_from(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint this run continues from, or None for a fresh start.

    ``ckpt_path=last`` (given, or set by a SLURM requeue) is the run folder's own
    ``checkpoints/last.ckpt``; a requeued job that has none yet starts afresh. Resuming cuts
    metrics.csv back to the checkpoint's iteration (the resumed run logs the rest again); a
    fresh start in a folder that has one begins a new metrics.csv and a new wandb run.
    """
    ckpt = requeued_ckpt_path(cfg)
    if ckpt == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            ckpt = str(last)
        elif cfg.ckpt_path == "last":
            raise FileNotFoundError(
                f"ckpt_path=last: the run folder {output_dir} has no checkpoints/last.ckpt to "
                "resume from; set hydra.run.dir to the folder of the run to resume (or use "
                "reslab-resume RUN_FOLDER), or name a checkpoint file"
            )
        else:
            ckpt = None  # requeued before its first checkpoint
    if ckpt is None:
        _start_afresh(output_dir)
        return None
    check_ckpt_path(ckpt)  # an existing file that holds nothing unsafe
    _cut_back(cfg.name, output_dir, ckpt)
    return str(ckpt)


# The run folder's files belong to rank 0: DDP's other ranks run train() too (Lightning starts
# them with the same command line), after rank 0 has opened its loggers.
@rank_zero_only
def _start_afresh(output_dir: Path) -> None:
    for stale in (METRICS_FILE, WANDB_ID_FILE):
        (output_dir / stale).unlink(missing_ok=True)


@rank_zero_only
def _cut_back(name: str, output_dir: Path, ckpt: str) -> None:
    step = checkpoint_step(ckpt)
    dropped = cut_metrics(output_dir, step)
    print(
        f"[reslab] {name}: resuming from {ckpt} at iteration {step}"
        + (f" ({dropped} later rows of metrics.csv dropped)" if dropped else ""),
        flush=True,
    )


@rank_zero_only
def _print_result(name: str, iterations: int, metrics: dict[str, float], seconds: float) -> None:
    parts = [f"{k} {v:.2f}%" for k, v in metrics.items() if "error" in k]
    print(f"[reslab] {name}: {iterations} iterations, {', '.join(parts)} ({seconds:.0f} s)")


def _finish_wandb(exit_code: int) -> None:
    """Close the wandb run (marked failed on a non-zero exit code) so that each job of a
    multirun gets a run of its own."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


def run_job(cfg: DictConfig) -> float:
    """``train(cfg)`` after the checks of :func:`reslab.errors.check_run`, so that bad input
    fails before any data loads; a failed check marks the run folder failed as train() does."""
    try:
        check_run(cfg)
    except BaseException as err:
        write_status(
            Path(cfg.paths.output_dir), "failed", name=_run_name(cfg),
            error=f"{type(err).__name__}: {err}",
        )  # fmt: skip
        raise
    return train(cfg)


def _run_name(cfg: DictConfig) -> str | None:
    try:
        return str(cfg.name)
    except Exception:  # a name that does not resolve (bad model values): the folder says
        return None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """The Hydra task: one job of ``reslab-train``."""
    if HydraConfig.get().mode != RunMode.MULTIRUN or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return run_job(cfg)
    # In a sweep, one failed job must not stop the others (Hydra's sweeper would raise as soon
    # as its batch is done): the run folder says failed, the traceback goes beside it, and the
    # sweep's summary names the failures at the end and exits non-zero.
    try:
        return run_job(cfg)
    except Exception as err:
        trace = Path(cfg.paths.output_dir) / "error.txt"
        trace.write_text(traceback.format_exc())
        why = f"{type(err).__name__}: {explain(err) or err}"
        print(f"[reslab] {_run_name(cfg)}: failed: {why} (traceback: {trace})")
        return float("nan")


def main() -> None:
    """``reslab-train``: Hydra's command line around :func:`hydra_main`. Bad input prints
    ``reslab-train: error: <what is wrong and the valid choices>`` and exits with status 1,
    without a traceback (``HYDRA_FULL_ERROR=1`` shows it); see :mod:`reslab.errors`."""
    run_cli(hydra_main)


if __name__ == "__main__":
    main()
