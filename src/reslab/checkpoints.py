"""Checkpoint files: written whole or not at all (``<name>.tmp``, flushed, renamed over the
old file), refused when damaged (a zip entry failing its CRC-32) or unsafe, and free of the
folder they were written in (a run folder can be moved and resumed there)."""

import io
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from reslab.run_folder import LAST_CHECKPOINT, atomic_write, commit

CKPT_CHOICES = (
    "a checkpoint file (such as <run folder>/checkpoints/last.ckpt), last (this run folder's "
    "own last checkpoint) or null (start afresh)"
)


class UnsafeCheckpointError(ValueError):
    """A checkpoint that refers to Python objects a reslab checkpoint never holds."""


class DamagedCheckpointError(ValueError):
    """A checkpoint that is not whole: cut short, overwritten, or not a checkpoint."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, atomic for local files (fsspec URLs: as Lightning). While
    RunCheckpoint trains, a checkpoint is held: written whole and synced as ``<name>.tmp`` where
    Lightning saves it (``on_train_batch_end``, before that iteration's metrics rows are logged
    and its validation runs), renamed over ``<name>`` by :meth:`commit` once they are on disk. A
    kill in between resumes from the checkpoint before, whose later rows are cut and redone."""

    hold = False
    held: Path | None = None  # the checkpoint waiting for commit()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # fails here, before any file is touched, if it must
        self.commit()  # (one held before: its rows are on disk by now)
        path = Path(str(path).removeprefix("file://"))
        atomic_write(path, buffer.getbuffer(), hold=self.hold)
        self.held = path if self.hold else None

    def commit(self, keep: bool = True) -> None:
        """The held checkpoint renamed into place, or without ``keep`` removed (its iteration's
        rows may not be whole); nothing when none is held."""
        if self.held is not None:
            held, self.held = self.held, None
            if keep:
                commit(held)
            else:
                held.with_name(held.name + ".tmp").unlink(missing_ok=True)

    def discard(self) -> None:
        """The held checkpoint removed (:meth:`commit` without ``keep``)."""
        self.commit(keep=False)


def commit_checkpoint(trainer: L.Trainer, keep: bool = True, release: bool = False) -> None:
    """Commits the checkpoint ``trainer`` holds (:class:`AtomicCheckpointIO`), if any, once the
    iteration it was saved at is logged and validated; discards it instead without ``keep`` or
    when the network is not finite (a broken network never replaces a finite checkpoint). With
    ``release``, later checkpoints are written at once (training has ended)."""
    writer = trainer.strategy.checkpoint_io
    if not isinstance(writer, AtomicCheckpointIO):
        return
    if writer.held is not None:
        writer.commit(keep and finite_weights(trainer.lightning_module))
    writer.hold = writer.hold and not release


