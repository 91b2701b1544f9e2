"""reslab-summary: parameters and multiply-adds (of one image: convs and the FC layer) of the
networks a config describes, beside the paper's numbers in its setting. Nothing is trained.

  reslab-summary                                    # the default: ResNet-20 (A) on CIFAR-10
  reslab-summary model.depth=20,56 shortcut=none,A  # a sweep: four rows (so is experiment=demo)
  reslab-summary --layers model.depth=110           # plus stem / stage / head breakdown

Overrides are reslab-train's; the input is data.crop_size (else the dataset's image size) square.
"""

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.utils import get_class
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from reslab.config import CONFIG_DIR, CONFIG_NAME, instantiate, register_resolvers
from reslab.counting import Part, count_parameters, human, parts
from reslab.networks import DEFAULT_WIDTHS, network_name
from reslab.paper import published, signed
from reslab.sweeps import expand

# The setting the paper's counts belong to: (in_channels, image size, classes) per family.
PAPER_SETTING = {"cifar": (3, 32, 10), "imagenet": (3, 224, 1000)}


@dataclass(frozen=True)
class Summary:
    """One row of the table: one network of a config."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    params: int
    multiply_adds: int
    paper_params: int | None
    paper_multiply_adds: float | None
    parts: list[Part]


def summarize(cfg: DictConfig) -> Summary:
    """Build the network ``cfg`` describes (no data loaded) and count it."""
    data_class = get_class(cfg.data._target_)
    num_classes, in_channels = data_class.num_classes, data_class.in_channels
    size = cfg.data.get("crop_size") or cfg.data.get("image_size") or data_class.image_size
    input_shape = (in_channels, int(size), int(size))
    with torch.device("meta"):  # shapes only: no memory for weights, no arithmetic
        net = instantiate(cfg.model, num_classes=num_classes, in_channels=in_channels)
    breakdown = parts(net, input_shape)

    model = cfg.model
    paper = published(network_name(model.depth, model.shortcut, model.block_layers,
                                   model.bottleneck_stride))  # fmt: skip
    family, widths = model.get("family"), model.get("widths")
    paper_setting = (
        paper.family == family
        and PAPER_SETTING.get(family) == (in_channels, input_shape[1], num_classes)
        and (widths is None or tuple(widths) == DEFAULT_WIDTHS[family])
    )
    return Summary(
        name=str(cfg.name),
        input_shape=input_shape,
        num_classes=num_classes,
        params=count_parameters(net),
        multiply_adds=sum(p.multiply_adds for p in breakdown),
        paper_params=paper.params if paper_setting else None,
        paper_multiply_adds=paper.multiply_adds if paper_setting else None,
        parts=breakdown,
    )


def job_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """Each job's overrides as Hydra's basic sweeper makes them (:func:`reslab.sweeps.expand`):
    ``hydra.sweeper.params``, then ``overrides``. Call inside an initialised Hydra context."""
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    fixed = [
        o.input_line for o in parser.parse_overrides(list(overrides)) if not o.is_sweep_override()
    ]
    cfg = compose(CONFIG_NAME, overrides=fixed, return_hydra_config=True)
    params = cfg.hydra.get("sweeper", {}).get("params") or {}
    return expand(parser, [f"{k}={v}" for k, v in params.items()] + list(overrides))


def network_configs(overrides: Sequence[str]) -> list[DictConfig]:
    """One composed config (``return_hydra_config=True``) per network of the sweep."""
    register_resolvers()
    configs = []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="reslab"):
        for job in job_overrides(overrides):
            cfg = compose(CONFIG_NAME, overrides=job, return_hydra_config=True)
            HydraConfig().set_config(cfg)  # so that ${hydra:...} interpolations resolve
            configs.append(cfg)
    return configs


def _diff(measured: float, paper: float | None) -> str:
    return "" if paper is None else signed((measured - paper) / paper, "+.2%")


def summary_table(rows: Sequence[Summary]) -> Table:
    table = Table(
        title="reslab networks",
        caption="multiply-adds of one image (convs + FC); paper numbers only for its setting",
    )
    for column in ("network", "input → classes", "params", "paper", "Δ", "mult-adds", "paper", "Δ"):
        table.add_column(column, justify="left" if column == "network" else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r.name,
            f"{'×'.join(map(str, r.input_shape))} → {r.num_classes}",
            f"{r.params:,}",
            "" if r.paper_params is None else f"{r.paper_params:,}",
            _diff(r.params, r.paper_params),
            human(r.multiply_adds),
            "" if r.paper_multiply_adds is None else human(r.paper_multiply_adds),
            _diff(r.multiply_adds, r.paper_multiply_adds),
        )
    return table


def parts_table(row: Summary) -> Table:
    table = Table(title=f"{row.name}: parts")
    for column in ("part", "output", "params", "mult-adds", "share"):
        table.add_column(column, justify="left" if column == "part" else "right", no_wrap=True)
    for p in row.parts:
        table.add_row(
            p.name,
            "×".join(map(str, p.output_shape)),
            f"{p.params:,}",
            human(p.multiply_adds),
            f"{p.multiply_adds / max(row.multiply_adds, 1):.1%}",
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser("reslab-summary", description=__doc__, formatter_class=raw)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for reslab-train")
    parser.add_argument("--layers", action="store_true", help="per-part breakdown per network")
    parser.add_argument("-m", "--multirun", action="store_true", help="accepted; no effect")
    args = parser.parse_intermixed_args(argv)
    try:
        rows = [summarize(cfg) for cfg in network_configs(args.overrides)]
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        cause = f"\n{err.__cause__}" if isinstance(err, HydraException) and err.__cause__ else ""
        print(f"reslab-summary: error: {err}{cause}", file=sys.stderr)
        return 1
    console = Console()
    console.width = max(console.width, 120)  # pipes and logs get 80 columns otherwise
    console.print(summary_table(rows))
    if args.layers:
        for row in rows:
            console.print(parts_table(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
