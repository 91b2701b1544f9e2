"""reslab-report: run folders → figures and tables beside the paper's numbers. Unit tests on
run folders written here in reslab-train's formats, and real sweeps through the CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from PIL import Image

from reslab.networks import parse_network_name
from reslab.report import (
    build_table,
    format_params,
    load_runs,
    main,
    write_report,
)
from reslab.report_figures import curves_figure, responses_figure
from reslab.runs import read_metrics

ENV = {**os.environ, "WANDB_MODE": "offline"}


def write_run(
    folder: Path,
    name: str,
    status: str = "finished",
    *,
    dataset: str = "cifar10",
    family: str = "cifar",
    seed: int = 0,
    params: int | None = 269_722,
    train: Sequence[tuple[int, float]] = (),
    val: Sequence[tuple[int, float]] = (),
    test: float | None = None,
    top5: float | None = None,
    error: str | None = None,
    responses: Sequence[tuple[int, str, list[float]]] = (),
) -> Path:
    """A run folder as reslab-train writes it: status.json, hparams.yaml (the top-level keys
    train.py adds), Lightning's sparse metrics.csv and, given ``responses`` as (step, split,
    stds), responses.csv."""
    folder.mkdir(parents=True)
    parsed = parse_network_name(name)
    hparams = {
        "network": name, "family": family, "depth": parsed["depth"],
        "shortcut": parsed["shortcut"], "residual": parsed["shortcut"] != "none",
        "dataset": dataset, "seed": seed, "name": name, "parameters": params,
    }  # fmt: skip
    (folder / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    rows = [{"step": s, "train/error": v, "train/loss": 1.0, "lr": 0.1} for s, v in train]
    rows += [{"step": s, "val/error": v} for s, v in val]
    last = max([s for s, _ in [*train, *val]], default=0)
    if test is not None:
        rows.append({"step": last, "test/error": test})
        if top5 is not None:
            rows[-1]["test/error_top5"] = top5
    if rows:
        columns = sorted({k for r in rows for k in r})
        with open(folder / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(sorted(rows, key=lambda r: r["step"]))
    fields = {"status": status, "name": name}
    if status != "running":
        finals = {"train/error": train[-1][1] if train else None, "test/error": test}
        finals |= {"val/error": val[-1][1] if val else None, "test/error_top5": top5}
        fields |= {"iterations": last, "seconds": 1.0}
        fields |= {k: v for k, v in finals.items() if v is not None}
    if error:
        fields = {"status": status, "name": name, "error": error}
    non_finite = [k for k, v in fields.items() if isinstance(v, float) and not math.isfinite(v)]
    if non_finite:  # as write_status writes them: null, named in non_finite
        fields |= {k: None for k in non_finite} | {"non_finite": non_finite}
    (folder / "status.json").write_text(json.dumps(fields, allow_nan=False))
    if responses:
        with open(folder / "responses.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("step", "split", "index", "layer", "std"))
            for step, split, stds in responses:
                for i, std in enumerate(stds, 1):
                    writer.writerow((step, split, i, f"stages.{i}.bn", std))
    return folder


def assert_png(path: Path, min_size: tuple[int, int] = (400, 300)) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]


def legend_texts(figure) -> list[list[str]]:
    return [[t.get_text() for t in ax.get_legend().get_texts()] for ax in figure.axes]


CURVE = [(100, 60.0), (200, 40.0), (300, 30.0)]


@pytest.fixture
def seeds_sweep(tmp_path: Path) -> Path:
    """ResNet-110 × 3 finished seeds and 1 failed, a running ResNet-56, two diverged nets."""
    sweep = tmp_path / "sweep"
    for i, error in enumerate((6.0, 7.0, 8.0)):
        write_run(sweep / f"{i}_resnet-110A", "resnet-110A", seed=i, params=1_727_962,
                  train=CURVE, val=CURVE, test=error)  # fmt: skip
    write_run(sweep / "3_resnet-110A", "resnet-110A", "failed", seed=3, train=CURVE[:1],
              error="RuntimeError: out of memory")  # fmt: skip
    write_run(sweep / "4_resnet-56A", "resnet-56A", "running", train=CURVE, val=CURVE[:2])
    write_run(sweep / "5_resnet-20A", "resnet-20A", "diverged",
              train=[(100, 50.0), (200, float("nan"))], val=[(100, float("inf"))])  # fmt: skip
    write_run(sweep / "6_resnet-32A", "resnet-32A", train=CURVE, val=CURVE, test=float("nan"))
    write_run(sweep / "7_plain-20", "plain-20", train=CURVE, val=CURVE, test=10.0)
    return sweep


def test_seeds_grouped_into_mean_and_std_unfinished_runs_listed_not_averaged(
    seeds_sweep: Path, tmp_path: Path
) -> None:
    runs = load_runs([seeds_sweep])
    assert [r.path.name for r in runs] == [
        "0_resnet-110A", "1_resnet-110A", "2_resnet-110A", "3_resnet-110A", "4_resnet-56A",
        "5_resnet-20A", "6_resnet-32A", "7_plain-20",
    ]  # fmt: skip
    assert [r.status for r in runs] == [
        "finished",
        "finished",
        "finished",
        "failed",
        "running",
        "diverged",
        "diverged",
        "finished",
    ]  # fmt: skip  (a "finished" run with a nan error is diverged)
    first = runs[0]
    assert (first.name, first.dataset, first.family, first.depth, first.shortcut) == (
        "resnet-110A", "cifar10", "cifar", 110, "A",
    )  # fmt: skip
    assert (first.residual, first.seed, first.params, first.iterations) == (True, 0, 1_727_962, 300)
    assert first.metrics["val/error"] == CURVE and first.final["test/error"] == 6.0
    assert runs[4].metrics["val/error"] == CURVE[:2] and "test/error" not in runs[4].final
    assert runs[3].error == "RuntimeError: out of memory" and runs[7].residual is False

    table = build_table("cifar10", "cifar", runs)
    assert table.columns == [
        "network", "params", "runs", "train error (%)", "val error (%)", "test error (%)",
        "paper (%)", "Δ", "status",
    ]  # fmt: skip
    rows = {row[0]: row for row in table.rows}
    assert list(rows) == ["plain-20", "resnet-20A", "resnet-32A", "resnet-56A", "resnet-110A"]
    assert rows["resnet-110A"] == [
        "resnet-110A", "1.7M", "4", "30.00 ± 0.00", "30.00 ± 0.00", "7.00 ± 1.00",
        "6.61 ± 0.16 (best 6.43)", "+0.39", "3 finished, 1 failed",
    ]  # fmt: skip
    assert rows["plain-20"][3:] == ["30.00", "30.00", "10.00", "≈9.5", "≈+0.50", "finished"]
    assert rows["resnet-56A"][3:] == ["—", "—", "—", "6.97", "—", "running"]
    assert rows["resnet-20A"][-1] == rows["resnet-32A"][-1] == "diverged"
    notes = "\n".join(table.notes)
    assert "3_resnet-110A: failed at iteration 100: RuntimeError: out of memory" in notes
    assert "4_resnet-56A: running at iteration 300" in notes and "5_resnet-20A: diverged" in notes

    figure = curves_figure(runs, "CIFAR-10")
    assert [ax.get_title() for ax in figure.axes] == ["plain networks", "residual networks"]
    assert legend_texts(figure)[1] == [
        "resnet-20A (diverged)", "resnet-32A (diverged)", "resnet-56A (running)", "resnet-110A",
        "resnet-110A (failed)",
    ]  # fmt: skip
    residual = figure.axes[1]
    solid = [ln for ln in residual.lines if ln.get_linestyle() == "-" and len(ln.get_xdata())]
    dashed = [ln for ln in residual.lines if ln.get_linestyle() == "--"]
    assert max(ln.get_linewidth() for ln in dashed) < min(ln.get_linewidth() for ln in solid)
    # val/error of 20A (one point, inf: not drawn), 32A, 56A (running: so far), 110A × 3 seeds
    assert [list(ln.get_xdata()) for ln in solid] == [[100], *[[100, 200, 300], [100, 200]],
                                                      *[[100, 200, 300]] * 3]  # fmt: skip
    assert str(solid[0].get_ydata()[0]) == "nan"
    assert figure.axes[0].get_ylim() == figure.axes[1].get_ylim()
    assert figure.axes[0].get_xlabel() == "iterations"

    report = write_report(runs, tmp_path / "out")
    text = report.read_text()
    assert report == tmp_path / "out" / "report.md"
    assert (
        "| resnet-110A | 1.7M | 4 | 30.00 ± 0.00 | 30.00 ± 0.00 | 7.00 ± 1.00 "
        "| 6.61 ± 0.16 (best 6.43) | +0.39 |"
    ) in text
    assert "8 runs (4 finished, 1 running, 2 diverged, 1 failed)" in text
    assert f"`{seeds_sweep.resolve()}`" in text
    assert "![CIFAR-10, cifar family: error against iterations](curves_cifar10_cifar.png)" in text
    assert_png(tmp_path / "out" / "curves_cifar10_cifar.png")
    assert not list((tmp_path / "out").glob("responses_*.png"))  # no responses.csv


def test_mixed_sweeps_give_one_figure_per_setting_and_paper_numbers_only_in_its_setting(
    tmp_path: Path,
) -> None:
    write_run(tmp_path / "a" / "0_resnet-20A", "resnet-20A", train=CURVE, val=CURVE, test=9.0)
    write_run(tmp_path / "a" / "1_resnet-50B", "resnet-50B", train=CURVE, test=7.5)
    write_run(tmp_path / "b" / "0_resnet-20A", "resnet-20A", dataset="fashion_mnist",
              params=269_434, train=CURVE, val=CURVE, test=12.0)  # fmt: skip
    write_run(tmp_path / "b" / "1_plain-20", "plain-20", dataset="fashion_mnist", train=CURVE,
              val=CURVE, test=13.0)  # fmt: skip
    write_run(tmp_path / "run_34", "resnet-34B", dataset="imagenet", family="imagenet",
              params=21_797_672, train=CURVE, val=CURVE, test=25.02, top5=7.96)  # fmt: skip
    paths = [tmp_path / "a", tmp_path / "b", tmp_path / "run_34", tmp_path / "a"]
    runs = load_runs(paths)
    assert len(runs) == 5  # each folder once

    cifar, fashion, imagenet = (build_table(d, f, [r for r in runs if r.dataset == d])
                                for d, f in (("cifar10", "cifar"), ("fashion_mnist", "cifar"),
                                             ("imagenet", "imagenet")))  # fmt: skip
    assert cifar.rows == [
        ["resnet-20A", "0.27M", "1", "30.00", "30.00", "9.00", "8.75", "+0.25", "finished"],
        # a CIFAR net of depth 50, without a val split
        ["resnet-50B", "0.27M", "1", "30.00", "—", "7.50", "—", "—", "finished"],
    ]
    assert fashion.columns == [
        "network", "params", "runs", "train error (%)", "val error (%)", "test error (%)",
        "status",
    ]  # fmt: skip
    assert fashion.rows[0] == ["plain-20", "0.27M", "1", "30.00", "30.00", "13.00", "finished"]
    assert "The paper reports no errors for this setting." in fashion.notes
    assert imagenet.columns == [
        "network", "params", "runs", "train error (%)", "val error (%)", "test top-1 error (%)",
        "paper (%)", "Δ", "test top-5 error (%)", "paper (%)", "Δ", "status",
    ]  # fmt: skip
    assert imagenet.rows == [
        ["resnet-34B", "21.8M", "1", "30.00", "30.00", "25.02", "24.52", "+0.50", "7.96", "7.46",
         "+0.50", "finished"],
    ]  # fmt: skip

    out = tmp_path / "report"
    text = write_report(runs, out, sources=paths[:3]).read_text()
    assert [line for line in text.splitlines() if line.startswith("## ")] == [
        "## CIFAR-10, cifar family", "## Fashion-MNIST, cifar family",
        "## ImageNet, imagenet family",
    ]  # fmt: skip
    fashion_part = text.split("## Fashion-MNIST")[1].split("## ImageNet")[0]
    assert "8.75" not in fashion_part and "paper (%)" not in fashion_part
    assert text.count("8.75") == 1
    for png in ("curves_cifar10_cifar.png", "curves_fashion_mnist_cifar.png",
                "curves_imagenet_imagenet.png"):  # fmt: skip
        assert f"]({png})" in text
        assert_png(out / png)


def test_a_difference_from_the_paper_that_rounds_to_zero_shows_plus_zero(tmp_path: Path) -> None:
    """8.749 against Table 6's 8.75: a Δ of -0.001 shows as +0.00, never -0.00."""
    write_run(tmp_path / "0_resnet-20A", "resnet-20A", train=CURVE, val=CURVE, test=8.749)
    (row,) = build_table("cifar10", "cifar", load_runs([tmp_path])).rows
    assert row[5:8] == ["8.75", "8.75", "+0.00"]


