"""Bad input, said in a line: the checks that make a run fail before it starts, and the short
message ``reslab-train`` prints for an error instead of a traceback.

Train-level like train.py (it reads Hydra's exceptions): nothing below train.py imports it.

    reslab-train model.depth=21
    reslab-train: error: CIFAR depth 21 is not of the form 6n+2 with n >= 1; valid depths are ...
    (HYDRA_FULL_ERROR=1 shows the full traceback)

``HYDRA_FULL_ERROR=1`` gives the whole traceback instead, as Hydra does.
"""

from __future__ import annotations

import difflib
import os
import pickle
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

PROG = "reslab-train"
FULL_ERROR_HINT = "(HYDRA_FULL_ERROR=1 shows the full traceback)"
# ckpt_path values Lightning resolves itself rather than as a file
_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")
_CKPT_CHOICES = (
    "a checkpoint file (such as <run folder>/checkpoints/last.ckpt), last (this run folder's "
    "own last checkpoint) or null (start afresh)"
)
# The optimizer's numbers a user sets, their valid range and the paper's values.
_OPTIMIZER_NUMBERS = {
    "lr": "a learning rate: a number >= 0 (the paper's: 0.1, or 0.01 while warming up)",
    "momentum": "a momentum: a number >= 0 (the paper's: 0.9)",
    "weight_decay": "a weight decay: a number >= 0 (the paper's: 1e-4)",
}


class ConfigError(ValueError):
    """A setting that cannot work, named with its valid choices."""


class UnsafeCheckpointError(ConfigError):
    """A checkpoint that refers to Python objects a reslab checkpoint never holds."""


