"""Checkpoints and resuming, in one place: which checkpoint a run continues from, whether it is
safe to load, writing it so that a kill never leaves half of one, and saving the final network.

A checkpoint is written to ``<name>.tmp`` beside its final path, flushed to disk, and renamed
over the old file (:func:`reslab.run_folder.atomic_write`); its SHA-256 goes beside it
(``last.ckpt.sha256``, as ``sha256sum`` writes it) and is checked before a resume loads it, so
a damaged file is refused in one line instead of loading or failing deep inside torch. Nothing
in a checkpoint names the folder it was written in: a run folder can be moved, copied from a
cluster or restored from a backup and resumed there. The Classifier's part of the
checkpoint holds the random number generators and the data order is a function of the
iteration (``BatchLoader``), so training from a checkpoint at iteration k repeats, number for
number, what the interrupted run did after k. Resuming cuts the run folder's metrics.csv back
to k; the wandb run continues through the folder's ``wandb_id.txt`` (reslab.loggers).
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from reslab.module import logging_iteration
from reslab.run_folder import CHECKSUM_SUFFIX, LAST_CHECKPOINT, atomic_write, read_status

# ckpt_path values Lightning resolves itself rather than as a file
_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")
CKPT_CHOICES = (
    "a checkpoint file (such as <run folder>/checkpoints/last.ckpt), last (this run folder's "
    "own last checkpoint) or null (start afresh)"
)


class UnsafeCheckpointError(ValueError):
    """A checkpoint that refers to Python objects a reslab checkpoint never holds."""


class DamagedCheckpointError(ValueError):
    """A checkpoint whose bytes are not those written (its checksum differs) or that torch
    cannot read: cut short, overwritten, or not a checkpoint."""


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
        path = Path(str(path).removeprefix("file://"))
        data = buffer.getbuffer()
        digest = hashlib.sha256(data).hexdigest()
        # The checksum file lists the old and the new digest while the checkpoint is renamed,
        # so a kill at any moment leaves a checkpoint that its checksum file vouches for.
        sums = checksum_path(path)
        atomic_write(sums, _sums_text([*recorded_checksums(path), digest], path.name))
        atomic_write(path, data, fsync=True)
        atomic_write(sums, _sums_text([digest], path.name), fsync=True)

    def remove_checkpoint(self, path: str | Path) -> None:
        super().remove_checkpoint(path)
        if "://" not in str(path) or str(path).startswith("file://"):
            checksum_path(str(path).removeprefix("file://")).unlink(missing_ok=True)


def checksum_path(path: str | Path) -> Path:
    """The file beside checkpoint ``path`` that holds its SHA-256 (``last.ckpt.sha256``)."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def recorded_checksums(path: str | Path) -> list[str]:
    """The SHA-256 digests that :func:`checksum_path` holds for ``path`` ([] without one)."""
    sums = checksum_path(path)
    if not sums.is_file():
        return []
    return [line.split()[0] for line in sums.read_text().splitlines() if line.strip()]


def _sums_text(digests: list[str], name: str) -> str:
    return "".join(f"{d}  {name}\n" for d in dict.fromkeys(digests))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that also knows the iteration of the last checkpoint
    it saw written (``saved_step``), so train.py can save the final network when the
    checkpoint interval did not end on the last iteration.

    A run folder holds one ``last.ckpt``, overwritten in place (Lightning's version counter,
    ``last-v1.ckpt``, is off), and the state this callback keeps in a checkpoint names its
    files relative to the checkpoint folder: a moved run folder resumes as if it had never
    moved (Lightning restores that state only when the folder is unchanged)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)
        self.saved_step: int | None = None
        self.every_n_iterations: int | None = kwargs.get("every_n_train_steps")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        return _rebased(state, state.get("dirpath"), "")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # "" (relative, as state_dict writes it) or the absolute folder of an older checkpoint
        super().load_state_dict(_rebased(state_dict, state_dict.get("dirpath"), self.dirpath))

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