def test_figure7_png_from_responses_csv_uses_the_last_test_measurement(tmp_path: Path) -> None:
    plain = [0.5, 0.9, 0.7, 1.2, 1.0, 0.8, 1.1]
    residual = [0.4, 0.3, 0.6, 0.2, 0.5, 0.3, 0.4]
    write_run(tmp_path / "s" / "0_plain-8", "plain-8", dataset="fashion_mnist", train=CURVE,
              test=11.0, responses=[(200, "val", [9.0] * 7), (300, "test", plain),
                                    (300, "val", [8.0] * 7)])  # fmt: skip
    write_run(tmp_path / "s" / "1_resnet-8A", "resnet-8A", dataset="fashion_mnist",
              train=CURVE, test=10.0, responses=[(300, "test", residual)])  # fmt: skip
    write_run(tmp_path / "s" / "2_resnet-8A", "resnet-8A", "running", dataset="fashion_mnist",
              seed=1, train=CURVE[:1], responses=[(100, "val", [1.0] * 7)])  # fmt: skip
    runs = load_runs([tmp_path / "s"])
    assert [r.responses_split for r in runs] == ["test", "test", "val"]
    assert runs[0].responses[1] == (2, "stages.2.bn", 0.9) and len(runs[0].responses) == 7

    top, bottom = responses_figure(runs, "Fashion-MNIST").axes
    assert [ln.get_label() for ln in top.lines] == [
        "plain-8",
        "resnet-8A (mean of 2 runs) (running)",
    ]
    assert list(top.lines[0].get_ydata()) == pytest.approx(plain)  # network order
    assert list(bottom.lines[0].get_ydata()) == pytest.approx(sorted(plain, reverse=True))
    assert list(top.lines[1].get_ydata()) == pytest.approx([(r + 1) / 2 for r in residual])
    assert [ln.get_linestyle() for ln in top.lines] == ["--", "-"]  # plain dashed

    text = write_report(runs, tmp_path / "out").read_text()
    assert "](responses_fashion_mnist_cifar.png)" in text
    assert_png(tmp_path / "out" / "responses_fashion_mnist_cifar.png")


