"""Everything checked before a run starts, so that bad input fails before any data loads: each
value is validated where it is consumed (the network's builder, the datamodule, the Trainer,
torch's SGD); this module builds those consumers without data and names the key a user wrote."""

import collections.abc
import contextlib
import copy
import inspect
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_object
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf, open_dict

from reslab.checkpoints import check_ckpt_path
from reslab.config import instantiate
from reslab.launch import SUPPORTED_STRATEGIES, quiet_trainer, supported_strategy
from reslab.validation import is_int, require_number


def check_run(cfg: DictConfig) -> None:
    """Checks the checkpoint to resume from, every setting against the schema
    (:func:`check_schema`), the trainer (devices, strategy), the data, network (on the meta
    device) and module arguments, the optimizer and the scheduler: a ``ValueError`` (or
    ``FileNotFoundError``) names the bad setting and its valid choices. Where the schema and a
    consumer both refuse the same key, the consumer's words (with its range) are said."""
    check_ckpt_path(cfg.get("ckpt_path"))
    added = OmegaConf.select(cfg, "hydra.overrides.task")  # a sweep's job: its own overrides
    if added is None and HydraConfig.initialized():
        added = HydraConfig.get().overrides.task
    added = list(added or [])
    try:
        check_schema(cfg, added)
        wrong = None
    except ValueError as err:
        wrong = err
    try:
        _check_consumers(cfg)
    except Exception as err:  # the consumer's own words, when they are about the same key
        if wrong is None or str(err).startswith(str(wrong).split("=", 1)[0] + "="):
            if (typed := _as_typed(err, added)) is err:
                raise
            raise typed from None
        raise wrong from None
    if wrong is not None:
        raise wrong


def _as_typed(err: Exception, added: list[str]) -> Exception:
    """``err`` with its leading ``key=value`` as the user typed it: a consumer names the key its
    value comes from (optim.max_steps), where the user may have set one linked to it
    (trainer.max_steps=-1): the override of that value (of that leaf, where several are)."""
    key, sep, rest = str(err).partition("=")
    typed = dict(o.lstrip("+~").split("=", 1) for o in added if "=" in o)
    if not isinstance(err, ValueError) or not sep or " " in key or key in typed:
        return err
    value = rest.split(" ", 1)[0].rstrip(":;,")
    same = [k for k, v in typed.items() if _same(v, value)]
    same = [k for k in same if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]] or same
    return ValueError(f"{same[0]}={rest}") if len(same) == 1 else err


def _same(typed: str, said: str) -> bool:
    """Whether a value as typed and as said are one ('abc' is abc, 1e+30 is 1e30)."""
    typed, said = typed.strip("'\""), said.strip("'\"")
    try:
        return typed == said or float(typed) == float(said)
    except ValueError:
        return False


# Where a run folder's files go (reslab.run_folder's contract: reports and resumes read them there)
_IN_RUN_FOLDER = {
    "trainer.default_root_dir": ".", "logger.csv.save_dir": ".", "logger.wandb.save_dir": ".",
    "callbacks.checkpoint.dirpath": "checkpoints",
}  # fmt: skip


