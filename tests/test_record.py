"""What a run records for machines and for its reader: strict JSON in status.json (null, never a
bare NaN), no final errors for a diverged run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reslab.run_folder import read_status, write_status

ROOT = Path(__file__).resolve().parents[1]


def strict_json(text: str) -> dict:
    """json.loads as JavaScript's JSON.parse and jq read: NaN, Infinity and -Infinity refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_status_json_is_strict_json_with_null_for_a_non_finite_number(tmp_path: Path) -> None:
    write_status(tmp_path, "diverged", name="resnet-20A", diverged_at=6, **{
        "train/loss": float("nan"), "val/error": float("inf"), "test/error": None,
        "train/error": 12.5,
    })  # fmt: skip
    status = strict_json((tmp_path / "status.json").read_text())
    assert status == {
        "status": "diverged", "name": "resnet-20A", "diverged_at": 6, "train/loss": None,
        "val/error": None, "test/error": None, "train/error": 12.5,
        "non_finite": ["train/loss", "val/error"],  # why those are null
    }  # fmt: skip
    assert read_status(tmp_path) == status


@pytest.mark.slow
def test_a_diverged_run_records_null_errors_in_strict_json(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "data=synthetic", "debug=smoke", "logger=csv",
         "optim.lr=1e8", "optim.max_steps=20", f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    status = strict_json((run / "status.json").read_text())
    at = status["diverged_at"]
    assert status["status"] == "diverged" and status["iterations"] == at < 20
    for key in ("train/error", "val/error", "test/error", "train/loss"):
        assert status[key] is None, key  # measured on the broken network: no result
    assert status.get("val/error_best_at") is None or status["val/error_best_at"] < at
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    before = [r for r in rows if r["val/error"] and int(r["step"]) < at]
    assert before and all(0 <= float(r["val/error"]) <= 100 for r in before)  # kept there

    hparams = yaml.safe_load((run / "hparams.yaml").read_text())  # valid YAML
    assert hparams["network"] == "resnet-20A"
