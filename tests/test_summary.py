"""reslab-summary: counting parameters and multiply-adds, the paper's numbers, the command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from reslab import paper
from reslab.config import CONFIG_DIR
from reslab.counting import count_multiply_adds, count_parameters, parts
from reslab.networks import build_network, network_name
from reslab.summary import job_overrides, main, network_configs, summarize

SCRIPT = Path(sys.executable).with_name("reslab-summary")


def _meta(*args, **kwargs) -> nn.Module:
    """A network on the meta device: shapes only, so even ResNet-152 counts in milliseconds."""
    with torch.device("meta"):
        return build_network(*args, **kwargs)


# --- counting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "size", "expected"),
    [
        (("cifar", 20, "A"), {}, 32, 40.55e6),
        (("cifar", 56, "A"), {}, 32, 125.49e6),
        (("imagenet", 18, "B", 1000), {}, 224, 1.814e9),
        (("imagenet", 34, "A", 1000), {}, 224, 3.66e9),
        (("imagenet", 34, "B", 1000), {}, 224, 3.66e9),
        (("imagenet", 50, "B", 1000), {}, 224, 3.86e9),
        (("imagenet", 152, "B", 1000), {}, 224, 11.28e9),
        (("imagenet", 50, "B", 1000), {"bottleneck_stride": "3x3"}, 224, 4.09e9),
    ],
)
def test_multiply_adds_match_the_paper(args: tuple, kwargs: dict, size: int, expected: float):
    assert count_multiply_adds(_meta(*args, **kwargs), (3, size, size)) == pytest.approx(
        expected, rel=0.01
    )


def test_torchvision_stride_costs_more_than_the_papers() -> None:
    paper_50 = count_multiply_adds(_meta("imagenet", 50, "B", 1000), (3, 224, 224))
    v15 = count_multiply_adds(
        _meta("imagenet", 50, "B", 1000, bottleneck_stride="3x3"), (3, 224, 224)
    )
    assert v15 - paper_50 > 0.2e9


def test_counting_by_hand_conv_groups_stride_and_linear() -> None:
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),  # 8×4×4 out, 2 inputs per group, 3×3
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(128, 5),
    )
    assert count_multiply_adds(net, (4, 8, 8)) == 128 * 2 * 9 + 128 * 5
    assert count_parameters(net) == (8 * 2 * 9 + 8) + 16 + (128 * 5 + 5)


def test_counting_a_real_network_equals_counting_on_meta_and_changes_nothing() -> None:
    net = build_network("cifar", 20, "B")  # in training mode, BN statistics at their start
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert count_multiply_adds(net, (3, 32, 32)) == count_multiply_adds(
        _meta("cifar", 20, "B"), (3, 32, 32)
    )
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_parts_add_up_and_show_the_stage_shapes() -> None:
    net = _meta("cifar", 20, "A")
    breakdown = parts(net, (3, 32, 32))
    assert [p.name for p in breakdown] == ["stem", "stage 1", "stage 2", "stage 3", "head"]
    assert [p.output_shape for p in breakdown] == [
        (16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (10,),
    ]  # fmt: skip
    assert sum(p.params for p in breakdown) == count_parameters(net) == 269_722
    assert sum(p.multiply_adds for p in breakdown) == count_multiply_adds(net, (3, 32, 32))
    assert breakdown[0].multiply_adds == 32 * 32 * 16 * 3 * 9
    assert breakdown[-1].multiply_adds == 64 * 10
    imagenet = parts(_meta("imagenet", 50, "B", 1000), (3, 224, 224))
    assert imagenet[0].output_shape == (64, 56, 56) and imagenet[4].output_shape == (2048, 7, 7)


def test_bad_input_shape_says_what_it_needs() -> None:
    with pytest.raises(ValueError, match=r"input_shape must be \(channels, height, width\)"):
        count_multiply_adds(_meta("cifar", 20, "A"), (32, 32))


# --- the paper's numbers -----------------------------------------------------------------------


def test_paper_parameter_counts_are_what_the_builder_builds() -> None:
    for name, params in paper.PARAMS.items():
        p = paper.published(name)
        depth = int(re.search(r"\d+", name).group())
        shortcut = "none" if name.startswith("plain") else name[-1]
        classes = 10 if p.family == "cifar" else 1000
        assert count_parameters(_meta(p.family, depth, shortcut, classes)) == params, name


def test_paper_names_are_spelled_as_network_name_spells_them() -> None:
    tables = (paper.PARAMS, paper.MULTIPLY_ADDS, paper.TABLE6_TEST_ERROR,
              paper.FIGURE6_PLAIN_TEST_ERROR_APPROX, paper.TABLE2_TOP1, paper.TABLE3_10CROP,
              paper.TABLE4_MULTISCALE)  # fmt: skip
    for name in {key for table in tables for key in table}:
        depth = int(re.search(r"\d+", name).group())
        shortcut = "none" if name.startswith("plain") else name[-1]
        assert network_name(depth, shortcut) == name
        assert paper.published(name).family in ("cifar", "imagenet")


def test_published_numbers() -> None:
    r110 = paper.published("resnet-110A")
    assert (r110.params, r110.cifar10_test_error, r110.family) == (1_727_962, 6.43, "cifar")
    assert paper.RESNET110_MEAN_STD == (6.61, 0.16)
    assert paper.published("plain-56").cifar10_test_error_approx == 13.0
    assert paper.published("plain-56").cifar10_test_error is None
    r34b = paper.published("resnet-34B")
    assert r34b.imagenet_10crop == (24.52, 7.46) and r34b.imagenet_multiscale == (21.84, 5.71)
    assert paper.published("resnet-18A").imagenet_10crop == (27.88, None)  # Table 2: top-1 only
    assert paper.published("resnet-152B").multiply_adds == pytest.approx(11.28e9)
    assert paper.published("resnet-20A").multiply_adds == pytest.approx(40.55e6)
    assert paper.published("resnet-20B").params == 269_722 + 2_752
    unknown = paper.published("resnet-50B-v1.5")
    assert unknown.family is None and unknown.params is None


# --- configs -------------------------------------------------------------------------------------


def test_experiment_sweep_gives_one_job_per_network_and_the_command_line_wins() -> None:
    assert len(network_configs(["experiment=demo"])) == 4
    names = [str(c.name) for c in network_configs(["experiment=demo", "model.depth=20"])]
    assert names == ["plain-20", "resnet-20A"]
    names = [str(c.name) for c in network_configs(["model.depth=20,56", "shortcut=B"])]
    assert names == ["resnet-20B", "resnet-56B"]


def test_job_overrides_follow_hydras_basic_sweeper() -> None:
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        jobs = job_overrides(["experiment=demo"])
    assert sorted(tuple(sorted(j)) for j in jobs) == sorted(
        tuple(sorted(["experiment=demo", f"model.depth={d}", f"shortcut={s}"]))
        for d in (8, 32)
        for s in ("none", "A")
    )


def test_summary_of_the_default_config_sits_beside_the_paper() -> None:
    (cfg,) = network_configs([])
    row = summarize(cfg)
    assert (row.name, row.input_shape, row.num_classes) == ("resnet-20A", (3, 32, 32), 10)
    assert row.params == row.paper_params == 269_722
    assert row.multiply_adds == pytest.approx(row.paper_multiply_adds, rel=1e-3)


def test_summary_outside_the_papers_setting_shows_no_paper_numbers() -> None:
    """ResNet-50 on 224×224 crops of a 10-class dataset: counted, but not the paper's net."""
    (cfg,) = network_configs(
        ["model.family=imagenet", "model.depth=50", "model.widths=null", "shortcut=B",
         "++data.crop_size=224"]
    )  # fmt: skip
    row = summarize(cfg)
    assert row.input_shape == (3, 224, 224) and row.num_classes == 10
    assert row.multiply_adds == pytest.approx(3.86e9, rel=0.01)
    assert row.paper_params is None and row.paper_multiply_adds is None
    (cfg,) = network_configs(["data=synthetic", "data.image_size=16"])
    assert summarize(cfg).input_shape == (3, 16, 16)


