"""The ``reslab-*`` commands' entry points, and the one line a user reads when input is bad
(``reslab-train: error: model.depth=21 is not valid; valid: ...``): reslab sets
``HYDRA_FULL_ERROR=1`` so that Hydra raises; a user who sets it gets every traceback."""

import difflib
import math
import os
import pickle
import re
import shlex
import signal
import string
import sys
import textwrap
import threading
import traceback
from contextlib import suppress
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from reslab import run_folder
from reslab.config import CONFIG_DIR, CONFIG_NAME, config_groups, register_resolvers

PROG = "reslab-train"
FULL_ERROR_HINT = "(HYDRA_FULL_ERROR=1 shows the full traceback)"
# Set beside HYDRA_FULL_ERROR when reslab, not the user, set it (child processes inherit both).
_SET_BY_RESLAB = "RESLAB_SET_HYDRA_FULL_ERROR"

GROUPS = {
    "model": "network family: cifar (depth 6n+2, section 4.2) or imagenet (18-152, Table 1)",
    "shortcut": "none: the plain net; A: zero-padding identity; B: projections where "
    "dimensions grow; C: all projections",
    "data": "the dataset, in its real format (CIFAR pickles, idx files, JPEG folders)",
    "optim": "the paper's recipes: SGD, lr 0.1, schedules in iterations, the 110-layer warm-up",
    "trainer": "where it runs: cpu, gpu, ddp (one node, N GPUs), multinode (SLURM)",
    "speed": "eager (fp32) or fast (bf16, compile, CUDA graphs): how fast, never what it learns",
    "logger": "wandb (+ metrics.csv; offline without a key) or csv alone",
    "callbacks": "checkpoints (last.ckpt), the progress bar, the divergence guard",
    "experiment": "a figure or table of the paper as a ready multirun over net=NAME",
    "debug": "smoke: a few iterations on a few images, for checking",
    "hydra/help": "reslab: this text (--hydra-help is Hydra's own help)",
    "hydra/launcher": "where sweep jobs run (default: one after another here): local (in "
    "parallel, joblib) or slurm (one SLURM job each, submitit)",
}


def help_text() -> str:
    """reslab-train's --help: conf/hydra/help/reslab.yaml's template, each config group with its
    choices (the default in []) and what it is for."""
    defaults = {}
    for entry in OmegaConf.load(Path(CONFIG_DIR) / f"{CONFIG_NAME}.yaml").defaults:
        if isinstance(entry, DictConfig):  # (not _self_)
            defaults.update({key.removeprefix("override "): v for key, v in entry.items()})
    lines = []
    for group, choices in config_groups().items():
        shown = [f"[{c}]" if c == defaults.get(group) else c for c in choices]
        lines.append(f"  {group:<16}{', '.join(shown)}")
        if group in GROUPS:
            lines.append(textwrap.fill(GROUPS[group], 98, initial_indent=" " * 18,
                                       subsequent_indent=" " * 18))  # fmt: skip
    template = OmegaConf.load(Path(CONFIG_DIR) / "hydra" / "help" / "reslab.yaml").template
    return string.Template(template).substitute(APP_CONFIG_GROUPS="\n".join(lines))


