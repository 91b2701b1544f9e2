"""One training run: instantiate what the config (composed from conf/) names, fit, test;
reslab.record writes how it ended."""

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from reslab import console, run_folder
from reslab.callbacks import Diverged
from reslab.checkpoints import RunCheckpoint, first_start_path
from reslab.checks import named_setting
from reslab.config import instantiate
from reslab.provenance import provenance, trainer_device
from reslab.record import ended_early, record, record_failure, stopped_short, write_status
from reslab.resume import check_network, resume_checkpoint, run_complete

write_provenance = rank_zero_only(run_folder.write_provenance)


def train(cfg: DictConfig) -> float:
    """Trains and tests one network in the run folder ``cfg.paths.output_dir``; returns the
    sweeper's metric (:func:`reslab.record.record`). Resuming a finished run changes nothing; a
    run that could not start (its checkpoint missing or damaged) leaves the folder's status.json."""
    output_dir, started = Path(cfg.paths.output_dir), time.time()
    step, revalidated = None, False
    try:
        resume = resume_checkpoint(cfg.ckpt_path, output_dir)
        given = cfg.data.get("data_dir")  # a relative one: as the command meant it (chdir or not)
        dirs = [str(first_start_path(d)) for d in given] if OmegaConf.is_list(given) else None
        where = {"data_dir": dirs or str(first_start_path(given))} if given else {}
        datamodule = instantiate(cfg.data, **where)
        datamodule.setup("fit")  # bad data fails here, before the folder changes
        if resume is not None:  # refused here, the folder stays as it was
            checkpoint = torch.load(resume, map_location="cpu", weights_only=True, mmap=True)
            module = instantiate(cfg.module, _partial_=True)  # its class and arguments
            module.func.check_resume(checkpoint, **module.keywords)
            check_network(checkpoint, resume, cfg, datamodule)
            step = checkpoint["global_step"]
            # at its end, a run validates once more unless it did so at its last iteration
            validated_at = checkpoint["reslab"]["validated_at"]
            revalidated = step >= cfg.trainer.max_steps and validated_at != step
        own = resume == str(output_dir / run_folder.LAST_CHECKPOINT)
        done = run_complete(output_dir, cfg.trainer.max_steps) if own else None
    except BaseException as err:
        record_failure(output_dir, cfg.name, err)
        raise
    if done:  # resuming would only redo its end: the folder stays as it is (RunFolderGuard)
        rank_zero_only(print)(f"[reslab] {cfg.name}: {done}", flush=True)
        return run_folder.final_metric(run_folder.read_status(output_dir))
    write_status(output_dir, "running", name=cfg.name, pid=os.getpid(), host=socket.gethostname())
    trainer, metrics = None, {}
    try:
        prepare_folder(cfg.name, output_dir, resume, step, revalidated)
        trainer, module = build(cfg, output_dir, resume, datamodule)
        with contextlib.suppress(Diverged):  # where Lightning would validate the broken net
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        metrics = final_metrics(trainer)  # validate() and test() replace the trainer's metrics
        early, callback = ended_early(trainer), trainer.checkpoint_callback
        if isinstance(callback, RunCheckpoint) and (not early or stopped_short(trainer)):
            callback.save_final(trainer)  # the last iteration's: a finished run's, or a stopped one
        if not early:
            if datamodule.has_val and module.validated_at != trainer.global_step:
                trainer.validate(module, datamodule=datamodule, verbose=False)  # the final net
                metrics.update(final_metrics(trainer))
            trainer.test(module, datamodule=datamodule, verbose=False)
            metrics.update(final_metrics(trainer))
    except BaseException as err:
        said = named_setting(cfg, err)  # Lightning's fit-time refusal, named by the user's key
        record(cfg.name, output_dir, started, trainer, metrics, said)
        if said is err:
            raise
        raise said from err
    return record(cfg.name, output_dir, started, trainer, metrics)


def build(
    cfg: DictConfig, output_dir: Path, resume: str | None, datamodule: Any
) -> tuple[L.Trainer, Any]:
    """The run's trainer and module for ``datamodule`` (set up), its header printed, its
    provenance and hyperparameters recorded. The seed is set here, after the data is read: what
    reading it draws (a split, a cached mean) never changes what training draws."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
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
    record, diff = provenance(*trainer_device(trainer))
    write_provenance(output_dir, record, diff, resumed=resume is not None)
    hparams = {  # the top-level keys a dashboard groups and filters by, then the config
        "network": cfg.name, "family": cfg.model.family, "depth": cfg.model.depth,
        "shortcut": cfg.model.shortcut, "residual": cfg.model.shortcut != "none",
        "dataset": datamodule.name, "seed": cfg.seed, **config, "provenance": record,
        "parameters": sum(p.numel() for p in net.parameters()),
    }  # fmt: skip
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    return trainer, module


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    keep = (*run_folder.FINAL_ERRORS, "train/loss", "warmup_ended_at")
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k in keep}


@rank_zero_only
def prepare_folder(
    name: str, output_dir: Path, resume: str | None, step: int | None = None,
    revalidated: bool = False,
) -> None:  # fmt: skip
    """A resumed run cuts metrics.csv back to its checkpoint (it logs the rest again) and keeps
    its wandb run; a fresh start deletes both (a new metrics.csv, a new wandb run)."""
    if resume is None:
        for stale in (run_folder.METRICS_FILE, run_folder.WANDB_ID_FILE):
            (output_dir / stale).unlink(missing_ok=True)
        return
    dropped = run_folder.cut_metrics(output_dir, step, revalidated=revalidated)
    said = f" ({dropped} later rows of metrics.csv dropped)" if dropped else ""
    print(f"[reslab] {name}: resuming from {resume} at iteration {step}{said}", flush=True)