def _check_consumers(cfg: DictConfig) -> None:
    """The scheduler's settings, then every consumer built without data (:func:`check_run`)."""
    for key, inside in _IN_RUN_FOLDER.items():
        place = OmegaConf.select(cfg, key)
        if place is not None and Path(str(place)).absolute() != Path(cfg.paths.output_dir, inside):
            default = "${paths.output_dir}" + ("" if inside == "." else f"/{inside}")
            raise ValueError(
                f"{source_key(cfg, key)}={place!r} is not valid: a run folder holds its own files "
                f"(reports and reslab-resume read them there); valid: {default}, the default"
            )
    if is_int(seed := OmegaConf.select(cfg, "seed")) and not 0 <= seed < 2**32:  # numpy's range
        raise ValueError(f"seed={seed} is not valid; valid: an integer from 0 to {2**32 - 1}")
    gamma = OmegaConf.select(cfg, "module.scheduler.gamma")
    if gamma is not None:  # torch takes any: above 1 or below 0 the lr grows or turns
        key = source_key(cfg, "module.scheduler.gamma")
        require_number(key, gamma, 0, 1, low_open=True, note="(the lr's factor at a step)")
    steps = OmegaConf.select(cfg, "module.scheduler.milestones")
    if steps is not None and (list(steps) != sorted(set(steps)) or min(steps, default=1) < 1):
        raise ValueError(
            f"{source_key(cfg, 'module.scheduler.milestones')}={list(steps)} is not valid; "
            "valid: increasing iterations >= 1 (where the lr is multiplied by gamma)"
        )
    strategy = OmegaConf.select(cfg, "trainer.strategy", default="auto")
    if isinstance(strategy, str) and strategy not in SUPPORTED_STRATEGIES:
        raise ValueError(_strategy_error(cfg, strategy))  # before Lightning's own checks of it
    try:
        trainer = quiet_trainer(cfg.trainer)
    except (InstantiationException, ValueError) as err:  # Lightning's own checks
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        ours = isinstance(err, ValueError) and re.match(r"[\w.]+=", str(err))  # a reslab line
        if ours or not isinstance(cause, MisconfigurationException | ValueError | TypeError):
            raise
        why = " ".join(str(cause).split())  # Lightning's words, on one line
        misconfigured = isinstance(cause, MisconfigurationException)  # (devices it cannot find)
        if key := _culprit(cfg, devices=not misconfigured):  # without it, the Trainer builds
            value = OmegaConf.select(cfg, f"trainer.{key}")
            said = f"{source_key(cfg, f'trainer.{key}')}={value!r} is not valid: {why}"
            raise ValueError(said) from err
        if not misconfigured:
            raise
        gpus = torch.cuda.device_count()
        valid = "trainer=cpu" if gpus == 0 else f"trainer.devices from 1 to {gpus}, or auto"
        raise ValueError(
            f"trainer.accelerator={OmegaConf.select(cfg, 'trainer.accelerator')} with "
            f"trainer.devices={OmegaConf.select(cfg, 'trainer.devices')} cannot run here ({why}); "
            f"this machine has {gpus} GPUs; valid here: {valid}"
        ) from err
    if not supported_strategy(trainer):
        raise ValueError(_strategy_error(cfg, type(trainer.strategy).__name__))
    sync = OmegaConf.select(cfg, "trainer.sync_batchnorm") is True  # (DDP converts, 1 rank too)
    if sync and trainer.strategy.root_device.type == "cpu":  # (torch fails at the first batch)
        raise ValueError(
            f"{source_key(cfg, 'trainer.sync_batchnorm')}=true needs GPUs: torch's "
            "SyncBatchNorm runs on CUDA devices only; valid on CPUs: false"
        )
    datamodule = instantiate(cfg.data)  # the constructor checks its arguments; nothing loads
    if hasattr(datamodule, "check_processes"):  # a dataset whose evaluation shards need images
        datamodule.check_processes(trainer.world_size)
    with torch.device("meta"):
        net = instantiate(
            cfg.model, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels
        )
    module = instantiate(cfg.module, net=net)
    if hasattr(module, "check_datamodule"):  # what the module needs of its data's loaders
        module.check_datamodule(datamodule)
    for group in ("logger", "callbacks"):  # each entry a consumer's config, or null
        for name, node in (cfg.get(group) or {}).items():
            if node is not None and not OmegaConf.is_dict(node):
                raise ValueError(f"{source_key(cfg, f'{group}.{name}')}={node!r} is not valid; "
                                 "valid: a config with a _target_, or null")  # fmt: skip
    if OmegaConf.select(cfg, "logger.wandb") is not None:
        _check_wandb(cfg)
    for callback in cfg.callbacks.values():  # their constructors check their arguments
        if callback is not None:
            instantiate(callback)
    try:
        optimizer = module.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:  # torch's words, with the key the user set
        target = OmegaConf.select(cfg, "module.optimizer._target_", default="?")
        said = f"{source_key(cfg, 'module.optimizer')} ({target}): {err}"
        for argument in ("lr", "momentum", "weight_decay", "dampening"):  # a negative one's
            value = OmegaConf.select(cfg, f"module.optimizer.{argument}")
            if isinstance(value, int | float) and value < 0:
                key = source_key(cfg, f"module.optimizer.{argument}")
                said = f"{key}={value} is not valid; valid: a number >= 0 ({target}: {err})"
                break
        raise ValueError(said) from err
    if module.scheduler_factory is not None:
        try:
            module.scheduler_factory(optimizer)
        except (ValueError, TypeError) as err:
            target = OmegaConf.select(cfg, "module.scheduler._target_")
            raise ValueError(f"{source_key(cfg, 'module.scheduler')} ({target}): {err}") from err


