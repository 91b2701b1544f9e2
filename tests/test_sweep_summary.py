import json
from pathlib import Path

from rich.console import Console

from reslab.hydra_callbacks import sweep_table


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
