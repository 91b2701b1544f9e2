"""Checkpoints and resuming, in one place: which checkpoint a run continues from, whether it is
safe to load, writing it so that a kill never leaves half of one, and saving the final network.

A checkpoint is written to ``<name>.tmp`` beside its final path, flushed to disk, and renamed
over the old file (:func:`reslab.run_folder.atomic_write`). The Classifier's part of the
checkpoint holds the random number generators and the data order is a function of the
iteration (``BatchLoader``), so training from a checkpoint at iteration k repeats, number for
number, what the interrupted run did after k. Resuming cuts the run folder's metrics.csv back
to k; the wandb run continues through the folder's ``wandb_id.txt`` (reslab.loggers).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from reslab.run_folder import LAST_CHECKPOINT, atomic_write

# ckpt_path values Lightning resolves itself rather than as a file
_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")
CKPT_CHOICES = (
    "a checkpoint file (such as <run folder>/checkpoints/last.ckpt), last (this run folder's "
    "own last checkpoint) or null (start afresh)"
)


class UnsafeCheckpointError(ValueError):
    """A checkpoint that refers to Python objects a reslab checkpoint never holds."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic for local files: temporary file, fsync,
    rename. Other file systems (fsspec URLs) are written as Lightning writes them."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options!r}"
            )
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # fails here, before any file is touched, if it must
        atomic_write(str(path).removeprefix("file://"), buffer.getbuffer(), fsync=True)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that also knows the iteration of the last checkpoint
    it saw written (``saved_step``), so train.py can save the final network when the
    checkpoint interval did not end on the last iteration."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saved_step: int | None = None

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.saved_step = trainer.global_step
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def save_final(self, trainer: L.Trainer) -> None:
        """Saves ``last.ckpt`` at the final iteration unless it was just saved there: the run
        folder then holds the final network, and an extended run starts from the end."""
        step = trainer.global_step
        if self.save_last and self.dirpath and step > 0 and self.saved_step != step:
            name = f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            trainer.save_checkpoint(Path(self.dirpath) / name)


def resume_checkpoint(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint file a run in ``run_dir`` continues from, or None for a fresh start.

    ``ckpt_path=last`` is the run folder's own ``checkpoints/last.ckpt``. A SLURM job that was
    requeued (preempted or timed out: ``SLURM_RESTART_COUNT`` > 0) with no ``ckpt_path``
    continues from it too, or starts afresh if it has none yet. Raises FileNotFoundError or
    ValueError (see :func:`check_ckpt_path`) for a checkpoint that cannot be resumed from.
    """
    requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    if ckpt_path is None and not requeued:
        return None
    if ckpt_path is None or ckpt_path == "last":
        last = run_dir / LAST_CHECKPOINT
        if last.is_file():
            ckpt_path = str(last)
        elif ckpt_path == "last":
            raise FileNotFoundError(
                f"ckpt_path=last: the run folder {run_dir} has no {LAST_CHECKPOINT} to resume "
                "from; set hydra.run.dir to the folder of the run to resume (or use "
                "reslab-resume RUN_FOLDER), or name a checkpoint file"
            )
        else:
            return None  # requeued before its first checkpoint
    check_ckpt_path(ckpt_path)
    return str(ckpt_path)


def check_ckpt_path(ckpt_path: Any) -> None:
    """``ckpt_path`` must be null, one of Lightning's keywords (last, best, hpc), a URL, or an
    existing checkpoint file that holds only what ``torch.load(weights_only=True)`` loads."""
    if ckpt_path is None:
        return
    text = str(ckpt_path)
    if text in _CKPT_KEYWORDS or text.startswith("registry:") or "://" in text:
        return
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path={text} does not exist; valid: {CKPT_CHOICES}")
    if not path.is_file():
        last = path / LAST_CHECKPOINT
        hint = f" (did you mean ckpt_path={last}?)" if last.is_file() else ""
        raise ValueError(
            f"ckpt_path={text} is a folder, not a checkpoint file{hint}; valid: {CKPT_CHOICES}"
        )
    if unsafe := unsafe_globals(path):
        shown = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
        raise UnsafeCheckpointError(
            f"ckpt_path={text} is not safe to load: it refers to {shown}, which a reslab "
            "checkpoint never holds (only tensors, numbers, strings, lists and dicts); "
            "refusing to load it"
        )


def unsafe_globals(path: Path) -> list[str]:
    """The Python globals (functions, classes) that the checkpoint at ``path`` refers to and
    ``torch.load(weights_only=True)`` would refuse; read from its pickle without running it.
    Empty when torch cannot tell (not a zip checkpoint): loading decides."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a torch zip file: torch.load says what is wrong with it
        return []


def checkpoint_step(path: str | Path) -> int:
    """The iteration a checkpoint was saved at (it is loaded on the CPU, weights only)."""
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
