"""A sweep holds as a run does: a stopped sweep is finished by ``reslab-resume SWEEP_FOLDER``
(finished jobs untouched, the stopped one continued exactly, the unstarted one started), every
job fails alone and is failed in Hydra's record too, a sweep folder has one writer and its jobs
follow it to ``<folder>_2``, and no new run or sweep overwrites a folder that holds one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

S = ["data=synthetic", "debug=smoke", "logger=csv", "model.depth=8"]
# A sweep long enough to be stopped in its second job: 300 iterations, checkpoints every 50.
LONG = [
    "data=synthetic", "logger=csv", "model.depth=8", "data.batch_size=16",
    "optim.max_steps=300", "callbacks.checkpoint.every_n_train_steps=50",
]  # fmt: skip


def env(tmp_path: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_SERVICE")}
    return {**keep, "WANDB_MODE": "offline", "RESLAB_LOG_DIR": str(tmp_path / "logs")}


def reslab(tmp_path: Path, *args: str, command: str = "train") -> subprocess.CompletedProcess:
    main = {"train": "train_main", "resume": "resume_main"}[command]
    return subprocess.run(
        [sys.executable, "-c", f"from reslab.cli import {main}; {main}()", *args],
        capture_output=True, text=True, timeout=600, env=env(tmp_path), cwd=tmp_path,
    )  # fmt: skip


def files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def status(folder: Path) -> dict:
    return json.loads((folder / "status.json").read_text())


def jobs(sweep: Path) -> list[str]:
    return sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != ".")


@pytest.mark.slow  # a sweep of three 300-iteration jobs, stopped, resumed; and a reference run
def test_a_sweep_stopped_by_sigterm_is_finished_by_reslab_resume(tmp_path: Path) -> None:
    sweep = tmp_path / "W"
    command = [sys.executable, "-c", "from reslab.cli import train_main; train_main()", "-m",
               *LONG, "seed=0,1,2", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    started = subprocess.Popen(command, env=env(tmp_path), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 400
    while not (sweep / "1_resnet-8A" / "checkpoints" / "last.ckpt").is_file():
        assert started.poll() is None and time.time() < deadline, started.stdout.read()[-3000:]
        time.sleep(0.05)
    started.send_signal(signal.SIGTERM)
    out = started.communicate(timeout=300)[0].decode()
    assert started.returncode == 128 + signal.SIGTERM, out[-3000:]
    said = "2 job(s) did not finish: 1_resnet-8A (interrupted), 1 never started; finish the sweep"
    assert f"{said}: reslab-resume {sweep}" in out
    assert jobs(sweep) == ["0_resnet-8A", "1_resnet-8A"]  # job 2 never started
    assert status(sweep / "1_resnet-8A")["status"] == "interrupted"
    finished = files(sweep / "0_resnet-8A")
    stopped = {name: data for name, (data, _) in files(sweep / "1_resnet-8A").items()}
    before = {n: d for n, (d, _) in files(sweep).items() if n != ".lock"}  # (the lock's holder)
    refused = reslab(tmp_path, str(sweep), "optim.lr=-1", command="resume")
    assert refused.returncode == 1 and "optim.lr=-1" in refused.stderr
    assert "the sweep's resume is refused, no job was launched" in refused.stderr
    assert {n: d for n, (d, _) in files(sweep).items() if n != ".lock"} == before  # no job 2
    assert {n: d for n, (d, _) in files(sweep / "1_resnet-8A").items()} == stopped  # as it was
    swept = reslab(tmp_path, str(sweep), "seed=5", command="resume")
    assert swept.returncode == 1 and "varies seed itself" in swept.stderr

    result = reslab(tmp_path, str(sweep), command="resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 job(s) finished and left as they are, 2 to run" in result.stdout
    assert files(sweep / "0_resnet-8A") == finished  # not launched: every file as it was
    assert jobs(sweep) == ["0_resnet-8A", "1_resnet-8A", "2_resnet-8A"]
    for job in jobs(sweep):
        assert status(sweep / job)["status"] == "finished"
        assert status(sweep / job)["iterations"] == 300
    assert "reslab sweep" in result.stdout and "2_resnet-8A" in result.stdout  # the table
    whole = tmp_path / "whole"
    assert reslab(tmp_path, *LONG, "seed=1", f"hydra.run.dir={whole}").returncode == 0
    assert (sweep / "1_resnet-8A" / "metrics.csv").read_bytes() == (
        whole / "metrics.csv"
    ).read_bytes()


@pytest.mark.slow  # a sweep of four smoke jobs, resumed twice
def test_a_resume_refused_for_every_job_launches_none(tmp_path: Path) -> None:
    """The resume's own override is bad for every job to launch: one line, no job folder made
    (the one that never started) or changed (the failed one); a job bad alone fails alone."""
    sweep = tmp_path / "W"
    first = reslab(tmp_path, "-m", *S, "optim.lr=0.1,-1", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert first.returncode == 1, first.stderr[-3000:]
    assert [status(sweep / job)["status"] for job in jobs(sweep)] == [
        "finished", "finished", "failed", "failed"
    ]
    shutil.rmtree(sweep / "1_resnet-8A")  # as if it never started
    before = {n: d for n, (d, _) in files(sweep).items() if n != ".lock"}
    refused = reslab(tmp_path, str(sweep), "data.batch_size=0", command="resume")
    assert refused.returncode == 1, refused.stdout[-3000:] + refused.stderr[-3000:]
    (line,) = [x for x in refused.stderr.splitlines() if "error:" in x]
    assert "the sweep's resume is refused, no job was launched" in line
    assert "data.batch_size=0" in line
    assert {n: d for n, (d, _) in files(sweep).items() if n != ".lock"} == before
    again = reslab(tmp_path, str(sweep), command="resume")  # job 1 runs; lr=-1 refused alone
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert "1_resnet-8A │ finished" in again.stdout and "failed" in again.stdout


@pytest.mark.slow  # a sweep of three smoke jobs, one resumed
def test_a_resumed_sweep_names_folders_as_its_subdir_and_leaves_diverged_jobs(
    tmp_path: Path,
) -> None:
    """A never-started job's folder is the sweep's own ``hydra.sweep.subdir`` of that job
    (here ``lr${optim.lr}``), not another job's; a diverged job is a result, left as it is."""
    sweep = tmp_path / "W"
    first = reslab(tmp_path, "-m", *S, "optim.lr=0.1,1e30,0.05", "hydra.sweep.subdir=lr${optim.lr}",
                   f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert jobs(sweep) == ["lr0.05", "lr0.1", "lr1e+30"]
    assert status(sweep / "lr1e+30")["status"] == "diverged"
    shutil.rmtree(sweep / "lr0.05")  # as if it never started
    kept = {job: files(sweep / job) for job in ("lr0.1", "lr1e+30")}
    result = reslab(tmp_path, str(sweep), command="resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 job(s) finished (1 diverged) and left as they are, 1 to run" in result.stdout
    assert jobs(sweep) == ["lr0.05", "lr0.1", "lr1e+30"]
    assert status(sweep / "lr0.05")["status"] == "finished"
    assert {job: files(sweep / job) for job in kept} == kept


@pytest.mark.slow  # two 300-iteration jobs at once (joblib), stopped, resumed
def test_a_local_sweep_stopped_by_sigterm_says_its_killed_jobs_and_resumes(
    tmp_path: Path,
) -> None:
    """``hydra/launcher=local``: on the controller's SIGTERM joblib's loky kills its workers
    (SIGKILL); their jobs are ``interrupted`` at their last checkpoint (``killed``), not
    ``running``, and ``reslab-resume`` finishes them."""
    sweep = tmp_path / "W"
    command = [sys.executable, "-c", "from reslab.cli import train_main; train_main()", "-m",
               *LONG, "seed=0,1", "hydra/launcher=local", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    started = subprocess.Popen(command, env=env(tmp_path), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 400
    while not all((sweep / job / "checkpoints" / "last.ckpt").is_file()
                  for job in ("0_resnet-8A", "1_resnet-8A")):  # fmt: skip
        assert started.poll() is None and time.time() < deadline, started.stdout.read()[-3000:]
        time.sleep(0.05)
    started.send_signal(signal.SIGTERM)
    out = started.communicate(timeout=300)[0].decode()
    assert started.returncode == 128 + signal.SIGTERM, out[-3000:]
    for job in ("0_resnet-8A", "1_resnet-8A"):
        stopped = status(sweep / job)
        assert stopped["status"] == "interrupted" and stopped["killed"] is True, stopped
        assert stopped["interrupted_at"] % 50 == 0 and stopped["interrupted_at"] >= 50, stopped
        assert f"│ {job} │ interrupted" in out, out[-3000:]
    result = reslab(tmp_path, str(sweep), command="resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for job in ("0_resnet-8A", "1_resnet-8A"):
        assert status(sweep / job)["status"] == "finished"
        assert status(sweep / job)["iterations"] == 300


@pytest.mark.slow  # two smoke jobs, both extended by a resume
def test_a_refused_extension_of_one_job_exits_1_and_leaves_it(tmp_path: Path) -> None:
    sweep = tmp_path / "W"
    first = reslab(tmp_path, "-m", *S, "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = sweep / "1_resnet-8A" / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # cut short
    damaged = {n: d for n, (d, _) in files(sweep / "1_resnet-8A").items()}
    result = reslab(tmp_path, str(sweep), "optim.max_steps=6", command="resume")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "a job was refused and left as it was" in result.stderr
    assert "DamagedCheckpointError" in result.stderr
    assert status(sweep / "0_resnet-8A")["iterations"] == 6
    assert {n: d for n, (d, _) in files(sweep / "1_resnet-8A").items()} == damaged


def test_a_bad_network_name_fails_its_job_alone(tmp_path: Path) -> None:
    sweep = tmp_path / "W"
    result = reslab(tmp_path, "-m", "experiment=fig6", *S[:3], f"hydra.sweep.dir={sweep}",
                    "net=resnet-20A,resnet-21A,plain-20")  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert jobs(sweep) == ["0_resnet-20A", "1_resnet-21A", "2_plain-20"]
    assert status(sweep / "1_resnet-21A")["status"] == "failed"
    assert "resnet-21A" in status(sweep / "1_resnet-21A")["error"]
    assert status(sweep / "0_resnet-20A")["status"] == "finished"
    assert status(sweep / "2_plain-20")["status"] == "finished"
    assert "1 job(s) of the sweep failed: 1_resnet-21A" in result.stderr
    assert "│ 1_resnet-21A │ failed" in result.stdout  # the table, after every job ran


def test_a_failed_job_is_failed_in_hydras_job_return(tmp_path: Path) -> None:
    sweep = tmp_path / "W"
    log_return = "+hydra.callbacks.log_return._target_="
    result = reslab(tmp_path, "-m", *S[:3], "model.depth=9,8", f"hydra.sweep.dir={sweep}",
                    f"{log_return}hydra.experimental.callbacks.LogJobReturnCallback")  # fmt: skip
    assert result.returncode == 1
    logged = "".join((sweep / job / "reslab.log").read_text() for job in jobs(sweep))
    assert "Succeeded with return value: nan" not in logged
    assert logged.count("Succeeded with return value") == 1  # the depth-8 job
    assert "JobFailed: resnet-9A: failed: ValueError: model.depth=9 is not valid" in logged
    assert "1 job(s) of the sweep failed: 0_resnet-9A" in result.stderr


def test_a_new_run_or_sweep_never_overwrites_one(tmp_path: Path) -> None:
    run, sweep = tmp_path / "X", tmp_path / "W"
    assert reslab(tmp_path, *S, f"hydra.run.dir={run}").returncode == 0
    assert reslab(tmp_path, "-m", *S, "seed=0,1", f"hydra.sweep.dir={sweep}").returncode == 0
    before = files(tmp_path)
    again = reslab(tmp_path, *S, "optim.lr=0.05", f"hydra.run.dir={run}")
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"reslab-train: error: {run} already holds a finished run (status.json); continue it "
        f"with reslab-resume {run}, or choose another folder (hydra.run.dir=...): a new run "
        "never overwrites one"
    ]
    again = reslab(tmp_path, "-m", *S, "seed=2", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 1
    assert f"{sweep} already holds a sweep (multirun.yaml or job folders); continue it with" in (
        again.stderr
    )
    crossed = reslab(tmp_path, "-m", *S, "seed=3", f"hydra.sweep.dir={run}")  # a sweep in a run
    assert crossed.returncode == 1
    assert f"{run} already holds a finished run (status.json)" in crossed.stderr
    assert "(hydra.sweep.dir=...): a new sweep never overwrites one" in crossed.stderr
    crossed = reslab(tmp_path, *S, f"hydra.run.dir={sweep}")  # a run among a sweep's jobs
    assert crossed.returncode == 1
    assert f"{sweep} already holds a sweep (multirun.yaml or job folders)" in crossed.stderr
    assert files(tmp_path) == before
    moved = reslab(tmp_path, str(sweep), f"hydra.sweep.dir={tmp_path / 'Y'}", command="resume")
    assert moved.returncode == 1 and "reslab-resume finishes the sweep in" in moved.stderr
    bad = reslab(tmp_path, str(sweep), "model.depth=abc", command="resume")  # all finished
    assert bad.returncode == 1, bad.stdout[-2000:]
    assert "the sweep's resume is refused" in bad.stderr and "model.depth" in bad.stderr


def test_sweeps_whose_default_folder_is_taken_get_their_own_and_their_jobs_follow(
    tmp_path: Path,
) -> None:
    """Two sweeps started in the same second: every default folder they could compute in the
    next minutes is taken beforehand, so both must take ``_2`` or ``_3``, with their jobs."""
    multiruns = tmp_path / "logs" / "multiruns"
    now = int(time.time())
    for t in range(now, now + 300):
        taken = multiruns / f"{time.strftime('%Y-%m-%d_%H-%M-%S', time.localtime(t))}_g"
        taken.mkdir(parents=True)
        (taken / "another sweep").write_text("")
    command = [sys.executable, "-c", "from reslab.cli import train_main; train_main()", "-m",
               *S, "model.depth=8,14", "group=g"]  # fmt: skip
    sweeps = [
        subprocess.Popen([*command, f"optim.lr={lr}"], env=env(tmp_path), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for lr in (0.1, 0.05)
    ]  # fmt: skip
    for sweep in sweeps:
        out = sweep.communicate(timeout=600)[0].decode()
        assert sweep.returncode == 0, out[-3000:]
    claimed = sorted(p for p in multiruns.iterdir() if not (p / "another sweep").exists())
    # ("_2" and "_3" in one second; "_2" each when a loaded machine starts them in two)
    assert len(claimed) == 2 and all(p.name.endswith(("_g_2", "_g_3")) for p in claimed)
    lrs = set()
    for folder in claimed:
        assert jobs(folder) == ["0_resnet-8A", "1_resnet-14A"]
        overrides = {(folder / j / ".hydra" / "overrides.yaml").read_text() for j in jobs(folder)}
        (lr,) = {line for text in overrides for line in text.splitlines() if "optim.lr" in line}
        lrs.add(lr)
        assert all(status(folder / j)["status"] == "finished" for j in jobs(folder))
    assert lrs == {"- optim.lr=0.1", "- optim.lr=0.05"}
    assert all(p.iterdir() for p in multiruns.iterdir())
    assert sum(1 for p in multiruns.iterdir() if jobs(p)) == 2  # no job in a taken folder


# A search of 6 trials, Optuna's RandomSampler seeded: 3 finished, 2 diverged (lr 1e30) and
# 1 failed (depth 9 is no CIFAR net), in that draw; the search goes on to the end. (Not
# Optuna's GridSampler: it draws its grid's order from Python's unseeded random module, and
# Hydra's optuna sweeper raises, before optimization_results.yaml, when the grid's last trial
# failed: Study.stop outside an objective.)
SEARCH = """\
# @package _global_
defaults:
  - lr_wd
  - override /hydra/sweeper/sampler: random
hydra:
  sweeper:
    n_trials: 6
    sampler:
      seed: 0
    params:
      optim.lr: choice(0.05, 0.1, 1e30)
      optim.weight_decay: choice(0.0001)
      model.depth: choice(8, 9)
"""


@pytest.mark.slow  # six short trials
def test_a_search_records_diverged_and_failed_trials_and_goes_on(tmp_path: Path) -> None:
    conf = tmp_path / "myconf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "six.yaml").write_text(SEARCH)
    sweep = tmp_path / "S"
    result = reslab(tmp_path, "-m", f"--config-dir={conf.parent}", "hparams_search=six",
                    *S[:3], f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    states = [status(sweep / job)["status"] for job in jobs(sweep)]
    assert states == ["finished", "diverged", "finished", "failed", "finished", "diverged"]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["model.depth"] == 8 and best["best_params"]["optim.lr"] < 1
    assert "[reslab] best trial: optim.lr=" in result.stdout
    assert "1 job(s) of the sweep failed" in result.stderr
    assert result.stdout.count("│ failed") == 1 and result.stdout.count("│ diverged at") == 2
    assert "Values cannot be specified" not in result.stdout + result.stderr
    diverged = next(sweep / j for j in jobs(sweep) if status(sweep / j)["status"] == "diverged")
    trial = reslab(tmp_path, str(diverged), command="resume")  # one trial: one run, no search
    assert trial.returncode == 0, trial.stdout[-3000:] + trial.stderr[-3000:]
    assert not (tmp_path / "outputs").exists() and "Study name" not in trial.stdout
    assert status(diverged)["status"] == "diverged"
    before = files(sweep)  # a search folder has no multirun.yaml: still a sweep's folder
    again = reslab(tmp_path, "-m", *S, "seed=9", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 1 and "already holds a sweep" in again.stderr
    resumed = reslab(tmp_path, str(sweep), command="resume")
    assert resumed.returncode == 1 and "is a search" in resumed.stderr
    assert files(sweep) == before


def test_an_ad_hoc_sweep_is_its_own_wandb_group_and_experiments_keep_theirs() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from reslab.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    groups = {}
    for overrides in (["seed=1"], ["experiment=fig6"]):
        for mode in (RunMode.RUN, RunMode.MULTIRUN):
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose("train", [*overrides, "hydra.sweep.dir=/s/2026_x"],
                              return_hydra_config=True)  # fmt: skip
            cfg.hydra.mode = mode
            HydraConfig.instance().set_config(cfg)
            groups[overrides[0], mode.name] = cfg.logger.wandb.group
    assert groups == {
        ("seed=1", "RUN"): "default", ("seed=1", "MULTIRUN"): "2026_x",
        ("experiment=fig6", "RUN"): "fig6", ("experiment=fig6", "MULTIRUN"): "fig6",
    }  # fmt: skip


@pytest.mark.slow  # three runs of a few seconds each
def test_a_spent_time_budget_stops_a_run_and_resume_gives_it_a_new_one(tmp_path: Path) -> None:
    run = tmp_path / "X"
    budget = [*LONG[:4], "optim.max_steps=100000", "+trainer.max_time=00:00:00:04",
              "callbacks.checkpoint.every_n_train_steps=1000000",
              "trainer.log_every_n_steps=2"]  # fmt: skip (rows however slow the machine is)
    first = reslab(tmp_path, *budget, f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-3000:]
    stopped = status(run)
    assert stopped["status"] == "stopped" and stopped["max_time_s"] == 4
    k = stopped["stopped_at"]
    assert 0 < k == stopped["iterations"] < 100000
    assert "its time budget, trainer.max_time (4 s), is spent" in first.stdout
    assert "test/error" not in stopped and "train/error" in stopped
    assert "test/error" not in (run / "metrics.csv").read_text().splitlines()[0]
    import torch

    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == k
    again = reslab(tmp_path, str(run), command="resume")  # a new budget of 4 s
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {run}/checkpoints/last.ckpt at iteration {k}" in again.stdout
    assert status(run)["status"] == "stopped" and status(run)["stopped_at"] > k
    k = status(run)["stopped_at"]
    end = reslab(tmp_path, str(run), f"optim.max_steps={k + 10}", "trainer.max_time=00:00:10:00",
                 command="resume")  # (10 iterations may take 4 s on a loaded machine)
    assert end.returncode == 0, end.stderr[-3000:]
    final = status(run)
    assert final["status"] == "finished" and final["iterations"] == k + 10
    assert all(final.get(key) is not None for key in ("train/loss", "train/error", "test/error"))
    rows = (run / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("test/error")
    assert sum(1 for row in rows[1:] if row.split(",")[column]) == 1  # tested once


def test_a_refused_resume_leaves_the_folder_byte_for_byte(tmp_path: Path) -> None:
    run = tmp_path / "X"
    assert reslab(tmp_path, *S, f"hydra.run.dir={run}").returncode == 0
    before = {name: data for name, (data, _) in files(run).items()}
    refused = reslab(tmp_path, str(run), "optim.max_steps=8", "optim.lr=-1", command="resume")
    assert refused.returncode == 1
    assert "optim.lr" in refused.stderr and "-1" in refused.stderr
    assert {name: data for name, (data, _) in files(run).items()} == before  # .hydra/ too
    other_k = reslab(tmp_path, str(run), "optim.max_steps=8", "module.fused_iterations=2",
                     command="resume")  # fmt: skip
    assert other_k.returncode == 1
    assert "the checkpoint was trained with module.fused_iterations=1" in other_k.stderr
    assert {name: data for name, (data, _) in files(run).items()} == before  # still finished
    again = reslab(tmp_path, str(run), command="resume")  # the refusal is not repeated
    assert again.returncode == 0 and "is complete" in again.stdout


MY_EXPERIMENT = """\
# @package _global_
defaults:
  - override /data: synthetic
  - override /logger: csv
model:
  depth: 8
"""


def test_resume_replays_the_config_dir_hydra_overrides_and_folder_of_the_first_start(
    tmp_path: Path,
) -> None:
    from reslab.resume import resume_command

    (tmp_path / "myconf" / "experiment").mkdir(parents=True)
    (tmp_path / "myconf" / "experiment" / "mine.yaml").write_text(MY_EXPERIMENT)
    (tmp_path / "started here").mkdir()
    run = tmp_path / "X"
    first = subprocess.run(
        [sys.executable, "-c", "from reslab.cli import train_main; train_main()",
         f"--config-dir={tmp_path / 'myconf'}", "experiment=mine", "debug=smoke",
         f"hydra.run.dir={run}",
         "++hydra.job.env_set.RESLAB_MARK=first"],
        capture_output=True, text=True, timeout=600, env=env(tmp_path),
        cwd=tmp_path / "started here",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    command, cwd = resume_command(run, ["optim.max_steps=6"])
    assert cwd == tmp_path / "started here"
    assert f"--config-dir={tmp_path / 'myconf'}" in command
    assert "++hydra.job.env_set.RESLAB_MARK=first" in command
    assert [c for c in command if c.startswith("hydra.mode")] == ["hydra.mode=RUN"]  # one run
    extended = reslab(tmp_path, str(run), "optim.max_steps=6", command="resume")
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert status(run)["iterations"] == 6
    hydra = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra["job"]["env_set"] == {"RESLAB_MARK": "first"}
    assert hydra["runtime"]["cwd"] == str(tmp_path / "started here")


def test_a_run_of_a_wandb_sweep_agent_keeps_the_agents_run_id_through_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reslab.loggers import wandb_run_id

    monkeypatch.setenv("WANDB_RUN_ID", "agent123")  # what `wandb agent` sets for its run
    assert wandb_run_id(tmp_path) == "agent123"
    assert (tmp_path / "wandb_id.txt").read_text() == "agent123\n"
    monkeypatch.delenv("WANDB_RUN_ID")  # reslab-resume, typed later without the agent
    assert wandb_run_id(tmp_path) == "agent123"


def test_relative_paths_mean_the_starting_folder_with_hydra_job_chdir(tmp_path: Path) -> None:
    """``hydra.job.chdir=true`` runs the job in its run folder; a relative ``data.data_dir``
    (and ``ckpt_path``) still means the folder the command started in."""
    from conftest import make_cifar10

    make_cifar10(tmp_path / "mine")
    args = ["data=cifar10", "data.data_dir=mine", "debug=smoke", "logger=csv", "model.depth=8",
            "data.download=false", "hydra.job.chdir=true"]  # fmt: skip
    first = reslab(tmp_path, *args, "hydra.run.dir=X")
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"| {tmp_path / 'X'}" in first.stdout  # the header names the run folder
    again = reslab(tmp_path, *args, "hydra.run.dir=Y", "ckpt_path=X/checkpoints/last.ckpt",
                   "optim.max_steps=6")  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {tmp_path / 'X' / 'checkpoints' / 'last.ckpt'} at iteration 4" in (
        again.stdout
    )


@pytest.mark.slow  # a run stopped by SIGTERM, then the command it printed, pasted into a shell
def test_the_printed_resume_command_works_pasted_for_a_folder_with_a_space(tmp_path: Path) -> None:
    run = tmp_path / "a run, with 'quotes'"
    command = [sys.executable, "-c", "from reslab.cli import train_main; train_main()", *LONG,
               f"hydra.run.dir='{run}'".replace("'quotes'", "\\'quotes\\'")]  # fmt: skip
    started = subprocess.Popen(command, env=env(tmp_path), cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 300
    while not (run / "checkpoints" / "last.ckpt").is_file():
        assert started.poll() is None and time.time() < deadline, started.stdout.read()[-3000:]
        time.sleep(0.05)
    started.send_signal(signal.SIGTERM)
    out = started.communicate(timeout=300)[0]
    assert started.returncode == 128 + signal.SIGTERM, out[-3000:]
    (printed,) = [line.split("continue it: ", 1)[1] for line in out.splitlines()
                  if "continue it: " in line]  # fmt: skip
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    pasted = subprocess.run(["bash", "-c", printed], capture_output=True, text=True,
                            env={**env(tmp_path), "PATH": path}, timeout=600)  # fmt: skip
    assert pasted.returncode == 0, pasted.stdout[-2000:] + pasted.stderr[-2000:]
    assert status(run)["status"] == "finished" and status(run)["iterations"] == 300



@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_before_training_starts_still_records_the_job_and_prints_the_table(
    tmp_path: Path, signum: signal.Signals
) -> None:
    sweep, paused = tmp_path / "W", tmp_path / "paused"
    tests = str(Path(__file__).resolve().parent)
    command = [sys.executable, "-c", "from reslab.cli import train_main; train_main()", "-m",
               *S, "seed=0,1", f"hydra.sweep.dir={sweep}",
               "+callbacks.pause._target_=sigkill.PauseInSetup", f"+callbacks.pause.file={paused}"]
    started = subprocess.Popen(command, env={**env(tmp_path), "PYTHONPATH": tests}, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not paused.exists():
        assert started.poll() is None and time.time() < deadline, started.stdout.read()[-3000:]
        time.sleep(0.05)
    started.send_signal(signum)  # in setup: StopOnSignal's handlers are not there yet
    out = started.communicate(timeout=300)[0]
    assert started.returncode == 128 + signum, out[-3000:]
    assert status(sweep / "0_resnet-8A")["status"] == "interrupted"
    assert "│ 0_resnet-8A │ interrupted" in out  # the table
    assert "1 never started" in out


def test_a_job_config_that_does_not_compose_is_said_with_the_table(tmp_path: Path) -> None:
    """Hydra's launcher composes each job before it runs: a bad key in the swept values stops
    the sweep there; the table, what never started and the error's one line are all said."""
    sweep = tmp_path / "W"
    result = reslab(tmp_path, "-m", *S, "optim.lrr=0.1,0.2", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if "error:" in x]
    assert "the sweep stopped: unknown config key 'optim.lrr'; did you mean 'optim.lr'?" in line
    assert "2 never started" in result.stderr and "reslab sweep" in result.stdout


def test_a_glob_sweep_prints_its_table(tmp_path: Path) -> None:
    result = reslab(tmp_path, "-m", *S, "shortcut=glob(A*)", f"hydra.sweep.dir={tmp_path / 'W'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reslab sweep" in result.stdout and "0_resnet-8A" in result.stdout
