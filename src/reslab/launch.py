"""Which strategies a run may use, and how a multirun job with DDP ranks starts: Lightning's
``ddp`` starts ranks 1..N-1 by running ``sys.argv`` again, which in a multirun is the whole
sweep; such a job runs instead as a one-job ``reslab-train`` in a process of its own."""

import logging
import subprocess
import sys
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

# Private in Lightning, with no public way to ask "does this strategy re-run the command
# line?"; tests/test_upstream.py fails with a clear message if it moves.
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import DictConfig

from reslab.config import CONFIG_DIR, instantiate
from reslab.record import record_failure
from reslab.resume import TRAIN_MODULE
from reslab.run_folder import final_metric, read_status

# Hydra overrides the job's own process sets itself (the last of a key wins).
_SET_HERE = ("hydra.mode", "hydra.run.dir", "hydra.output_subdir")
# The strategies reslab's tests prove: one process, or DDP ranks that are processes of their own
# (Lightning's, SLURM's, torchrun's); spawned ones bring back only rank 0's results.
SUPPORTED_STRATEGIES = (
    "auto", "single_device", "ddp", "ddp_find_unused_parameters_false",
    "ddp_find_unused_parameters_true",
)  # fmt: skip


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


def supported_strategy(trainer: L.Trainer) -> bool:
    """Whether ``trainer``'s strategy is one of ``SUPPORTED_STRATEGIES``, however it was named."""
    strategy = trainer.strategy
    ddp = type(strategy) is DDPStrategy and isinstance(strategy.launcher, _SubprocessScriptLauncher)
    return ddp or type(strategy) is SingleDeviceStrategy


def reruns_command_line(trainer: L.Trainer) -> bool:
    """True when ``trainer`` would start its other DDP ranks by running the command line again
    (Lightning's ``ddp`` launched here, not by SLURM or torchrun)."""
    launcher = trainer.strategy.launcher
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally
    )


def run_ddp_job_alone(cfg: DictConfig) -> float | None:
    """In a multirun whose trainer would re-run the command line for its DDP ranks, runs this
    job alone as a ``reslab-train`` (its overrides, Hydra's and the sweep's included, and its
    config source) in RUN mode in its folder, and returns its metric; else None (train here)."""
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN or not reruns_command_line(quiet_trainer(cfg.trainer)):
        return None
    output_dir = Path(cfg.paths.output_dir)
    command = [sys.executable, "-m", TRAIN_MODULE, f"--config-name={hydra.job.config_name}"]
    for source in hydra.runtime.config_sources:
        if source.provider == "command-line":
            command.append(f"--config-dir={source.path}")
        elif source.provider == "main" and Path(source.path) != Path(CONFIG_DIR):
            command.append(f"--config-path={source.path}")
    command += list(hydra.overrides.task)
    command += [o for o in hydra.overrides.hydra if o.split("=", 1)[0] not in _SET_HERE]
    command += ["hydra.mode=RUN", f'hydra.run.dir="{output_dir}"', "hydra.output_subdir=null"]
    with subprocess.Popen(command, cwd=hydra.runtime.cwd) as process:
        try:
            code = process.wait()
        except BaseException:
            process.terminate()  # Ctrl-C reaches both; a launcher's cancel reaches only us
            raise
    status = read_status(output_dir)
    if code != 0 or status.get("status") in (None, "running", "failed"):
        error = RuntimeError(f"{cfg.name}: its DDP run exited with code {code}: "
                             f"{' '.join(command)}; see {output_dir}")  # fmt: skip
        record_failure(output_dir, cfg.name, error, started=True)  # killed, or before train()
        raise error
    return final_metric(status)