# --- the Hydra task ------------------------------------------------------------------------------
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=CONFIG_NAME)
def hydra_task(cfg: DictConfig) -> float:
    """One job of ``reslab-train``: the checks, then the run (reslab.launch: alone in its own
    process when a multirun job's DDP ranks need it). A failure is recorded in the run folder; in
    a sweep it is the job's alone (its traceback beside it) and a ``JobFailed`` for Hydra."""
    from reslab import console
    from reslab.checks import check_run
    from reslab.launch import run_ddp_job_alone
    from reslab.train import record_failure, train  # record_failure: reslab.record's

    console.quiet_third_party()  # before the first Trainer is built
    output_dir = Path(cfg.paths.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        check_run(cfg)
        metric = run_ddp_job_alone(cfg)
        metric = train(cfg) if metric is None else metric
    except BaseException as err:
        name = OmegaConf.select(cfg, "name", throw_on_resolution_failure=False)  # None: bad model
        record_failure(output_dir, name, err)  # train() and the DDP job say theirs
        if not multirun or _user_full_error() or not isinstance(err, Exception):
            raise
        trace = output_dir / run_folder.ERROR_FILE
        trace.write_text(traceback.format_exc())
        said = f"{name or output_dir.name}: failed: {type(err).__name__}: {explain(err) or err}"
        print(f"[reslab] {said} (traceback: {trace})", flush=True)
        raise JobFailed(said) from None
    if multirun and math.isnan(metric):  # diverged: no result, a failed trial for a search
        raise JobFailed(f"{cfg.name}: diverged (status.json in {output_dir})", diverged=True)
    return metric


class JobFailed(Exception):
    """A sweep job that has no result (failed or ``diverged``): Hydra's JobReturn is FAILED, a
    search records a failed trial, and the sweep's other jobs run on (reslab.sweep_summary)."""

    def __init__(self, said: str, diverged: bool = False) -> None:
        super().__init__(said)
        self.diverged = diverged


# --- the commands --------------------------------------------------------------------------------
def _user_full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and not os.environ.get(_SET_BY_RESLAB)


def train_main() -> None:
    """``reslab-train``: Hydra's command line around :func:`hydra_task`. Bad input (a config
    that does not compose, a bad value, missing or broken data) prints ``reslab-train: error:
    <message>`` and exits with status 1, without a traceback; other errors keep theirs."""
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(help_text(), end="")
        return
    register_resolvers()
    # Imported before Hydra configures the root logger, Lightning keeps its own console
    # handler (its device and progress lines once, not again through Hydra's handler).
    import reslab.train  # noqa: F401
    from reslab.provenance import COMMAND_ENV
    from reslab.signals import RunInterrupted, interrupt_now
    from reslab.slurm import quiet_slurm_polling

    quiet_slurm_polling()  # a SLURM sweep without accounting: squeue, not sacct's errors
    if threading.current_thread() is threading.main_thread():  # outside training, too
        for signum in (signal.SIGTERM, signal.SIGINT):  # (Lightning's Ctrl-C would exit 1)
            signal.signal(signum, interrupt_now)
    own_command = COMMAND_ENV not in os.environ  # what a sweep's jobs record as their command
    os.environ.setdefault(COMMAND_ENV, shlex.join(sys.orig_argv))
    full = _user_full_error()  # the user's HYDRA_FULL_ERROR=1: every traceback, as Hydra's
    if not full:  # Hydra raises the error instead of printing its part; we say it in a line
        os.environ.update({"HYDRA_FULL_ERROR": "1", _SET_BY_RESLAB: "1"})
    try:
        try:
            hydra_task()
        except BaseException as err:
            _end_sweep(err)
            raise
    except RunInterrupted as err:  # SIGINT, SIGTERM: checkpoint and status.json written
        sys.exit(err.exit_code)
    except BrokenPipeError:  # its output went to a pipe that closed: reslab-train --cfg | head
        if full:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        if full:
            raise
        sys.stderr.write(f"{PROG}: interrupted\n")
        sys.exit(130)
    except Exception as err:
        message = None if full else explain(err)
        if message is None:
            raise
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: error: {message}\n{FULL_ERROR_HINT}\n")  # line-buffered
        sys.exit(1)
    finally:  # for this process's next command (tests); its children have theirs
        for key in [*(() if full else ("HYDRA_FULL_ERROR", _SET_BY_RESLAB)),
                    *((COMMAND_ENV,) if own_command else ())]:  # fmt: skip
            os.environ.pop(key, None)


def _end_sweep(err: BaseException) -> None:
    """A sweep that stopped on ``err`` (a failed job's, a signal, SLURM's): its table, its exit."""
    from submitit.core.utils import UncompletedJobError

    from reslab.signals import RunInterrupted
    from reslab.sweep_summary import SweepFailed, conclude, running_sweep
    from reslab.sweeps import ResumeRefused

    sweep = running_sweep()
    if sweep is None or isinstance(err, ResumeRefused):  # nothing ran: its one line says why
        return
    failed = None
    try:
        conclude(sweep)
    except SweepFailed as raised:
        failed = raised
    if isinstance(err, (RunInterrupted, KeyboardInterrupt)):  # the signal's exit code follows
        if failed:
            print(failed, file=sys.stderr)
        return
    # the launcher's own error (a job's config that did not compose), said after the table; not
    # submitit's for a job SLURM ended (the table says how: CANCELLED, TIMEOUT, ...)
    if isinstance(err, Exception) and not isinstance(err, (JobFailed, UncompletedJobError)):
        if _user_full_error():
            traceback.print_exception(err)
        else:
            said = explain(err) or f"{type(err).__name__}: {_first_lines(str(err), 2)}"
            sys.stderr.write(f"{PROG}: error: the sweep stopped: {said}\n")
        raise failed or SystemExit(1)
    if failed:
        raise failed
    if isinstance(err, JobFailed):  # no job's status.json says failed
        if not err.diverged:  # (a resume's extension refused: its folder put back)
            print(f"[reslab] a job was refused and left as it was: {err}", file=sys.stderr)
        raise SystemExit(0 if err.diverged else 1)  # diverged jobs: results the table shows


def resume_main(argv: list[str] | None = None) -> None:
    """``reslab-resume FOLDER [overrides]``: continue a stopped run where its last checkpoint
    stands (same folder, same metrics.csv and wandb run; iteration 0 when it stopped before
    one), or extend a finished one (a higher optim.max_steps). The folder is left as it is,
    every file, when its checkpoint is damaged, and when the run has finished with nothing
    more to train. A sweep's folder: its unfinished jobs run on (reslab.sweeps), through the
    launcher it used; finished jobs are left as they are."""
    from reslab.resume import resume_command, resume_done
    from reslab.sweeps import is_sweep_folder, sweep_resume_command

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        usage = "usage: reslab-resume RUN_OR_SWEEP_FOLDER [overrides ...]"
        print(f"{usage}\n\n{resume_main.__doc__ or ''}")
        raise SystemExit(0 if args else 2)
    register_resolvers()
    try:
        if is_sweep_folder(Path(args[0])):
            command, cwd = sweep_resume_command(args[0], args[1:])
        else:
            command, cwd = resume_command(args[0], args[1:])
            with suppress(HydraException):  # overrides that do not compose: reslab-train says why
                if done := resume_done(args[0], args[1:]):
                    print(f"reslab-resume: {done}")
                    raise SystemExit(0)
    except (FileNotFoundError, ValueError, HydraException) as err:  # (HydraException: a sweep's)
        print(f"reslab-resume: error: {explain(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    sys.stdout.flush()
    os.chdir(cwd)  # where it first started: relative paths resolve as they did
    os.execv(sys.executable, command)  # the trainer is this process: every signal reaches it


# --- the short message ---------------------------------------------------------------------------
# Other libraries' wording that explain() reads where no attribute holds it, each pinned by
# tests/test_upstream.py.
_OVERRIDE = re.compile(r"Could not override '([^']+)'")
_FULL_KEY = re.compile(r"full_key: (\S+)")
_TARGET = re.compile(r"target '([^']+)'")
_WEIGHTS_ONLY = "Weights only load failed"
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+)")
_WORKER_TRACEBACK = "Traceback (most recent call last)"


def explain(err: BaseException) -> str | None:
    """The message ``reslab-train`` prints for ``err``: one or a few lines naming the bad
    value and the valid choices. None for an error that is not about the input (a bug, a
    crash): that one keeps its traceback."""
    if isinstance(err, MissingConfigException):
        return _explain_missing_config(err)
    if isinstance(err, ConfigCompositionException):
        return _explain_override(err)
    if isinstance(err, OverrideParseException):
        return f"cannot parse the overrides: {_first_lines(str(err), 2)}"
    if isinstance(err, InstantiationException):
        return _explain_instantiation(err)
    if isinstance(err, HydraException):
        return _first_lines(str(err), 3)
    if isinstance(err, OmegaConfBaseException):
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ValueError):  # a resolver's refusal (a bad net= name)
            return _first_lines(str(cause), 3)
        first = _first_lines(str(err), 1)
        key = getattr(err, "full_key", None)
        return f"{first} (config key {key})" if key and str(key) not in first else first
    if isinstance(err, pickle.UnpicklingError):
        return _explain_unpickling(err)
    from lightning.fabric.utilities.exceptions import MisconfigurationException  # slow import

    if isinstance(err, (ValueError, MisconfigurationException, FileNotFoundError,
                        NotADirectoryError, IsADirectoryError, PermissionError)):  # fmt: skip
        return _worker_error(str(err)) or type(err).__name__
    return None


