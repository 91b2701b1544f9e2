"""``reslab-resume SWEEP_FOLDER`` finishes a sweep: its own command and launcher with
``hydra/sweeper=resume`` (hydra_plugins/reslab_sweeper), which leaves every finished job's folder
untouched and launches the others in their own folders with ``ckpt_path=last``."""

import itertools
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from reslab.run_folder import OVERRIDES_FILE

SWEEP_FILE = "multirun.yaml"  # Hydra's record of the sweep: its config and overrides
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
RESUME_SWEEPER = "hydra_plugins.reslab_sweeper.ResumeSweeper"  # conf/hydra/sweeper/resume.yaml
_OWN = ("hydra.sweep.dir", "hydra.mode", "hydra/sweeper")  # the resume command sets them itself


class ResumeRefused(ValueError):
    """Every job ``reslab-resume SWEEP_FOLDER`` would launch is refused: nothing ran or changed."""


def expand(parser: OverridesParser, lines: list[str]) -> list[list[str]]:
    """The jobs of ``lines`` as Hydra's basic sweeper numbers them (``BasicSweeper.
    split_arguments``, pinned by tests/test_upstream.py): one list of overrides per job, the
    product of the comma lists, a key given again keeping its first place and its last value."""
    values: dict[str, list[str]] = {}
    for override in parser.parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            values[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*values.values())]


def job_folders(sweep_dir: Path) -> dict[Path, dict[str, str]]:
    """The sweep's job folders and each one's overrides (a resume's too; a key's last one wins)."""
    found = {}
    for path in sorted(sweep_dir.glob(f"*/{OVERRIDES_FILE}")):
        lines = yaml.safe_load(path.read_text()) or []
        found[path.parent.parent] = dict(str(o).split("=", 1) for o in lines if "=" in str(o))
    return found


def folders_of(jobs: list[list[str]], sweep_dir: Path) -> list[Path | None]:
    """Each job's folder (None when it has none yet), told apart by the values of the keys
    the sweep varies (a resume's added overrides do not hide a job's folder)."""
    values = [dict(o.split("=", 1) for o in job) for job in jobs]
    swept = {k for k in values[0] if len({v.get(k) for v in values}) > 1} if values else set()
    folders = job_folders(sweep_dir)
    return [
        next((f for f, ran in folders.items() if all(ran.get(k) == job[k] for k in swept)), None)
        for job in values
    ]


def is_sweep_folder(folder: Path) -> bool:
    """A sweep's folder: Hydra's record of it (a basic sweep's ``multirun.yaml``) or job folders
    (a search's, which Hydra's optuna sweeper leaves without that record), and not a run."""
    run = (folder / "status.json").is_file()
    return not run and ((folder / SWEEP_FILE).is_file() or any(folder.glob(f"*/{OVERRIDES_FILE}")))


def _sweeper(sweep_dir: Path) -> str | None:
    """The sweeper of the sweep in ``sweep_dir`` (``multirun.yaml``'s, else a job's)."""
    for record in [sweep_dir / SWEEP_FILE, *sorted(sweep_dir.glob("*/.hydra/hydra.yaml"))]:
        if record.is_file():
            return OmegaConf.select(OmegaConf.load(record), "hydra.sweeper._target_")
    return None


def _jobs(sweep: Any) -> list[list[str]]:
    params = as_written(OmegaConf.select(sweep, "hydra.sweeper.params")) or {}
    lines = [f"{k}={v}" for k, v in params.items()] + as_written(sweep.hydra.overrides.task)
    return expand(OverridesParser.create(), lines)