def test_long_runs_get_the_papers_axis_in_ten_thousands_and_no_val_split_a_test_marker(
    tmp_path: Path,
) -> None:
    long = [(s, 50.0 * 1000 / s) for s in range(1000, 64001, 1000)]
    write_run(tmp_path / "0_plain-20", "plain-20", train=long, test=9.9)  # val_size=0
    figure = curves_figure(load_runs([tmp_path]), "CIFAR-10")
    (ax,) = figure.axes  # plain nets only: one panel
    assert ax.get_xlabel() == "iterations (×10⁴)"
    dashed, marker = [ln for ln in ax.lines if len(ln.get_xdata())]
    assert dashed.get_linestyle() == "--" and max(dashed.get_xdata()) == pytest.approx(6.4)
    assert (list(marker.get_xdata()), list(marker.get_ydata()), marker.get_marker()) == (
        [6.4], [9.9], "o",
    )  # fmt: skip
    # the first 5% of the iterations (near chance) do not set the scale: 50% at 1k → 1.67% at 3.2k
    assert ax.get_ylim()[1] == pytest.approx(1.08 * 50 * 1000 / 4000)
    assert "dot: test error" in figure.texts[0].get_text()


@pytest.mark.parametrize(
    ("params", "text"),
    [(269_722, "0.27M"), (464_154, "0.46M"), (1_727_962, "1.7M"), (19_421_274, "19.4M"),
     (21_797_672, "21.8M"), (75_002, "0.08M"), (None, "—")],
)  # fmt: skip
def test_params_are_written_as_the_paper_does(params: int | None, text: str) -> None:
    assert format_params(params) == text


