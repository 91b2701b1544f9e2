"""Every experiment of the paper is a ready multirun: each job composes and instantiates, and
fig1 runs end to end with debug=smoke."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf.errors import InterpolationResolutionError

from reslab.config import CONFIG_DIR
from reslab.networks import BasicBlock, Bottleneck, parse_network_name

EXPERIMENTS = {
    "fig1": ["plain-20", "plain-56"],
    "fig6": ["plain-20", "plain-32", "plain-44", "plain-56",
             "resnet-20A", "resnet-32A", "resnet-44A", "resnet-56A", "resnet-110A"],
    "table6": ["resnet-20A", "resnet-32A", "resnet-44A", "resnet-56A", *["resnet-110A"] * 5,
               "resnet-1202A"],
    "fig7": ["plain-20", "plain-56", "resnet-20A", "resnet-56A", "resnet-110A"],
    "fig4": ["plain-18", "plain-34", "resnet-18A", "resnet-34A"],
    "table2": ["plain-18", "plain-34", "resnet-18A", "resnet-34A"],
    "table3": ["plain-34", "resnet-34A", "resnet-34B", "resnet-34C"],
    "deeper": ["resnet-50B", "resnet-101B", "resnet-152B"],
    "block_length": ["plain-20", "resnet-20A-1layer", "resnet-20A", "resnet-20A-3layer",
                     "plain-56", "resnet-56A-1layer", "resnet-56A", "resnet-56A-3layer"],
}  # fmt: skip
IMAGENET = {"fig4", "table2", "table3", "deeper"}


def test_every_experiment_file_is_listed_here() -> None:
    files = {p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("[!_]*.yaml")}
    assert files == {*EXPERIMENTS, "demo"}


def sweep_jobs(cfg) -> list[list[str]]:
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    overrides = OverridesParser.create().parse_overrides(params)
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return batch


_built: dict[str, int] = {}  # network name -> parameters, built once per test session


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_is_a_ready_multirun_whose_jobs_all_instantiate(
    tmp_path: Path, hydra_cfg, experiment: str
) -> None:
    base = hydra_cfg(tmp_path, [f"experiment={experiment}"])
    assert base.group == experiment and base.hydra.mode.name == "MULTIRUN"
    names, seeds = [], []
    for job in sweep_jobs(base):
        cfg = hydra_cfg(tmp_path, [f"experiment={experiment}", *job])
        names.append(cfg.name)
        seeds.append(cfg.seed)
        datamodule = instantiate(cfg.data)
        family = "imagenet" if experiment in IMAGENET else "cifar"
        assert cfg.model.family == family
        assert datamodule.name == ("imagenet" if family == "imagenet" else "cifar10")
        if cfg.name not in _built:
            net = instantiate(cfg.model, num_classes=datamodule.num_classes, in_channels=3)
            module = instantiate(cfg.module, net=net)
            optimizer = module.configure_optimizers()["optimizer"]
            assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.1
            _built[cfg.name] = sum(p.numel() for p in net.parameters())
        warms_up = family == "cifar" and cfg.model.depth >= 110
        assert instantiate(cfg.callbacks.warmup).lr == (0.01 if warms_up else None)
        if family == "imagenet":
            assert cfg.data.batch_size == 256 and cfg.trainer.max_steps == 600_000
            assert cfg.optim.scheduler._target_.endswith("ReduceLROnPlateau")
        else:
            assert cfg.data.batch_size == 128 and cfg.trainer.max_steps == 64_000
            assert list(cfg.optim.milestones) == [32_000, 48_000] and cfg.data.val_size == 5000
    assert names == EXPERIMENTS[experiment]
    if experiment == "table6":
        assert seeds == [0, 0, 0, 0, 0, 1, 2, 3, 4, 0]
    if experiment == "fig7":
        assert base.callbacks.responses._target_ == "reslab.callbacks.LayerResponses"
    if experiment == "block_length":  # same layers, same parameters, whatever the block length
        assert _built["resnet-56A-1layer"] == _built["resnet-56A-3layer"] == _built["plain-56"]


def test_paper_parameter_counts_through_the_experiment_configs(tmp_path: Path, hydra_cfg) -> None:
    for experiment in ("table3", "deeper"):
        base = hydra_cfg(tmp_path, [f"experiment={experiment}"])
        for job in sweep_jobs(base):
            cfg = hydra_cfg(tmp_path, [f"experiment={experiment}", *job])
            if cfg.name not in _built:
                net = instantiate(cfg.model, num_classes=1000, in_channels=3)
                _built[cfg.name] = sum(p.numel() for p in net.parameters())
    assert _built["plain-34"] == _built["resnet-34A"] == 21_623_848
    assert _built["resnet-34B"] == 21_797_672 and _built["resnet-34C"] == 22_716_840
    assert _built["resnet-50B"] == 25_557_032 and _built["resnet-152B"] == 60_192_808


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("plain-20", (20, "none", 2, "1x1", 0)), ("resnet-56A", (56, "A", 2, "1x1", 0)),
     ("resnet-110A@3", (110, "A", 2, "1x1", 3)), ("resnet-20A-1layer", (20, "A", 1, "1x1", 0)),
     ("resnet-50B-v1.5", (50, "B", 2, "3x3", 0)), ("plain-56-3layer", (56, "none", 3, "1x1", 0))],
)  # fmt: skip
def test_network_names_parse_back(spec: str, expected: tuple) -> None:
    parsed = parse_network_name(spec)
    keys = ("depth", "shortcut", "block_layers", "bottleneck_stride", "seed")
    assert tuple(parsed[k] for k in keys) == expected


@pytest.mark.parametrize("spec", ["resnet-20", "plain-20A", "resnet-20D", "vgg-16", "resnet-A"])
def test_bad_network_names_are_refused_with_examples(spec: str) -> None:
    with pytest.raises(ValueError, match=rf"{spec}.*(plain-20|resnet-20A)"):
        parse_network_name(spec)


# --- a network name means the whole network, in every experiment ----------------------------

# A name carrying every field (depth, shortcut, block length or stride placement, seed) per family.
FULL_NAMES = {"cifar": ("resnet-56C-3layer@2", (56, "C", 3, "1x1", 2)),
              "imagenet": ("resnet-101C-v1.5@4", (101, "C", 2, "3x3", 4))}  # fmt: skip


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_every_experiment_takes_every_field_of_the_name(
    tmp_path: Path, hydra_cfg, experiment: str
) -> None:
    family = "imagenet" if experiment in IMAGENET else "cifar"
    name, expected = FULL_NAMES[family]
    cfg = hydra_cfg(tmp_path, [f"experiment={experiment}", f"net={name}"])
    model = cfg.model
    fields = (model.depth, model.shortcut, model.block_layers, model.bottleneck_stride, cfg.seed)
    assert fields == expected
    assert cfg.name == name.partition("@")[0]


def test_a_one_layer_name_builds_one_layer_blocks_in_fig6(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path, ["experiment=fig6", "net=resnet-20A-1layer"])
    assert (cfg.name, cfg.model.depth, cfg.model.block_layers) == ("resnet-20A-1layer", 20, 1)
    net = instantiate(cfg.model)
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 18 and all(b.layers == 1 for b in blocks)


def test_v15_name_builds_torchvisions_stride_placement_in_deeper(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path, ["experiment=deeper", "net=resnet-50B-v1.5"])
    assert cfg.name == "resnet-50B-v1.5"
    assert (cfg.model.depth, cfg.model.bottleneck_stride) == (50, "3x3")
    with torch.device("meta"):
        down = instantiate(cfg.model, num_classes=1000).stages[1][0]
    assert isinstance(down, Bottleneck)
    assert (down.conv1.stride, down.conv2.stride) == ((1, 1), (2, 2))


@pytest.mark.parametrize(
    ("experiment", "net", "why"),
    [("fig6", "resnet-50B-v1.5", r"model\.bottleneck_stride='3x3' is not valid; valid: 1x1"),
     ("fig6", "resnet-21A", r"model\.depth=21 is not valid"),
     ("block_length", "resnet-32A-3layer", r"model\.block_layers=3 is not valid; valid: 1, 2"),
     ("deeper", "resnet-50B-1layer", r"model\.block_layers=1 is not valid; valid: 2"),
     ("table3", "resnet-34B-v1.5", r"model\.bottleneck_stride='3x3' is not valid"),
     ("fig4", "plain-20", r"model\.depth=20 is not valid; valid: 18, 34, 50, 101, 152")],
)  # fmt: skip
def test_a_name_the_family_cannot_build_is_refused_naming_the_valid_names(
    tmp_path: Path, hydra_cfg, experiment: str, net: str, why: str
) -> None:
    family = "imagenet" if experiment in IMAGENET else "cifar"
    cfg = hydra_cfg(tmp_path, [f"experiment={experiment}", f"net={net}"])
    message = rf"net='{net}' is not in the {family} family \({why}.*\); valid {family} names: "
    with pytest.raises(InterpolationResolutionError, match=message) as error:
        _ = cfg.name
    assert "\n" not in str(error.value.__cause__)


def test_names_are_checked_against_their_family() -> None:
    assert parse_network_name("resnet-50B-v1.5", "imagenet")["bottleneck_stride"] == "3x3"
    assert parse_network_name("resnet-56A-3layer@1", "cifar")["seed"] == 1
    with pytest.raises(ValueError, match=r"valid cifar names: plain-N or resnet-N .*resnet-110A@3"):
        parse_network_name("resnet-50B-v1.5", "cifar")
    with pytest.raises(
        ValueError, match=r"model\.family='vgg' is not valid; valid: cifar, imagenet"
    ):
        parse_network_name("resnet-20A", "vgg")


def test_fig1_smoke_multirun_runs_both_jobs(tmp_path: Path, tiny_cifar10: Path) -> None:
    """reslab-train -m experiment=fig1 debug=smoke, on tiny CIFAR-10 files."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "-m", "experiment=fig1", "debug=smoke",
         f"data.data_dir={tiny_cifar10}", "data.download=false", "logger=csv",
         f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert runs == ["0_plain-20", "1_plain-56"]
    for run in runs:
        status = json.loads((sweep / run / "status.json").read_text())
        assert status["status"] == "finished" and status["iterations"] == 4
    assert "plain-56" in result.stdout
