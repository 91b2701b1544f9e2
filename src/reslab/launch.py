"""How a job starts: a multirun job whose DDP ranks Lightning would start by running the
command line again runs as its own ``reslab-train`` process, and ``reslab-resume RUN_FOLDER``
reruns a run folder's own command there.

Lightning's ``ddp`` strategy starts ranks 1..N-1 by running ``sys.argv`` again, adding
``hydra.run.dir`` (Lightning's ``_hydra_subprocess_cmd``). That is right for one run. In a
multirun, ``sys.argv`` is the whole sweep (``-m`` and every value), so each new rank runs the
sweep again, in step with rank 0 only while no job fails and every job has the same ranks;
the new ranks also keep their environment, and the process group stays up for the next job.
So a multirun job that would do that runs, instead, as a one-job ``reslab-train`` in RUN mode
(the job's own overrides, ``hydra.run.dir`` set to the job's folder) in a process of its own;
that process starts its ranks the way Lightning does for one run.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

# Private in Lightning, with no public way to ask "does this strategy re-run the command
# line?"; tests/test_upstream.py fails with a clear message if it moves.
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from reslab.checkpoints import run_complete, verify_checkpoint
from reslab.config import CONFIG_DIR, CONFIG_NAME, instantiate
from reslab.run_folder import (
    LAST_CHECKPOINT,
    OVERRIDES_FILE,
    FolderInUse,
    claim_new_folder,
    final_metric,
    lock,
    read_status,
    write_status,
)

# The module `python -m` runs for reslab-train.
TRAIN_MODULE = "reslab.cli"
# Hydra overrides the job's own process sets itself (the last of a key wins).
_SET_HERE = ("hydra.mode", "hydra.run.dir", "hydra.output_subdir")


class RunFolderGuard(Callback):
    """A Hydra callback (conf/train.yaml) that makes the run's folder (a sweep's folder for a
    multirun) this process's before Hydra writes anything in it: a default folder that another
    run took in the same second becomes ``<folder>_2``; a folder that a live process is
    writing (``hydra.run.dir=...`` given twice, a resume of a running run) is refused in one
    line naming that process. DDP ranks other than 0 share rank 0's folder and lock nothing.
    The lock is released when the run ends, or by the system when the process dies."""

    def __init__(self) -> None:
        self._lock: Any = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "sweep")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def _claim(self, config: DictConfig, mode: str) -> None:
        if rank_zero_only.rank != 0:
            return
        key = f"hydra.{mode}.dir"
        folder = Path(str(OmegaConf.select(config, key)))
        given = any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)
        if not given:
            new = claim_new_folder(folder)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra[mode].dir = str(new)
            folder = new
        try:
            self._lock = lock(folder)
        except FolderInUse as err:  # a SystemExit: Hydra turns callbacks' exceptions into warnings
            sys.stderr.write(f"reslab-train: error: {err}\n")
            raise SystemExit(1) from None

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def quiet_trainer(trainer_cfg: DictConfig) -> L.Trainer:
    """The Trainer ``trainer_cfg`` describes, without loggers, callbacks or its device lines:
    Lightning checks the accelerator, devices and strategy as it builds it."""
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # the real trainer prints the device lines
    try:
        return instantiate(
            trainer_cfg, logger=False, callbacks=[], enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
    finally:
        lightning_log.setLevel(level)


# The strategies reslab's tests prove: one process, or DDP whose ranks are processes of their own
# (started by Lightning re-running the command, by SLURM or by torchrun), each of which runs the
# whole fit, validation and test. Spawn-based ones (ddp_spawn, ddp_fork, ddp_notebook) run each
# stage in new processes and bring back only rank 0's results (the iteration count, the logger's
# rows and the final errors come back wrong or lost); the sharded ones (fsdp, deepspeed) are not
# tested here.
SUPPORTED_STRATEGIES = (
    "auto", "single_device", "ddp", "ddp_find_unused_parameters_false",
    "ddp_find_unused_parameters_true",
)  # fmt: skip


def supported_strategy(trainer: L.Trainer) -> bool:
    """Whether ``trainer``'s strategy is one process or DDP with ranks of their own
    (``SUPPORTED_STRATEGIES``), whatever name or object chose it."""
    strategy = trainer.strategy
    if type(strategy) is SingleDeviceStrategy:
        return True
    return type(strategy) is DDPStrategy and isinstance(
        strategy.launcher, _SubprocessScriptLauncher
    )


def reruns_command_line(trainer: L.Trainer) -> bool:
    """True when ``trainer`` would start its other DDP ranks by running the command line again
    (Lightning's ``ddp`` launched here, not by SLURM or torchrun)."""
    launcher = trainer.strategy.launcher
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally
    )


def job_command(output_dir: str | Path) -> list[str]:
    """The command that runs the current Hydra job alone, in RUN mode, in ``output_dir``: the
    job's overrides (the sweep's values included) and Hydra overrides, the same config source."""
    hydra = HydraConfig.get()
    command = [sys.executable, "-m", TRAIN_MODULE, f"--config-name={hydra.job.config_name}"]
    for source in hydra.runtime.config_sources:
        if source.provider == "command-line":
            command.append(f"--config-dir={source.path}")
        elif source.provider == "main" and Path(source.path) != Path(CONFIG_DIR):
            command.append(f"--config-path={source.path}")
    command += list(hydra.overrides.task)
    command += [o for o in hydra.overrides.hydra if o.split("=", 1)[0] not in _SET_HERE]
    return [*command, "hydra.mode=RUN", f'hydra.run.dir="{output_dir}"', "hydra.output_subdir=null"]