def test_folders_without_runs_are_clear_errors(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    (empty / "something").mkdir(parents=True)
    (empty / "something" / "metrics.csv").write_text("step\n")
    with pytest.raises(ValueError, match=r"no reslab run folders \(status.json\) under .*empty"):
        load_runs([empty])
    assert main([str(empty)]) == 1
    assert f"no reslab run folders (status.json) under {empty}" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 1
    assert f"{tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert not (empty / "report").exists()
    bad = write_run(tmp_path / "bad" / "0_plain-20", "plain-20", "exploded", train=CURVE)
    with pytest.raises(
        ValueError, match=r"status 'exploded' is not one of finished, running, interrupted"
    ):
        load_runs([bad])


def test_an_unreadable_run_folder_is_left_out_by_name_and_the_others_reported(
    tmp_path: Path, capsys
) -> None:
    """One damaged status.json (not JSON) or hparams.yaml (not YAML) does not stop the report
    of the other runs; each is named on stderr and in report.md, and the exit status is 1."""
    sweep = tmp_path / "sweep"
    write_run(sweep / "0_resnet-20A", "resnet-20A", train=CURVE, val=CURVE, test=8.5)
    broken = write_run(sweep / "1_plain-20", "plain-20", train=CURVE)
    (broken / "status.json").write_text('{"status": "finished", "name": ')
    bad_yaml = write_run(sweep / "2_plain-56", "plain-56", train=CURVE)
    (bad_yaml / "hparams.yaml").write_text("network: [plain-56\n")
    assert main([str(sweep)]) == 1
    err = capsys.readouterr().err
    assert f"reslab-report: left out {broken}/status.json is not valid JSON" in err
    assert f"reslab-report: left out {bad_yaml}/hparams.yaml is not valid YAML" in err
    text = (sweep / "report" / "report.md").read_text()
    assert "1 runs (1 finished)" in text and f"Left out: {broken}/status.json" in text
    assert "| resnet-20A |" in text
    (sweep / "0_resnet-20A" / "status.json").write_text("[]")
    assert main([str(sweep)]) == 1
    assert "reslab-report: error: no run folder could be read: " in capsys.readouterr().err


def test_a_report_that_cannot_be_written_is_one_line(tmp_path: Path, capsys) -> None:
    """--out where no folder can be made (under a file): one line naming it and the reason,
    exit 1, no traceback."""
    run = write_run(tmp_path / "0_resnet-20A", "resnet-20A", train=CURVE, val=CURVE, test=8.5)
    (tmp_path / "a_file").write_text("")
    assert main([str(run), "--out", str(tmp_path / "a_file" / "report")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"reslab-report: error: cannot write the report into {tmp_path}/a_file/report: "
    )
    assert "Not a directory" in err and err.count("\n") == 1


def test_a_last_row_cut_short_is_not_a_value(tmp_path: Path) -> None:
    """metrics.csv of a run killed (or still running) mid-row: the cut row is not read."""
    run = write_run(tmp_path / "0_resnet-20A", "resnet-20A", "running", train=CURVE)
    whole = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(whole + "0.1,9000,2.42813134193")
    assert read_metrics(run / "metrics.csv") == read_metrics_of(whole, tmp_path)


def read_metrics_of(text: str, tmp_path: Path) -> dict:
    (tmp_path / "whole.csv").write_text(text)
    return read_metrics(tmp_path / "whole.csv")


def test_main_writes_the_report_beside_the_first_path_and_prints_the_table(
    seeds_sweep: Path, tmp_path: Path, capsys
) -> None:
    run = write_run(tmp_path / "single", "resnet-20A", train=CURVE, val=CURVE, test=8.5)
    assert main([str(seeds_sweep), str(run)]) == 0
    out = capsys.readouterr().out
    assert "CIFAR-10, cifar family" in out and "7.00 ± 1.00" in out and "8.75" in out
    assert "3_resnet-110A: failed" in out and "report.md" in out
    text = (seeds_sweep / "report" / "report.md").read_text()
    assert (
        "| resnet-20A | 0.27M | 2 | 30.00 | 30.00 | 8.50 | 8.75 | -0.25 | 1 finished, 1 diverged |"
    ) in text
    assert f"`{seeds_sweep}`, `{run}`" in text


def test_final_training_and_validation_errors_are_averaged_over_seeds_beside_test_error(
    tmp_path: Path, capsys
) -> None:
    """The degradation of Figures 1 and 6 is in the training error: the table gives the final
    train/error (the last logged value: status.json's, else metrics.csv's last row) and
    val/error of every network, mean ± sample std over its finished seeds, as it does test
    error."""
    sweep = tmp_path / "sweep"
    # (seed, final train error, final val error, test error); earlier values of the curves
    # are lower, so only the last one can give these means.
    plain = [(0, 8.0, 11.0, 9.0), (1, 10.0, 12.0, 10.0), (2, 12.0, 16.0, 11.5)]
    residual = [(0, 4.0, 9.0, 8.0), (1, 5.0, 9.5, 8.5)]
    job = 0
    for name, seeds in (("plain-20", plain), ("resnet-20A", residual)):
        for seed, train, val, test in seeds:
            write_run(sweep / f"{job}_{name}", name, seed=seed,
                      train=[(100, train - 3.0), (200, train)],
                      val=[(100, val - 3.0), (200, val)], test=test)  # fmt: skip
            job += 1
    # status.json without the final training error: metrics.csv's last row gives it
    status_file = sweep / "2_plain-20" / "status.json"
    status = json.loads(status_file.read_text())
    del status["train/error"]
    status_file.write_text(json.dumps(status))
    # an unfinished seed with the lowest errors of all: not in the means
    write_run(sweep / "5_plain-20", "plain-20", "running", seed=3,
              train=[(100, 1.0)], val=[(100, 1.0)])  # fmt: skip

    runs = load_runs([sweep])
    assert runs[2].final["train/error"] == 12.0
    table = build_table("cifar10", "cifar", runs)
    assert table.columns == [
        "network", "params", "runs", "train error (%)", "val error (%)", "test error (%)",
        "paper (%)", "Δ", "status",
    ]  # fmt: skip
    # plain-20, by hand: train 8, 10, 12: mean 10, sample std sqrt((4 + 0 + 4) / 2) = 2;
    # val 11, 12, 16: mean 13, std sqrt((4 + 1 + 9) / 2) = sqrt(7) = 2.6458;
    # test 9, 10, 11.5: mean 10.1667, std sqrt((1.3611 + 0.0278 + 1.7778) / 2) = 1.2583;
    # the paper's ≈9.5 (Figure 6): Δ ≈+0.67.
    # resnet-20A: train 4, 5: 4.5 ± sqrt(0.5) = 0.7071; val 9, 9.5: 9.25 ± sqrt(0.125) =
    # 0.3536; test 8, 8.5: 8.25 ± 0.3536; Table 6's 8.75: Δ -0.50.
    assert table.rows == [
        ["plain-20", "0.27M", "4", "10.00 ± 2.00", "13.00 ± 2.65", "10.17 ± 1.26", "≈9.5",
         "≈+0.67", "3 finished, 1 running"],
        ["resnet-20A", "0.27M", "2", "4.50 ± 0.71", "9.25 ± 0.35", "8.25 ± 0.35", "8.75",
         "-0.50", "finished"],
    ]  # fmt: skip
    assert any(n.startswith("Train error: the mean over the training batches of the last "
                            "logging interval") for n in table.notes)  # fmt: skip

    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    for heading in ("train error (%)", "val error (%)", "test error (%)"):
        assert heading in out
    (plain_line,) = [line for line in out.splitlines() if "plain-20" in line and "±" in line]
    cells = [c.strip() for c in plain_line.strip("│┃ ").split("│")]
    assert cells[3:6] == ["10.00 ± 2.00", "13.00 ± 2.65", "10.17 ± 1.26"]
    text = (sweep / "report" / "report.md").read_text()
    assert (
        "| network | params | runs | train error (%) | val error (%) | test error (%) "
        "| paper (%) | Δ | status |"
    ) in text
    assert (
        "| resnet-20A | 0.27M | 2 | 4.50 ± 0.71 | 9.25 ± 0.35 | 8.25 ± 0.35 | 8.75 | -0.50 "
        "| finished |"
    ) in text


def test_a_column_no_run_logged_is_left_out(tmp_path: Path) -> None:
    """Without a val split (data.val_size=0) there is no val/error: no val column."""
    write_run(tmp_path / "0_plain-8", "plain-8", dataset="fashion_mnist", train=CURVE, test=11.0)
    write_run(tmp_path / "1_resnet-8A", "resnet-8A", dataset="fashion_mnist", seed=0,
              train=[(100, 20.0), (300, 6.5)], test=10.0)  # fmt: skip
    table = build_table("fashion_mnist", "cifar", load_runs([tmp_path]))
    assert table.columns == ["network", "params", "runs", "train error (%)", "test error (%)",
                             "status"]  # fmt: skip
    assert [row[3:5] for row in table.rows] == [["30.00", "11.00"], ["6.50", "10.00"]]
    assert (
        "Train error: the mean over the training batches of the last logging interval "
        "(the network in training mode)." in table.notes
    )
    assert not any("val error" in n for n in table.notes)


# --- real sweeps through the CLI -------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=900)


@pytest.fixture(scope="module")
def fig6_sweep(tmp_path_factory: pytest.TempPathFactory, tiny_cifar10: Path) -> Path:
    """reslab-train -m experiment=fig6 debug=smoke on tiny CIFAR-10 files: 9 jobs."""
    sweep = tmp_path_factory.mktemp("fig6") / "sweep"
    result = run_cli(
        sys.executable, "-m", "reslab.cli", "-m", "experiment=fig6", "debug=smoke",
        f"data.data_dir={tiny_cifar10}", "data.download=false", "logger=csv",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


@pytest.mark.slow
def test_fig6_smoke_sweep_then_reslab_report(fig6_sweep: Path) -> None:
    """The issue's acceptance: reslab-train -m experiment=fig6 debug=smoke, then
    reslab-report <its folder>."""
    result = run_cli(str(Path(sys.executable).with_name("reslab-report")), str(fig6_sweep))
    assert result.returncode == 0, result.stderr[-3000:]
    out = fig6_sweep / "report"
    text = (out / "report.md").read_text()
    assert "9 runs (9 finished)" in text
    for name, paper in (("resnet-20A", "8.75"), ("resnet-56A", "6.97"), ("resnet-110A", "6.43"),
                        ("plain-56", "≈13")):  # fmt: skip
        (row,) = [line for line in text.splitlines() if line.startswith(f"| {name} |")]
        assert f"| {paper} |" in row
        assert name in result.stdout
    assert "| resnet-56A | 0.85M | 1 |" in text and "6.97" in result.stdout
    assert "![CIFAR-10, cifar family: error against iterations](curves_cifar10_cifar.png)" in text
    assert_png(out / "curves_cifar10_cifar.png", (1000, 400))  # two panels side by side
    runs = load_runs([fig6_sweep])
    assert [r.name for r in runs][:2] == ["plain-20", "plain-32"]
    assert all(r.iterations == 4 and r.metrics["train/error"] for r in runs)


@pytest.mark.slow
def test_sweep_with_a_failed_job_reports_it_failed(tmp_path: Path) -> None:
    """Depth 9 is not 6n+2: that job fails, Hydra runs the other; both are in the report,
    the failed one from status.json and .hydra/ alone (it failed before hparams.yaml)."""
    sweep = tmp_path / "sweep"
    result = run_cli(
        sys.executable, "-m", "reslab.cli", "-m", "model.depth=8,9", "data=synthetic",
        "debug=smoke", "logger=csv", f"hydra.sweep.dir={sweep}",
        "+callbacks.responses._target_=reslab.callbacks.LayerResponses",
    )  # fmt: skip
    assert (sweep / "0_resnet-8A" / "responses.csv").is_file(), result.stderr[-3000:]
    assert not (sweep / "1_resnet-9A" / "hparams.yaml").exists()
    result = run_cli(
        sys.executable, "-m", "reslab.report", str(sweep), "--out", str(tmp_path / "r")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failed = load_runs([sweep / "1_resnet-9A"])[0]
    assert (failed.status, failed.dataset, failed.family, failed.depth) == (
        "failed", "synthetic", "cifar", 9,
    )  # fmt: skip
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| resnet-9A | — | 1 | — | — | — | failed |" in text
    # the finished job's final training, validation and test errors, as status.json has them,
    # in report.md and in the printed table
    status = json.loads((sweep / "0_resnet-8A" / "status.json").read_text())
    finals = [f"{status[k]:.2f}" for k in ("train/error", "val/error", "test/error")]
    assert f"| resnet-8A | 0.08M | 1 | {' | '.join(finals)} | finished |" in text
    for heading in ("train error (%)", "val error (%)", "test error (%)"):
        assert heading in result.stdout
    (line,) = [ln for ln in result.stdout.splitlines() if "resnet-8A" in ln]
    assert [c.strip() for c in line.strip("│ ").split("│")][3:6] == finals
    failure = "1_resnet-9A: failed: ValueError: model.depth=9 is not valid; valid: an integer >= 8"
    assert failure in text
    assert "2 runs (1 finished, 1 failed)" in text and "resnet-9A" in result.stdout
    assert_png(tmp_path / "r" / "curves_synthetic_cifar.png")
    assert_png(tmp_path / "r" / "responses_synthetic_cifar.png")


def test_the_table_says_the_commit_of_its_runs_and_warns_when_it_mixes_commits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = "1" * 40, "2" * 40
    for i, (commit, dirty) in enumerate(((one, False), (one, False), (two, True))):
        run = write_run(tmp_path / "a" / f"{i}_resnet-20A", "resnet-20A", seed=i,
                        train=CURVE, val=CURVE, test=9.0)  # fmt: skip
        record = {"reslab": "0.1.0", "commit": commit, "dirty": dirty}
        if dirty:
            record["diff_sha256"] = "ab" * 32
        (run / "provenance.json").write_text(json.dumps(record))
    runs = load_runs([tmp_path / "a"])
    assert [r.code for r in runs] == ["1111111111", "1111111111", "2222222222+dirty abababab"]
    same = build_table("cifar10", "cifar", runs[:2])
    assert "Code: 1111111111 (2 runs)." in same.notes
    assert not any(n.startswith("Warning") for n in same.notes)

    mixed = build_table("cifar10", "cifar", runs)
    (warning,) = [n for n in mixed.notes if n.startswith("Warning")]
    assert warning == (
        "Warning: this table mixes runs of 2 versions of the code: 1111111111 (0_resnet-20A, "
        "1_resnet-20A); 2222222222+dirty abababab (2_resnet-20A)."
    )
    write_run(tmp_path / "a" / "3_resnet-20A", "resnet-20A", "failed", error="ValueError: x")
    assert main([str(tmp_path / "a"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "Warning: this table mixes runs of 2 versions" in out
    assert "1 run(s) recorded no commit (no provenance.json)." in out  # the failed one
    assert "Warning: this table mixes" in (tmp_path / "out" / "report.md").read_text()


def test_a_diverged_runs_null_errors_are_no_final_numbers(tmp_path: Path) -> None:
    run = write_run(tmp_path / "0_resnet-20A", "resnet-20A", "diverged",
                    train=[(2, 50.0), (4, 80.0)], val=[(2, 60.0), (4, 90.0)])  # fmt: skip
    status = {"status": "diverged", "name": "resnet-20A", "iterations": 4, "diverged_at": 4,
              "train/error": None, "val/error": None, "test/error": None}  # fmt: skip
    (run / "status.json").write_text(json.dumps(status))
    (loaded,) = load_runs([run])
    assert loaded.status == "diverged" and loaded.final == {}  # not metrics.csv's last rows
    assert loaded.metrics["val/error"] == [(2, 60.0), (4, 90.0)]  # the curve as measured
    # A finished status with a null that write_status named non_finite is a diverged run too.
    status = {"status": "finished", "name": "resnet-20A", "iterations": 4, "test/error": None,
              "non_finite": ["test/error"]}  # fmt: skip
    (run / "status.json").write_text(json.dumps(status))
    assert load_runs([run])[0].status == "diverged"