# --- checks before a run starts --------------------------------------------------------------
def check_run(cfg: DictConfig) -> None:
    """Everything about ``cfg`` that can be checked without loading data or training: the
    checkpoint to resume from, the devices, the data, network and module arguments (the
    network is built on the meta device: no memory, no weights), the optimizer's numbers and
    the scheduler. Raises a ``ValueError`` (or ``FileNotFoundError``) that names the bad
    setting and its valid choices."""
    from reslab.train import instantiate  # train.py imports this module

    check_ckpt_path(cfg.get("ckpt_path"))
    check_devices(cfg.trainer)
    datamodule = instantiate(cfg.data)  # the constructor checks its arguments; nothing loads
    try:
        with torch.device("meta"):
            net = instantiate(
                cfg.model, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels
            )
    except (ValueError, FileNotFoundError, InstantiationException):
        raise
    except Exception:  # something the meta device cannot do: train() builds it for real
        net = torch.nn.Identity()
    check_optimizer_numbers(cfg)
    module = instantiate(cfg.module, net=net)
    make_optimizer = getattr(module, "optimizer_factory", None)
    if make_optimizer is None:
        return
    try:
        optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        key = _source_key(cfg, "module.optimizer")
        raise ConfigError(f"{key} ({_target(cfg)}): {err}") from err
    if (make_scheduler := getattr(module, "scheduler_factory", None)) is not None:
        try:
            make_scheduler(optimizer)
        except (ValueError, TypeError) as err:
            key = _source_key(cfg, "module.scheduler")
            target = OmegaConf.select(cfg, "module.scheduler._target_")
            raise ConfigError(f"{key} ({target}): {err}") from err


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
        raise FileNotFoundError(f"ckpt_path={text} does not exist; valid: {_CKPT_CHOICES}")
    if not path.is_file():
        last = path / "checkpoints" / "last.ckpt"
        hint = f" (did you mean ckpt_path={last}?)" if last.is_file() else ""
        raise ConfigError(
            f"ckpt_path={text} is a folder, not a checkpoint file{hint}; valid: {_CKPT_CHOICES}"
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
    Empty when torch cannot tell (an old torch, or not a zip checkpoint): loading decides."""
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if find is None:
        return []
    try:
        return list(find(str(path)))
    except Exception:  # not a torch zip file: torch.load says what is wrong with it
        return []


def check_devices(trainer: DictConfig) -> None:
    """A GPU trainer needs as many GPUs as ``trainer.devices`` asks for, here."""
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator not in ("gpu", "cuda"):
        return
    devices = trainer.get("devices", "auto")
    available = torch.cuda.device_count()
    if available == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator} (trainer.devices={devices}) needs a GPU, but "
            "this machine has none (torch.cuda.device_count() is 0); valid here: trainer=cpu"
        )
    wanted = _gpu_indices(devices)
    if wanted is None:
        return
    if isinstance(wanted, int):
        if wanted > available:
            raise ConfigError(
                f"trainer.devices={devices} asks for {wanted} GPUs, but this machine has "
                f"{available}; valid: trainer.devices from 1 to {available}, or auto"
            )
    elif missing := [i for i in wanted if i >= available]:
        raise ConfigError(
            f"trainer.devices={devices} names GPU {', '.join(map(str, missing))}, but this "
            f"machine has {available} (indices 0 to {available - 1}); valid: a count from 1 to "
            f"{available}, a list of indices below {available}, or auto"
        )


def _gpu_indices(devices: Any) -> int | list[int] | None:
    """A GPU count (int), GPU indices (list), or None for auto / -1 / anything else."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, str):
        text = devices.strip()
        if re.fullmatch(r"\d+", text):
            return int(text) if int(text) > 0 else None
        if re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", text):
            return [int(i) for i in text.split(",") if i.strip()]
        return None
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        items = list(devices)
        if all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            return items
    return None


def check_optimizer_numbers(cfg: DictConfig) -> None:
    """lr, momentum and weight decay of the optimizer are numbers >= 0, named by the key the
    user sets (``optim.lr``, not the optimizer's interpolation of it)."""
    optimizer = OmegaConf.select(cfg, "module.optimizer")
    if not isinstance(optimizer, DictConfig):
        return
    for key, what in _OPTIMIZER_NUMBERS.items():
        if key not in optimizer:
            continue
        value = optimizer[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or value < 0 or value != value:  # value != value: nan
            name = _source_key(cfg, f"module.optimizer.{key}")
            raise ConfigError(f"{name}={value} is not {what}")


def _target(cfg: DictConfig) -> str:
    return str(OmegaConf.select(cfg, "module.optimizer._target_", default="?"))


def _source_key(cfg: DictConfig, key: str) -> str:
    """The key a user sets for ``key``: interpolations such as ``module.optimizer`` →
    ``${optim.optimizer}`` and ``optim.optimizer.lr`` → ``${optim.lr}`` followed to the end."""
    for _ in range(10):  # interpolation chains are short; no cycles in a resolved config
        parts = key.split(".")
        for i in range(1, len(parts) + 1):
            parent = OmegaConf.select(cfg, ".".join(parts[: i - 1])) if i > 1 else cfg
            if not isinstance(parent, DictConfig) or parts[i - 1] not in parent:
                return key
            node = parent._get_node(parts[i - 1])
            raw = node._value() if node is not None and node._is_interpolation() else None
            match = re.fullmatch(r"\$\{([\w.]+)\}", str(raw)) if raw is not None else None
            if match:
                key = ".".join([match.group(1), *parts[i:]])
                break
        else:
            return key
    return key


# --- the short message -----------------------------------------------------------------------
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
        return _explain_omegaconf(err)
    if isinstance(err, pickle.UnpicklingError):
        return _explain_unpickling(err)
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
    cause = err.__cause__
    match = re.match(r"Could not override '([^']+)'", str(err))
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
        valid = sorted(set(valid) | set(config_groups()))
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if rest := override[len(bad) + 1 :].split(".")[0]:  # modle.depth: model has a depth
        close = [c for c in close if _has_key(cause.parent_node, c, rest)] or close
    close = close[:2]
    full = [f"{parent}.{c}" if parent else c for c in close]
    hint = f"; did you mean {' or '.join(repr(f) for f in full)}?" if close else ""
    where = f"valid keys under {parent}" if parent else "valid top-level keys and groups"
    of = f" (in {override}=...)" if override != bad else ""
    return f"unknown config key '{bad}'{of}{hint} {where}: {', '.join(valid)}"


def _has_key(node: DictConfig, key: str, sub: str) -> bool:
    try:
        child = node._get_node(key)
        return child is not None and sub in child._value()
    except Exception:  # an interpolation, a list, a missing value: no opinion
        return False


def config_groups() -> list[str]:
    """The config groups of conf/ (model, shortcut, data, ...), which a user chooses with
    ``group=option``."""
    from reslab.train import CONFIG_DIR

    root = Path(CONFIG_DIR)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _explain_instantiation(err: InstantiationException) -> str:
    match = re.search(r"full_key: (\S+)", str(err))
    key = match.group(1) if match else None
    target = re.search(r"target '([^']+)'", str(err))
    where = f"{key} ({target.group(1)})" if key and target else key or "instantiating the config"
    cause = err.__cause__
    if cause is not None:
        return f"{where}: {explain(cause) or f'{type(cause).__name__}: {cause}'}"
    return f"{where}: {_first_lines(str(err), 2)}"


def _explain_omegaconf(err: OmegaConfBaseException) -> str:
    first = _first_lines(str(err), 1)
    key = getattr(err, "full_key", None)
    return f"{first} (config key {key})" if key and str(key) not in first else first


def _explain_unpickling(err: pickle.UnpicklingError) -> str:
    text = str(err)
    unsafe = re.search(r"GLOBAL (\S+)", text)
    if unsafe or "Weights only load failed" in text:
        what = f"it refers to {unsafe.group(1)}" if unsafe else "it holds objects beyond tensors"
        return f"a checkpoint is not safe to load: {what}; refusing to load it"
    return _first_lines(text, 2)


def _worker_error(text: str) -> str:
    """An error raised in a DataLoader worker carries the worker's traceback in its message:
    keep its last line, without the exception's type name."""
    if "Traceback (most recent call last)" not in text:
        return text.strip()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else text
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())


def _first_lines(text: str, n: int) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:n])


# --- the command line ------------------------------------------------------------------------
def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def run_cli(hydra_main: Callable[[], Any], prog: str = PROG) -> None:
    """Runs a ``@hydra.main`` function as a command: bad input (a config that does not
    compose, a bad value, missing or broken data) prints ``prog: error: <message>`` and exits
    with status 1, without a traceback; other errors keep theirs. ``HYDRA_FULL_ERROR=1``
    leaves everything to Hydra (full tracebacks)."""
    if _full_error():
        hydra_main()
        return
    from hydra._internal import utils as hydra_utils

    # Hydra prints its own partial traceback for an error and exits (run_and_report); let the
    # error through instead, so that it is said here, in a line.
    report = getattr(hydra_utils, "run_and_report", None)
    if report is not None:
        hydra_utils.run_and_report = _call
    try:
        hydra_main()
    except BrokenPipeError:  # its output went to a pipe that closed: reslab-train --help | head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.exit(130)
    except Exception as err:
        message = explain(err)
        if message is None:
            raise
        sys.stdout.flush()
        sys.stderr.write(f"{prog}: error: {message}\n{FULL_ERROR_HINT}\n")
        sys.stderr.flush()
        sys.exit(1)
    finally:
        if report is not None:
            hydra_utils.run_and_report = report


def _call(func: Callable[[], Any]) -> Any:
    return func()