def sweep_resume_command(
    sweep_dir: str | Path, extra: list[str] | None = None
) -> tuple[list[str], Path]:
    """The ``reslab-train -m`` command that finishes the sweep in ``sweep_dir`` (its first start's,
    :func:`first_start`, then ``extra`` and ``hydra/sweeper=resume``) and the folder to run it
    in. ValueError for a search (its trials are drawn as it runs), and for an ``extra`` of a key
    the sweep varies or that the resume sets itself."""
    sweep_dir = Path(sweep_dir).expanduser().absolute()
    target = _sweeper(sweep_dir)
    if target not in (BASIC_SWEEPER, RESUME_SWEEPER) or not (sweep_dir / SWEEP_FILE).is_file():
        raise ValueError(
            f"{sweep_dir} is a search ({target}): its trials are drawn as it runs, so it cannot "
            "be finished job by job; resume a trial with reslab-resume TRIAL_FOLDER, or start "
            "the search again"
        )
    sweep = OmegaConf.load(sweep_dir / SWEEP_FILE)
    jobs = [dict(o.split("=", 1) for o in job) for job in _jobs(sweep)]
    swept = {k for k in jobs[0] if len({job.get(k) for job in jobs}) > 1}
    parsed = OverridesParser.create().parse_overrides(list(extra or []))
    if given := [o.input_line for o in parsed if o.is_sweep_override() or o.key_or_group in swept]:
        raise ValueError(
            f"{' '.join(given)}: the sweep in {sweep_dir} varies {', '.join(sorted(swept))} "
            "itself; reslab-resume SWEEP_FOLDER takes overrides of the other keys, for every "
            "job (optim.max_steps=...), and no new sweep values"
        )
    if moved := [o.input_line for o in parsed if o.key_or_group.lstrip("+~") in _OWN]:
        raise ValueError(
            f"{' '.join(moved)}: reslab-resume finishes the sweep in {sweep_dir} itself, with "
            "its own sweeper; to finish it elsewhere, move the folder and resume it there"
        )
    config_dir, hydra_overrides, cwd = first_start(sweep_dir / SWEEP_FILE, _OWN)
    task = [o for o in as_written(sweep.hydra.overrides.task) if not o.startswith("ckpt_path=")]
    command = [
        sys.executable, "-m", "reslab.cli", "-m", *config_dir, *hydra_overrides, *task,
        *(extra or []), f"hydra.sweep.dir={hydra_quoted(sweep_dir)}", "hydra/sweeper=resume",
    ]  # fmt: skip
    return command, cwd


def never_started(sweep_dir: Path) -> int:
    """How many jobs of the basic sweep in ``sweep_dir`` have no folder yet; 0 for a search (its
    trials are drawn as it runs) or a sweep of globs (only Hydra's config loader expands them)."""
    if _sweeper(sweep_dir) != BASIC_SWEEPER or not (sweep_dir / SWEEP_FILE).is_file():
        return 0
    try:
        jobs = _jobs(OmegaConf.load(sweep_dir / SWEEP_FILE))
    except Exception:
        return 0
    return sum(folder is None for folder in folders_of(jobs, sweep_dir))


def first_start(hydra_file: Path, drop: tuple[str, ...]) -> tuple[list[str], list[str], Path]:
    """From a run's ``.hydra/hydra.yaml`` or a sweep's ``multirun.yaml``: its ``--config-dir``, its
    ``hydra.*`` overrides (``hydra.job.chdir``, the launcher, ...) but those of ``drop``, and the
    folder it started in (relative paths resolve there again)."""
    hydra = OmegaConf.load(hydra_file).hydra if hydra_file.is_file() else OmegaConf.create()
    sources = OmegaConf.select(hydra, "runtime.config_sources") or []
    config_dir = [f"--config-dir={s.path}" for s in sources if s.provider == "command-line"]
    overrides = [
        o for o in as_written(OmegaConf.select(hydra, "overrides.hydra")) or []
        if not o.lstrip("+~").startswith(drop)
    ]  # fmt: skip
    cwd = Path(str(OmegaConf.select(hydra, "runtime.cwd") or "."))
    return config_dir, overrides, cwd if cwd.is_dir() else Path.cwd()


def as_written(node: Any) -> Any:
    """A list or dict of Hydra's record as the user wrote it: an override's interpolation
    (``hydra.sweep.subdir=lr${optim.lr}``) stays one (OmegaConf resolves a value as it is read)."""
    return None if node is None else OmegaConf.to_container(node, resolve=False)


def hydra_quoted(path: Path) -> str:
    """``path`` as a value of Hydra's override grammar."""
    text = str(path)
    quoted = "'" + text.replace("'", "\\'") + "'"  # the grammar's escaped quote: \'
    return quoted if any(c in text for c in " ,=[]{}()'\"\\$:") else text
