"""Through a real scheduler: reslab's hydra/launcher=slurm sweeps on a private one-node SLURM
cluster (tests/slurm_cluster.py, the session fixture ``slurm_cluster``), CPU jobs on tiny data.
The cluster keeps no accounting (no slurmdbd), as one-node clusters often do: sacct fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from reslab.launch import quiet_slurm_polling

SMOKE = ["hydra/launcher=slurm", "trainer=cpu", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "data=synthetic",
         "debug=smoke", "logger=csv"]  # fmt: skip
NOISE = ("sacct", "Bypassing", "accounting storage is disabled")


def sweep(cluster, tmp_path: Path, depths: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``reslab-train -m`` through the cluster; the jobs get this environment (PYTHONPATH
    included: sbatch exports it), SLURM_CONF names the cluster."""
    folder = tmp_path / "sweep"
    env = {**os.environ, **cluster.env, "WANDB_MODE": "offline",
           "RESLAB_LOG_DIR": str(tmp_path / "logs")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "-m", *SMOKE, f"model.depth={depths}",
         f"hydra.sweep.dir={folder}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    return result, folder


def status(folder: Path) -> dict:
    return json.loads((folder / "status.json").read_text())


@pytest.mark.slow
def test_a_two_job_sweep_runs_as_two_slurm_jobs(slurm_cluster, tmp_path: Path) -> None:
    result, folder = sweep(slurm_cluster, tmp_path, "8,14")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Submitit 'slurm' sweep output dir" in output
    for run in ("0_resnet-8A", "1_resnet-14A"):
        assert status(folder / run)["status"] == "finished", run
        assert status(folder / run)["iterations"] == 4
        assert (folder / run / "metrics.csv").stat().st_size > 0
        assert (folder / run / "checkpoints" / "last.ckpt").is_file()
    tasks = sorted(p.name for p in (folder / ".submitit").glob("*_*") if p.name[0] != ".")
    assert len(tasks) == 2 and tasks[0].endswith("_0") and tasks[1] == tasks[0][:-1] + "1", tasks
    assert f"reslab sweep: {folder}" in output
    assert "0_resnet-8A" in result.stdout and "1_resnet-14A" in result.stdout
    assert not [line for line in output.splitlines() if any(n in line for n in NOISE)]


@pytest.mark.slow
def test_a_bad_job_fails_alone_and_the_sweep_exits_1_naming_it(
    slurm_cluster, tmp_path: Path
) -> None:
    result, folder = sweep(slurm_cluster, tmp_path, "9,8")  # 9 is not 6n+2
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert status(folder / "0_resnet-9A")["status"] == "failed"
    assert (folder / "0_resnet-9A" / "error.txt").is_file()
    assert status(folder / "1_resnet-8A")["status"] == "finished"
    assert "1 job(s) of the sweep failed: 0_resnet-9A" in output
    assert not [line for line in output.splitlines() if any(n in line for n in NOISE)]


def test_job_states_are_right_without_accounting_and_polling_is_quiet(
    slurm_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """sacct fails here; reslab's watcher asks squeue: a job is RUNNING, then COMPLETED; a
    cancelled job is done (no endless wait for a result it will never write)."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    quiet_slurm_polling()
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=1)

    def state(job) -> str:
        return job.watcher.get_state(job.job_id, mode="force")

    def until(job, wanted: str) -> None:
        deadline = time.monotonic() + 60
        while state(job) != wanted:
            assert time.monotonic() < deadline, (wanted, state(job))
            time.sleep(0.5)

    quick, slow = executor.submit(time.sleep, 2), executor.submit(time.sleep, 300)
    until(quick, "RUNNING")
    assert quick.result() is None
    until(quick, "COMPLETED")
    until(slow, "RUNNING")
    slow.cancel()
    until(slow, "CANCELLED")
    assert slow.done()
    captured = capfd.readouterr()
    noise = [line for line in (captured.out + captured.err).splitlines()
             if any(n in line for n in NOISE)]  # fmt: skip
    assert not noise