def finite_weights(module: torch.nn.Module) -> bool:
    """Whether every parameter and floating-point buffer of ``module`` is finite (one host read
    of the device)."""
    found = [torch.isfinite(t).all() for t in (*module.parameters(), *module.buffers())
             if t.is_floating_point()]  # fmt: skip
    return bool(torch.stack(found).all()) if found else True


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with one ``last.ckpt``, overwritten in place (no
    ``last-v1.ckpt``), whose state names no folder; :meth:`save_final` saves the final network
    when the checkpoint interval did not end on the last iteration."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"enable_version_counter": False, **kwargs})
        self.saved_step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        # one last.ckpt and no best-k files (save_top_k: 0): the folder's paths are not needed
        return {**super().state_dict(), "dirpath": "", "best_model_path": "", "last_model_path": ""}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # A resumed run gets a new time budget (trainer.max_time): Lightning's Timer, restored
        # with the time already spent, would stop it again at its first iteration.
        for key in [k for k in checkpoint.get("callbacks", {}) if k.startswith("Timer")]:
            del checkpoint["callbacks"][key]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(writer := trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            writer.hold = True  # (committed as the next iteration starts, or training ends)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        commit_checkpoint(trainer)  # the last iteration's rows and validation are on disk

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        commit_checkpoint(trainer, release=True)

    def on_exception(self, trainer: L.Trainer, *args: Any) -> None:
        commit_checkpoint(trainer, keep=False, release=True)  # the one before stays

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.saved_step = trainer.global_step
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def save_final(self, trainer: L.Trainer) -> None:
        """Saves ``last.ckpt`` at the current iteration unless it was just saved there."""
        step = trainer.global_step
        if self.save_last and self.dirpath and step > 0 and self.saved_step != step:
            name = f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            trainer.save_checkpoint(Path(self.dirpath) / name)


# what a resume reads: Lightning's loops and states, and reslab's own (the module's)
CHECKPOINT_KEYS = ("state_dict", "global_step", "loops", "optimizer_states", "reslab")


def check_ckpt_path(ckpt_path: Any) -> str | None:
    """What ``trainer.fit`` loads for ``ckpt_path``: null, ``last``, or the path
    (:func:`first_start_path`) of a whole checkpoint file holding only what
    ``torch.load(weights_only=True)`` loads. Anything else (a URL, Lightning's other keywords)
    is refused (FileNotFoundError): train() reads it before the run folder changes."""
    if ckpt_path is None or ckpt_path == "last":
        return ckpt_path
    text = str(ckpt_path)
    path = first_start_path(text)
    if not path.exists():
        url = " (a URL: copy the checkpoint to a local file first)" if "://" in text else ""
        raise FileNotFoundError(f"ckpt_path={text} does not exist{url}; valid: {CKPT_CHOICES}")
    if not path.is_file():
        last = path / LAST_CHECKPOINT
        hint = f" (did you mean ckpt_path={last}?)" if last.is_file() else ""
        raise ValueError(
            f"ckpt_path={text} is a folder, not a checkpoint file{hint}; valid: {CKPT_CHOICES}"
        )
    verify_checkpoint(path)
    if unsafe := unsafe_globals(path):
        shown = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
        raise UnsafeCheckpointError(
            f"ckpt_path={text} is not safe to load: it refers to {shown}, which a reslab "
            "checkpoint never holds (only tensors, numbers, strings, lists and dicts); "
            "refusing to load it"
        )
    held = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if missing := [k for k in CHECKPOINT_KEYS if not isinstance(held, dict) or k not in held]:
        raise ValueError(
            f"ckpt_path={text} is not a checkpoint of a reslab run (it lacks "
            f"{', '.join(repr(k) for k in missing)}); valid: {CKPT_CHOICES}"
        )
    return str(path)


def first_start_path(path: str | Path) -> Path:
    """``path`` (``~`` expanded) as the command line meant it: a relative one is relative to the
    folder the command started in (``hydra.runtime.cwd``), also in a ``hydra.job.chdir`` job."""
    from hydra.core.hydra_config import HydraConfig

    path = Path(path).expanduser()
    if path.is_absolute() or not HydraConfig.initialized():
        return path.absolute()
    return Path(HydraConfig.get().runtime.cwd) / path


def verify_checkpoint(path: str | Path) -> None:
    """Raises :class:`DamagedCheckpointError` when the file at ``path`` is not a whole torch
    checkpoint: an entry of its zip file fails its CRC-32, or it is no zip file at all."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is None:
            return
        what = f"its entry {bad} does not match its CRC-32"
    except (zipfile.BadZipFile, OSError, EOFError) as err:  # cut short, or no checkpoint
        what = f"it is not a whole torch checkpoint ({err})"
    raise DamagedCheckpointError(
        f"checkpoint {path} is damaged: {what}; start the run again (ckpt_path=null, in a new "
        "folder), or restore this file from a copy"
    )


def unsafe_globals(path: Path) -> list[str]:
    """The globals the checkpoint at ``path`` refers to that ``torch.load(weights_only=True)``
    refuses, read without running its pickle; [] when torch cannot tell."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a torch zip file: torch.load says what is wrong with it
        return []