def _check_wandb(cfg: DictConfig) -> None:
    """wandb's own checks of the run's name, tags, group and project (its ``Settings``), before
    the data loads; its words, with the key the user set."""
    import pydantic
    import wandb

    given = {key: OmegaConf.select(cfg, f"logger.wandb.{key}") for key in _WANDB_SETTINGS}
    try:
        wandb.Settings(**{_WANDB_SETTINGS[k]: v for k, v in given.items() if v is not None})
    except pydantic.ValidationError as err:  # (its errors() name the setting)
        first = err.errors()[0]
        key = next(k for k, v in _WANDB_SETTINGS.items() if v == first["loc"][0])
        raise ValueError(
            f"{source_key(cfg, f'logger.wandb.{key}')}={given[key]} is not valid: {first['msg']}"
        ) from None
    except wandb.errors.UsageError as err:  # (a project name: its words name it)
        raise ValueError(f"{source_key(cfg, 'logger.wandb.project')}: {err}") from None


# wandb.init's arguments and the wandb Settings that check them
_WANDB_SETTINGS = {
    "name": "run_name", "tags": "run_tags", "group": "run_group", "project": "project",
    "notes": "run_notes", "job_type": "run_job_type",
}  # fmt: skip


def named_setting(cfg: DictConfig, err: BaseException) -> BaseException:
    """``err`` said with the key the user set, where Lightning refuses a Trainer setting only once
    it sees the data (``trainer.limit_val_batches=0.5`` of one batch): a MisconfigurationException
    whose message names, in backticks, exactly one argument that ``cfg.trainer`` sets. Any other
    ``err`` is returned as it is. Lightning's wording is pinned in tests/test_upstream.py."""
    if not isinstance(err, MisconfigurationException):
        return err
    named = set(re.findall(r"`(\w+)(?:=[^`]*)?`", str(err))) & set(cfg.trainer)
    if len(named) != 1:
        return err
    key = f"trainer.{named.pop()}"
    why = " ".join(str(err).split())
    said = f"{source_key(cfg, key)}={OmegaConf.select(cfg, key)!r} is not valid: {why}"
    return ValueError(said)


def _culprit(cfg: DictConfig, devices: bool = False) -> str | None:
    """The one setting of the trainer whose Lightning default builds it (its accelerator and
    devices only with ``devices``)."""
    for key in (k for k in cfg.trainer if k != "_target_"):
        if not devices and key in ("accelerator", "devices"):
            continue
        without = copy.deepcopy(cfg)
        with open_dict(without.trainer):
            del without.trainer[key]
        with contextlib.suppress(Exception):  # (without a setting it needs: not this one)
            quiet_trainer(without.trainer)
            return str(key)
    return None


def _strategy_error(cfg: DictConfig, strategy: str) -> str:
    return (
        f"{source_key(cfg, 'trainer.strategy')}={strategy} is not supported: reslab runs one "
        "process, or DDP ranks that are processes of their own (started by Lightning, SLURM or "
        "torchrun; spawned ranks lose the run's iterations, logged rows and final errors); "
        f"valid: {', '.join(SUPPORTED_STRATEGIES)}"
    )


def source_key(cfg: DictConfig, key: str) -> str:
    """The key a user sets for ``key``: the one its value links to (``module.optimizer.lr`` is
    ``${optim.lr}`` in conf/, one hop; ``${oc.select:key,default}`` too), else ``key`` itself."""
    parent, _, leaf = key.rpartition(".")
    value = OmegaConf.to_container(OmegaConf.select(cfg, parent), resolve=False).get(leaf)
    link = re.fullmatch(r"\$\{(?:oc\.select:)?([\w.]+)(,[^}]*)?\}", str(value))
    return link.group(1) if link else key


# --- one schema: the consumers' signatures -------------------------------------------------------
_HYDRA_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}


