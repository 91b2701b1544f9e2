"""Every launcher runs every kind of dataset: a real ``reslab-train -m`` sweep per cell of
(launcher) x (an in-memory dataset, the ImageNet folder dataset decoded by worker processes),
one job each, and every job finishes.

The local launcher runs each job in a joblib (loky) worker process, whose default
multiprocessing context is loky's: ImageNet's DataLoader workers start through a context of
their own (``reslab.data.imagenet.WORKER_START_METHOD``), never the inherited one.

The SLURM column runs each job as a SLURM job on the private one-node cluster that the session
fixture ``slurm_cluster`` starts (tests/slurm_cluster.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_input import IMAGENET_SMALL

# launcher -> the overrides that choose it (none: Hydra's basic launcher, one job after another)
LAUNCHERS: dict[str, tuple[str, ...]] = {
    "basic": (),
    "local": ("hydra/launcher=local",),
    "slurm": ("hydra/launcher=slurm", "trainer=cpu", "hydra.launcher.gpus_per_node=0",
              "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"),
}  # fmt: skip
# dataset -> overrides ({data}: the tiny JPEG tree)
DATASETS: dict[str, tuple[str, ...]] = {
    "in-memory": ("data=synthetic", "model.depth=8"),
    "imagenet-folders": (*IMAGENET_SMALL, "data.data_dir={data}", "data.num_workers=1"),
}
CELLS = [
    pytest.param(launcher, dataset, id=f"{launcher}-{dataset}")
    for launcher in LAUNCHERS
    for dataset in DATASETS
]


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "dataset"), CELLS)
def test_every_launcher_runs_every_dataset(
    launcher: str, dataset: str, tmp_path: Path, tiny_imagenet: Path, request: pytest.FixtureRequest
) -> None:
    sweep = tmp_path / "sweep"
    data_args = [a.format(data=tiny_imagenet) for a in DATASETS[dataset]]
    args = ["-m", *LAUNCHERS[launcher], *data_args, "debug=smoke", "logger=csv",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "RESLAB_LOG_DIR": str(tmp_path / "logs")}
    if launcher == "slurm":  # SLURM_CONF names the test cluster; sbatch passes the rest on
        env |= request.getfixturevalue("slurm_cluster").env
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    if launcher == "local":
        assert "Joblib.Parallel(" in output  # the job ran in a joblib worker process
    if launcher == "slurm":
        assert "Submitit 'slurm' sweep output dir" in output  # the job ran as a SLURM job
    jobs = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(jobs) == 1, jobs
    status = json.loads((jobs[0] / "status.json").read_text())
    assert status["status"] == "finished", status
    assert status["iterations"] == 4, status
    rows = (jobs[0] / "metrics.csv").read_text().splitlines()
    assert "step" in rows[0].split(",") and len(rows) > 1, rows
