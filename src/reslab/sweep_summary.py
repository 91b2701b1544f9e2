"""What a user sees when a sweep ends (a Hydra callback, named in conf/train.yaml): a table of
its runs' final errors from their folders, and a non-zero exit when jobs failed."""

import shlex
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from reslab.run_folder import read_status
from reslab.runs import run_folders
from reslab.sweeps import job_folders, never_started

ERRORS = ("train/error", "val/error", "test/error")
# What status.json adds to a job's status in the table: its key, and how it is said.
SAID = {"diverged_at": " at {}", "ended_by_slurm": " ({})", "not_requeued": " (not requeued)"}
OFFLINE_RUNS = "*/wandb/offline-run-*"  # of a sweep's jobs under WANDB_MODE=offline
SEARCH_RESULTS = "optimization_results.yaml"  # a search's best trial (Hydra's optuna sweeper)


def sweep_table(sweep_dir: Path) -> Table:
    """One row per run folder of the sweep: network, status, iterations, final errors, time."""
    table = Table(title=f"reslab sweep: {sweep_dir}")
    for column in ("run", "status", "iterations", *ERRORS, "seconds"):
        table.add_column(column, justify="left" if column in ("run", "status") else "right")
    for folder in run_folders(sweep_dir):
        status = read_status(folder)
        said = "".join(text.format(status[key]) for key, text in SAID.items() if key in status)
        table.add_row(
            folder.name,
            status.get("status", "?") + said,
            str(status.get("iterations", "")),
            *(f"{status[k]:.2f}" if status.get(k) is not None else "" for k in ERRORS),
            str(status.get("seconds", "")),
        )
    return table


class SweepFailed(SystemExit):
    """Some jobs of a sweep failed (the others ran to their end): a SystemExit, since Hydra
    turns a callback's other exceptions into warnings; the command exits with status 1."""


class SweepSummary(Callback):
    """Remembers the sweep this process runs; when it ends, however it ends (Hydra's sweeper
    raises the first failed job's error after the others ran), :func:`conclude` says how."""

    config: DictConfig | None = None  # the running sweep's (hydra.sweep.dir as claimed)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepSummary.config = config

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        SweepSummary.config = None
        conclude(Path(config.hydra.sweep.dir))


def running_sweep() -> Path | None:
    """The folder of the sweep this process started and has not concluded, if any."""
    config, SweepSummary.config = SweepSummary.config, None
    return None if config is None else Path(config.hydra.sweep.dir)


def conclude(sweep_dir: Path) -> None:
    """Waits for a SLURM sweep's jobs, prints :func:`sweep_table`, raises :class:`SweepFailed`
    naming failed and unfinished jobs (diverged ones are results) and how to finish the sweep."""
    from reslab.run_lock import say_killed
    from reslab.slurm import say_how_slurm_ended

    if not sweep_dir.is_dir():
        return
    sweep_dir = sweep_dir.absolute()  # the command it prints works from any folder
    quoted = shlex.quote(str(sweep_dir))
    say_how_slurm_ended(sweep_dir)
    for folder in run_folders(sweep_dir):  # a job killed without a word (a joblib worker)
        say_killed(folder)
    never = [f"{waiting} never started"] if (waiting := never_started(sweep_dir)) else []
    console = Console()
    console.width = max(console.width, 110)  # logs and pipes get 80 columns otherwise
    console.print(sweep_table(sweep_dir))
    if any(sweep_dir.glob(OFFLINE_RUNS)):
        print(f"[reslab] to upload the offline wandb runs: wandb sync {quoted}/{OFFLINE_RUNS}")
    if (results := sweep_dir / SEARCH_RESULTS).is_file():  # Hydra's optuna sweeper's
        print(f"[reslab] {best_trial(sweep_dir, yaml.safe_load(results.read_text()))}")
    states = {f.name: read_status(f).get("status") for f in run_folders(sweep_dir)}
    failed = [name for name, state in states.items() if state == "failed"]
    ended = ("finished", "diverged", "failed")
    stopped = [f"{name} ({state})" for name, state in states.items() if state not in ended]
    said = []
    if failed:
        said.append(f"{len(failed)} job(s) of the sweep failed: {', '.join(failed)} (their "
                    "status.json and error.txt say why); the other jobs ran to their end")
    if stopped or never:
        said.append(f"{len(stopped) + waiting} job(s) did not finish: "
                    f"{', '.join([*stopped, *never])}; finish the sweep: reslab-resume {quoted}")
    if said:
        raise SweepFailed("[reslab] " + "; ".join(said))


def best_trial(sweep_dir: Path, results: dict[str, Any]) -> str:
    """The search's best trial as ``optimization_results.yaml`` gives it, with its folder."""
    params = {k: str(v) for k, v in (results.get("best_params") or {}).items()}
    said = " ".join(f"{k}={v}" for k, v in params.items())
    if found := [f for f, ran in job_folders(sweep_dir).items() if params.items() <= ran.items()]:
        said += f" ({found[0].name})"
    return f"best trial: {said}: objective {results.get('best_value')} ({SEARCH_RESULTS})"
