"""The input contract, drawn by hypothesis over every leaf key of the composed config of each
experiment (issue 20): a value of the wrong type, out of range, empty or absurd is either refused
in one line that names the key (before any data loads, or where only the data can tell), with no
run folder that claims ``finished``, or the run uses exactly that value: its recorded config
(hparams.yaml) holds it, and a ``finished`` run trained its ``optim.max_steps`` iterations.

The keys come from the configs themselves: a new setting is covered without a line here."""

import json
import warnings
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf, open_dict

from reslab.checks import check_run
from reslab.cli import explain
from reslab.config import CONFIG_DIR, register_resolvers

register_resolvers()

SMOKE = ["debug=smoke", "logger=csv"]
# Each experiment of conf/experiment, composed as a run (its sweep's first network); the CIFAR
# ones on synthetic data, so that a value the checks accept can be trained on.
EXPERIMENTS = {
    **{name: [f"experiment={name}", "data=synthetic"]
       for name in ("fig1", "fig6", "fig7", "table6", "block_length", "demo")},
    **{name: [f"experiment={name}"] for name in ("fig4", "table2", "table3", "deeper")},
}  # fmt: skip
RUNNABLE = {name for name, overrides in EXPERIMENTS.items() if "data=synthetic" in overrides}
# Wrong type, out of range, empty, absurd: as a command line writes them.
VALUES = ("abc", "-1", "0", "0.5", "-0.5", "1e30", "99999999999", "nan", "inf", "true", "null",
          "''", "[]", "[1,2]", "{a: 1}")  # fmt: skip
# Values a run may take for any key without being wrong (text is text), and values that, where
# accepted, ask for unbounded time or memory (1e11 iterations, images or pixels): not run here.
FREE_TEXT = ("name", "group", "project", "tags", "notes", "job_type")
UNBOUNDED = ("1e30", "99999999999", "inf")


def compose_run(overrides: list[str], folder: Path) -> DictConfig:
    """The config as ``reslab-train`` composes it for a run in ``folder``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(folder)
        cfg.hydra.job.num = 0
        cfg.hydra.overrides.task = overrides
    HydraConfig().set_config(cfg)
    return cfg


def leaf_keys(cfg: DictConfig) -> list[str]:
    """Every leaf of ``cfg`` but Hydra's own and the paths it sets (lists are leaves)."""
    found = []

    def walk(node: DictConfig, path: str) -> None:
        for key in node:
            here = f"{path}.{key}" if path else str(key)
            child = node._get_node(key)
            if OmegaConf.is_dict(child):
                walk(child, here)
            elif not str(key).startswith("_"):
                found.append(here)

    walk(cfg, "")
    return [k for k in found if not k.startswith(("hydra.", "paths."))]


KEYS = []
for _name, _overrides in EXPERIMENTS.items():
    _cfg = compose_run([*_overrides, *SMOKE], Path("/nowhere"))
    KEYS += [(_name, key) for key in leaf_keys(_cfg)]
HydraConfig.instance().cfg = None  # (set by compose_run above)


def names(message: str, key: str) -> bool:
    """Whether a one-line ``message`` names ``key``: whole, or its node and its own name."""
    parent, _, leaf = key.rpartition(".")
    one_line = "\n" not in message.strip()
    return one_line and (key in message or (leaf in message and (not parent or parent in message)))


@pytest.mark.slow  # 250 drawn inputs, some dozens of them trained for 4 iterations: ~1-2 min
@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(KEYS), value=st.sampled_from(VALUES))
# the silent and misnamed inputs, always among the cases
@example(case=("fig6", "trainer.max_epochs"), value="0")  # finished after 0 iterations
@example(case=("fig6", "logger.csv.save_dir"), value="abc")  # metrics.csv elsewhere
@example(case=("fig6", "data.augment"), value="maybe")  # taken as true
@example(case=("fig6", "optim.gamma"), value="-0.1")  # gradient ascent after a milestone
@example(case=("fig6", "data.batch_size"), value="1000000000")  # 0 iterations, finished
@example(case=("fig6", "trainer.max_steps"), value="-5")  # blamed on the devices
@example(case=("fig6", "trainer.accelerator"), value="abc")  # Lightning's words alone
def test_every_leaf_key_is_refused_in_one_line_or_used_as_given(
    case: tuple[str, str], value: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    experiment, key = case
    folder = tmp_path_factory.mktemp("run")
    overrides = [*EXPERIMENTS[experiment], *SMOKE, f"{key}={value}"]
    try:
        cfg = compose_run(overrides, folder)
        check_run(cfg)
    except Exception as err:  # refused before the data loads
        said = explain(err)
        assert said is not None and names(said, key), (overrides, said, repr(err))
        return
    leaf = key.rpartition(".")[2]
    if experiment not in RUNNABLE or leaf in FREE_TEXT or value in UNBOUNDED:
        return
    from reslab.train import train

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train(cfg)
    except Exception as err:  # refused where the data tells (a batch larger than the split)
        said = explain(err)
        assert said is not None and names(said, key), (overrides, said, repr(err))
        status = json.loads((folder / "status.json").read_text())["status"]
        assert status == "failed", (overrides, status)
        return
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] in ("finished", "diverged", "stopped"), (overrides, status)
    if status["status"] == "finished":
        assert status["iterations"] == cfg.trainer.max_steps, (overrides, status)
    recorded = yaml.safe_load((folder / "hparams.yaml").read_text())
    given_value = OmegaConf.to_container(compose_run(overrides, folder), resolve=True)
    for part in key.split("."):
        recorded, given_value = recorded[part], given_value[part]
    assert recorded == given_value, (overrides, recorded, given_value)