def check_schema(cfg: DictConfig, added: list[str] | None = None) -> None:
    """Every setting against the signature of what consumes it (the schema of every node with a
    ``_target_``: its parameters' names and type hints, its base classes' where it forwards
    ``**kwargs``), and every key ``added`` with ``+`` (Hydra's task overrides) read by a consumer
    or an interpolation. A ``ValueError`` names the key the user sets, the value and the valid
    ones: ``data.augment='maybe' is not valid; valid: true or false``."""
    for path, node in _targets(OmegaConf.to_container(cfg, resolve=False)):
        target = str(OmegaConf.select(cfg, f"{path}._target_"))
        names, hints, free = _signature(target)
        for name in (n for n in node if n not in _HYDRA_KEYS):
            key = source_key(cfg, f"{path}.{name}")
            if name not in names and not free:
                raise ValueError(
                    f"{key} is not a setting of {path} ({target}); valid: {', '.join(names)}"
                )
            try:
                value = OmegaConf.select(cfg, f"{path}.{name}")
            except Exception:  # an interpolation's own error: its consumer's
                continue
            if OmegaConf.is_config(value):
                if "_target_" in OmegaConf.to_yaml(value):
                    continue  # consumers of their own
                value = OmegaConf.to_container(value, resolve=True)
            if name in hints and not _fits(value, hints[name]):
                raise ValueError(f"{key}={value!r} is not valid; valid: {_describe(hints[name])}")
    raw = OmegaConf.to_yaml(cfg, resolve=False) if added else ""
    for override in added or []:
        key = override.split("=", 1)[0].lstrip("+")
        if override.startswith("+") and "/" not in key and "." in key and not _read(cfg, key, raw):
            parent = OmegaConf.select(cfg, key.rpartition(".")[0])
            leaf = key.rpartition(".")[2]
            valid = ", ".join(str(k) for k in parent if k != leaf) if parent else "none"
            raise ValueError(
                f"{key} (added with +) is not a setting reslab reads; the settings of "
                f"{key.rpartition('.')[0]}: {valid}"
            )


def _targets(tree: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The nodes of ``tree`` (a config as plain dicts, unresolved) with a ``_target_``, and
    their dotted paths (a list's items by index), outermost first; an interpolation is its
    target's node, not one more."""
    found = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for name, node in items if isinstance(tree, dict | list) else ():
        here = f"{path}.{name}" if path else str(name)
        if isinstance(node, dict | list):
            found += [(here, node)] * ("_target_" in node) + _targets(node, here)
    return found


def _read(cfg: DictConfig, key: str, raw: str) -> bool:
    """True when ``key`` lies in a consumer's node or an interpolation names it."""
    parts = key.split(".")
    inside = any(
        "_target_" in (OmegaConf.select(cfg, ".".join(parts[:i])) or {})
        for i in range(1, len(parts))
    )
    return inside or re.search(r"\$\{" + re.escape(key) + r"[}.]", raw) is not None


def _signature(target: str) -> tuple[list[str], dict[str, Any], bool]:
    """A target's parameter names, their type hints (where they can be read) and whether it
    takes any keyword (``**kwargs`` that go nowhere known). A function's parameters are those
    of the class it is annotated to return, too (``reslab.loggers.wandb_logger``'s ``**kwargs``
    are ``WandbLogger``'s)."""
    obj = get_object(target)
    chain = [c.__init__ for c in obj.__mro__[:-1] if "__init__" in vars(c)] if isinstance(
        obj, type) else [obj]  # fmt: skip
    made = inspect.signature(obj).return_annotation if not isinstance(obj, type) else None
    if isinstance(made, type):  # a function's **kwargs go on to the class it returns
        chain.append(made.__init__)
    names, hints = [], {}
    for fn in chain:
        params = inspect.signature(fn).parameters
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names += [n for n, p in params.items() if p.kind in named and n not in {"self", *names}]
        space = {**vars(typing), **vars(collections.abc), **getattr(
            inspect.unwrap(fn), "__globals__", {})}  # fmt: skip
        for n, p in params.items():
            if n not in hints and isinstance(p.annotation, str):
                with contextlib.suppress(Exception):
                    hints[n] = eval(p.annotation, space)  # the library's own hint, in its module
            elif n not in hints and p.annotation is not p.empty:
                hints[n] = p.annotation
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names, hints, False
    return names, hints, True


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value (plain: int, float, str, bool, None, list, dict) fits ``hint``;
    a class a config cannot hold fits nothing but itself, an unreadable hint everything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:  # a NaN or infinite setting is never meant (optim.lr=nan trains on)
        return is_int(value) or (isinstance(value, float) and math.isfinite(value))
    if hint is str or hint in (Path, os.PathLike):
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence):
        item = args[0] if args and (origin is not tuple or args[-1] is Ellipsis) else Any
        return isinstance(value, list | tuple) and all(_fits(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    """``hint`` in a user's words: ``bool | None`` is ``true or false or null``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        said = dict.fromkeys(filter(None, map(_describe, args)))
        return " or ".join(w for w in said if not (w == "an integer" and "a finite number" in said))
    if origin is typing.Literal:
        return ", ".join(repr(a) for a in args)
    if origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence):
        return f"a list ({_describe(args[0]) if args else 'any value'} each)"
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
             type(None): "null", Path: "a path", dict: "a mapping"}  # fmt: skip
    return words.get(hint, "")  # (a class a config cannot hold)
