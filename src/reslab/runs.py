"""Run folders read back, for reports and sweep summaries: which folders are runs, and what
each one's files say (reslab.run_folder is the contract they follow)."""

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from reslab.run_folder import STATUS_FILE, whole_lines


def job_order(folder: Path) -> tuple[str, int, str]:
    """Sort key of run folders: by parent, then a sweep's job number (``3_resnet-20A``)."""
    head = folder.name.split("_", 1)[0]
    return (str(folder.parent), int(head) if head.isdigit() else 1 << 30, folder.name)


def run_folders(path: str | Path, required: bool = False) -> list[Path]:
    """``path`` itself when it is a run folder (it has a status.json), else every run folder
    under it, in job order. With ``required``, FileNotFoundError or ValueError instead of []."""
    path = Path(path)
    if required and not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a sweep folder or a run folder")
    if (path / STATUS_FILE).is_file():
        return [path]
    found = sorted((p.parent for p in path.rglob(STATUS_FILE)), key=job_order)
    if required and not found:
        raise ValueError(f"no reslab run folders ({STATUS_FILE}) under {path}")
    return found


Series = list[tuple[int, float]]  # (iteration, value)
IGNORED = (None, "step", "epoch")  # metrics.csv's columns that are no series (None: extra cells)


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


def read_metrics(path: Path) -> dict[str, Series]:
    """Lightning's CSVLogger file as one (iteration, value) series per column ({} without it):
    a last row cut short (a running or killed run: ``whole_lines``) is not read; nan and inf
    are kept."""
    series: dict[str, Series] = {}
    if not path.is_file():
        return series
    for row in csv.DictReader(io.StringIO(whole_lines(path), newline="")):
        try:
            step = int(float(row["step"]))
            values = {k: float(v) for k, v in row.items() if k not in IGNORED and v}
        except (KeyError, TypeError, ValueError):
            continue
        for key, value in values.items():
            series.setdefault(key, []).append((step, value))
    return series


def read_responses(path: Path) -> tuple[list[tuple[int, str, float]], str | None]:
    """The last measurement of responses.csv (on the test split when there is one): its
    (index, layer, std) rows in network order, and its split; ([], None) without the file."""
    if not path.is_file():
        return [], None
    measurements: dict[tuple[str, int], list[tuple[int, str, float]]] = {}
    for row in csv.DictReader(io.StringIO(whole_lines(path), newline="")):
        try:
            layer = (int(row["index"]), row["layer"], float(row["std"]))
            measurements.setdefault((row["split"], int(row["step"])), []).append(layer)
        except (KeyError, TypeError, ValueError):
            continue
    if not measurements:
        return [], None
    split, step = max(measurements, key=lambda k: (k[0] == "test", k[1]))
    return sorted(measurements[split, step]), split