def _rebased(state: dict[str, Any], old: str | None, new: str | None) -> dict[str, Any]:
    """``ModelCheckpoint``'s state with its files moved from the folder ``old`` to ``new``
    ("" for names relative to the folder); files elsewhere are left as they are."""
    if old is None or new is None:
        return state

    def move(path: Any) -> Any:
        if not isinstance(path, str) or not path:
            return path
        if old == "" and not os.path.isabs(path):
            return os.path.join(new, path) if new else path
        if old and os.path.dirname(path) == old.rstrip("/"):
            return os.path.join(new, os.path.basename(path)) if new else os.path.basename(path)
        return path

    moved = {key: move(state.get(key)) for key in _STATE_FILES if key in state}
    if "best_k_models" in state:
        moved["best_k_models"] = {move(k): v for k, v in state["best_k_models"].items()}
    return {**state, **moved, "dirpath": new}


_STATE_FILES = ("best_model_path", "kth_best_model_path", "last_model_path")


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
    verify_checkpoint(path)
    if unsafe := unsafe_globals(path):
        shown = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
        raise UnsafeCheckpointError(
            f"ckpt_path={text} is not safe to load: it refers to {shown}, which a reslab "
            "checkpoint never holds (only tensors, numbers, strings, lists and dicts); "
            "refusing to load it"
        )


def verify_checkpoint(path: str | Path) -> None:
    """Raises :class:`DamagedCheckpointError` when the file at ``path`` is not the checkpoint
    that was written (its SHA-256 differs from its ``.sha256`` file) or, without a checksum
    file (a checkpoint from elsewhere), when torch cannot read it as a checkpoint."""
    path = Path(path)
    recorded = recorded_checksums(path)
    if recorded:
        if _sha256(path) in recorded:
            return
        what = f"its SHA-256 differs from the one written with it ({checksum_path(path).name})"
    else:
        try:  # a torch checkpoint is a zip file: each of its entries has a CRC-32
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is None:
                return
            what = f"its entry {bad} does not match its CRC-32"
        except (zipfile.BadZipFile, OSError, EOFError) as err:  # cut short, or no checkpoint
            what = f"it is not a whole torch checkpoint ({err})"
    others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path and _intact(p))
    todo = (
        f"resume from an earlier checkpoint of its folder (ckpt_path={path.parent}/{others[-1]})"
        if others
        else "no earlier checkpoint is kept: start the run again (ckpt_path=null, in a new "
        "folder), or restore this file from a copy"
    )
    raise DamagedCheckpointError(f"checkpoint {path} is damaged: {what}; {todo}")


def _intact(path: Path) -> bool:
    recorded = recorded_checksums(path)
    return bool(recorded) and _sha256(path) in recorded