def _explain_missing_config(err: MissingConfigException) -> str:
    missing = err.missing_cfg_file or ""
    if err.options is None or "/" not in missing:
        return _first_lines(str(err), 1)
    group, _, choice = missing.rpartition("/")
    options = [str(o) for o in err.options]
    close = difflib.get_close_matches(choice, options, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(f'{group}={c}' for c in close)}?)" if close else ""
    valid = ", ".join(options)
    return f"{group}={choice} is not a choice{hint}; valid choices for {group}: {valid}"


def _explain_override(err: ConfigCompositionException) -> str:
    cause, match = err.__cause__, _OVERRIDE.match(str(err))
    if (
        match is None
        or not isinstance(cause, (ConfigKeyError, ConfigAttributeError))
        or not isinstance(cause.parent_node, DictConfig)
    ):
        return _first_lines(str(err), 3)
    override = match.group(1)
    bad = str(cause.full_key or override)
    parent, _, key = bad.rpartition(".")
    valid = [str(k) for k in cause.parent_node]
    if not parent:  # at the top: config groups are chosen there too (shortcut=A, debug=smoke)
        valid = sorted(set(valid) | {g.split("/")[0] for g in config_groups()})
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if rest := override[len(bad) + 1 :].split(".")[0]:  # modle.depth: model has a depth
        children = OmegaConf.to_container(cause.parent_node, resolve=False)
        inside = [c for c in close if isinstance(children.get(c), dict) and rest in children[c]]
        close = inside or close
    full = [f"{parent}.{c}" if parent else c for c in close[:2]]
    hint = f"; did you mean {' or '.join(repr(f) for f in full)}?" if full else ""
    where = f"valid keys under {parent}" if parent else "valid top-level keys and groups"
    of = f" (in {override}=...)" if override != bad else ""
    return f"unknown config key '{bad}'{of}{hint} {where}: {', '.join(valid)}"


def _explain_instantiation(err: InstantiationException) -> str:
    key, target = _FULL_KEY.search(str(err)), _TARGET.search(str(err))
    where = key.group(1) if key else "instantiating the config"
    if key and target:
        where += f" ({target.group(1)})"
    if (cause := err.__cause__) is not None:
        return f"{where}: {explain(cause) or f'{type(cause).__name__}: {cause}'}"
    return f"{where}: {_first_lines(str(err), 2)}"


def _explain_unpickling(err: pickle.UnpicklingError) -> str:
    text = str(err)
    if (unsafe := _UNSAFE_GLOBAL.search(text)) or _WEIGHTS_ONLY in text:
        what = f"it refers to {unsafe.group(1)}" if unsafe else "it holds objects beyond tensors"
        return f"a checkpoint is not safe to load: {what}; refusing to load it"
    return _first_lines(text, 2)


def _worker_error(text: str) -> str:
    """A DataLoader worker's error carries its traceback: the last line, without the type."""
    if _WORKER_TRACEBACK not in text:
        return text.strip()
    last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last)


def _first_lines(text: str, n: int) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:n])


if __name__ == "__main__":
    train_main()