def test_summary_of_the_imagenet_config_compares_with_the_paper() -> None:
    if not (Path(CONFIG_DIR) / "data" / "imagenet.yaml").is_file():
        pytest.skip("conf/data/imagenet.yaml is not there")
    configs = network_configs(
        ["model.family=imagenet", "model.depth=50", "model.widths=null", "shortcut=B",
         "data=imagenet", "++model.bottleneck_stride=1x1,3x3"]
    )  # fmt: skip
    paper_row, v15 = (summarize(c) for c in configs)
    assert paper_row.paper_params == paper_row.params == 25_557_032
    assert paper_row.multiply_adds == pytest.approx(paper_row.paper_multiply_adds, rel=1e-3)
    assert v15.params == paper_row.params and v15.paper_multiply_adds is None
    assert v15.multiply_adds == pytest.approx(4.09e9, rel=0.01)


# --- the command ---------------------------------------------------------------------------------


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert list(tmp_path.iterdir()) == []  # no output folder, no data
    return result


def test_command_prints_resnet_56(tmp_path: Path) -> None:
    result = _run(tmp_path, "model.depth=56")
    assert result.returncode == 0, result.stderr
    assert "resnet-56A" in result.stdout
    assert "853,018" in result.stdout and "125.49M" in result.stdout


def test_command_prints_one_row_per_network_of_an_experiment(tmp_path: Path) -> None:
    result = _run(tmp_path, "experiment=demo")
    assert result.returncode == 0, result.stderr
    for name in ("plain-8", "resnet-8A", "plain-32", "resnet-32A"):
        assert len(re.findall(rf"│ {name} ", result.stdout)) == 1, name


def test_a_difference_that_rounds_to_zero_has_no_sign(capsys: pytest.CaptureFixture) -> None:
    assert main(["model.depth=20,110"]) == 0  # 110's multiply-adds: a hair under Table 6's
    out = capsys.readouterr().out
    assert "-0.00%" not in out and out.count("+0.00%") == 4


def test_bad_depth_fails_naming_the_valid_depths(capsys: pytest.CaptureFixture) -> None:
    assert main(["model.depth=21"]) != 0
    assert "of the form 6n+2 (the cifar family): 8, 14, 20" in capsys.readouterr().err
    assert main(["model.family=imagenet", "model.depth=20", "model.widths=null"]) != 0
    assert "model.depth=20 is not valid; valid: 18, 34, 50, 101, 152" in capsys.readouterr().err


def test_bad_override_gives_hydras_message(capsys: pytest.CaptureFixture) -> None:
    assert main(["model.dpth=3"]) != 0
    err = capsys.readouterr().err
    assert "Could not override 'model.dpth'" in err and "not in struct" in err


def test_layers_prints_the_breakdown(capsys: pytest.CaptureFixture) -> None:
    assert main(["--layers", "model.depth=20"]) == 0
    out = capsys.readouterr().out
    assert "resnet-20A: parts" in out
    for part in ("stem", "stage 1", "stage 2", "stage 3", "head"):
        assert f"│ {part} " in out
    assert "64×8×8" in out
