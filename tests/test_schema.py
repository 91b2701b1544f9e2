"""One schema for every input (reslab.checks.check_schema): every setting of every consumer (a
config node with a ``_target_``) is checked against the consumer's signature, and a key added
with ``+`` that nothing reads is refused. The cases are generated from the composed configs
themselves, so a new key or a new consumer is covered without a new line here."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from reslab.checks import check_run, check_schema
from reslab.config import CONFIG_DIR, register_resolvers

register_resolvers()

CONFIGS = {
    "default": ["data=fashion_mnist"],
    "synthetic": ["data=synthetic"],
    "imagenet": ["model=imagenet", "model.depth=18", "data=imagenet", "optim=paper_imagenet"],
    "fig7": ["experiment=fig7", "data=synthetic"],
    "wandb": ["data=synthetic", "logger=wandb"],
    "fast": ["data=synthetic", "speed=fast"],
}
# the settings whose valid values include strings beside numbers (a time, "auto", a path)
TAKES_TEXT_TOO = {
    "trainer.devices", "trainer.val_check_interval", "trainer.max_time", "data.data_dir"
}  # fmt: skip


def _settings(cfg: DictConfig) -> list[tuple[str, object]]:
    """Every plain setting (a bool, number or list, not an interpolation) of every consumer."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    found = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                here = f"{path}.{name}" if path else str(name)
                plain = isinstance(value, bool | int | float | list)
                if "_target_" in node and not str(name).startswith("_") and plain:
                    found.append((here, value))
                walk(value, here)

    walk({k: v for k, v in tree.items() if k != "hydra"}, "")
    return found


def _wrong(value: object) -> str:
    """A value of another type than ``value``'s, as a command line writes it."""
    return "maybe" if isinstance(value, bool | list) else "abc"


CASES = []
for name, overrides in CONFIGS.items():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        composed = compose("train", overrides=[*overrides, "debug=smoke"])
    CASES += [
        (name, key, value) for key, value in _settings(composed)
        if key not in TAKES_TEXT_TOO and key not in {c[1] for c in CASES}
    ]  # fmt: skip


def test_every_config_of_the_paper_passes_the_schema(hydra_cfg, tmp_path: Path) -> None:
    for name, overrides in CONFIGS.items():
        if name == "fast":  # (10 fused iterations: not with debug=smoke's intervals of 2)
            overrides = [*overrides, "module.fused_iterations=2"]
        check_run(hydra_cfg(tmp_path / name, [*overrides, "debug=smoke"]))


@pytest.mark.parametrize(("config", "key", "value"), CASES, ids=[f"{c}:{k}" for c, k, _ in CASES])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(
    hydra_cfg, tmp_path: Path, config: str, key: str, value: object
) -> None:
    bad = _wrong(value)
    cfg = hydra_cfg(tmp_path, [*CONFIGS[config], "debug=smoke", f"{key}={bad}"])
    with pytest.raises(ValueError, match=rf"={bad!r} is not valid; valid: ") as said:
        check_schema(cfg)
    assert str(said.value).split("=", 1)[0] in {key, *_links_to(cfg, key)}


def _links_to(cfg: DictConfig, key: str) -> set[str]:
    """The keys whose value is ``${key}``: a message names the one the user set."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    found: set[str] = set()

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                here = f"{path}.{name}" if path else str(name)
                if isinstance(value, str) and key in value:
                    found.add(here)
                walk(value, here)

    walk(tree, "")
    return found


def test_the_issues_silent_inputs_are_refused(hydra_cfg, tmp_path: Path) -> None:
    said = {
        "data.augment=maybe": "data.augment='maybe' is not valid; valid: true or false",
        "+optim.lrr=0.05": "optim.lrr (added with +) is not a setting reslab reads; the "
        "settings of optim: lr, momentum",
        "optim.milestones=abc": "optim.milestones='abc' is not valid; valid: a list (an integer",
        "optim.gamma=-0.1": "optim.gamma=-0.1 is not valid; valid: a number > 0 and <= 1",
        "optim.lr=nan": "optim.lr=nan is not valid; valid: a finite number",
        "optim.lr=inf": "optim.lr=inf is not valid; valid: a finite number",
        "optim.warmup.lr=inf": "optim.warmup.lr=inf is not valid; valid: a number > 0",
        "optim.milestones=[4,2]": "optim.milestones=[4, 2] is not valid; valid: increasing",
        "+data.foo=1": "data.foo is not a setting of data (reslab.data.FashionMNISTDataModule); "
        "valid: data_dir, batch_size",
        "+trainer.foo=1": "trainer.foo is not a setting of trainer (reslab.fused.trainer); "
        "valid: fused_iterations",
        "callbacks.checkpoint.every_n_train_steps=abc": "callbacks.checkpoint.every_n_train_steps"
        "='abc' is not valid; valid: an integer >= 0 or null",
    }
    for n, (override, message) in enumerate(said.items()):
        cfg = hydra_cfg(tmp_path / str(n), ["data=fashion_mnist", "debug=smoke", override])
        with pytest.raises(ValueError) as err:
            check_run(cfg)
        assert str(err.value).startswith(message), (override, str(err.value))


def test_keys_added_with_plus_that_a_consumer_reads_pass(hydra_cfg, tmp_path: Path) -> None:
    for n, override in enumerate(["+trainer.max_time=00:00:30:00", "++trainer.num_nodes=1"]):
        check_run(hydra_cfg(tmp_path / str(n), ["data=synthetic", "debug=smoke", override]))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    group=st.sampled_from(["optim", "paths", "data", "model", "module", "trainer", "callbacks"]),
    leaf=st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True),
)
def test_any_key_added_with_plus_that_nothing_reads_is_refused(
    hydra_cfg, tmp_path: Path, group: str, leaf: str
) -> None:
    cfg = hydra_cfg(tmp_path, ["data=synthetic", "debug=smoke"])
    if leaf in cfg[group]:
        return  # a key it has: overridden, not added
    key = f"{group}.{leaf}"
    cfg = hydra_cfg(tmp_path, ["data=synthetic", "debug=smoke", f"+{key}=1"])
    with pytest.raises(ValueError, match=rf"^{key} (\(added with \+\) )?is not a setting "):
        check_schema(cfg, list(cfg.hydra.overrides.task))
