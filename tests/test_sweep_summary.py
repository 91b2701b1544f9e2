import json
from pathlib import Path

from rich.console import Console

from reslab.sweep_summary import sweep_table


def test_sweep_table_lists_every_job_in_order_with_its_status(tmp_path: Path) -> None:
    jobs = {
        "10_resnet-56A": {
            "status": "finished",
            "iterations": 800,
            "train/error": 7.5,
            "seconds": 3,
        },
        "2_plain-56": {"status": "failed", "error": "ValueError: bad"},
        "0_plain-20": {
            "status": "finished",
            "iterations": 800,
            "train/error": 9.25,
            "test/error": 11,
        },
    }
    for name, status in jobs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "status.json").write_text(json.dumps(status))
    console = Console(width=120, record=True)
    console.print(sweep_table(tmp_path))
    lines = [line for line in console.export_text().splitlines() if "_" in line and "│" in line]
    assert [line.split()[1] for line in lines] == ["0_plain-20", "2_plain-56", "10_resnet-56A"]
    assert "9.25" in lines[0] and "11.00" in lines[0]
    assert "failed" in lines[1] and "7.50" in lines[2]


def test_a_failed_job_does_not_stop_the_sweep_and_the_command_fails_at_the_end(
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "-m", "model.depth=9,8", "data=synthetic",
         "debug=smoke", "logger=csv", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
    )  # fmt: skip
    assert result.returncode == 1
    failed = json.loads((sweep / "0_resnet-9A" / "status.json").read_text())
    assert failed["status"] == "failed" and "model.depth=9 is not valid" in failed["error"]
    assert "ValueError" in (sweep / "0_resnet-9A" / "error.txt").read_text()
    finished = json.loads((sweep / "1_resnet-8A" / "status.json").read_text())
    assert finished["status"] == "finished" and finished["iterations"] == 4
    assert "[reslab] resnet-9A: failed: ValueError: model.depth=9 is not valid" in result.stdout
    assert "1_resnet-8A" in result.stdout and "reslab sweep" in result.stdout  # the table
    assert "1 job(s) of the sweep failed: 0_resnet-9A" in result.stderr


def test_a_diverged_jobs_null_errors_are_blank_cells(tmp_path: Path) -> None:
    status = {"status": "diverged", "iterations": 6, "diverged_at": 6, "train/error": None,
              "val/error": None, "test/error": None}  # fmt: skip
    (tmp_path / "0_resnet-20A").mkdir()
    (tmp_path / "0_resnet-20A" / "status.json").write_text(json.dumps(status))
    console = Console(width=120, record=True)
    console.print(sweep_table(tmp_path))
    (line,) = [line for line in console.export_text().splitlines() if "0_resnet-20A" in line]
    assert line.split("│")[2:4] == [" diverged at 6 ", "          6 "]
    assert "None" not in line and "nan" not in line