def run_ddp_job_alone(cfg: DictConfig) -> float | None:
    """In a multirun whose trainer would re-run the command line for its DDP ranks, run this job
    as its own ``reslab-train`` process (see the module's docstring) and return its metric as
    ``train`` does; None otherwise, and the job trains in this process."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    if not reruns_command_line(quiet_trainer(cfg.trainer)):
        return None
    output_dir = Path(cfg.paths.output_dir)
    command = job_command(output_dir)
    with subprocess.Popen(command, cwd=HydraConfig.get().runtime.cwd) as process:
        try:
            code = process.wait()
        except BaseException:
            process.terminate()  # Ctrl-C reaches both; a launcher's cancel reaches only us
            raise
    status = read_status(output_dir)
    if code != 0 or status.get("status") in (None, "running", "failed"):
        error = f"its DDP run exited with code {code}: {' '.join(command)}"
        if status.get("status") != "failed":  # killed, or failed before train() began
            write_status(output_dir, "failed", name=cfg.name, error=error)
        raise RuntimeError(f"{cfg.name}: {error}; see {output_dir}")
    return final_metric(status)


def resume_command(run_dir: str | Path, extra: list[str] | None = None) -> list[str]:
    """The ``reslab-train`` command that resumes the run in ``run_dir`` from its last
    checkpoint: the run's own overrides (from ``.hydra/overrides.yaml``), then ``extra``, in
    that folder, with ``ckpt_path=last``."""
    run_dir = Path(run_dir).expanduser().absolute()
    overrides_file = run_dir / OVERRIDES_FILE
    if not overrides_file.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a reslab run folder: it has no {OVERRIDES_FILE} (a run "
            "folder is one that reslab-train made, under outputs/runs/ or outputs/multiruns/)"
        )
    if not (run_dir / LAST_CHECKPOINT).is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {LAST_CHECKPOINT} to resume from (it stopped before its "
            "first checkpoint: callbacks.checkpoint.every_n_train_steps); start it again instead"
        )
    verify_checkpoint(run_dir / LAST_CHECKPOINT)  # damaged: said here, before Hydra writes
    return [
        sys.executable, "-m", TRAIN_MODULE, *_run_overrides(run_dir), *(extra or []),
        f'hydra.run.dir="{run_dir}"', "ckpt_path=last",
    ]  # fmt: skip


def resume_done(run_dir: str | Path, extra: list[str] | None = None) -> str | None:
    """What to say instead of resuming the finished run in ``run_dir`` when its overrides and
    ``extra`` ask for no more iterations than it trained (see
    :func:`reslab.checkpoints.run_complete`); None when there is training to do. Composes the
    config (Hydra's own settings left out) to read its ``trainer.max_steps``."""
    from hydra import compose, initialize_config_dir

    run_dir = Path(run_dir).expanduser().absolute()
    overrides = [
        o for o in [*_run_overrides(run_dir), *(extra or [])]
        if not o.lstrip("+~").startswith("hydra")
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=CONFIG_NAME, overrides=overrides)
    return run_complete(run_dir, int(cfg.trainer.max_steps))


def _run_overrides(run_dir: Path) -> list[str]:
    """The run's own overrides (``.hydra/overrides.yaml``), without the checkpoint it named."""
    overrides = yaml.safe_load((run_dir / OVERRIDES_FILE).read_text()) or []
    return [o for o in overrides if not o.startswith("ckpt_path=")]


# --- waiting for SLURM jobs ----------------------------------------------------------------------
def quiet_slurm_polling() -> None:
    """While a ``hydra/launcher=slurm`` sweep waits for its jobs, submitit asks ``sacct`` for
    their states. Where SLURM keeps no accounting (no slurmdbd: the common one-node case)
    sacct fails on every poll, printing its error and three copies of submitit's "Bypassing
    sacct error ..., status may be inaccurate" warning, and the states stay unknown. From the
    first such failure on, reslab's watcher asks ``squeue`` instead, quietly: the same states
    while a job is queued, running or just ended (``MinJobAge``, 300 s by default), and a job
    gone from the queue is done (its result, or submitit's error naming its logs).

    Private in submitit: the class attribute ``SlurmJob.watcher`` and the watcher's
    ``_delay_s`` and ``_registered`` (tests/test_upstream.py)."""
    if not isinstance(SlurmJob.watcher, _SqueueWhenNoAccounting):
        SlurmJob.watcher = _SqueueWhenNoAccounting(delay_s=SlurmJob.watcher._delay_s)


class _SqueueWhenNoAccounting(SlurmInfoWatcher):
    GONE = "NOT_IN_QUEUE"  # not an incomplete state for submitit: the job is done

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s=delay_s)
        self.squeue = False
        self.probed = False  # sacct tried once

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None or not self.squeue:
            return command
        return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N", "--me"]

    def update(self) -> None:
        if not self.probed:
            command = self._make_command()
            if command is None:
                return
            probe = subprocess.run(command, capture_output=True)
            self.probed, self.squeue = True, probe.returncode != 0
            if self.squeue:
                logging.getLogger(__name__).debug(
                    "sacct failed (%s): asking squeue",
                    probe.stderr.decode(errors="replace").strip(),
                )
        super().update()

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if not self.squeue:
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info("JobID|State|NodeList\n" + text)
        for job_id in self._registered:
            info.setdefault(job_id, {"JobID": job_id, "State": self.GONE, "NodeList": ""})
        return info
