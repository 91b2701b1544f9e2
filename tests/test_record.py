"""What a run records for machines and for its reader: strict JSON in status.json (null, never a
bare NaN), no final errors for a diverged run, and the provenance of every run (the commit, a
dirty tree's diff, the library versions, the device, the host, the command line)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from reslab import provenance as prov
from reslab.run_folder import (
    GIT_DIFF_FILE,
    PROVENANCE_FILE,
    read_provenance,
    read_status,
    write_provenance,
    write_status,
)

ROOT = Path(__file__).resolve().parents[1]


def strict_json(text: str) -> dict:
    """json.loads as JavaScript's JSON.parse and jq read: NaN, Infinity and -Infinity refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


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


def test_git_state_of_a_clean_and_a_dirty_checkout_and_of_no_checkout(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("outputs/\n")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    state, diff = prov.git_state(repo)
    assert state == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False} and diff is None

    (repo / "a.py").write_text("x = 2\n")  # a change
    (repo / "b.py").write_text("y = 3\n")  # a new file
    (repo / "outputs").mkdir()
    (repo / "outputs" / "big.bin").write_bytes(b"ignored")  # ignored: not a change
    state, diff = prov.git_state(repo)
    assert state["commit"] == git(repo, "rev-parse", "HEAD") and state["dirty"] is True
    assert "-x = 1\n+x = 2" in diff and "+y = 3" in diff and "big.bin" not in diff
    assert "b/b.py" in diff  # the untracked file as a new file, so the diff applies whole
    import hashlib

    assert state["diff_sha256"] == hashlib.sha256(diff.encode()).hexdigest()

    assert prov.git_state(tmp_path / "elsewhere") == ({"commit": "unknown", "dirty": None}, None)
    assert prov.git_state(None) == ({"commit": "unknown", "dirty": None}, None)  # a wheel


def test_versions_are_importlib_metadatas_and_the_checkout_is_this_one() -> None:
    import platform

    found = prov.versions()
    for key, distribution in prov.LIBRARIES:
        assert found[key] == metadata.version(distribution)
    assert found["python"] == platform.python_version()
    assert prov.reslab_checkout() == ROOT  # tests run from this checkout's src/


def test_a_resumed_run_keeps_the_records_of_its_earlier_starts(tmp_path: Path) -> None:
    write_provenance(tmp_path, {"commit": "a" * 40, "dirty": True}, "diff one\n")
    assert (tmp_path / GIT_DIFF_FILE).read_text() == "diff one\n"
    write_provenance(tmp_path, {"commit": "b" * 40, "dirty": False}, None, resumed=True)
    assert not (tmp_path / GIT_DIFF_FILE).exists()  # the latest start's: clean
    write_provenance(tmp_path, {"commit": "c" * 40, "dirty": False}, None, resumed=True)
    record = read_provenance(tmp_path)
    assert record["commit"] == "c" * 40
    assert [r["commit"] for r in record["earlier"]] == ["a" * 40, "b" * 40]
    write_provenance(tmp_path, {"commit": "d" * 40, "dirty": False}, None)  # a fresh start
    assert read_provenance(tmp_path) == {"commit": "d" * 40, "dirty": False}


@pytest.mark.slow
def test_a_diverged_run_records_null_errors_strict_json_and_its_provenance(
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
    # nothing evaluated for the broken network (Lightning validates a run that stops), but the
    # iteration that found it is logged
    assert not [r for r in rows if (r["val/error"] or r.get("test/error")) and int(r["step"]) >= at]
    assert [r["train/loss"] for r in rows if int(r["step"]) == at] == ["nan"]

    hparams = yaml.safe_load((run / "hparams.yaml").read_text())  # valid YAML
    assert hparams["network"] == "resnet-20A"
    record = strict_json((run / PROVENANCE_FILE).read_text())
    assert hparams["provenance"] == record
    assert record["commit"] == git(ROOT, "rev-parse", "HEAD")
    dirty = bool(git(ROOT, "status", "--porcelain"))
    assert record["dirty"] is dirty and (run / GIT_DIFF_FILE).is_file() is dirty
    for key, distribution in prov.LIBRARIES:
        assert record[key] == metadata.version(distribution)
    assert record["device"] and record["device_count"] == 1  # cpu here; a GPU by its name
    assert record["host"] and "optim.lr=1e8" in record["command"]
    assert "reslab.cli" in record["command"]


def test_a_run_a_callback_stops_short_of_max_steps_is_stopped_not_finished(
    tmp_path: Path, hydra_cfg
) -> None:
    """A callback's should_stop (EarlyStopping here) ends the loop at iteration 2 of 4: that
    is no result (status stopped, no test), with a checkpoint there to continue from; the run
    finished only when it trained its optim.max_steps iterations (it said "finished" at 2)."""
    import torch

    from reslab.train import train

    run = tmp_path / "run"
    stop = [
        "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
        "+callbacks.stop.monitor=val/error",
        "+callbacks.stop.stopping_threshold=1000",
    ]
    metric = train(hydra_cfg(run, ["data=synthetic", "debug=smoke", "logger=csv", *stop]))
    assert metric != metric  # nan: no result for a sweeper
    status = json.loads((run / "status.json").read_text())
    assert (status["status"], status["stopped_at"], status["iterations"]) == ("stopped", 2, 2)
    assert "test/error" not in status
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
