"""reslab-report: the figures and tables of the paper from run folders, beside its numbers.

  reslab-report outputs/multiruns/2026-11-27_08-48-11_fig6
  reslab-report SWEEP RUN_FOLDER ANOTHER_SWEEP --out results/

Every folder holding a status.json under each PATH is a run. Writes curves_*.png (Figures
1/4/6), responses_*.png (Figure 7, from responses.csv) and report.md (the figures, and Table
2/3/6-style tables of final errors beside the paper's) into --out, and prints the tables.
Unfinished runs are drawn as far as they got and left out of the means.
"""

import argparse
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table as RichTable

from reslab import run_folder
from reslab.networks import parse_network_name
from reslab.paper import RESNET110_MEAN_STD, published, signed
from reslab.provenance import code_label
from reslab.report_figures import by_network, curves_figure, responses_figure
from reslab.runs import Run, read_metrics, read_responses, run_folders

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "fashion_mnist": "Fashion-MNIST",
                 "imagenet": "ImageNet", "synthetic": "synthetic data"}  # fmt: skip
EXPLAINED = {
    "train/error": "Train error: the mean over the training batches of the last logging "
    "interval (the network in training mode).",
    "val/error": "Val error: the final network on the validation split.",
}
# The settings the paper's error numbers belong to: (dataset, network family).
PAPER_SETTINGS = (("cifar10", "cifar"), ("imagenet", "imagenet"))


def load_runs(paths: Iterable[str | Path], left_out: list[str] | None = None) -> list[Run]:
    """Every run under ``paths`` (sweep folders or run folders), each folder once. A folder that
    cannot be read raises its ``ValueError``; given ``left_out``, its reason goes there and the
    other folders are read (a ``ValueError`` all the same when none can be)."""
    folders = dict.fromkeys(f.resolve() for p in paths for f in run_folders(p, required=True))
    runs = []
    for folder in folders:
        try:
            runs.append(load_run(folder))
        except ValueError as err:
            if left_out is None:
                raise
            left_out.append(str(err))
    if not runs and left_out:
        raise ValueError(f"no run folder could be read: {'; '.join(left_out)}")
    return runs


def load_run(folder: Path) -> Run:
    """One run folder: status.json, hparams.yaml (else .hydra/), metrics.csv, responses.csv."""
    status = run_folder.read_status(folder)
    state = status.get("status")
    if state not in run_folder.STATUSES:
        valid = ", ".join(run_folder.STATUSES)
        raise ValueError(f"{folder}/status.json: status {state!r} is not one of {valid}")
    hparams = _read_yaml(folder / run_folder.HPARAMS_FILE) or _hparams_from_hydra(folder, status)
    metrics = read_metrics(folder / run_folder.METRICS_FILE)
    final = {k: metrics[k][-1][1] for k in run_folder.FINAL_ERRORS if metrics.get(k)}
    final |= {k: status[k] for k in run_folder.FINAL_ERRORS if k in status}  # status.json last
    final = {k: float(v) for k, v in final.items() if v is not None}  # null: diverged, non_finite
    if state == "finished" and status.get("non_finite"):
        state = "diverged"
    steps = [s for series in metrics.values() for s, _ in series]
    responses, split = read_responses(folder / run_folder.RESPONSES_FILE)
    return Run(
        path=folder,
        name=str(hparams.get("network") or status["name"]),
        **{key: hparams.get(key) for key in ("dataset", "family", "depth", "shortcut", "seed")},
        residual=hparams.get("shortcut") not in (None, "none"),
        params=hparams.get("parameters"),
        status=state,
        iterations=status.get("iterations", max(steps, default=None)),
        metrics=metrics,
        final=final,
        responses=responses,
        responses_split=split,
        error=status.get("error"),
        code=code_label(run_folder.read_provenance(folder)),
    )


def _hparams_from_hydra(folder: Path, status: dict[str, Any]) -> dict[str, Any]:
    """Without hparams.yaml: dataset, family from Hydra's choices; depth, shortcut from the name."""
    hydra = _read_yaml(folder / ".hydra" / "hydra.yaml") or {}
    choices = ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    found: dict[str, Any] = {"dataset": choices.get("data"), "family": choices.get("model")}
    with suppress(ValueError):
        parsed = parse_network_name(status["name"])
        found |= {"depth": parsed["depth"], "shortcut": parsed["shortcut"]}
    return found


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None


