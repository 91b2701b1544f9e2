"""The config side of reslab: where conf/ is, the resolvers its files use, and ``instantiate``.
Every entry point (reslab-train, reslab-summary, the tests) calls :func:`register_resolvers`
before it composes a config: no import registers anything as a side effect."""

from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as _instantiate
from omegaconf import OmegaConf

_REPO_CONF = Path(__file__).resolve().parents[2] / "conf"  # a checkout's; else the package's
CONFIG_DIR = str(_REPO_CONF if _REPO_CONF.is_dir() else Path(__file__).with_name("conf"))
CONFIG_NAME = "train"


def register_resolvers() -> None:
    """The ``${network_name:...}``, ``${net:...}``, ``${folder_name:}`` and ``${wandb_group:...}``
    resolvers of conf/. Safe to call again."""
    from reslab.networks import network_name, parse_network_name  # torch: not for --help

    def net_field(spec: str, family: str, field: str) -> Any:
        return parse_network_name(spec, family)[field]

    def folder_name(*, _root_: Any) -> str:  # a sweep job's folder, even for a bad net= name
        try:
            return str(_root_.name)
        except Exception:  # the job fails alone, in its folder, naming the bad value
            return str(OmegaConf.select(_root_, "net", default="unnamed"))

    def wandb_group(group: str, mode: Any, sweep_dir: str) -> str:  # an ad-hoc sweep: its own
        return Path(sweep_dir).name if group == "default" and "MULTIRUN" in str(mode) else group

    OmegaConf.register_new_resolver("wandb_group", wandb_group, replace=True)
    OmegaConf.register_new_resolver("network_name", network_name, replace=True)
    OmegaConf.register_new_resolver("net", net_field, replace=True)
    OmegaConf.register_new_resolver("folder_name", folder_name, replace=True)


def config_groups() -> dict[str, list[str]]:
    """The config groups of conf/ a user chooses with ``group=option`` (model, shortcut,
    data, ...) and their options, in name order; ``hydra/launcher`` included."""
    root = Path(CONFIG_DIR)
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml") if not f.stem.startswith("_"))
        if options:
            groups[folder.relative_to(root).as_posix()] = options
    return groups


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising our own bad-input errors (ValueError,
    FileNotFoundError) as they are instead of wrapped, so a user reads one clear message."""
    try:
        return _instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
            raise err.__cause__ from None
        raise
