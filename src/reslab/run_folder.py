"""The run folder's contract, all of it: what a run leaves in its folder, written so that a
reader never sees half a file, and read back by resumes, sweeps and reports.

A run folder (``outputs/runs/<date>_<name>/`` or a sweep's ``<job>_<name>/``) holds::

    .hydra/config.yaml, overrides.yaml   the resolved config and the command line's overrides
    status.json       running, finished, failed, diverged, interrupted (SIGINT, SIGTERM) or
                      preempted (the same in a SLURM job), with the final errors or the
                      checkpoint's iteration (``interrupted_at``) (strict JSON: null where
                      there is no number; a diverged run's are null)
    provenance.json   what produced the run: reslab's version and git commit, a dirty tree,
                      the library versions, the device, the host, the command line
    git.diff          the uncommitted changes of a dirty tree (``git diff HEAD``), when any
    metrics.csv       every logged value, one row per logging iteration (``step``)
    hparams.yaml      what the run was (network, depth, shortcut, dataset, parameters, config)
    checkpoints/last.ckpt   the last checkpoint (one file, overwritten in place)
    checkpoints/last.ckpt.sha256   its SHA-256, checked before a resume loads it
    wandb_id.txt      the wandb run's id, so a resumed run continues the same wandb run
    error.txt         the traceback of a failed sweep job
    responses.csv     Figure 7's layer responses, when measured

Nothing in a run folder depends on where it was written: it can be moved or copied and resumed
there. Nothing here imports torch, Lightning or Hydra: the report side reads run folders with it.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.yaml"
WANDB_ID_FILE = "wandb_id.txt"
ERROR_FILE = "error.txt"
RESPONSES_FILE = "responses.csv"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.ckpt"
CHECKSUM_SUFFIX = ".sha256"  # beside each checkpoint: last.ckpt.sha256
OVERRIDES_FILE = ".hydra/overrides.yaml"
LOCK_FILE = ".lock"  # held by the process writing the folder (pid and host inside)
PROVENANCE_FILE = "provenance.json"
GIT_DIFF_FILE = "git.diff"

STATUSES = ("finished", "running", "interrupted", "preempted", "diverged", "failed")
# The final numbers status.json keeps, and reports read.
FINAL_ERRORS = ("train/error", "val/error", "test/error", "val/error_top5", "test/error_top5")


def atomic_write(path: str | Path, data: str | bytes, *, fsync: bool = False) -> None:
    """Writes ``data`` to ``path`` through ``<path>.tmp`` and a rename: a reader (or a kill)
    sees the old file or the new one, never half of one. ``fsync`` flushes it to the disk
    first (checkpoints). The folder is made when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def json_text(value: Any) -> str:
    """``value`` as strict JSON (RFC 8259: what JavaScript and jq parse), indented: a nan or
    infinite number becomes null, which Python's json would write as a bare ``NaN``."""
    return json.dumps(_finite(value), indent=2, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_status(run_dir: str | Path, status: str, **fields: Any) -> None:
    """``status.json``: ``{"status": status, **fields}`` (name, iterations, final errors...),
    strict JSON. A field that is nan or infinite is written null and named in ``non_finite``,
    so the file says why it holds no number (train.py writes a diverged run's errors null
    itself, with ``diverged_at``)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    non_finite = [k for k, v in fields.items() if isinstance(v, float) and not math.isfinite(v)]
    if non_finite:
        fields["non_finite"] = non_finite
    atomic_write(Path(run_dir) / STATUS_FILE, json_text({"status": status, **fields}))


def write_provenance(
    run_dir: str | Path, record: dict[str, Any], diff: str | None, *, resumed: bool = False
) -> None:
    """``provenance.json`` (``record``, strict JSON) and, for a dirty tree, ``git.diff``. A
    resumed run keeps the records of its earlier starts under ``earlier`` (their diffs are
    known by ``diff_sha256``; git.diff is the latest start's)."""
    run_dir = Path(run_dir)
    earlier = read_provenance(run_dir) if resumed else {}
    if earlier:
        record = {**record, "earlier": [*earlier.pop("earlier", []), earlier]}
    if diff:
        atomic_write(run_dir / GIT_DIFF_FILE, diff)
    else:
        (run_dir / GIT_DIFF_FILE).unlink(missing_ok=True)
    atomic_write(run_dir / PROVENANCE_FILE, json_text(record))


def read_provenance(run_dir: str | Path) -> dict[str, Any]:
    """The run's provenance.json as a dict; {} when there is none (a run of an older reslab,
    or one that failed before it started training)."""
    path = Path(run_dir) / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    return record if isinstance(record, dict) else {}


class FolderInUse(RuntimeError):
    """The run folder is being written by another live process."""


def lock(run_dir: str | Path) -> io.TextIOWrapper:
    """Takes the run folder's lock for this process: an exclusive ``flock`` on ``<run_dir>/.lock``,
    which the operating system releases when the process ends however it ends (so the lock of
    a dead process is free to take). Returns the open lock file (close it to release). Raises
    :class:`FolderInUse` naming the holder (pid and host) when a live process holds it; then
    nothing in the folder has changed. The folder is made when missing."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    file = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "another process"
        file.close()
        raise FolderInUse(
            f"the run folder {run_dir} is being written by {holder}; wait for it to end, or "
            "choose another folder (hydra.run.dir=...)"
        ) from None
    file.seek(0)
    file.truncate()
    file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    file.flush()
    return file


def claim_new_folder(path: str | Path) -> Path:
    """``path`` made anew for this run, or ``<path>_2``, ``<path>_3``, ... when it exists: two
    runs that start in the same second with the same name get folders of their own."""
    path, n = Path(path), 1
    while True:
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's status.json as a dict; {} when there is none yet. A ValueError naming the
    file when it is not a JSON object."""
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return {}
    try:
        status = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(status, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return status


def final_metric(status: dict[str, Any]) -> float:
    """The number a sweeper optimises: the final ``val/error``, else ``test/error``, else nan
    (also for a null one: a diverged run)."""
    value = status.get("val/error", status.get("test/error"))
    return float("nan") if value is None else float(value)


def cut_metrics(run_dir: str | Path, step: int) -> int:
    """Drops the rows of metrics.csv logged after iteration ``step`` (a resumed run logs them
    again); returns how many it dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if not row.get("step") or float(row["step"]) <= step]
    atomic_write(path, _csv_text(fields, kept))
    return len(rows) - len(kept)


def _csv_text(fields: list[str], rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def job_order(folder: Path) -> tuple[str, int, str]:
    """Sort key of run folders: by parent, then a sweep's job number (``3_resnet-20A``)."""
    head = folder.name.split("_", 1)[0]
    return (str(folder.parent), int(head) if head.isdigit() else 1 << 30, folder.name)


def run_folders(path: str | Path, required: bool = False) -> list[Path]:
    """``path`` itself when it is a run folder (it has a status.json), else every run folder
    under it, in job order. With ``required``, an error that says what is wrong instead of []
    (FileNotFoundError, ValueError)."""
    path = Path(path)
    if required and not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; give a sweep folder or a run folder")
        raise ValueError(f"{path} is not a folder; give a sweep folder or a run folder")
    if (path / STATUS_FILE).is_file():
        return [path]
    found = sorted((p.parent for p in path.rglob(STATUS_FILE)), key=job_order)
    if required and not found:
        raise ValueError(f"no reslab run folders ({STATUS_FILE}) under {path}")
    return found


# --- reading a run back ----------------------------------------------------------------------
Series = list[tuple[int, float]]  # (iteration, value)


@dataclass
class Run:
    """One run folder as reslab-train left it; None where the folder does not say."""

    path: Path
    name: str  # the network name: plain-56, resnet-56A
    dataset: str | None
    family: str | None
    depth: int | None
    shortcut: str | None
    residual: bool
    seed: int | None
    params: int | None
    status: str  # one of STATUSES; "diverged" also for a finished run with a non-finite error
    iterations: int | None
    metrics: dict[str, Series] = field(default_factory=dict)  # every metrics.csv column
    final: dict[str, float] = field(default_factory=dict)  # final errors (status.json first)
    responses: list[tuple[int, str, float]] = field(default_factory=list)  # (index, layer, std)
    responses_split: str | None = None  # the split of that measurement: "test" or "val"
    error: str | None = None  # the exception of a failed run
    code: str | None = None  # the commit it ran (report.code_label); None: not recorded

    @property
    def label(self) -> str:
        """The legend text: the network name, with the status unless finished."""
        return self.name if self.status == "finished" else f"{self.name} ({self.status})"


def read_metrics(path: Path) -> dict[str, Series]:
    """Lightning's CSVLogger file as one (iteration, value) series per column; {} when there is
    none. Rows are sparse; a cut-off last row of a running run is skipped where it does not
    parse; nan and inf are kept (a diverged run)."""
    series: dict[str, Series] = {}
    if not path.is_file():
        return series
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or ""))
            except ValueError:
                continue
            for key, text in row.items():
                if key in (None, "step", "epoch") or not text:
                    continue
                try:
                    series.setdefault(key, []).append((step, float(text)))
                except ValueError:
                    continue
    return series


def read_responses(path: Path) -> tuple[list[tuple[int, str, float]], str | None]:
    """The last measurement of responses.csv (on the test split when there is one): its
    (index, layer, std) rows in network order, and its split; ([], None) without the file."""
    if not path.is_file():
        return [], None
    measurements: dict[tuple[str, int], list[tuple[int, str, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                key = (row["split"], int(row["step"]))
                measurements.setdefault(key, []).append(
                    (int(row["index"]), row["layer"], float(row["std"]))
                )
            except (KeyError, TypeError, ValueError):
                continue  # a cut-off last row
    if not measurements:
        return [], None
    split, step = max(measurements, key=lambda k: (k[0] == "test", k[1]))
    return sorted(measurements[split, step]), split
