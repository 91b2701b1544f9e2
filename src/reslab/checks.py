"""Everything checked before a run starts, so that bad input fails before any data loads: each
value is validated where it is consumed (the network's builder, the datamodule, the Trainer,
torch's SGD); this module builds those consumers without data and names the key a user wrote."""

from __future__ import annotations

import re

import torch
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from reslab.checkpoints import check_ckpt_path
from reslab.config import instantiate
from reslab.fused import check_fused_iterations
from reslab.launch import SUPPORTED_STRATEGIES, quiet_trainer, supported_strategy


def check_run(cfg: DictConfig) -> None:
    """Checks the checkpoint to resume from, the trainer (devices, strategy), the data, network
    (on the meta device) and module arguments, the optimizer and the scheduler: a ``ValueError``
    (or ``FileNotFoundError``) names the bad setting and its valid choices."""
    check_ckpt_path(cfg.get("ckpt_path"))
    strategy = OmegaConf.select(cfg, "trainer.strategy", default="auto")
    if isinstance(strategy, str) and strategy not in SUPPORTED_STRATEGIES:
        raise ValueError(_strategy_error(cfg, strategy))  # before Lightning's own checks of it
    try:
        trainer = quiet_trainer(cfg.trainer)
    except InstantiationException as err:  # Lightning's own check of the devices
        if not isinstance(err.__cause__, MisconfigurationException):
            raise
        gpus = torch.cuda.device_count()
        valid = "trainer=cpu" if gpus == 0 else f"trainer.devices from 1 to {gpus}, or auto"
        why = " ".join(str(err.__cause__).split())  # Lightning's words, on one line
        raise ValueError(
            f"trainer.accelerator={OmegaConf.select(cfg, 'trainer.accelerator')} with "
            f"trainer.devices={OmegaConf.select(cfg, 'trainer.devices')} cannot run here ({why}); "
            f"this machine has {gpus} GPUs; valid here: {valid}"
        ) from err
    if not supported_strategy(trainer):
        raise ValueError(_strategy_error(cfg, type(trainer.strategy).__name__))
    datamodule = instantiate(cfg.data)  # the constructor checks its arguments; nothing loads
    if hasattr(datamodule, "check_processes"):  # a dataset whose evaluation shards need images
        datamodule.check_processes(trainer.world_size)
    with torch.device("meta"):
        net = instantiate(
            cfg.model, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels
        )
    module = instantiate(cfg.module, net=net)
    # (its intervals and trainer settings: reslab.fused.trainer, which built the trainer)
    check_fused_iterations(getattr(module, "fused_iterations", 1), datamodule)
    try:
        optimizer = module.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:  # torch's words, with the key the user set
        target = OmegaConf.select(cfg, "module.optimizer._target_", default="?")
        said = f"{source_key(cfg, 'module.optimizer')} ({target}): {err}"
        for argument in ("lr", "momentum", "weight_decay", "dampening"):  # a negative one's
            value = OmegaConf.select(cfg, f"module.optimizer.{argument}")
            if isinstance(value, int | float) and value < 0:
                key = source_key(cfg, f"module.optimizer.{argument}")
                said = f"{key}={value} is not valid; valid: a number >= 0 ({target}: {err})"
                break
        raise ValueError(said) from err
    if module.scheduler_factory is not None:
        try:
            module.scheduler_factory(optimizer)
        except (ValueError, TypeError) as err:
            target = OmegaConf.select(cfg, "module.scheduler._target_")
            raise ValueError(f"{source_key(cfg, 'module.scheduler')} ({target}): {err}") from err


def _strategy_error(cfg: DictConfig, strategy: str) -> str:
    return (
        f"{source_key(cfg, 'trainer.strategy')}={strategy} is not supported: reslab runs one "
        "process, or DDP ranks that are processes of their own (started by Lightning, SLURM or "
        "torchrun; spawned ranks lose the run's iterations, logged rows and final errors); "
        f"valid: {', '.join(SUPPORTED_STRATEGIES)}"
    )


def source_key(cfg: DictConfig, key: str) -> str:
    """The key a user sets for ``key``: the one its value links to (``module.optimizer.lr`` is
    ``${optim.lr}`` in conf/, one hop), else ``key`` itself."""
    parent, _, leaf = key.rpartition(".")
    value = OmegaConf.to_container(OmegaConf.select(cfg, parent), resolve=False).get(leaf)
    link = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
    return link.group(1) if link else key