def run_complete(run_dir: Path, max_steps: int) -> str | None:
    """What to say when the run in ``run_dir`` has finished at ``max_steps`` iterations or
    more, so that resuming it would only redo its end (and change its files); None when
    training to ``max_steps`` has something to do (a higher max_steps extends a run)."""
    status = read_status(run_dir)
    iterations = status.get("iterations")
    if status.get("status") != "finished" or not isinstance(iterations, int):
        return None
    if max_steps < 0 or max_steps > iterations or not (run_dir / LAST_CHECKPOINT).is_file():
        return None
    return (
        f"{run_dir} is complete: it finished at iteration {iterations} and "
        f"optim.max_steps={max_steps} asks for no more; nothing to do (a higher "
        "optim.max_steps extends it)"
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


# --- stopping on a signal ------------------------------------------------------------------------
class RunInterrupted(BaseException):
    """A run stopped by a signal (SIGINT, SIGTERM; SIGUSR2 under SLURM) after its checkpoint at
    iteration ``step`` (None: stopped at once by a second signal, nothing saved). A
    BaseException like KeyboardInterrupt: it stops a sweep too. ``exit_code`` is the shell's:
    130 for SIGINT, 143 for SIGTERM (128 + the signal's number)."""

    def __init__(self, signum: int, step: int | None) -> None:
        self.signum, self.step = signum, step
        self.exit_code = 128 + (signal.SIGTERM if signum == _SIGUSR2 else signum)
        super().__init__(f"{signal.Signals(signum).name} at iteration {step}")


_SIGUSR2 = getattr(signal, "SIGUSR2", -1)


def stop_status() -> str:
    """The status.json status of a run stopped by a signal: ``preempted`` in a SLURM job (it
    is requeued, or resumed), else ``interrupted``."""
    return "preempted" if os.environ.get("SLURM_JOB_ID") else "interrupted"


class StopOnSignal(L.Callback):
    """SIGINT (Ctrl-C) or SIGTERM (and, in a SLURM job, SIGUSR2: submitit's warning before the
    time limit) stops training at a whole iteration with a checkpoint there: the iteration in
    progress (with ``module.fused_iterations``: the fused step's K iterations) finishes,
    ``last.ckpt`` is saved at it (through the run's :class:`RunCheckpoint`, at the point of
    its own checkpoints), its logging and a validation due at it run, and
    training stops before the next one with :class:`RunInterrupted`. The resumed run repeats
    nothing and skips nothing. A second Ctrl-C stops at once (KeyboardInterrupt); a
    scheduler's further signals (SIGTERM, then USR2) change nothing.

    Its handlers replace, while ``fit`` trains, the ones there before (Lightning's SIGTERM
    handler, which would stop without a checkpoint; submitit's, which :meth:`pass_on` calls
    once the run is saved and recorded, so that submitit requeues the job). Under DDP the ranks
    agree at logging iterations (one host read per interval, as the divergence guard)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}  # while installed
        self._replaced: dict[int, Any] = {}  # once restored

    def _signals(self) -> list[int]:
        names = ["SIGINT", "SIGTERM"] + (["SIGUSR2"] if os.environ.get("SLURM_JOB_ID") else [])
        return [getattr(signal, n) for n in names if hasattr(signal, n)]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread
        for signum in self._signals():  # after Lightning's, which fit() installed
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if signum != signal.SIGINT:  # a scheduler's second word (SIGTERM, then USR2)
                return  # changes nothing: the stop is under way
            self._restore()  # a second Ctrl-C: the user wants out now
            raise KeyboardInterrupt
        self.signum = signum
        name = signal.Signals(signum).name
        print(f"\n[reslab] {name}: saving a checkpoint at the end of this iteration, then "
              "stopping (again to stop at once)", file=sys.stderr, flush=True)  # fmt: skip

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.stopped_at is not None:
            return
        step = trainer.global_step
        if trainer.world_size > 1:  # every rank must stop at the same iteration
            if not logging_iteration(trainer, step):
                return
            if not trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
                return
            self.signum = self.signum or signal.SIGTERM  # a rank that got none
        elif self.signum is None:
            return
        if isinstance(trainer.checkpoint_callback, RunCheckpoint):
            trainer.checkpoint_callback.save_final(trainer)
        self.stopped_at = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.stopped_at is not None:  # the stopped iteration is logged and validated
            raise RunInterrupted(self.signum or signal.SIGTERM, self.stopped_at)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # RunInterrupted (a stop before the last iteration) ends fit here: Lightning calls no
        # teardown hook then, and pass_on needs the handlers that were there before
        self._restore()

    def _restore(self) -> None:
        if not self._previous:
            return
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._replaced, self._previous = self._previous, {}

    def pass_on(self) -> None:
        """Calls the handler that was there before for the signal received, when it was
        Python's (submitit's: it requeues the job and exits); not Python's default for SIGINT,
        nor Lightning's own (it would stop the trainer, which has stopped: its SIGTERM handler
        calls the one that was there before it, which is passed on instead)."""
        handler = self._replaced.get(self.signum)
        if _from_lightning(handler):
            handler = getattr(handler, "signal_handlers", [None])[-1]
            handler = None if _from_lightning(handler) else handler
        if callable(handler) and handler is not signal.default_int_handler:
            handler(self.signum, None)


def _from_lightning(handler: Any) -> bool:
    """Whether ``handler`` is one of Lightning's signal handlers (its ``_HandlersCompose``, or a
    method of its signal connector)."""
    owner = getattr(handler, "__self__", handler)
    return type(owner).__module__.startswith(("lightning.", "pytorch_lightning."))
