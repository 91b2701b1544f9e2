"""What a run prints: one header line, the progress bar and train.py's result line; library
messages no public switch silences are filtered one by one (warnings on a user's setting stay)."""

import copy
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from reslab.counting import count_multiply_adds, count_parameters, human
from reslab.provenance import trainer_device

# Lightning's info lines that say nothing about this run (logged, not warned: a logging filter).
_LIGHTNING_INFO = re.compile(
    r"💡 Tip: "  # litlogger / litmodels advertisements (no setting turns them off)
    r"|(GPU|TPU) available: "  # the header names the device used
    r"|LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: "  # on GPUs; the header names the device
    # K iterations per Trainer step: validation is not after every iteration
    r"|`Trainer\(val_check_interval=1\)` was configured so validation will run after every"
    r"|`Trainer\(limit_\w+_batches=1(\.0)?\)` was configured so "  # the config says so (debug=)
    r"|SLURM auto-requeueing enabled\. "  # per rank, fit and test; submitit requeues the job
)
_LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
    "lightning.pytorch.trainer.connectors.signal_connector",
)  # fmt: skip

# Library warnings, none about a setting of the user's: (regex from the message's start, category).
_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # srun on PATH makes Lightning guess a SLURM job; reslab's start through submitit
    (r"The `srun` command is available on your system but is not used", UserWarning),
    # counted per epoch, but Lightning logs by the global iteration (across epochs)
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning),
    # K iterations per step: a checkpoint after an iteration's optimizer step is what is meant
    (r"Using ModelCheckpoint with manual optimization and every_n_train_steps", UserWarning),
    # torch deprecated LeafSpec; Lightning's own _pytree.py still builds one.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)


def _drop_lightning_info(record: logging.LogRecord) -> bool:
    return not _LIGHTNING_INFO.match(record.getMessage())


def quiet_third_party() -> None:
    """Silence the library messages above (only those), before the Trainer is built; idempotent."""
    for message, category in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).addFilter(_drop_lightning_info)  # added once


def split_sizes(datamodule: L.LightningDataModule) -> tuple[int, ...] | None:
    """Images in the (train, val, test) splits of a datamodule after ``setup`` (its ``splits``'
    or ImageNet's own ``{train,val,test}_images``); None when it does not say."""
    holder = getattr(datamodule, "splits", None) or datamodule
    images = [getattr(holder, f"{split}_images", None) for split in ("train", "val", "test")]
    return None if any(i is None for i in images) else tuple(len(i) for i in images)


def header(name: str, parameters: int, multiply_adds: str, dataset: str,
           sizes: Sequence[int] | None, device: str, precision: str,
           run_dir: str | Path) -> str:  # fmt: skip
    """The run's header line, in the words of train.py's result line: ``[reslab] resnet-20A:
    269,722 parameters, 40.55M multiply-adds | cifar10: 45,000 train / 5,000 val / 10,000 test
    images | cpu, precision 32-true | outputs/runs/...``"""
    if sizes is not None:
        dataset += ": {:,} train / {:,} val / {:,} test images".format(*sizes)
    return (
        f"[reslab] {name}: {parameters:,} parameters, {multiply_adds} multiply-adds | {dataset} | "
        f"{device}, precision {precision} | {run_dir}"
    )


@rank_zero_only
def print_header(name: str, net: nn.Module, datamodule: L.LightningDataModule,
                 trainer: L.Trainer, run_dir: str | Path) -> None:  # fmt: skip
    """Print :func:`header` for a run (rank 0 only): ``datamodule`` set up, ``trainer`` built.
    Multiply-adds of one image of the size the network sees, as reslab-summary counts them;
    the device as ``cpu``, ``NVIDIA H200``, ``8 × NVIDIA H200`` or ``2 nodes × 8 NVIDIA H200``."""
    shape = (datamodule.in_channels, datamodule.image_size, datamodule.image_size)
    macs = count_multiply_adds(copy.deepcopy(net).to("meta"), shape)  # shapes only, no arithmetic
    kind, nodes, devices = trainer_device(trainer)[0], trainer.num_nodes, trainer.num_devices
    device = kind if devices == 1 else f"{devices} × {kind}"
    device = f"{nodes} nodes × {devices} {kind}" if nodes > 1 else device
    sizes, precision = split_sizes(datamodule), str(trainer.precision)
    print(header(name, count_parameters(net), human(macs), datamodule.name, sizes, device,
                 precision, run_dir), flush=True)  # fmt: skip
