"""The run folder's contract: what a run leaves in its folder (``outputs/runs/<date>_<name>/``
or a sweep's ``<job>_<name>/``), every file written whole and free of where it was written (a
folder can be moved and resumed there). No torch, Lightning or Hydra: reslab.runs reads it."""

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

# .hydra/config.yaml beside it: the resolved config; .lock: the writer's (reslab.run_lock)
OVERRIDES_FILE = ".hydra/overrides.yaml"  # the command line's overrides
STATUS_FILE = "status.json"  # one of STATUSES, the final errors or ``interrupted_at``
METRICS_FILE = "metrics.csv"  # every logged value, one row per logging iteration (``step``)
HPARAMS_FILE = "hparams.yaml"  # the network, dataset, parameters and config
LAST_CHECKPOINT = "checkpoints/last.ckpt"  # the last checkpoint, overwritten in place
PROVENANCE_FILE = "provenance.json"  # reslab's commit, the libraries, device, host, command
GIT_DIFF_FILE = "git.diff"  # a dirty tree's ``git diff HEAD``
WANDB_ID_FILE = "wandb_id.txt"  # the wandb run's id: a resumed run continues that wandb run
ERROR_FILE = "error.txt"  # a failed sweep job's traceback
RESPONSES_FILE = "responses.csv"  # Figure 7's layer responses, when measured

STATUSES = ("finished", "running", "interrupted", "preempted", "stopped", "diverged", "failed")
# The final numbers status.json keeps, and reports read.
FINAL_ERRORS = ("train/error", "val/error", "test/error", "val/error_top5", "test/error_top5")


def atomic_write(path: str | Path, data: str | bytes, *, hold: bool = False) -> None:
    """Writes ``data`` to ``path`` durably and whole: ``<path>.tmp``, its fsync, a rename, and
    an fsync of the folder (the rename itself on the disk), so a reader, a kill or a power cut
    finds the old file or the new one, never half of one. The folder is made when missing. With
    ``hold``, the synced ``<path>.tmp`` waits for :func:`commit` (``path`` unchanged till then)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not hold:
        commit(path)


def commit(path: str | Path) -> None:
    """Renames ``<path>.tmp`` (:func:`atomic_write` with ``hold``) over ``path``, then fsyncs
    the folder: from here on a reader, a kill or a power cut finds the new file."""
    path = Path(path)
    try:
        os.replace(path.with_name(path.name + ".tmp"), path)
    finally:
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def json_text(value: Any) -> str:
    """``value`` as strict JSON (RFC 8259: what JavaScript and jq parse), indented: a nan or
    infinite number becomes null, which Python's json would write as a bare ``NaN``."""
    finite = json.loads(json.dumps(value), parse_constant=lambda _: None)  # NaN, Infinity: None
    return json.dumps(finite, indent=2, allow_nan=False) + "\n"


def write_status(run_dir: str | Path, status: str, **fields: Any) -> None:
    """``status.json``: ``{"status": status, **fields}``, strict JSON; a nan or infinite field
    is written null and named in ``non_finite``."""
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
    """The run's provenance.json; {} when there is none (a run that failed before training)."""
    return _read_json(Path(run_dir) / PROVENANCE_FILE)


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's status.json; {} when there is none yet."""
    return _read_json(Path(run_dir) / STATUS_FILE)


def _read_json(path: Path) -> dict[str, Any]:
    """{} without the file; a ValueError naming it when it holds no JSON object."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


def final_metric(status: dict[str, Any]) -> float:
    """The number a sweeper optimises: the final ``val/error``, else ``test/error``, else nan
    (also for a null one: a diverged run)."""
    value = status.get("val/error", status.get("test/error"))
    return float("nan") if value is None else float(value)


def cut_metrics(run_dir: str | Path, step: int, *, revalidated: bool = False) -> int:
    """Drops the rows of metrics.csv that a run resumed at iteration ``step`` logs again: those
    after it, its test rows (a run tests at its end), with ``revalidated`` its validation rows
    at ``step`` (the final validation, redone), and a last row that a kill cut short
    (``whole_lines``); returns how many whole rows it dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    reader = csv.DictReader(io.StringIO(whole_lines(path), newline=""))
    rows = list(reader)

    def redone(row: dict[str, str]) -> bool:
        at, split = float(row["step"]), {k.split("/")[0] for k, v in row.items() if "/" in k and v}
        return at > step or (at == step and ("test" in split or (revalidated and "val" in split)))

    kept = [row for row in rows if not row.get("step") or not redone(row)]
    write_csv(path, reader.fieldnames or [], kept)
    return len(rows) - len(kept)


def whole_lines(path: str | Path) -> str:
    """``path``'s text up to its last line end: a last line that a kill (or a writer still at
    work) cut short, such as ``...,20,87.5,2.428``, is not a value."""
    with open(path, newline="") as f:
        text = f.read()
    return text[: text.rfind("\n") + 1]


def write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """``rows`` under the header ``fields``, as one atomic write (Lightning's CSV dialect)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue())