@dataclass
class Table:
    """One Table 2/3/6-style table: a header, rows of text cells, and notes under it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str]


def format_params(n: int | None) -> str:
    """Parameters as the paper writes them: 0.27M, 1.7M, 21.8M."""
    return "—" if n is None else f"{n / 1e6:.2f}M" if n < 1e6 else f"{n / 1e6:.1f}M"


def group_runs(
    runs: Iterable[Run], key: Callable[[Run], Any] = lambda r: (r.dataset, r.family)
) -> dict[Any, list[Run]]:
    """Runs by ``key`` (default: (dataset, family)), in the order the keys first appear."""
    groups: dict[Any, list[Run]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    return groups


def _paper(name: str, family: str | None, top5: bool, runs: int) -> tuple[str, float | None]:
    """The paper's number for ``name`` as shown, and as compared; ("", None) when none."""
    pub = published(name)
    if pub.family != family:
        return "", None
    if family == "imagenet":
        crop = pub.imagenet_10crop
        value = None if crop is None else crop.top5 if top5 else crop.top1
        return (f"{value:.2f}", value) if value is not None else ("", None)
    if name == "resnet-110A" and runs > 1:  # Table 6: best of 5, and mean ± std of 5
        average, std = RESNET110_MEAN_STD
        return f"{average:.2f} ± {std:.2f} (best {pub.cifar10_test_error:.2f})", average
    if pub.cifar10_test_error is not None:
        return f"{pub.cifar10_test_error:.2f}", pub.cifar10_test_error
    if pub.cifar10_test_error_approx is not None:
        return f"≈{pub.cifar10_test_error_approx:g}", pub.cifar10_test_error_approx
    return "", None


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "—"
    return f"{mean(values):.2f} ± {stdev(values):.2f}"


def _statuses(runs: Sequence[Run]) -> str:
    """``3 finished, 1 failed``."""
    counts = {s: sum(r.status == s for r in runs) for s in run_folder.STATUSES}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def build_table(dataset: str | None, family: str | None, runs: Sequence[Run]) -> Table:
    """Final train, val and test errors per network (mean ± sample std of its finished runs),
    the test error beside the paper's in its settings: CIFAR-10, cifar family (Table 6, Figure
    6's approximate plain nets); ImageNet, imagenet family (Tables 2, 3). No unlogged column."""
    paper = (dataset, family) in PAPER_SETTINGS
    # ImageNet's test/error: 10-crop top-1
    top1 = dataset == "imagenet" or any("test/error_top5" in r.final for r in runs)
    headings = {
        "train/error": "train error (%)",
        "val/error": "val error (%)",
        "test/error": "test top-1 error (%)" if top1 else "test error (%)",
        "test/error_top5": "test top-5 error (%)",
    }
    measured = [k for k in headings if k == "test/error" or any(k in r.final for r in runs)]
    compared = [k for k in measured if paper and k.startswith("test/")]  # beside the paper's
    columns = ["network", "params", "runs"]
    for key in measured:
        columns += [headings[key], "paper (%)", "Δ"] if key in compared else [headings[key]]
    columns.append("status")
    rows, notes = [], []
    for name, members in by_network(runs).items():
        params = next((r.params for r in members if r.params is not None), None)
        row = [name, format_params(params), str(len(members))]
        finished = [r for r in members if r.status == "finished"]
        for key in measured:
            values = [r.final[key] for r in finished if math.isfinite(r.final.get(key, math.nan))]
            row.append(_mean_std(values))
            if key in compared:
                shown, number = _paper(name, family, key.endswith("top5"), len(values))
                approx = "≈" if shown.startswith("≈") else ""
                known = number is not None and values
                row += [shown or "—", approx + signed(mean(values) - number) if known else "—"]
        same = all(r.status == members[0].status for r in members)
        row.append(members[0].status if same else _statuses(members))
        rows.append(row)
        for r in members:
            if r.status != "finished":
                where = f" at iteration {r.iterations}" if r.iterations is not None else ""
                why = f": {r.error}" if r.error else ""
                notes.append(f"{r.path.name}: {r.status}{where}{why}; not in the mean.")
    notes.append("Measured: mean ± sample std over the finished runs of a network.")
    notes += code_notes(runs)
    notes += [text for key, text in EXPLAINED.items() if key in measured]
    if paper and family == "cifar":
        notes.append("Paper: Table 6, CIFAR-10 test error; ResNet-110 is the best of 5 runs.")
        if any(cell.startswith("≈") for row in rows for cell in row):
            notes.append("≈: plain nets, read off Figure 6 by others, not published numbers.")
    elif paper:
        notes.append("Paper: Tables 2 and 3, 10-crop error on the ImageNet val set.")
    else:
        notes.append("The paper reports no errors for this setting.")
    name = DATASET_NAMES.get(dataset or "", dataset or "unknown dataset")
    return Table(f"{name}, {family or 'unknown'} family", columns, rows, notes)


