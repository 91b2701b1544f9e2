"""Through a real scheduler: reslab's hydra/launcher=slurm sweeps on a private one-node SLURM
cluster (tests/slurm_cluster.py, the session fixture ``slurm_cluster``), CPU jobs on tiny data.
The cluster keeps no accounting (no slurmdbd), as one-node clusters often do: sacct fails.

A job preempted or requeued mid-run (``scontrol requeue``: SIGTERM; submitit's USR2, which
SLURM sends ``signal_delay_s`` before the time limit) saves its iteration, is requeued and
resumes there, to the metrics of an uninterrupted run, byte for byte; a ``trainer=ddp`` job
with two tasks runs two ranks that SLURM started and Lightning's SLURMEnvironment joins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
from test_ddp import NOISE as DDP_NOISE

from reslab.slurm import quiet_slurm_polling

TESTS = Path(__file__).resolve().parent

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


def job_env(cluster, tmp_path: Path) -> dict[str, str]:
    """The environment of a sweep whose jobs load test callbacks (sigkill, ddp_worker): this
    folder after the caller's PYTHONPATH (reslab's src first); sbatch exports it to the jobs."""
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(TESTS)]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, **cluster.env, "PYTHONPATH": path, "WANDB_MODE": "offline",
            "RESLAB_LOG_DIR": str(tmp_path / "logs")}  # fmt: skip


def slurm_command(cluster, args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, env={**env, **cluster.env},
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, (args, result.stdout, result.stderr)


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
    # SLURM's record says so too: the failed job exited 1, the other 0
    for run, state, code in (("0_resnet-9A", "FAILED", "1:0"), ("1_resnet-8A", "COMPLETED", "0:0")):
        job = status(folder / run)["slurm_job"]
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                               env={**os.environ, **slurm_cluster.env}).stdout  # fmt: skip
        assert f"JobState={state}" in shown and f"ExitCode={code}" in shown, (run, shown)


# --- how SLURM ends a job ------------------------------------------------------------------------
LONG = [*(o for o in SMOKE if o != "debug=smoke"), "data.batch_size=16", "optim.max_steps=400",
        "callbacks.checkpoint.every_n_train_steps=50"]  # fmt: skip


def start_sweep(cluster, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    folder = tmp_path / "sweep"
    env = {**os.environ, **cluster.env, "WANDB_MODE": "offline",
           "RESLAB_LOG_DIR": str(tmp_path / "logs")}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "reslab.cli", "-m", *LONG, *args, f"hydra.sweep.dir={folder}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    return proc, folder


def until_running(proc: subprocess.Popen, run: Path) -> str:
    """Waits until the job of ``run`` trains; returns its SLURM job id."""
    deadline = time.monotonic() + 180
    while not (run / "status.json").is_file() or status(run)["status"] != "running":
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    return status(run)["slurm_job"]


@pytest.mark.slow  # two SLURM jobs of 400 iterations, one cancelled, then the sweep resumed
def test_a_cancelled_job_is_said_the_others_run_on_and_the_sweep_resumes(
    slurm_cluster, tmp_path: Path
) -> None:
    proc, folder = start_sweep(slurm_cluster, tmp_path, "model.depth=8,14")
    job = until_running(proc, folder / "0_resnet-8A")
    slurm_command(slurm_cluster, ["scancel", job], dict(os.environ))
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out and "UncompletedJobError" not in out, out[-3000:]
    assert status(folder / "0_resnet-8A")["ended_by_slurm"] == "CANCELLED"
    # preempted: it saved its iteration on SLURM's SIGTERM; interrupted: killed before it could
    stopped = status(folder / "0_resnet-8A")["status"]
    assert stopped in ("preempted", "interrupted")
    assert f"│ 0_resnet-8A  │ {stopped} (CANCELLED)" in out  # the table, after job 1 ended
    assert status(folder / "1_resnet-14A")["status"] == "finished"
    said = f"1 job(s) did not finish: 0_resnet-8A ({stopped}); finish the sweep: reslab-resume"
    assert f"{said} {folder}" in out
    finished = {p: p.read_bytes() for p in (folder / "1_resnet-14A").rglob("*") if p.is_file()}
    env = {**os.environ, **slurm_cluster.env, "WANDB_MODE": "offline"}
    resumed = subprocess.run(
        [sys.executable, "-c", "from reslab.cli import resume_main; resume_main()", str(folder)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert status(folder / "0_resnet-8A")["status"] == "finished"
    assert status(folder / "0_resnet-8A")["iterations"] == 400
    assert {p: p.read_bytes() for p in (folder / "1_resnet-14A").rglob("*") if p.is_file()} == (
        finished
    )


@pytest.mark.slow  # a SLURM job that runs past its 1-minute time limit (checked every ~30 s)
def test_a_timed_out_job_is_said_timed_out(slurm_cluster, tmp_path: Path) -> None:
    """No warning before the time limit (``signal_delay_s=0``): SLURM ends the job TIMEOUT
    (SIGTERM, then SIGKILL); its status.json, the table and the closing line say so and how to
    continue it."""
    proc, folder = start_sweep(
        slurm_cluster, tmp_path, "model.depth=8", "optim.max_steps=100000",
        "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=0",
    )  # fmt: skip
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    ended = status(folder / "0_resnet-8A")
    assert ended.get("ended_by_slurm") == "TIMEOUT", ended
    assert ended["status"] in ("preempted", "interrupted"), ended
    assert f"│ 0_resnet-8A │ {ended['status']} (TIMEOUT)" in out, out[-3000:]
    assert f"finish the sweep: reslab-resume {folder}" in out


@pytest.mark.slow  # a SLURM job warned of its time limit with no requeue left
def test_a_job_whose_requeues_are_used_up_says_so_and_how_to_continue(
    slurm_cluster, tmp_path: Path
) -> None:
    """``max_num_timeout=0`` and a time limit of 2 minutes: SLURM's USR2 (``signal_delay_s``
    before the limit) finds no requeue left: submitit does not requeue the job."""
    proc, folder = start_sweep(
        slurm_cluster, tmp_path, "model.depth=8", "optim.max_steps=100000",
        "hydra.launcher.max_num_timeout=0", "hydra.launcher.timeout_min=2",
        "hydra.launcher.signal_delay_s=60",  # 60 s to start: a loaded machine needed over 30

    )  # fmt: skip
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    stopped = status(folder / "0_resnet-8A")
    assert stopped["status"] == "preempted" and stopped["iterations"] > 0
    assert stopped["not_requeued"] == "Job not requeued because: timed-out too many times."
    assert "preempted (not requeued)" in out
    assert f"finish the sweep: reslab-resume {folder}" in out


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


# --- preemption: zero lost iterations ------------------------------------------------------------
# The SLURM job is only launcher options plus test_signals' run; N iterations in all.
LAUNCHER = [o for o in SMOKE if o.startswith(("hydra", "trainer"))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same run (config, seed, CPU) to N iterations, locally, uninterrupted."""
    from test_signals import N, _run

    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = _run(run, "trainer=cpu", f"optim.max_steps={N}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.mark.slow  # a SLURM job, stopped, requeued, resumed; the reference run
@pytest.mark.parametrize(
    ("how", "pause"),
    [("scontrol-requeue", 11), ("usr2", 17)],  # SIGTERM, then SLURM requeues; submitit requeues
)
def test_a_preempted_job_is_requeued_and_loses_no_iteration(
    slurm_cluster, tmp_path: Path, uninterrupted: Path, how: str, pause: int
) -> None:
    from test_signals import RUN, N, _pause

    folder, paused = tmp_path / "sweep", tmp_path / "paused"
    env = job_env(slurm_cluster, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reslab.cli", "-m", *LAUNCHER, *RUN, f"optim.max_steps={N}",
         *_pause(pause, paused), f"hydra.sweep.dir={folder}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not paused.exists():  # the job holds at the end of iteration `pause`
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the job never reached its pause"
            time.sleep(0.1)
        (job,) = [p.name for p in (folder / ".submitit").iterdir() if p.is_dir()]  # its id
        if how == "usr2":  # as SLURM sends it before the time limit (--signal=USR2@...)
            command = ["scancel", "--signal=USR2", job]
        else:  # preemption by requeue: SLURM sends SIGTERM, KillWait (5 s) before SIGKILL
            command = ["scontrol", "requeue", job]
        slurm_command(slurm_cluster, command, env)
        paused.unlink()  # the iteration after the pause ends, is saved, and the job stops
        run = folder / "0_resnet-8A"
        # the stopped job's record, read before the requeued one (cred_expire: >= 10 s) resumes
        deadline = time.monotonic() + 60
        while (run / "status.json").exists() and status(run)["status"] == "running":
            assert time.monotonic() < deadline, "the job did not stop"
            time.sleep(0.1)
        stopped = status(run)
        assert stopped["status"] == "preempted", stopped
        assert stopped["interrupted_at"] == stopped["iterations"] == pause + 1
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    final = status(run)
    assert final["status"] == "finished" and final["iterations"] == N, final
    logs = "".join(p.read_text(errors="replace") for p in (folder / ".submitit").rglob("*log.*"))
    assert "this job is preempted" in logs or how != "usr2", logs[-3000:]  # submitit's handler
    resumed = re.findall(r"resuming from \S+ at iteration (\d+)", logs)
    assert resumed, logs[-3000:]  # the requeued job resumed from its folder's last.ckpt
    # zero lost iterations: the signal came while iteration pause + 1 was under way; it ended,
    # was saved, and the requeued job continued after it; the whole run is the uninterrupted one's
    lost = (pause + 1) - int(resumed[-1])
    print(f"iterations lost on preemption ({how}): {lost}")
    assert lost == 0
    assert (run / "metrics.csv").read_text() == (uninterrupted / "metrics.csv").read_text()


# --- DDP started by SLURM ------------------------------------------------------------------------
@pytest.mark.slow  # a two-task SLURM job
def test_a_ddp_job_runs_two_ranks_that_slurm_starts(
    slurm_cluster, tmp_path: Path, tiny_cifar10: Path
) -> None:
    """``trainer=ddp trainer.devices=2``: the slurm launcher asks for two tasks on the node
    (tasks_per_node from trainer.devices), srun starts both, Lightning's SLURMEnvironment
    joins them (gloo); tests/test_ddp.py's checks hold for what each rank recorded."""
    import torch
    from test_ddp import WORLD, global_batches, run_args
    from test_ddp import test_each_rank_trains_on_its_own_half_of_every_global_batch as halves
    from test_ddp import test_evaluation_sets_are_counted_once_over_the_ranks as counted_once
    from test_ddp import test_logged_metrics_are_synced_over_the_ranks as synced
    from test_ddp import test_the_ranks_end_with_the_same_trained_weights as same_weights

    folder, record = tmp_path / "sweep", tmp_path / "record"
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "-m", *LAUNCHER, *run_args(tiny_cifar10),
         "trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={WORLD}",
         "+callbacks.record._target_=ddp_worker.RankRecorder",
         f"+callbacks.record.out_dir={record}", f"hydra.sweep.dir={folder}"],
        capture_output=True, text=True, env=job_env(slurm_cluster, tmp_path), cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    logs = "".join(p.read_text(errors="replace") for p in (folder / ".submitit").rglob("*log.*"))
    assert result.returncode == 0, (output + logs)[-4000:]
    (job,) = [p for p in (folder / ".submitit").iterdir() if p.is_dir()]
    # two SLURM tasks (submitit's logs <job>_<task>_log.*), one rank each
    assert sorted(p.name.rsplit("_", 2)[-2] for p in job.glob("*_log.err")) == ["0", "1"]
    assert "Starting with 2 processes" in logs, logs[-3000:]
    run = folder / "0_resnet-8A"
    assert status(run)["status"] == "finished" and status(run)["iterations"] == 4
    assert sorted(p.name for p in record.iterdir()) == [f"rank{r}.pt" for r in range(WORLD)]
    ranks = [torch.load(record / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, rec in enumerate(ranks):
        assert (rec["rank"], rec["world_size"]) == (r, WORLD)
        assert rec["environment"] == "SLURMEnvironment"  # srun's tasks, not Lightning's children
    halves(ranks, global_batches(tiny_cifar10, len(ranks[0]["batches"])))
    same_weights(ranks)
    synced(ranks)
    counted_once(ranks)


# --- two SLURM nodes -----------------------------------------------------------------------------
MULTINODE = ["trainer=multinode", "trainer.accelerator=cpu", "trainer.devices=1",
             "trainer.num_nodes=2"]  # fmt: skip
# What no rank's console says (test_ddp's NOISE), and the header of two nodes of one device
QUIET = (*DDP_NOISE, "2 × cpu")


def job_logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (folder / ".submitit").rglob("*log.*"))


@pytest.mark.slow  # a two-node SLURM job
def test_two_node_sweep_runs_one_rank_on_each_node(
    slurm_two_nodes, tmp_path: Path, tiny_cifar10: Path
) -> None:
    """``trainer=multinode`` with 2 nodes × 1 device through ``hydra/launcher=slurm``: one SLURM
    task on each node (nodes from trainer.num_nodes), Lightning's SLURMEnvironment with node
    ranks 0 and 1; tests/test_ddp.py's checks hold for what each rank recorded, and the console
    of each rank is quiet: one header, on rank 0, naming 2 nodes × 1 cpu."""
    import torch
    from test_ddp import WORLD, global_batches, run_args
    from test_ddp import test_each_rank_trains_on_its_own_half_of_every_global_batch as halves
    from test_ddp import test_evaluation_sets_are_counted_once_over_the_ranks as counted_once
    from test_ddp import test_logged_metrics_are_synced_over_the_ranks as synced
    from test_ddp import test_the_ranks_end_with_the_same_trained_weights as same_weights

    folder, record = tmp_path / "sweep", tmp_path / "record"
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "-m", *LAUNCHER, *run_args(tiny_cifar10),
         *MULTINODE, "+callbacks.record._target_=ddp_worker.RankRecorder",
         f"+callbacks.record.out_dir={record}", f"hydra.sweep.dir={folder}"],
        capture_output=True, text=True, env=job_env(slurm_two_nodes, tmp_path), cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    output, logs = result.stdout + result.stderr, job_logs(folder)
    assert result.returncode == 0, (output + logs)[-4000:]
    (job,) = [p for p in (folder / ".submitit").iterdir() if p.is_dir()]
    tasks = {p.name.rsplit("_", 2)[-2]: p.read_text() for p in job.glob("*_log.out")}
    assert sorted(tasks) == ["0", "1"], logs[-3000:]
    for task, text in tasks.items():  # submitit's JobEnvironment: node=<node>(<nodes>)
        assert f"node={task}(2), global_rank={task}(2)" in text, text[-2000:]
    ranks = [torch.load(record / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, rec in enumerate(ranks):
        assert (rec["rank"], rec["node_rank"], rec["world_size"]) == (r, r, WORLD)
        assert rec["environment"] == "SLURMEnvironment"
    halves(ranks, global_batches(tiny_cifar10, len(ranks[0]["batches"])))
    same_weights(ranks)
    synced(ranks)
    counted_once(ranks)
    headers = [line for line in logs.splitlines() if "multiply-adds" in line]
    assert len(headers) == 1 and "| 2 nodes × 1 cpu, precision 32-true |" in headers[0], headers
    assert "multiply-adds" in tasks["0"] and "multiply-adds" not in tasks["1"]
    for noise in QUIET:
        assert noise not in output + logs, f"{noise!r} in the output:\n{(output + logs)[-3000:]}"
    assert status(folder / "0_resnet-8A")["status"] == "finished"


@pytest.fixture(scope="module")
def two_node_uninterrupted(slurm_two_nodes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the run of test_signals to N iterations as one two-node job."""
    from test_signals import RUN, N

    tmp = tmp_path_factory.mktemp("two_node_uninterrupted")
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", "-m", *LAUNCHER, *RUN, *MULTINODE,
         f"optim.max_steps={N}", f"hydra.sweep.dir={tmp / 'sweep'}"],
        capture_output=True, text=True, env=job_env(slurm_two_nodes, tmp), cwd=tmp, timeout=300,
    )  # fmt: skip
    run = tmp / "sweep" / "0_resnet-8A"
    assert result.returncode == 0, (result.stdout + result.stderr + job_logs(tmp / "sweep"))[-4000:]
    assert status(run)["status"] == "finished" and status(run)["iterations"] == N
    return run


@pytest.mark.slow  # two two-node SLURM jobs, one stopped, requeued and resumed
def test_two_node_job_requeued_loses_no_iteration(
    slurm_two_nodes, tmp_path: Path, two_node_uninterrupted: Path
) -> None:
    """``scontrol requeue`` of a running two-node job: SLURM sends SIGTERM to the rank on each
    node; the ranks agree to stop at the next logging iteration (every 5: 15, after a pause at
    11), save it, and the requeued job resumes there on both nodes, to the uninterrupted
    two-node run's metrics.csv, byte for byte."""
    from test_signals import RUN, N, _pause

    folder, paused = tmp_path / "sweep", tmp_path / "paused"
    env = job_env(slurm_two_nodes, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reslab.cli", "-m", *LAUNCHER, *RUN, *MULTINODE,
         f"optim.max_steps={N}", *_pause(11, paused), f"hydra.sweep.dir={folder}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    run = folder / "0_resnet-8A"
    try:
        deadline = time.monotonic() + 180
        while not paused.exists():  # both ranks hold at the end of iteration 11
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the job never reached its pause"
            time.sleep(0.1)
        (job,) = [p.name for p in (folder / ".submitit").iterdir() if p.is_dir()]
        slurm_command(slurm_two_nodes, ["scontrol", "requeue", job], env)
        paused.unlink()
        deadline = time.monotonic() + 60
        while status(run)["status"] == "running":
            assert time.monotonic() < deadline, "the job did not stop"
            time.sleep(0.1)
        stopped = status(run)
        assert stopped["status"] == "preempted", stopped
        assert stopped["interrupted_at"] == stopped["iterations"] == 15
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    logs = job_logs(folder)
    assert proc.returncode == 0, (out + logs)[-3000:]
    assert status(run)["status"] == "finished" and status(run)["iterations"] == N
    resumed = re.findall(r"resuming from \S+ at iteration (\d+)", logs)
    assert resumed and int(resumed[-1]) == 15, logs[-3000:]  # 0 iterations lost
    expected = (two_node_uninterrupted / "metrics.csv").read_text()
    assert (run / "metrics.csv").read_text() == expected