def code_notes(runs: Sequence[Run]) -> list[str]:
    """The commit the runs ran, or a warning naming each version's runs (4 at most); and how
    many ran without provenance.json."""
    grouped = group_runs((r for r in runs if r.code is not None), key=lambda r: r.code)
    by_code = {code: [r.path.name for r in members] for code, members in grouped.items()}
    notes = []
    if len(by_code) == 1:
        ((code, names),) = by_code.items()
        notes.append(f"Code: {code} ({len(names)} run{'s' * (len(names) != 1)}).")
    elif by_code:
        parts = [
            f"{code} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
            for code, names in by_code.items()
        ]
        mixed = f"{len(by_code)} versions of the code: {'; '.join(parts)}"
        notes.append(f"Warning: this table mixes runs of {mixed}.")
    if unknown := sum(run.code is None for run in runs):
        notes.append(f"{unknown} run(s) recorded no commit (no provenance.json).")
    return notes


def markdown_table(table: Table) -> str:
    """The table in Markdown, its notes as a list under it."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---" if c in ("network", "status") else "---:" for c in table.columns]
    lines = [line(table.columns), line(align), *(line(r) for r in table.rows), ""]
    return "\n".join(lines + [f"- {n}" for n in table.notes]) + "\n"


def write_report(
    runs: Sequence[Run],
    out_dir: str | Path,
    sources: Sequence[str | Path] | None = None,
    left_out: Sequence[str] = (),
) -> Path:
    """Figures (PNG) and report.md into ``out_dir``, named as read from ``sources`` (default:
    the runs' parents), naming the folders ``left_out`` (unreadable); returns report.md's path."""
    if not runs:
        raise ValueError("no runs to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = list(dict.fromkeys(r.path.parent for r in runs)) if sources is None else sources
    read = f"Read {', '.join(f'`{s}`' for s in sources)} on {datetime.now():%Y-%m-%d %H:%M:%S}"
    text = ["# reslab report", "", f"{read}: {len(runs)} runs ({_statuses(runs)}).", ""]
    text += [*(f"Left out: {reason}" for reason in left_out), ""] if left_out else []
    for (dataset, family), members in group_runs(runs).items():
        table = build_table(dataset, family, members)
        slug = f"{dataset or 'unknown'}_{family or 'unknown'}"
        text += [f"## {table.title}", ""]
        figures = [("curves", curves_figure, "error against iterations")]
        if any(r.responses for r in members):
            figures.append(("responses", responses_figure, "layer responses"))
        for kind, draw, alt in figures:
            draw(members, table.title).savefig(out / f"{kind}_{slug}.png", dpi=120)
            text += [f"![{table.title}: {alt}]({kind}_{slug}.png)", ""]
        text += [markdown_table(table)]
    path = out / "report.md"
    run_folder.atomic_write(path, "\n".join(text))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser("reslab-report", description=__doc__, formatter_class=raw)
    parser.add_argument("paths", nargs="+", type=Path, help="sweep folders or run folders")
    parser.add_argument("--out", type=Path, help="output folder (default: <first PATH>/report)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.paths[0] / "report"
    left_out: list[str] = []
    try:
        runs = load_runs(args.paths, left_out)
    except (ValueError, FileNotFoundError) as err:
        print(f"reslab-report: error: {err}", file=sys.stderr)
        return 1
    try:
        path = write_report(runs, out, sources=args.paths, left_out=left_out)
    except OSError as err:  # a full disk, a read-only folder
        print(f"reslab-report: error: cannot write the report into {out}: {err}", file=sys.stderr)
        return 1
    for reason in left_out:
        print(f"reslab-report: left out {reason}", file=sys.stderr)
    console = Console()
    console.width = max(console.width, 120)  # pipes and logs get 80 columns otherwise
    for (dataset, family), members in group_runs(runs).items():
        table = build_table(dataset, family, members)
        shown = RichTable(title=table.title)
        for c in table.columns:
            shown.add_column(c, justify="left" if c in ("network", "status") else "right")
        for row in table.rows:
            shown.add_row(*row)
        console.print(shown)
        console.print("\n".join(table.notes), markup=False, highlight=False)
    console.print(f"wrote {path}")
    return 1 if left_out else 0


if __name__ == "__main__":
    sys.exit(main())
